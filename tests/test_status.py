"""status.csv: rows merged under an exclusive lock, so concurrent writers (ranks, two commands) lose none."""

from __future__ import annotations

import csv
import multiprocessing as mp
import shutil
from pathlib import Path

import pytest

from histo.status import edit_status, read_status, update_status

FIELDS = ["slide", "status", "writer"]


def _add_rows(path: str, writer: str, n: int, start) -> None:
    """One process: wait for the start signal, then add n rows one at a time (as a batch command does)."""
    start.wait()
    for i in range(n):
        update_status(path, {f"{writer}-{i}": {"slide": f"{writer}-{i}", "status": "ok", "writer": writer}}, FIELDS)


def test_update_merges_rows_and_keeps_the_others(tmp_path):
    path = tmp_path / "status.csv"
    update_status(path, {"a": {"slide": "a", "status": "ok"}}, FIELDS)
    update_status(path, {"b": {"slide": "b", "status": "failed"}}, FIELDS)
    update_status(path, {"a": {"slide": "a", "status": "skipped"}}, FIELDS)
    rows = read_status(path)
    assert list(rows) == ["a", "b"]  # a row replaced in place, the other kept
    assert rows["a"]["status"] == "skipped" and rows["b"]["status"] == "failed"
    with path.open(newline="") as f:
        assert next(csv.reader(f)) == FIELDS


def test_edit_keeps_the_files_own_columns(tmp_path):
    path = tmp_path / "status.csv"
    update_status(path, {"a": {"slide": "a", "status": "ok", "writer": "x"}}, FIELDS)
    edit_status(path, lambda rows: rows["a"].update(status="failed"))
    assert read_status(path)["a"] == {"slide": "a", "status": "failed", "writer": "x"}
    assert edit_status(tmp_path / "absent.csv", lambda rows: None) is None  # no table, no columns: nothing written
    assert not (tmp_path / "absent.csv").exists()


def test_two_processes_adding_rows_at_once_lose_none(tmp_path):
    path = tmp_path / "status.csv"
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    n = 60  # without the lock, two writers lost 5 of 80 rows in a trial run
    procs = [ctx.Process(target=_add_rows, args=(str(path), w, n, start)) for w in ("rank0", "rank1")]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rows = read_status(path)
    assert len(rows) == 2 * n
    assert {r["writer"] for r in rows.values()} == {"rank0", "rank1"}
    assert not [p for p in Path(tmp_path).iterdir() if p.name.endswith(".tmp")]  # no temp leftovers


def _tile(slides: list[str], out: str, start) -> None:
    import histo.cli.tile  # noqa: F401 - imports done before the start, so the two runs overlap
    from histo.cli import main
    from histo.slide import open_slide

    with open_slide(slides[0]) as s:
        s.read(0, 0, 64, 64, s.mpp)
    start.wait()
    raise SystemExit(main(["tile", *slides, "--out", out, "--workers", "0", "--quiet", "--set", "grid.tile_px=128"]))


@pytest.mark.slow
def test_two_tile_commands_on_one_out_keep_every_row(test_slide_path, tmp_path):
    slides = []
    for i in range(6):
        slides.append(tmp_path / f"s{i}.tiff")
        shutil.copy(test_slide_path, slides[-1])
    out = tmp_path / "out"
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_tile, args=([str(s) for s in part], str(out), start))
             for part in (slides[:3], slides[3:])]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(240)
        assert p.exitcode == 0
    rows = read_status(out / "status.csv")
    assert sorted(Path(k).stem for k in rows) == [f"s{i}" for i in range(6)]  # before the lock: 3 to 5 of 6
    assert {r["status"] for r in rows.values()} == {"ok"}
