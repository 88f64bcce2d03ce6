"""Which back end opens a file, and why: the one place that decides (and the reason `histo info` prints).

Order: TIFF structure checks first (a decompression bomb or a tile past the end of the file is refused
before any decoder sees it); OME-TIFF and qptiff go to tifffile (OpenSlide ignores OME SubIFD pyramids
and PhysicalSizeX/Y); what OpenSlide recognises goes to OpenSlide; other TIFFs go to tifffile unless they
are genuine plain images (one 8-bit level in strips, small enough to hold); PNG/JPEG/BMP/GIF/WebP go to
Pillow. Nothing falls back to Pillow after another reader refused it: a damaged pyramid is an error,
never a mostly black picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from histo.errors import SlideOpenError
from histo.slide.backends import _is_dicom as is_dicom
from histo.slide.tiffcheck import check_tiff, is_tiff

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
WSI_SUFFIXES = {".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".dcm", ".czi", ".svslide", ".qptiff"}
# A plain image is decoded whole into memory: keep it well below the 1.5 GB a run may use. A TIFF in
# strips larger than PLAIN_TIFF_MAX_PX is read strip by strip with tifffile instead (bounded memory).
PLAIN_IMAGE_MAX_PX = 120_000_000
PLAIN_TIFF_MAX_PX = 16_000_000


def _tiff_kind(path: Path) -> tuple[str | None, str]:
    """('ome'|'qptiff'|'deep'|'plain'|'tiff', description) of a TIFF that passed the structure checks."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if tif.is_ome:
                return "ome", "an OME-TIFF"
            if getattr(tif, "is_qpi", False) or path.suffix.lower() == ".qptiff":
                return "qptiff", "a PerkinElmer/Akoya qptiff"
            bits, spp = int(page.bitspersample), int(page.samplesperpixel)
            n_pages = len(tif.pages)
            w, h = int(page.imagewidth), int(page.imagelength)
            if bits != 8:
                return "deep", f"a {bits}-bit TIFF (OpenSlide and Pillow read 8-bit brightfield only)"
            if page.is_tiled or n_pages > 1 or page.subifds:
                return "tiff", "a tiled or multi-page TIFF that OpenSlide does not recognise"
            if spp not in (1, 3, 4) or w * h > PLAIN_TIFF_MAX_PX:
                return "tiff", f"a {w}x{h} px TIFF in strips, read strip by strip"
            return "plain", "a single-level 8-bit TIFF in strips (a plain image)"
    except Exception as exc:
        raise SlideOpenError(f"{path}: corrupt TIFF header ({type(exc).__name__}: {exc}); re-copy or re-export it") from exc


def open_backend(path: Path) -> tuple[Any, str, str]:
    """(back end, back end name, why it was chosen) for a file; SlideOpenError naming it when none can read it."""
    import openslide

    from histo.slide.backends import ImageBackend, OpenSlideBackend
    from histo.slide.tiffbackend import TiffFileBackend

    tiff = is_tiff(path)
    if tiff:
        check_tiff(path)
        kind, what = _tiff_kind(path)
        if kind == "ome":
            return (TiffFileBackend(path, "ome-tiff"), "tifffile",
                    f"{what}: tifffile reads its pyramid and its µm/px (OME PhysicalSizeX/Y), OpenSlide does not")
        if kind == "qptiff":
            return (TiffFileBackend(path, "qptiff"), "tifffile",
                    f"{what}: tifffile reads its pyramid and its µm/px (resolution tags), OpenSlide does not")
        if kind == "deep":
            return TiffFileBackend(path, "tiff"), "tifffile", f"{what}: read tile by tile with tifffile"
    try:
        fmt = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError as exc:
        raise SlideOpenError(f"{path}: cannot inspect the file ({exc})") from exc
    except OSError as exc:
        raise SlideOpenError(f"{path}: cannot read the file ({exc})") from exc
    if fmt is not None:
        return OpenSlideBackend(path), "openslide", f"OpenSlide recognises it as {fmt}"
    if is_dicom(path):
        raise SlideOpenError(
            f"{path}: not a supported DICOM WSI: the file is DICOM, but OpenSlide reads only VL Whole Slide "
            "Microscopy Image series (all the series' .dcm files in one folder); export the slide as DICOM WSI "
            "or as a pyramidal TIFF"
        )
    if tiff:
        if kind == "plain":
            return ImageBackend(path), "pillow", what
        return TiffFileBackend(path, "tiff"), "tifffile", f"{what}: read tile by tile with tifffile"
    suffix = path.suffix.lower()
    if suffix in WSI_SUFFIXES:
        # A whole-slide suffix that OpenSlide does not recognise: corrupt or truncated, not a plain image.
        raise SlideOpenError(
            f"{path}: the file has a whole-slide suffix but OpenSlide cannot recognise it: it is corrupt, "
            "truncated or not a slide; re-copy it or re-export it from the scanner"
        )
    if suffix in IMAGE_SUFFIXES:
        if suffix in (".tif", ".tiff"):
            raise SlideOpenError(f"{path}: has a TIFF suffix but no TIFF signature: it is corrupt or not a TIFF")
        return ImageBackend(path), "pillow", f"a plain {suffix[1:].upper()} image"
    raise SlideOpenError(
        f"{path}: not a slide or image histo can read; supported: every OpenSlide format "
        "(SVS, NDPI, MRXS, SCN, Philips TIFF, DICOM, BIF, tiled TIFF ...), OME-TIFF, qptiff, PNG, JPEG, TIFF"
    )
