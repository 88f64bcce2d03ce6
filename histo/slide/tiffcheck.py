"""Structural checks of TIFF containers before any decoder touches them: a decompression-bomb guard.

A TIFF states its image size and where each tile or strip lies; a damaged or malicious file can state a
size its bytes cannot hold (a 6 KB file declaring 16000² px) or a tile byte count past the end of the
file (which makes OpenSlide allocate the count and abort under a memory limit). Both are refused here
with a `SlideOpenError` naming the file, so neither OpenSlide nor tifffile ever acts on them.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from histo.errors import SlideOpenError

# tifffile logs every damaged tag it skips as a warning on stderr; histo reports the file's problem itself.
logging.getLogger("tifffile").setLevel(logging.ERROR)

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# Decoded bytes per stored byte above which a file is refused as a decompression bomb. Flat JPEG tiles
# reach ~400:1 and deflate ~1000:1 on blank glass; 20000:1 only a file that cannot hold its image reaches.
MAX_EXPANSION = 20_000
# A tile or strip decoded on its own must stay small: bounded memory per read whatever the file says.
MAX_SEGMENT_BYTES = 256 * 2**20
MAX_SIDE_PX = 2**20  # 1 M px per side: larger than any scanner writes (~200k px)


def is_tiff(path: str | os.PathLike[str]) -> bool:
    """True when the file starts with a TIFF or BigTIFF signature."""
    try:
        with open(path, "rb") as f:
            return f.read(4) in TIFF_MAGIC
    except OSError:
        return False


def page_problem(page: Any, file_size: int) -> str | None:
    """Why one TIFF page cannot be what it declares, or None when its structure is consistent."""
    w, h = int(page.imagewidth), int(page.imagelength)
    if w <= 0 or h <= 0:
        return f"declares an empty image ({w}x{h} px)"
    if w > MAX_SIDE_PX or h > MAX_SIDE_PX:
        return f"declares {w}x{h} px, more than any scanner writes ({MAX_SIDE_PX} px a side)"
    spp = max(1, int(page.samplesperpixel))
    bytes_per_sample = max(1, math.ceil(int(page.bitspersample) / 8))
    if page.is_tiled:
        tw, th = int(page.tilewidth), int(page.tilelength)
        seg_w, seg_h = tw, th
    else:
        rps = int(getattr(page, "rowsperstrip", 0) or h)
        seg_w, seg_h = w, max(1, min(rps, h))
    if seg_w <= 0 or seg_h <= 0:
        return f"declares tiles of {seg_w}x{seg_h} px"
    raw_strips = not page.is_tiled and int(page.compression) == 1  # read row by row, never whole
    if seg_w * seg_h * spp * bytes_per_sample > MAX_SEGMENT_BYTES and not raw_strips:
        what = "tiles" if page.is_tiled else "compressed strips"
        return (f"stores {what} of {seg_w}x{seg_h} px ({seg_w * seg_h * spp * bytes_per_sample / 2**20:.0f} MB "
                "decoded each), too large to decode one at a time; re-save it as a tiled TIFF")
    planes = spp if int(page.planarconfig) == 2 else 1
    expected = math.ceil(w / seg_w) * math.ceil(h / seg_h) * planes * max(1, int(getattr(page, "imagedepth", 1)))
    offsets, counts = page.dataoffsets, page.databytecounts
    if len(offsets) != len(counts):
        return f"has {len(offsets)} tile offsets but {len(counts)} byte counts"
    if len(offsets) < expected:
        return f"declares {w}x{h} px ({expected} tiles or strips) but its tables list only {len(offsets)}"
    stored = 0
    for i, (o, c) in enumerate(zip(offsets, counts)):
        o, c = int(o), int(c)
        if c < 0 or o < 0 or (c and o + c > file_size):
            return f"tile or strip {i} lies past the end of the file (offset {o}, {c} bytes, file {file_size} bytes)"
        stored += c
    decoded = w * h * spp * bytes_per_sample
    if decoded > MAX_EXPANSION * max(stored, 1) and decoded > 64 * 2**20:
        return (f"declares {w}x{h} px ({decoded / 2**20:.0f} MB decoded) but stores only {stored} bytes of "
                "image data (a decompression bomb or a damaged header)")
    return None


def check_tiff(path: str | os.PathLike[str]) -> None:
    """Refuse (SlideOpenError) a TIFF whose pages declare more than the file can hold; no-op for non-TIFFs."""
    path = Path(path)
    if not is_tiff(path):
        return
    import tifffile

    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            pages = _all_pages(tif)
            for n, page in enumerate(pages):
                problem = page_problem(page, size)
                if problem is not None:
                    raise SlideOpenError(f"{path}: corrupt TIFF: page {n} {problem}; re-copy or re-export the file")
    except SlideOpenError:
        raise
    except MemoryError as exc:
        raise SlideOpenError(f"{path}: corrupt TIFF: its header asks for more memory than there is ({exc})") from exc
    except Exception as exc:
        raise SlideOpenError(f"{path}: corrupt TIFF header ({type(exc).__name__}: {exc}); re-copy or re-export it") from exc


def _all_pages(tif: Any, limit: int = 256) -> list[Any]:
    """Every page of the main IFD chain and its SubIFDs (pyramid levels of OME-TIFFs), at most `limit`."""
    out: list[Any] = []
    for page in tif.pages:
        if len(out) >= limit:
            break
        if not hasattr(page, "imagewidth"):
            continue
        out.append(page)
        for sub in _subpages(tif, page):
            out.append(sub)
    return out


def _subpages(tif: Any, page: Any) -> list[Any]:
    import tifffile

    offsets = page.subifds or ()
    subs = []
    for off in offsets[:32]:
        tif.filehandle.seek(off)
        subs.append(tifffile.TiffPage(tif, index=0))
    return subs
