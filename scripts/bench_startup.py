"""Start-up time of the `histo` command: `--version`, `--help` and `info SLIDE`, median of a few fresh runs.

Each command runs in a fresh interpreter (``python -m histo ...``); the baseline is the same interpreter
doing `import histo` and nothing else, measured in the same run. Prints one JSON line: median seconds
and peak memory (MB) per command, and each command's time minus the baseline's.

    python scripts/bench_startup.py [--runs 5] [--slide SLIDE]

Without --slide a small synthetic pyramidal TIFF (2048 px square, 0.5 µm/px) is written to a temp folder.
Targets (issue 16): --version < 1 s, --help < 1.5 s, info SLIDE < 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import make_slide

TARGETS_S = {"version": 1.0, "help": 1.5, "info": 2.0}


def _once(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {err[-500:]}")
    return seconds, usage.ru_maxrss / 1024.0


def _median(argv: list[str], runs: int) -> dict[str, float]:
    _once(argv)  # warm the file cache; not counted
    samples = [_once(argv) for _ in range(runs)]
    return {"seconds": round(statistics.median(s for s, _ in samples), 3),
            "max_rss_mb": round(max(m for _, m in samples), 1)}


def main() -> None:
    """Measure and print the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="fresh runs per command (median; default 5)")
    ap.add_argument("--slide", type=Path, help="slide for `histo info` (default: a synthetic TIFF)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        slide = args.slide
        if slide is None:
            slide = Path(tmp) / "bench_startup.tiff"
            make_slide(slide, 2048, 0, mpp=0.5, tissue_fraction=0.5)
        py = [sys.executable]
        base = _median(py + ["-c", "import histo"], args.runs)
        results = {
            "version": _median(py + ["-m", "histo", "--version"], args.runs),
            "help": _median(py + ["-m", "histo", "--help"], args.runs),
            "info": _median(py + ["-m", "histo", "info", str(slide)], args.runs),
        }
    for name, r in results.items():
        r["over_baseline_s"] = round(r["seconds"] - base["seconds"], 3)
        r["target_s"] = TARGETS_S[name]
        r["meets_target"] = r["seconds"] < TARGETS_S[name]
    print(json.dumps({"bench": "startup", "runs": args.runs, "cpus": os.cpu_count(),
                      "baseline_import_histo": base, **results}))


if __name__ == "__main__":
    main()
