"""Atomic outputs: write to a temporary name in the target folder, rename on success, remove on failure.

A killed run therefore never leaves a half-written file under the real name, and a rerun can treat
any file that exists as complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary file (or folder) path beside `path`; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        mode = 0o777
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        mode = 0o666
    try:
        yield tmp
        os.chmod(tmp, mode & ~_umask())  # mkstemp/mkdtemp make private files; outputs are ordinary ones
        if directory and path.is_dir():
            shutil.rmtree(path)
        elif not directory and path.is_dir():
            raise IsADirectoryError(f"{path}: is a folder, cannot replace it with a file")
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write a text file atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
