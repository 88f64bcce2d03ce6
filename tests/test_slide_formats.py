"""Readers of issue 17: OME-TIFF/16-bit via tifffile, backend naming, fluorescence, DICOM, bomb guard, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from histo.errors import MppError, SlideOpenError, SlideReadError
from histo.slide import open_slide


def _levels(w=1536, h=1024):
    img = np.full((h, w, 3), 240, np.uint8)
    img[200:800, 300:1200] = (200, 120, 170)
    return [img, img[::2, ::2].copy(), img[::4, ::4].copy()]


def write_qupath_ome(path, unit="µm", size=0.25, compression="jpeg"):
    """A QuPath-like OME-TIFF: JPEG tiles, pyramid levels in SubIFDs, pixel size in OME XML only."""
    levels = _levels()
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(levels[0], subifds=2, tile=(256, 256), compression=compression, photometric="rgb",
                 metadata={"axes": "YXS", "PhysicalSizeX": size, "PhysicalSizeY": size,
                           "PhysicalSizeXUnit": unit, "PhysicalSizeYUnit": unit})
        for lv in levels[1:]:
            tw.write(lv, subfiletype=1, tile=(256, 256), compression=compression, photometric="rgb")
    return path


def test_qupath_ome_tiff_opens_with_tifffile_and_ome_mpp(tmp_path):
    path = write_qupath_ome(tmp_path / "qupath.ome.tif", unit="nm", size=250.0)
    with open_slide(path) as s:
        info = s.info()
        assert info["backend"] == "tifffile" and "OME" in info["backend_reason"]
        assert s.mpp == pytest.approx(0.25)  # 250 nm from PhysicalSizeX/Y with its unit
        assert s.level_count == 3 and s.level_dimensions[2] == (384, 256)
        region = s.read(400, 300, 64, 64, 0.25)
        assert np.abs(region.astype(int) - (200, 120, 170)).max() <= 6
        assert s.read(0, 0, 32, 32, 1.0).min() >= 230  # glass at level 2
        assert info["modality"] == "brightfield"


def test_info_names_backend_for_openslide_and_pillow(test_slide_path, tmp_path):
    from PIL import Image

    with open_slide(test_slide_path) as s:
        assert s.backend == "openslide" and "generic-tiff" in s.backend_reason
    png = tmp_path / "a.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(png)
    with open_slide(png, mpp=0.5) as s:
        assert s.backend == "pillow" and "PNG" in s.backend_reason


def test_16bit_tiff_reads_scaled_to_8bit(tmp_path):
    img = np.full((512, 512, 3), 60000, np.uint16)
    img[100:300, 100:300] = (40000, 20000, 30000)
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", compression="zlib",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    with open_slide(path) as s:
        assert s.backend == "tifffile" and "16-bit" in s.backend_reason
        assert s.mpp == pytest.approx(0.5)
        px = s.read(150, 150, 4, 4, 0.5)[0, 0]
        assert tuple(px) == tuple(round(v * 255 / 65535) for v in (40000, 20000, 30000))


def test_fluorescence_ome_is_named_and_refused_for_tissue(tmp_path):
    from histo.slide.modality import NotBrightfieldError
    from histo.tissue import detect_tissue

    data = np.zeros((3, 512, 512), np.uint16)
    data[0, 100:200, 100:200] = 3000
    path = tmp_path / "fluo.ome.tif"
    tifffile.imwrite(path, data, ome=True, tile=(256, 256),
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                               "Channel": {"Name": ["DAPI", "FITC", "TRITC"]}})
    with open_slide(path) as s:
        assert s.modality == "fluorescence"
        with pytest.raises(NotBrightfieldError, match=r"fluo\.ome\.tif: this is a fluorescence image"):
            detect_tissue(s, mask_mpp=8.0)


@pytest.mark.real_data
def test_real_fluorescence_ndpi_is_refused_for_tiling(real_data, tmp_path):
    from histo.slide.modality import NotBrightfieldError
    from histo.tiling import TilingConfig, tile_slide

    path = real_data / "formats" / "test3-DAPI-2-387.ndpi"
    with open_slide(path) as s:
        assert s.modality == "fluorescence" and "dark background" in s.modality_reason
    with pytest.raises(NotBrightfieldError, match="needs a brightfield slide"):
        tile_slide(path, tmp_path, TilingConfig(), progress=False)


def test_dicom_that_openslide_cannot_read_is_not_a_supported_dicom_wsi(tmp_path):
    path = tmp_path / "ct.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\0" + b"\0" * 64)
    with pytest.raises(SlideOpenError, match="not a supported DICOM WSI") as exc:
        open_slide(path)
    assert "re-copy" not in str(exc.value)


def _patch(path, tag, value, page=0):
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[page].tags[tag].overwrite(value)


def test_decompression_bomb_declared_size_is_refused(tmp_path):
    path = tmp_path / "bomb.tiff"
    tifffile.imwrite(path, np.full((256, 256, 3), 240, np.uint8), tile=(256, 256), compression="jpeg",
                     photometric="rgb", resolution=(4e4, 4e4), resolutionunit="CENTIMETER")
    _patch(path, "ImageWidth", 16000)
    _patch(path, "ImageLength", 16000)
    assert path.stat().st_size < 10_000
    with pytest.raises(SlideOpenError, match=r"bomb\.tiff: corrupt TIFF: page 0 declares 16000x16000 px"):
        open_slide(path)


def test_tile_count_past_end_of_file_is_refused_before_openslide(test_slide_path, tmp_path):
    path = tmp_path / "counts.tiff"
    path.write_bytes(test_slide_path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        counts = list(tif.pages[0].databytecounts)
    counts[3] = 2**31
    _patch(path, "TileByteCounts", tuple(counts))
    with pytest.raises(SlideOpenError, match="lies past the end of the file"):
        open_slide(path)


def test_truncated_pyramid_never_falls_back_to_pillow(test_slide_path, tmp_path):
    path = tmp_path / "damaged.tiff"
    data = test_slide_path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideOpenError, match="damaged.tiff"):
        open_slide(path)


def test_corrupt_tile_reads_raise_slide_read_error_naming_the_file(test_slide_path, tmp_path, monkeypatch):
    from histo.slide import tifftiles

    path = tmp_path / "fast.tiff"
    path.write_bytes(test_slide_path.read_bytes())
    s = open_slide(path)
    tiles = s._backend._tiles
    assert tiles is not None
    lv = tiles._levels[0]
    s.read(0, 0, 64, 64, 0.25)  # self-check passes, the direct path serves level 0
    lv.counts = lv.counts[:2]  # a tile table shorter than the level: IndexError inside
    lv.height = 1_000_000
    with pytest.raises(SlideReadError, match="fast.tiff"):
        s.read(1024, 1024, 256, 256, 0.25)
    assert issubclass(tifftiles.TileDecodeError, Exception)


def test_huge_tile_width_header_is_refused(tmp_path):
    path = tmp_path / "wide.tiff"
    tifffile.imwrite(path, np.full((512, 512, 3), 240, np.uint8), tile=(256, 256), compression="jpeg",
                     photometric="rgb")
    _patch(path, "TileWidth", 2**30)
    with pytest.raises((SlideOpenError, SlideReadError), match="wide.tiff"), open_slide(path, mpp=0.5) as s:
        s.read(0, 0, 64, 64, 0.5)


def test_mpp_far_from_the_files_own_is_refused_unless_forced(test_slide_path):
    with pytest.raises(MppError, match=r"116x the file's own 0\.25 µm/px.*--force-mpp"):
        open_slide(test_slide_path, mpp=29)
    with open_slide(test_slide_path, mpp=0.5) as s:  # a 2x correction (20x/40x mix-up) is allowed
        assert s.mpp == 0.5
    with open_slide(test_slide_path, mpp=29, force_mpp=True) as s:
        assert s.mpp == 29


def test_overview_of_single_level_slide_reads_bounded_blocks(tmp_path, monkeypatch):
    from histo.slide import slide as slide_mod

    path = tmp_path / "flat_tiled.tiff"
    tifffile.imwrite(path, np.full((4096, 4096, 3), 240, np.uint8), tile=(256, 256), compression="jpeg",
                     photometric="rgb", resolution=(4e4, 4e4), resolutionunit="CENTIMETER")
    monkeypatch.setattr(slide_mod, "_BLOCK_PX", 1024)
    with open_slide(path) as s:
        assert s.level_count == 1
        seen = []
        orig = s._backend.read_level_px

        def spy(level, x, y, w, h):
            seen.append(w * h)
            return orig(level, x, y, w, h)

        monkeypatch.setattr(s._backend, "read_level_px", spy)
        ov = s.read_overview(8.0)
        assert ov.shape == (128, 128, 3)
        assert max(seen) <= (1024 + 2) ** 2  # never the whole 4096² level at once
        th = s.thumbnail(100)
        assert max(th.shape[:2]) == 100 and max(seen) <= (1024 + 2) ** 2


def test_uncompressed_single_strip_tiff_is_read_row_by_row(tmp_path, monkeypatch):
    import os as _os

    img = np.full((1200, 1600, 3), 238, np.uint8)
    img[400:800, 500:900] = (200, 120, 170)
    path = tmp_path / "raw.tif"
    tifffile.imwrite(path, img, rowsperstrip=1200, photometric="rgb", resolution=(2e4, 2e4),
                     resolutionunit="CENTIMETER", tile=None)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1 and not tif.pages[0].is_tiled
    sizes = []
    real_pread = _os.pread

    def spy(fd, n, off):
        sizes.append(n)
        return real_pread(fd, n, off)

    monkeypatch.setattr("histo.slide.route.PLAIN_TIFF_MAX_PX", 1_000_000)  # as if it were a 100k² scan
    with open_slide(path) as s:
        assert s.backend == "tifffile" and "strip" in s.backend_reason
        monkeypatch.setattr("histo.slide.tiffbackend.os.pread", spy)
        region = s.read(600, 500, 100, 100, 0.5)
        assert np.abs(region.astype(int) - (200, 120, 170)).max() == 0
    assert sizes and max(sizes) <= 100 * 3  # one row of the asked columns at a time, not the 5.8 MB strip


@pytest.mark.real_data
def test_real_dicom_openslide_refuses_is_not_a_supported_dicom_wsi(real_data, tmp_path):
    data = (real_data / "formats" / "openslide-python_boxes_0.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:1500])  # a DICOM OpenSlide detects but cannot read
    with pytest.raises(SlideOpenError, match="not a supported DICOM WSI") as exc:
        open_slide(path)
    assert "corrupt or unreadable" not in str(exc.value)


def test_qptiff_opens_with_tifffile(tmp_path):
    desc = ('<?xml version="1.0" encoding="utf-8"?>\r\n<PerkinElmer-QPI-ImageDescription><DescriptionVersion>2'
            '</DescriptionVersion><ImageType>FullResolution</ImageType></PerkinElmer-QPI-ImageDescription>')
    img = np.full((512, 512, 3), 240, np.uint8)
    img[100:300, 100:300] = (180, 90, 60)
    path = tmp_path / "scan.qptiff"
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", compression="jpeg", description=desc,
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    with open_slide(path) as s:
        assert (s.vendor, s.backend) == ("qptiff", "tifffile") and "qptiff" in s.backend_reason
        assert s.mpp == pytest.approx(0.5)
        assert np.abs(s.read(150, 150, 32, 32, 0.5).astype(int) - (180, 90, 60)).max() <= 6


def test_planar_rgb_ome_tiff_reads_in_colour(tmp_path):
    img = np.full((3, 512, 512), 240, np.uint8)
    img[:, 100:300, 100:300] = np.array([200, 120, 170], np.uint8)[:, None, None]
    path = tmp_path / "planar.ome.tif"
    tifffile.imwrite(path, img, ome=True, tile=(256, 256), compression="zlib",
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    with open_slide(path) as s:
        assert s.backend == "tifffile" and s.modality == "brightfield"
        assert tuple(s.read(150, 150, 4, 4, 0.5)[0, 0]) == (200, 120, 170)


@pytest.mark.real_data
def test_svs_whose_metadata_raises_inside_openslide_is_a_slide_open_error(real_data, tmp_path):
    """Fuzz find (seed 0, variant 24): bit flips that make openslide-python's properties raise KeyError."""
    data = bytearray((real_data / "formats" / "openslide-python_small.svs").read_bytes())
    for i, bit in [(40, 8), (120, 32), (125, 128), (288, 6), (765, 128), (838, 2), (852, 32), (1201, 32),
                   (1329, 16), (1410, 16), (1700, 4), (1708, 1), (2477, 8)]:
        data[i] ^= bit
    path = tmp_path / "flipped.svs"
    path.write_bytes(bytes(data))
    with pytest.raises(SlideOpenError, match="flipped.svs"):
        open_slide(path)
