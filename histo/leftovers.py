"""Temp files of a killed run: `histo.atomic` writes `.<name>.<random>.tmp` beside each output; a run
killed with -9 leaves them. The next run over the same output folder removes the ones of the outputs it
is about to write (one run per output folder at a time is the rule: two concurrent runs on the same
slide would collide on their outputs anyway)."""

from __future__ import annotations

import shutil
from pathlib import Path


def stale_temps(folder: str | Path, names: list[str]) -> list[Path]:
    """The `.<name>.*.tmp` files and folders that `histo.atomic.atomic_path` left in `folder` for `names`."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found: list[Path] = []
    for name in names:
        found.extend(p for p in folder.glob(f".{name}.*.tmp") if p.name.startswith(f".{name}."))
    return sorted(set(found))


def clean_stale_temps(folder: str | Path, names: list[str]) -> int:
    """Remove what a killed run left for these outputs; returns how many were removed."""
    n = 0
    for p in stale_temps(folder, names):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        n += 1
    return n
