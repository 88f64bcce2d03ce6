"""The per-run status table every batch command writes (status.csv: one row per slide or case).

A leaf module (imports only histo.atomic) so the CLI and the libraries share one reader and writer.

Several processes may write one table at once (torchrun ranks, two commands on one --out): every change
is a read-modify-write of the whole file under an exclusive lock on a sidecar ``status.csv.lock``
(``fcntl.flock``), written to a temporary name and renamed, so no process loses another's rows and a
reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from histo.atomic import write_text

try:  # POSIX; elsewhere writes are still atomic but not serialised between processes
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

STATUS_FILE = "status.csv"


def lock_path(path: str | Path) -> Path:
    """The sidecar file whose lock guards a status table."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of a status table (blocks until no other process holds it)."""
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _read(path: Path, key: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    if not path.is_file():
        return {}, []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = {row[key]: row for row in reader if row.get(key) is not None}
        return rows, list(reader.fieldnames or [])


def read_status(path: str | Path, key: str = "slide") -> dict[str, dict[str, Any]]:
    """Rows of a status file keyed by the ``key`` column ({} when the file is absent)."""
    return _read(Path(path), key)[0]


def write_status(path: str | Path, rows: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]],
                 fields: Sequence[str]) -> Path:
    """Write status rows (a keyed mapping or a list, in order) atomically with the given columns.

    This replaces the whole table: with other writers about, use ``update_status`` instead.
    """
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows.values() if isinstance(rows, Mapping) else rows)
    return write_text(path, buf.getvalue())


def edit_status(path: str | Path, edit: Callable[[dict[str, dict[str, Any]]], Any], fields: Sequence[str] | None = None,
                key: str = "slide") -> Path | None:
    """Change a status table in place under its lock: ``edit`` gets the rows keyed by ``key`` and changes them.

    ``fields`` are the columns written (default: the file's own; nothing is written when it has none).
    Returns the path written, or None when there was nothing to write.
    """
    path = Path(path)
    with locked(path):
        rows, header = _read(path, key)
        edit(rows)
        columns = list(fields) if fields is not None else header
        if not columns:
            return None
        return write_status(path, rows, columns)


def update_status(path: str | Path, rows: Mapping[str, Mapping[str, Any]], fields: Sequence[str],
                  key: str = "slide") -> Path:
    """Merge rows into a status table under its lock: each replaces the row with its key, the others are kept."""
    def _merge(table: dict[str, dict[str, Any]]) -> None:
        for k, row in rows.items():
            table[str(k)] = dict(row)

    edit_status(path, _merge, fields, key)
    return Path(path)
