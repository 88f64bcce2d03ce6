"""Helpers shared by the benchmark scripts: peak memory and the synthetic benchmark slide."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path


def rss_mb(who: int) -> float:
    """Peak resident memory (MB) of this process (RUSAGE_SELF) or of its waited-for children."""
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux reports KiB


def make_slide(path: Path, size_px: int, seed: int, *, mpp: float, tissue_fraction: float) -> float:
    """Write a synthetic benchmark slide in a child process (so this process's memory stays out of it);
    returns seconds."""
    t0 = time.perf_counter()
    code = (
        "import sys; from histo.synth.simple import write_simple_slide; "
        f"write_simple_slide(sys.argv[1], {size_px}, {size_px}, mpp={mpp}, seed={seed}, "
        f"tissue_fraction={tissue_fraction})"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    return time.perf_counter() - t0
