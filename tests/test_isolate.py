"""Crash isolation (issue 17): a slide whose native code aborts gets a "crashed (signal 6)" row; the batch goes on."""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
import time

import pytest

from histo.errors import SlideReadError
from histo.isolate import SlideCrashError, probe_isolated, run_isolated


def _abort() -> None:
    os.abort()


def _double(x: int) -> int:
    return 2 * x


def _raise() -> None:
    raise SlideReadError("s.svs: reading failed")


def _sleep() -> None:
    time.sleep(60)


def test_run_isolated_returns_reraises_and_reports_signals():
    assert run_isolated(_double, 21) == 42
    with pytest.raises(SlideReadError, match="s.svs: reading failed"):
        run_isolated(_raise)
    with pytest.raises(SlideCrashError, match=r"bad\.svs: crashed \(signal 6, SIGABRT\)"):
        run_isolated(_abort, label="bad.svs")
    with pytest.raises(SlideCrashError, match=r"slow\.svs: hung"):
        run_isolated(_sleep, label="slow.svs", timeout_s=0.5)


def test_probe_isolated_opens_and_reads_every_level(test_slide_path):
    out = probe_isolated(test_slide_path)
    assert out["backend"] == "openslide" and out["levels"] == 2


@pytest.fixture
def fork_isolation(monkeypatch):
    """Children forked from this process, so that monkeypatches of the test reach them."""
    import histo.isolate as iso

    monkeypatch.setattr(iso, "_CTX", mp.get_context("fork"))


def test_tile_batch_goes_on_after_a_slide_crashes_in_native_code(test_slide_path, tmp_path, monkeypatch,
                                                                fork_isolation):
    from histo.cli import main
    from histo.tiling import run as run_mod

    slides = []
    for name in ("a", "bad", "c"):
        p = tmp_path / f"{name}.tiff"
        p.write_bytes(test_slide_path.read_bytes())
        slides.append(str(p))
    real_plan = run_mod.plan_grid

    def plan(slide, config):
        if slide.name == "bad":
            os.abort()  # what OpenSlide does on some corrupt files: no Python except can catch it
        return real_plan(slide, config)

    monkeypatch.setattr(run_mod, "plan_grid", plan)
    out = tmp_path / "out"
    code = main(["tile", *slides, "--out", str(out), "--quiet"])
    assert code == 1
    rows = {r["name"]: r for r in csv.DictReader(open(out / "status.csv"))}
    assert rows["a"]["status"] == "ok" and rows["c"]["status"] == "ok"
    assert rows["bad"]["status"] == "failed"
    assert "crashed (signal 6" in rows["bad"]["reason"]


def test_tile_rerun_removes_temp_outputs_of_a_killed_run(test_slide_path, tmp_path):
    from histo.tiling import TilingConfig, tile_slide

    slide_dir = tmp_path / "out" / test_slide_path.stem
    stale = slide_dir / ".tiles.abc123.tmp"
    stale.mkdir(parents=True)
    for i in range(5):
        (stale / f"x{i}_y0.png").write_bytes(b"half")
    (slide_dir / ".tissue.png.k9z.tmp").write_bytes(b"half")
    keep = slide_dir / ".ihc_heatmap.png.zz.tmp"  # not an output of tiling: left to its own command
    keep.write_bytes(b"x")
    result = tile_slide(test_slide_path, tmp_path / "out", TilingConfig(), progress=False)
    assert result.status == "ok"
    assert not stale.exists() and not (slide_dir / ".tissue.png.k9z.tmp").exists()
    assert keep.exists()
