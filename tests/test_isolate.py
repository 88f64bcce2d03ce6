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
    rows = {r["name"]: r for r in csv.DictReader((out / "status.csv").read_text().splitlines())}
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


def test_out_of_memory_in_a_slide_says_what_to_do(test_slide_path, tmp_path, monkeypatch, fork_isolation):
    from histo.cli import main
    from histo.isolate import unexpected_reason
    from histo.tiling import run as run_mod

    assert "lower --workers or --batch-size" in unexpected_reason(MemoryError())

    def plan(slide, config):
        raise MemoryError()

    monkeypatch.setattr(run_mod, "plan_grid", plan)
    out = tmp_path / "out"
    assert main(["tile", str(test_slide_path), "--out", str(out), "--quiet"]) == 1
    row = next(csv.DictReader((out / "status.csv").read_text().splitlines()))
    assert "lower --workers or --batch-size" in row["reason"] and "unexpected" not in row["reason"]


@pytest.mark.parametrize("mpp", ["-1", "0", "nan", "500"])
def test_bad_mpp_gives_the_same_exit_code_in_info_and_tile(test_slide_path, tmp_path, mpp):
    from histo.cli import main

    code_info = main(["info", str(test_slide_path), "--mpp", mpp])
    code_tile = main(["tile", str(test_slide_path), "--out", str(tmp_path / "o"), "--quiet", "--mpp", mpp])
    assert code_info == code_tile == 2


def test_far_mpp_is_refused_unless_forced_on_the_command_line(test_slide_path, tmp_path, capsys):
    from histo.cli import main

    assert main(["info", str(test_slide_path), "--mpp", "29"]) == 2
    assert "--force-mpp" in capsys.readouterr().err
    assert main(["info", str(test_slide_path), "--mpp", "29", "--force-mpp", "--json"]) == 0
    assert '"mpp": 29.0' in capsys.readouterr().out
    out = tmp_path / "o"
    assert main(["tile", str(test_slide_path), "--out", str(out), "--quiet", "--mpp", "29"]) == 1
    row = next(csv.DictReader((out / "status.csv").read_text().splitlines()))
    assert "116x the file's own" in row["reason"]
