"""Peak RSS of `histo info` and `histo tile` on inputs that declare large or bogus sizes (issue 17).

Writes, in a temp folder: single-level tiled JPEG TIFFs of N² px (real tiles, written tile by tile), the
few-KB "decompression bomb" (a 256² tiled TIFF whose header declares 16000²), a zlib strip TIFF and an
uncompressed single-strip TIFF, and runs each command in its own process, measuring the peak resident
set size of its whole process tree (see `peak_rss`). Prints one JSON object: per input and command, the
exit code, peak RSS in MB and seconds, and the worst peak overall against the 1.5 GB target.

    python scripts/measure_memory.py --sizes 16000 24000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_MB = 1536


def _tiles(n: int, tile: int = 256):
    """Tiles of a glass slide with a band of pink tissue, row by row (never the whole image in memory)."""
    rng = np.random.default_rng(0)
    for ty in range(0, n, tile):
        for _tx in range(0, n, tile):
            t = np.full((tile, tile, 3), 238, np.uint8)
            if n // 3 <= ty < 2 * n // 3:
                t[:] = (200, 120, 170)
                t[::7, ::5] = (120, 60, 140)
            t += rng.integers(0, 3, (tile, tile, 1), dtype=np.uint8)
            yield t


def write_single_level(path: Path, n: int, mpp: float = 0.25) -> Path:
    """An n×n px single-level tiled JPEG TIFF at mpp, written tile by tile."""
    import tifffile

    res = 1e4 / mpp
    tifffile.imwrite(path, _tiles(n), shape=(n, n, 3), dtype=np.uint8, tile=(256, 256), compression="jpeg",
                     photometric="rgb", resolution=(res, res), resolutionunit="CENTIMETER")
    return path


def write_bomb(path: Path, n: int = 16000) -> Path:
    """A 256² tiled TIFF whose header claims n² px (a few KB on disk)."""
    import tifffile

    tifffile.imwrite(path, np.full((256, 256, 3), 238, np.uint8), tile=(256, 256), compression="jpeg",
                     photometric="rgb", resolution=(4e4, 4e4), resolutionunit="CENTIMETER")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(n)
        tif.pages[0].tags["ImageLength"].overwrite(n)
    return path


def write_strips(path: Path, n: int, mpp: float = 0.25, compression: str | None = "zlib") -> Path:
    """An n×n px TIFF in 64-row strips (no tiles, one level); the writer holds it in memory, histo must not."""
    import tifffile

    img = np.full((n, n, 3), 238, np.uint8)
    img[n // 3 : 2 * n // 3] = (200, 120, 170)
    res = 1e4 / mpp
    tifffile.imwrite(path, img, rowsperstrip=64 if compression else n, compression=compression,
                     photometric="rgb", resolution=(res, res), resolutionunit="CENTIMETER")
    return path


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def _tree(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss(argv: list[str], timeout_s: float) -> dict[str, object]:
    """Run argv; exit code, seconds and peak RSS in MB of its whole process tree (the histo process and
    the child processes it starts), as the sum of each process's own peak (VmHWM, polled every 20 ms; a
    peak reached in the last 20 ms of a process is missed): an upper bound otherwise, since the peaks of
    different processes need not coincide and shared pages are counted in each."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = t0 + timeout_s
    hwm: dict[int, int] = {}
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        for p in _tree(proc.pid):
            hwm[p] = max(hwm.get(p, 0), _hwm_kb(p))
        time.sleep(0.02)
    # Not wait4's ru_maxrss: Linux carries it across exec from the forked copy of this (measuring)
    # process, so it would report this script's own size. VmHWM belongs to the exec'd program.
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    return {"exit": code, "peak_rss_mb": round(sum(hwm.values()) / 1024, 1),
            "largest_process_mb": round(max(hwm.values()) / 1024, 1), "processes": len(hwm),
            "seconds": round(time.perf_counter() - t0, 1), "stderr_tail": err.strip().splitlines()[-1:]}


def main() -> int:
    """Write the inputs, measure each command, print the JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16000, 24000], help="single-level slide sides (px)")
    ap.add_argument("--strip-size", type=int, default=8000, help="side of the strip TIFFs (px)")
    ap.add_argument("--timeout-s", type=float, default=600)
    ap.add_argument("--workers", type=int, default=2, help="histo tile --workers")
    args = ap.parse_args()
    histo = [sys.executable, "-m", "histo"]
    results = []
    with tempfile.TemporaryDirectory(prefix="histo_mem_") as tmp:
        folder = Path(tmp)
        inputs = [("bomb_6KB_declares_16000", write_bomb(folder / "bomb.tiff"))]
        for n in args.sizes:
            inputs.append((f"single_level_tiled_{n}", write_single_level(folder / f"flat{n}.tiff", n)))
        n = args.strip_size
        inputs.append((f"strips_zlib_{n}", write_strips(folder / f"strips{n}.tiff", n)))
        inputs.append((f"one_raw_strip_{n}", write_strips(folder / f"raw{n}.tiff", n, compression=None)))
        for name, path in inputs:
            size = path.stat().st_size
            for cmd, extra in (("info", ["--json"]),
                               ("tile", ["--out", str(folder / f"out_{name}"), "--quiet", "--workers", str(args.workers)])):
                r = peak_rss([*histo, cmd, str(path), *extra], args.timeout_s)
                results.append({"input": name, "file_bytes": size, "command": cmd, **r})
    worst = max(r["peak_rss_mb"] for r in results)  # type: ignore[type-var]
    print(json.dumps({"target_mb": TARGET_MB, "worst_peak_rss_mb": worst, "within_target": worst < TARGET_MB,
                      "runs": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
