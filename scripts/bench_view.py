"""Benchmark `histo view` on a 40k x 40k slide: first paint in headless Chromium and tile latency (p50/p95).

By default the viewer shows two panes of that slide with every overlay (a prediction folder: 512 px tiles
with pattern and necrosis, 2000 mitoses; an IHC folder of 300k cells). The slide is a cheap synthetic pyramidal TIFF (tiled JPEG, one page per level, as histo.synth writes): a few
pre-encoded tissue-like tiles repeated over a disc of tissue, so writing it takes seconds. Tile latency is
measured over HTTP on tiles never requested before (no cache hits), at the zoom levels a viewer asks for,
against OpenSlide's own DeepZoomGenerator on the same tiles in the same run (the baseline).

Prints one JSON line. Targets: first paint < 2 s, tile p95 < 50 ms.

    python scripts/bench_view.py [--size-px 40000] [--tiles 300] [--keep /tmp/bench_view.tiff] [--no-overlays]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

TILE = 256


def _pattern_tiles(rng: np.random.Generator, n: int) -> list[bytes]:
    """JPEG tiles of pink tissue with purple nuclei-like blobs, and a glass tile last."""
    yy, xx = np.mgrid[0:TILE, 0:TILE]
    out = []
    for _ in range(n):
        img = np.empty((TILE, TILE, 3), np.float32)
        img[...] = (230, 170, 200)
        for _ in range(40):
            cx, cy, r = rng.uniform(0, TILE, 2).tolist() + [rng.uniform(4, 9)]
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = (120, 60, 150)
        out.append(bytes(imagecodecs.jpeg8_encode(img.astype(np.uint8), level=85, colorspace="RGB",
                                                  outcolorspace="YCBCR", subsampling="420")))
    glass = np.full((TILE, TILE, 3), 242, np.uint8)
    out.append(bytes(imagecodecs.jpeg8_encode(glass, level=85, colorspace="RGB", outcolorspace="YCBCR",
                                              subsampling="420")))
    return out


def write_bench_slide(path: Path, size_px: int, mpp: float = 0.25) -> Path:
    """A size_px² pyramidal TIFF at mpp µm/px: tissue inside a centred disc, glass outside, every level tiled."""
    rng = np.random.default_rng(0)
    tiles = _pattern_tiles(rng, 8)
    dims = []
    w = size_px
    while True:
        dims.append(w)
        if w <= TILE:
            break
        w = (w + 1) // 2
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level, w in enumerate(dims):
            n = -(-w // TILE)
            c = (n - 1) / 2

            def segments(n: int = n, c: float = c):
                for r in range(n):
                    for q in range(n):
                        inside = (r - c) ** 2 + (q - c) ** 2 < (0.42 * n) ** 2
                        yield tiles[(r * 7 + q * 3) % 8] if inside else tiles[-1]

            res = Fraction(10_000) / Fraction(repr(mpp)) / 2 ** level
            res_r = (res.numerator, res.denominator) if res.denominator < 2**31 else (round(float(res) * 1000), 1000)
            tif.write(segments(), shape=(w, w, 3), dtype=np.uint8, tile=(TILE, TILE), compression="jpeg",
                      photometric="rgb", subsampling=(2, 2), resolution=(res_r, res_r), resolutionunit="CENTIMETER",
                      subfiletype=0 if level == 0 else 1, metadata=None, software="histo bench_view")
    return path


def write_bench_results(root: Path, slide: Path, size_px: int, mpp: float = 0.25, n_mitoses: int = 2000,
                        n_cells: int = 300_000) -> list[Path]:
    """A prediction folder (tiles of 512 px with pattern and necrosis, mitoses) and an IHC folder (cells) on the
    bench slide, inside its tissue disc: what the overlays of a real slide weigh."""
    import pandas as pd

    from histo.prediction import write_prediction

    rng = np.random.default_rng(2)
    step = 512
    n = -(-size_px // step)
    col, row = np.meshgrid(np.arange(n), np.arange(n))
    col, row = col.ravel(), row.ravel()
    c = (n - 1) / 2
    inside = (row - c) ** 2 + (col - c) ** 2 < (0.42 * n) ** 2
    p = rng.dirichlet(np.ones(3), len(col)).astype(np.float32)
    tiles = pd.DataFrame({"col": col, "row": row, "x": col * float(step), "y": row * float(step),
                          "w": float(step), "h": float(step), "tissue_fraction": inside.astype(float),
                          "p_necrosis": np.where(rng.random(len(col)) < 0.1, 0.9, 0.05).astype(np.float32),
                          "p_pattern_fascicular": p[:, 0], "p_pattern_haphazard": p[:, 1], "p_pattern_none": p[:, 2]})

    def in_disc(k: int) -> tuple[np.ndarray, np.ndarray]:
        r = 0.42 * size_px * np.sqrt(rng.random(k))
        a = rng.uniform(0, 2 * np.pi, k)
        return size_px / 2 + r * np.cos(a), size_px / 2 + r * np.sin(a)

    mx, my = in_disc(n_mitoses)
    mitoses = pd.DataFrame({"x_um": mx * mpp, "y_um": my * mpp, "score": rng.uniform(0.1, 1.0, n_mitoses),
                            "x": mx, "y": my})
    pred = root / "pred"
    write_prediction(pred, tiles, mitoses, {"slide": str(slide), "slide_mpp": mpp},
                     {"schema": "histo.predict/1", "slide": str(slide), "slide_mpp": mpp,
                      "slide_dimensions": [size_px, size_px], "model": {"mitosis_threshold": 0.5},
                      "n_tiles": len(tiles)})
    ihc = root / "ihc"
    ihc.mkdir(parents=True, exist_ok=True)
    cx, cy = in_disc(n_cells)
    pd.DataFrame({"x": cx, "y": cy, "ihc_class": rng.integers(0, 4, n_cells).astype(np.int8),
                  "in_region": np.ones(n_cells, bool)}).to_parquet(ihc / "ihc_cells.parquet")
    tiles[["x", "y", "w", "h", "tissue_fraction"]].to_parquet(ihc / "ihc_tiles.parquet")
    (ihc / "ihc.json").write_text(json.dumps({"schema": "histo.ihc/1", "slide": slide.stem, "slide_path": str(slide),
                                              "marker": "ALK", "slide_mpp": mpp, "slide_dimensions": [size_px] * 2,
                                              "n_cells": n_cells}), encoding="utf-8")
    return [pred, ihc]


def _sample_tiles(max_level: int, size_px: int, n: int, seed: int = 1) -> list[tuple[int, int, int]]:
    """Random distinct tiles of the five finest Deep Zoom levels (where a viewer spends its requests)."""
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, int, int]] = set()
    while len(seen) < n:
        level = int(rng.integers(max_level - 4, max_level + 1))
        side = -(-size_px // 2 ** (max_level - level))
        k = -(-side // TILE)
        seen.add((level, int(rng.integers(0, k)), int(rng.integers(0, k))))
    return sorted(seen, key=lambda t: rng.random())


def http_latency_ms(host: str, port: int, tiles: list[tuple[int, int, int]], workers: int) -> list[float]:
    """Per-request wall time of GET /slide/0_files/L/C_R.jpeg, ``workers`` clients in parallel."""
    out: list[float] = []
    lock = threading.Lock()
    queue = list(tiles)

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        while True:
            with lock:
                if not queue:
                    break
                level, col, row = queue.pop()
            t0 = time.perf_counter()
            conn.request("GET", f"/slide/0_files/{level}/{col}_{row}.jpeg")
            resp = conn.getresponse()
            resp.read()
            dt = (time.perf_counter() - t0) * 1000
            if resp.status != 200:
                raise RuntimeError(f"tile {level}/{col}_{row}: HTTP {resp.status}")
            with lock:
                out.append(dt)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def baseline_latency_ms(path: Path, tiles: list[tuple[int, int, int]]) -> list[float]:
    """OpenSlide DeepZoomGenerator tile + JPEG encode of the same tiles (no HTTP): the baseline."""
    import io

    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    with openslide.OpenSlide(str(path)) as s:
        dz = DeepZoomGenerator(s, tile_size=TILE, overlap=0)
        out = []
        for level, col, row in tiles:
            t0 = time.perf_counter()
            img = dz.get_tile(level, (col, row))
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="JPEG", quality=80)
            out.append((time.perf_counter() - t0) * 1000)
    return out


def first_paint_ms(url: str, timeout_s: float = 60.0) -> dict[str, float] | None:
    """Headless Chromium: ms from navigation to the first tile drawn and to the whole first view loaded."""
    chromium, driver_bin = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None
    if not (chromium and driver_bin):
        return None
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1600,900"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(executable_path=driver_bin), options=opts)
    try:
        driver.get("about:blank")  # browser start-up is not the viewer's time
        t0 = time.perf_counter()
        driver.get(url)
        end = time.time() + timeout_s
        while time.time() < end:
            done = driver.execute_script(
                "const s = window.histoView; return s && s.ready && s.panes.length && "
                "s.panes.every(p => p.viewer.world.getItemAt(0) && p.viewer.world.getItemAt(0).getFullyLoaded());")
            if done:
                break
            time.sleep(0.02)
        full_ms = (time.perf_counter() - t0) * 1000
        nav = driver.execute_script("return performance.timing.navigationStart")
        first = driver.execute_script("return window.histoView.firstTileMs")
        start = driver.execute_script("return performance.timeOrigin")
        return {"first_tile_ms": round(float(first) + (start - nav), 1) if first is not None else None,
                "first_view_loaded_ms": round(full_ms, 1)}
    finally:
        driver.quit()


def main() -> None:
    """Write the slide, serve it, time it; print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-px", type=int, default=40_000)
    ap.add_argument("--tiles", type=int, default=300, help="distinct uncached tiles to time")
    ap.add_argument("--workers", type=int, default=4, help="parallel HTTP clients (a browser uses about 6)")
    ap.add_argument("--keep", type=Path, default=None, help="write the slide here and keep it (reused when present)")
    ap.add_argument("--no-overlays", action="store_true",
                    help="view the bare slide (default: a prediction folder and an IHC folder of 300k cells on it, "
                         "two panes with every overlay)")
    args = ap.parse_args()

    from histo.view import open_viewer

    tmp = Path(tempfile.mkdtemp(prefix="bench_view_"))
    slide = args.keep or tmp / "bench_40k.tiff"
    try:
        t0 = time.perf_counter()
        if not slide.is_file():
            write_bench_slide(slide, args.size_px)
        write_s = time.perf_counter() - t0
        folders = [slide] if args.no_overlays else write_bench_results(tmp, slide, args.size_px)
        t0 = time.perf_counter()
        server = open_viewer(folders, port=0).start()
        start_s = time.perf_counter() - t0
        host, port = server.httpd.server_address[:2]
        dz = server.app.zooms[0]
        paint = first_paint_ms(server.url)
        layer_kb = {f"{p.kind}/{la.id}": round(len(server.app.layer_json(i, la) if la.kind != "raster" else la.data) / 1e3)
                    for i, p in enumerate(server.app.panes) for la in p.layers}
        # tiles the browser never asked for: the server cache must not answer them
        asked = set(server.app.zooms[0]._cache)
        sample = [t for t in _sample_tiles(dz.max_level, args.size_px, args.tiles + len(asked)) if t not in asked]
        sample = sample[: args.tiles]
        lat = http_latency_ms(host, port, sample, args.workers)
        seq = http_latency_ms(host, port, [t for t in _sample_tiles(dz.max_level, args.size_px, 2 * args.tiles, 7)
                                           if t not in set(sample) and t not in asked][:100], 1)
        server.stop()
        base = baseline_latency_ms(slide, sample)
        p95 = float(np.percentile(lat, 95))
        base_p95 = float(np.percentile(base, 95))
        out = {
            "bench": "view", "slide_px": [args.size_px, args.size_px], "levels": dz.max_level + 1,
            "slide_file_mb": round(os.path.getsize(slide) / 1e6, 1), "slide_write_s": round(write_s, 2),
            "server_start_s": round(start_s, 2), "panes": len(server.app.panes), "layer_kb": layer_kb,
            "first_tile_ms": None if paint is None else paint["first_tile_ms"],
            "first_paint_ms": None if paint is None else paint["first_view_loaded_ms"],
            "tiles_timed": len(lat), "workers": args.workers,
            "tile_p50_ms": round(statistics.median(lat), 2), "tile_p95_ms": round(p95, 2),
            "tile_p95_ms_one_client": round(float(np.percentile(seq, 95)), 2),
            "baseline": "openslide DeepZoomGenerator + JPEG encode, same tiles, no HTTP, one thread",
            "baseline_p50_ms": round(statistics.median(base), 2), "baseline_p95_ms": round(base_p95, 2),
            "p95_ratio_vs_baseline": round(p95 / base_p95, 2),
            "targets": {"first_paint_ms": 2000, "tile_p95_ms": 50},
            "cpu_count": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2),
        }
        out["targets_met"] = bool(p95 < 50 and (paint is None or paint["first_view_loaded_ms"] < 2000))
        print(json.dumps(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
