"""The per-run status table every batch command writes (status.csv: one row per slide or case).

A leaf module (imports only histo.atomic) so the CLI and the libraries share one reader and writer.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from histo.atomic import write_text

STATUS_FILE = "status.csv"


def read_status(path: str | Path, key: str = "slide") -> dict[str, dict[str, Any]]:
    """Rows of a status file keyed by the ``key`` column ({} when the file is absent)."""
    path = Path(path)
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        return {row[key]: row for row in csv.DictReader(f)}


def write_status(path: str | Path, rows: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]],
                 fields: Sequence[str]) -> Path:
    """Write status rows (a keyed mapping or a list, in order) atomically with the given columns."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows.values() if isinstance(rows, Mapping) else rows)
    return write_text(path, buf.getvalue())
