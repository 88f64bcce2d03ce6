"""Opening a plain image leaves Pillow's process-wide PIL.Image.MAX_IMAGE_PIXELS as the caller set it."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histo.errors import SlideOpenError
from histo.slide import open_slide


def _png(path: Path, side: int) -> Path:
    Image.fromarray(np.full((side, side, 3), 200, np.uint8)).save(path)
    return path


def _header_only_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height px but holds one row of data (never decoded whole)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4))
                     + chunk(b"IEND", b""))
    return path


def test_opening_a_plain_image_keeps_the_limit(tmp_path: Path) -> None:
    before = Image.MAX_IMAGE_PIXELS
    with open_slide(_png(tmp_path / "a.png", 64), mpp=0.5) as s:
        assert s.read_level(0, 0, 0, 8, 8).shape == (8, 8, 3)
    assert before == Image.MAX_IMAGE_PIXELS


def test_over_histos_cap_is_refused_from_the_header(tmp_path: Path) -> None:
    before = Image.MAX_IMAGE_PIXELS
    for side in (11_500, 20_000):  # 132 Mpx: over histo's 120 Mpx, under Pillow's error; 400 Mpx: over both
        with pytest.raises(SlideOpenError, match=r"too large to hold in memory .*limit 120 Mpx"), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            open_slide(_header_only_png(tmp_path / f"big{side}.png", side, side))
        assert before == Image.MAX_IMAGE_PIXELS


def test_a_callers_lower_limit_is_respected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    # 1600 px: Pillow's warning reaches the caller
    with pytest.warns(Image.DecompressionBombWarning), open_slide(_png(tmp_path / "warn.png", 40), mpp=0.5) as s:
        assert s.dimensions == (40, 40)
    with pytest.raises(SlideOpenError, match=r"Pillow refuses this 0 Mpx image .*MAX_IMAGE_PIXELS = 1000"):
        open_slide(_png(tmp_path / "refused.png", 64), mpp=0.5)
    assert Image.MAX_IMAGE_PIXELS == 1000
