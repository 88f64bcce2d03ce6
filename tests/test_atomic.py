"""histo.atomic: outputs appear whole or not at all, with ordinary permissions."""

from __future__ import annotations

import os

import pytest

from histo.atomic import atomic_path, write_text


def test_failure_leaves_neither_file_nor_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_success_replaces_with_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        p = write_text(tmp_path / "a" / "b.txt", "x")
        with atomic_path(tmp_path / "d", directory=True) as d:
            (d / "f").write_text("y")
    finally:
        os.umask(old)
    assert p.read_text() == "x" and (p.stat().st_mode & 0o777) == 0o644
    assert (tmp_path / "d" / "f").read_text() == "y" and ((tmp_path / "d").stat().st_mode & 0o777) == 0o755
