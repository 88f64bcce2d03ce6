"""OUT/status.csv: one row per slide (slide, status, reason, n_tiles, seconds, verdict, report).

`histo predict` adds each slide's row under the table's lock (histo.status.update_status), under a
launcher too. ``merge_status`` folds per-rank files (``status.rank<r>.csv``) into status.csv under the
same lock, for callers that keep one file per rank (rows of earlier runs are kept unless a slide was
done again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from histo import status as status_table
from histo.predict.run import STATUS_FIELDS
from histo.status import STATUS_FILE


def rank_status_path(out_dir: str | Path, rank: int) -> Path:
    """The status file one rank writes while it works."""
    return Path(out_dir) / f"status.rank{rank}.csv"


def read_status(path: str | Path) -> dict[str, dict[str, Any]]:
    """Rows of a status file keyed by slide ({} when the file is absent)."""
    return status_table.read_status(path)


def write_status(path: str | Path, rows: dict[str, dict[str, Any]]) -> Path:
    """Write status rows atomically, in the order given."""
    return status_table.write_status(path, rows, STATUS_FIELDS)


def merge_status(out_dir: str | Path, world_size: int) -> Path:
    """Fold every rank's status file into OUT/status.csv (new rows replace old ones) and remove them."""
    out_dir = Path(out_dir)
    parts = [rank_status_path(out_dir, r) for r in range(world_size)]
    new: dict[str, dict[str, Any]] = {}
    for p in parts:
        new.update(read_status(p))
    # slides of this run in cohort order, whichever rank did them; under the lock, so no row is lost
    path = status_table.update_status(out_dir / STATUS_FILE, dict(sorted(new.items())), STATUS_FIELDS)
    for p in parts:
        p.unlink(missing_ok=True)
    return path
