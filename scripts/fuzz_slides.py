"""Fuzz the slide readers: damaged variants of phantom and real files through `histo info/tile/predict/ihc`.

Each variant is one mutation of a source file (random byte flips, a truncation, a zeroed block, or an
edit of a TIFF header tag to an extreme value). Every command runs in its own child process (the whole
`histo` command, as a user would run it) with a time limit. A run is
  ok          exit 0,
  clean       exit 1 or 2 with a message and no stray exception ("unexpected ..." or a traceback),
  unexpected  anything else: an exception escaping the command, an "unexpected X" status row, a crash
              of the command process itself (a batch would have lost its later slides),
  hang        no result within --timeout-s.
Prints one JSON object: variants, runs, ok, clean_errors, unexpected, hangs, per command, and examples.
`predict` and `ihc` are skipped on a variant that `info` refused cleanly (they open the file the same
way first); the count of skipped runs is in the output.

    python scripts/fuzz_slides.py --variants 200 --seed 0
Sources: a phantom pyramidal TIFF, a QuPath-like OME-TIFF and a PNG written here, and the small real
files of ../shared/data/real/formats (HISTO_REAL_DATA overrides); the 2 MB real SVS gets `info` and
`tile` only, to keep a 200-variant run within minutes on two cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("info", "tile", "predict", "ihc")
TIFF_TAGS = ("ImageWidth", "ImageLength", "TileWidth", "TileLength", "TileByteCounts", "TileOffsets",
             "BitsPerSample", "SamplesPerPixel", "Compression", "Photometric", "PlanarConfiguration",
             "XResolution", "ImageDescription", "StripByteCounts", "StripOffsets", "RowsPerStrip")
EXTREMES = (0, 1, 3, 255, 16000, 65535, 1_000_000, 2**30, 2**31 - 1, 2**32 - 1)


def _render(x: int, y: int, w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[y : y + h, x : x + w].astype(np.float32)
    out = np.full((h, w, 3), 238, np.float32)
    inside = ((xx - 400) ** 2 / 300**2 + (yy - 260) ** 2 / 180**2) < 1
    tex = 0.5 + 0.5 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    pink = np.stack([215 - 70 * tex, 130 - 60 * tex, 180 - 30 * tex], -1)
    out[inside] = pink[inside]
    return out.round().astype(np.uint8)


def make_sources(folder: Path, real: Path | None) -> list[tuple[Path, list[str], tuple[str, ...]]]:
    """(file, extra arguments, commands) of every source the variants are made from."""
    import tifffile
    from PIL import Image

    from histo.synth.tiff_writer import write_pyramidal_tiff

    folder.mkdir(parents=True, exist_ok=True)
    phantom = write_pyramidal_tiff(folder / "phantom.tiff", 800, 520, 0.5, _render, tile_px=256, chunk_px=512)
    ome = folder / "qupath.ome.tif"
    img = _render(0, 0, 800, 520)
    with tifffile.TiffWriter(ome, ome=True) as tw:
        tw.write(img, subifds=1, tile=(256, 256), compression="jpeg", photometric="rgb",
                 metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        tw.write(img[::2, ::2].copy(), subfiletype=1, tile=(256, 256), compression="jpeg", photometric="rgb")
    png = folder / "plain.png"
    Image.fromarray(img).save(png)
    out: list[tuple[Path, list[str], tuple[str, ...]]] = [
        (phantom, [], COMMANDS), (ome, [], COMMANDS), (png, ["--mpp", "0.5"], COMMANDS)]
    if real is not None and real.is_dir():
        for name, extra in (("formats/openslide-python_small.svs", []), ("formats/openslide-python_boxes.tiff", ["--mpp", "0.5"]),
                            ("formats/openslide-python_boxes_0.dcm", [])):
            if (real / name).is_file():
                out.append((real / name, extra, COMMANDS))
        if (real / "slides/CMU-1-Small-Region.svs").is_file():
            out.append((real / "slides/CMU-1-Small-Region.svs", [], ("info", "tile")))
    return out


def mutate(src: Path, dst: Path, rng: random.Random) -> str:
    """Write one damaged copy of src to dst; return what was done."""
    data = bytearray(src.read_bytes())
    kind = rng.choice(("flip", "flip", "truncate", "zero", "header", "header", "header"))
    if kind == "header" and data[:4] not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        kind = "flip"
    if kind == "flip":
        n = rng.randint(1, 24)
        for _ in range(n):
            i = rng.randrange(min(len(data), 4096)) if rng.random() < 0.5 else rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        dst.write_bytes(data)
        return f"flip {n} bits"
    if kind == "truncate":
        keep = max(1, int(len(data) * rng.uniform(0.02, 0.98)))
        dst.write_bytes(data[:keep])
        return f"truncate to {keep} of {len(data)} bytes"
    if kind == "zero":
        n = rng.randint(64, 65536)
        i = rng.randrange(len(data))
        data[i : i + n] = bytes(len(data[i : i + n]))
        dst.write_bytes(data)
        return f"zero {n} bytes at {i}"
    dst.write_bytes(data)
    return _edit_tag(dst, rng)


def _edit_tag(path: Path, rng: random.Random) -> str:
    import tifffile

    try:
        with tifffile.TiffFile(path, mode="r+b") as tif:
            pages = [p for p in tif.pages if hasattr(p, "tags")]
            page_i = rng.randrange(len(pages))
            tags = pages[page_i].tags
            names = [t for t in TIFF_TAGS if t in tags]
            if not names:
                return "header: no editable tag"
            name = rng.choice(names)
            tag = tags[name]
            value = tag.value
            if isinstance(value, (tuple, list)) and value and all(isinstance(v, int) for v in value):
                vals = list(value)
                j = rng.randrange(len(vals))
                vals[j] = rng.choice(EXTREMES) % (2 ** (8 * tag.dtype.itemsize if hasattr(tag.dtype, "itemsize") else 32))
                new = tuple(vals)
            elif isinstance(value, int):
                new = rng.choice(EXTREMES)
            elif isinstance(value, str):
                new = value[: rng.randrange(len(value) + 1)] + "<<garbage>>"
            else:
                return f"header: {name} kept"
            try:
                tag.overwrite(new)
            except Exception as exc:  # noqa: BLE001 - a value the tag type cannot hold: try a small one
                try:
                    tag.overwrite(rng.choice((0, 1, 3, 255)) if isinstance(new, int) else new)
                except Exception:  # noqa: BLE001
                    return f"header: {name} not writable ({type(exc).__name__})"
            return f"header: page {page_i} {name} -> {str(new)[:40]}"
    except Exception as exc:  # noqa: BLE001 - a source tifffile cannot edit: leave it as is
        return f"header: not editable ({type(exc).__name__})"


def _run_cli(argv: list[str], log: str) -> tuple[int, str]:
    """Run `histo ARGV` here (in the child), stdout+stderr to log; (exit code, escaped exception or '')."""
    import histo.isolate as iso

    iso.use_start_method("fork")  # nested per-slide isolation forks from this single-threaded child
    from histo.cli import main

    with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            return int(main(argv) or 0), ""
        except SystemExit as exc:
            return int(exc.code) if isinstance(exc.code, int) else 2, ""
        except BaseException as exc:  # noqa: BLE001 - this is what the fuzzer looks for
            import traceback

            return -1, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}"


def command_argv(cmd: str, path: Path, extra: list[str], out: Path) -> list[str]:
    """The `histo` arguments for one command on one variant."""
    if cmd == "info":
        return ["info", str(path), "--json", *extra]
    if cmd == "tile":
        return ["tile", str(path), "--out", str(out / "tile"), "--quiet", "--workers", "0", *extra]
    if cmd == "predict":
        return ["predict", str(path), "--out", str(out / "predict"), "--quiet", "--workers", "0",
                "--device", "cpu", "--no-report", *extra]
    return ["ihc", str(path), "--marker", "Ki67", "--out", str(out / "ihc"), "--quiet", "--workers", "0", *extra]


def classify(rc: int, escaped: str, log: str) -> str:
    """ok | clean | unexpected for one finished run."""
    text = Path(log).read_text(errors="replace") if Path(log).is_file() else ""
    if escaped or rc not in (0, 1, 2):
        return "unexpected"
    # The batch commands write "unexpected KeyError: ..." for an exception no library code turned into a
    # HistoError; a library's own words ("unexpected value for reserved bytes") are a clean message.
    if re.search(r"unexpected [A-Za-z_.]*(Error|Exception|Exit|Interrupt)\b", text) or "Traceback (most recent call last)" in text:
        return "unexpected"
    return "ok" if rc == 0 else "clean"


def main() -> int:
    """Run the fuzzer and print its JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout-s", type=float, default=120.0, help="per command run")
    ap.add_argument("--commands", default=",".join(COMMANDS))
    ap.add_argument("--real", default=os.environ.get("HISTO_REAL_DATA", str(REPO.parent / "shared" / "data" / "real")))
    ap.add_argument("--keep", help="folder to keep the variants and logs in (default: a temp folder, removed)")
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))
    import histo.isolate as iso
    from histo.isolate import SlideCrashError, run_isolated

    iso.use_start_method("forkserver", ["histo.cli", "histo.predict", "histo.ihc", "histo.case", "torch"])
    wanted = tuple(c for c in args.commands.split(",") if c)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="histo_fuzz_"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    sources = make_sources(work / "sources", Path(args.real))
    counts = {"ok": 0, "clean": 0, "unexpected": 0, "hang": 0}
    per_cmd = {c: dict(counts) for c in wanted}
    examples: list[dict[str, str]] = []
    seen: set[str] = set()
    runs = 0
    skipped = 0
    done = 0
    interrupted = False

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)  # `timeout` stops the run: still print what was measured
    try:
        for v in range(args.variants):
            src, extra, cmds = sources[v % len(sources)]
            vdir = work / f"v{v:04d}"
            vdir.mkdir(exist_ok=True)
            dst = vdir / src.name
            what = mutate(src, dst, rng)
            info_refused = False
            for cmd in (c for c in cmds if c in wanted):
                if info_refused and cmd in ("predict", "ihc"):
                    skipped += 1  # they open the file as info does first; info refused it cleanly
                    continue
                log = str(vdir / f"{cmd}.log")
                try:
                    rc, escaped = run_isolated(_run_cli, command_argv(cmd, dst, extra, vdir), log,
                                               label=f"histo {cmd} {dst.name}", timeout_s=args.timeout_s)
                    verdict = classify(rc, escaped, log)
                except SlideCrashError as exc:
                    verdict, escaped = ("hang" if ": hung:" in str(exc) else "unexpected"), str(exc)
                runs += 1
                info_refused = info_refused or (cmd == "info" and verdict == "clean")
                counts[verdict] += 1
                per_cmd[cmd][verdict] += 1
                tail = Path(log).read_text(errors="replace")[-600:] if Path(log).is_file() else ""
                sig = (cmd, (escaped or tail).strip().splitlines()[-1:] if (escaped or tail).strip() else [])
                if verdict in ("unexpected", "hang") and len(examples) < 30 and str(sig) not in seen:
                    seen.add(str(sig))  # one example per kind of failure
                    examples.append({"variant": v, "source": src.name, "mutation": what, "command": cmd,
                                     "verdict": verdict, "detail": (escaped or tail)[-800:]})
            if not args.keep:
                shutil.rmtree(vdir, ignore_errors=True)
            done += 1
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({
        "variants": done, "variants_asked": args.variants, "interrupted": interrupted, "runs": runs, "ok": counts["ok"], "clean_errors": counts["clean"],
        "unexpected": counts["unexpected"], "hangs": counts["hang"], "per_command": per_cmd,
        "skipped_predict_ihc_after_info_refused": skipped,
        "sources": [s[0].name for s in sources], "seed": args.seed, "seconds": round(time.perf_counter() - t0, 1),
        "examples": examples,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
