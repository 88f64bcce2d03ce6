"""Per-slide lines the batch commands (tile, predict, ihc) print for slides that did not go through."""

from __future__ import annotations

import sys
from typing import Any


def report_problem(r: Any, width: int = 9) -> bool:
    """Print a failed or skipped slide's line on stderr and return True; False for any other status.

    ``r`` has ``status``, ``slide`` and ``reason``. Library messages already start with the file name,
    so it is not printed twice.
    """
    if r.status == "failed":
        msg = r.reason if r.reason.startswith(r.slide) else f"{r.slide}: {r.reason}"
        print(f"{'FAILED':<{width}}{msg}", file=sys.stderr)
        return True
    if r.status == "skipped":
        print(f"{'skipped':<{width}}{r.slide}: {r.reason}", file=sys.stderr)
        return True
    return False
