"""The streaming pyramidal TIFF writer and the SimpleTissue procedural slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from histo.errors import HistoError
from histo.synth.simple import PEN_COLOURS_RGB, SimpleTissue, write_simple_slide
from histo.synth.tiff_writer import SynthError, pyramid_dimensions, write_pyramidal_tiff


def gradient(x: int, y: int, w: int, h: int) -> np.ndarray:
    """Smooth, position-dependent content: JPEG keeps it close, and any misplaced chunk shows."""
    yy = np.arange(y, y + h)[:, None]
    xx = np.arange(x, x + w)[None, :]
    out = np.empty((h, w, 3), np.uint8)
    out[..., 0] = 40 + (xx * 160) // 2200
    out[..., 1] = 40 + (yy * 160) // 1600
    out[..., 2] = 120 + ((xx + yy) * 100) // 4000
    return out


def read_level(path: Path, level: int) -> np.ndarray:
    """A whole pyramid level as OpenSlide decodes it."""
    with openslide.OpenSlide(str(path)) as s:
        w, h = s.level_dimensions[level]
        img = s.read_region((0, 0), level, (w, h)).convert("RGB")
    return np.asarray(img).astype(np.int16)


def area_halved(img: np.ndarray) -> np.ndarray:
    """Reference 2x area average (edges replicated for odd sizes), as floats."""
    img = img.astype(np.float64)
    if img.shape[0] % 2:
        img = np.concatenate([img, img[-1:]], axis=0)
    if img.shape[1] % 2:
        img = np.concatenate([img, img[:, -1:]], axis=1)
    h, w = img.shape[0] // 2, img.shape[1] // 2
    return img.reshape(h, 2, w, 2, 3).mean(axis=(1, 3))


# ----------------------------------------------------------------------- writer
def test_pyramid_opens_in_openslide_with_levels_dims_and_content(tmp_path: Path) -> None:
    out = write_pyramidal_tiff(tmp_path / "g.tif", 2000, 1500, 0.5, gradient)
    assert out == tmp_path / "g.tif"
    with openslide.OpenSlide(str(out)) as s:
        assert s.properties["openslide.vendor"] == "generic-tiff"
        assert s.level_count == 2
        assert s.level_dimensions == ((2000, 1500), (1000, 750))
        assert s.level_downsamples == pytest.approx((1.0, 2.0))
    level0 = read_level(out, 0)
    truth = gradient(0, 0, 2000, 1500)
    assert np.abs(level0 - truth).mean() < 1.5
    # Level 1 is the 2x area average of level 0 (compared with the exact render, through JPEG once).
    level1 = read_level(out, 1)
    assert np.abs(level1 - area_halved(truth)).mean() < 1.5


def test_tiff_structure_tiled_jpeg_one_page_per_level(tmp_path: Path) -> None:
    out = write_pyramidal_tiff(tmp_path / "t.tif", 2100, 900, 0.25, gradient, tile_px=128, chunk_px=512)
    with tifffile.TiffFile(out) as tif:
        pages = tif.pages
        assert [p.shape for p in pages] == [(900, 2100, 3), (450, 1050, 3), (225, 525, 3)]
        for p in pages:
            assert p.is_tiled and (p.tilelength, p.tilewidth) == (128, 128)
            assert p.compression == tifffile.COMPRESSION.JPEG
            assert p.photometric in (tifffile.PHOTOMETRIC.YCBCR, tifffile.PHOTOMETRIC.RGB)
        assert pages[0].tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        assert pages[1].tags["NewSubfileType"].value == 1
        assert np.abs(pages[0].asarray().astype(int) - gradient(0, 0, 2100, 900)).mean() < 1.5


@pytest.mark.parametrize("mpp", [0.25, 0.5, 0.2282, 0.2426, 1.0, 8.0])
def test_openslide_reports_mpp_exactly(tmp_path: Path, mpp: float) -> None:
    out = write_pyramidal_tiff(tmp_path / "m.tif", 300, 200, mpp, gradient)
    with openslide.OpenSlide(str(out)) as s:
        assert float(s.properties["openslide.mpp-x"]) == mpp
        assert float(s.properties["openslide.mpp-y"]) == mpp


@pytest.mark.parametrize("mpp", [0.2527, 0.123456789])
def test_other_mpp_is_as_close_as_a_tiff_rational_allows(tmp_path: Path, mpp: float) -> None:
    # 1e4/0.2527 px/cm is stored exactly but OpenSlide's double division lands one ulp off;
    # 1e4/0.123456789 needs a denominator past uint32, so the nearest storable rational is used.
    out = write_pyramidal_tiff(tmp_path / "m.tif", 300, 200, mpp, gradient)
    with openslide.OpenSlide(str(out)) as s:
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(mpp, rel=1e-12)


@pytest.mark.parametrize(("width", "height"), [(1000, 700), (2049, 1031), (37, 1300), (2500, 3)])
def test_sizes_not_multiple_of_tile(tmp_path: Path, width: int, height: int) -> None:
    out = write_pyramidal_tiff(tmp_path / "odd.tif", width, height, 0.25, gradient)
    dims = pyramid_dimensions(width, height)
    with openslide.OpenSlide(str(out)) as s:
        assert s.level_dimensions == tuple(dims)
    truth = gradient(0, 0, width, height)
    level0 = read_level(out, 0)
    assert np.abs(level0 - truth).mean() < 1.5
    # The clipped right column and bottom row of tiles are right too, not padding.
    assert np.abs(level0[:, -20:] - truth[:, -20:]).mean() < 2.0
    assert np.abs(level0[-20:] - truth[-20:]).mean() < 2.0
    if len(dims) > 1:
        level1 = read_level(out, 1)
        assert np.abs(level1 - area_halved(truth)).mean() < 1.5


def test_lower_level_is_an_area_average_not_a_subsample(tmp_path: Path) -> None:
    def checker(x: int, y: int, w: int, h: int) -> np.ndarray:
        yy = np.arange(y, y + h)[:, None]
        xx = np.arange(x, x + w)[None, :]
        value = np.where((xx + yy) % 2, 200, 60).astype(np.uint8)
        return np.repeat(value[:, :, None], 3, axis=2)

    # Odd sizes: the last column and row are averaged with themselves, still 130 on a checkerboard,
    # except the lone bottom-right pixel (60), which is its own average.
    out = write_pyramidal_tiff(tmp_path / "c.tif", 2049, 1101, 0.25, checker, jpeg_quality=95)
    level1 = read_level(out, 1)
    expected = np.full((551, 1025, 3), 130)
    expected[-1, -1] = 60
    assert level1.shape == expected.shape
    assert np.abs(level1 - expected).mean() < 0.5
    assert np.abs(level1[:-8, :-8] - 130).max() <= 2


def test_pyramid_dimensions_stop_when_level_fits_1024() -> None:
    assert pyramid_dimensions(1000, 700) == [(1000, 700)]
    assert pyramid_dimensions(1025, 10) == [(1025, 10), (513, 5)]
    dims = pyramid_dimensions(50_000, 30_001)
    assert dims[0] == (50_000, 30_001) and dims[1] == (25_000, 15_001)
    assert max(dims[-1]) <= 1024 < max(dims[-2])
    assert len(dims) == 7


def test_render_tile_called_chunk_by_chunk_row_major(tmp_path: Path) -> None:
    calls: list[tuple[int, int, int, int]] = []

    def render(x: int, y: int, w: int, h: int) -> np.ndarray:
        calls.append((x, y, w, h))
        return gradient(x, y, w, h)

    write_pyramidal_tiff(tmp_path / "c.tif", 1300, 700, 0.25, render, tile_px=128, chunk_px=512)
    assert calls == [
        (0, 0, 512, 512), (512, 0, 512, 512), (1024, 0, 276, 512),
        (0, 512, 512, 188), (512, 512, 512, 188), (1024, 512, 276, 188),
    ]  # fmt: skip


def test_failure_midway_leaves_no_output_and_no_temp(tmp_path: Path) -> None:
    def render(x: int, y: int, w: int, h: int) -> np.ndarray:
        if y >= 1024:
            raise RuntimeError("renderer broke")
        return gradient(x, y, w, h)

    with pytest.raises(RuntimeError, match="renderer broke"):
        write_pyramidal_tiff(tmp_path / "fail.tif", 1500, 1500, 0.25, render)
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_an_existing_file_untouched(tmp_path: Path) -> None:
    out = write_pyramidal_tiff(tmp_path / "keep.tif", 500, 400, 0.25, gradient)
    before = out.read_bytes()

    def render(x: int, y: int, w: int, h: int) -> np.ndarray:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_pyramidal_tiff(out, 500, 400, 0.25, render)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.tif"]


@pytest.mark.parametrize(
    ("result", "match"),
    [
        (np.zeros((10, 10, 3), np.uint8), r"returned shape \(10, 10, 3\).*expected shape \(400, 500, 3\)"),
        (np.zeros((400, 500, 3), np.float32), r"dtype float32.*dtype uint8"),
        (np.zeros((400, 500), np.uint8), r"shape \(400, 500\)"),
        ([[0]], r"returned list, expected a numpy array"),
    ],
)
def test_bad_render_output_is_a_clear_error(tmp_path: Path, result: object, match: str) -> None:
    with pytest.raises(SynthError, match=match):
        write_pyramidal_tiff(tmp_path / "bad.tif", 500, 400, 0.25, lambda x, y, w, h: result)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width_px": 0}, "width_px must be a positive integer"),
        ({"height_px": 12.5}, "height_px must be a positive integer"),
        ({"mpp": 0.0}, "mpp must be a finite number > 0"),
        ({"mpp": float("nan")}, "mpp must be a finite number > 0"),
        ({"mpp": "0.25"}, "mpp must be a number"),
        ({"tile_px": 100}, "tile_px must be a multiple of 16"),
        ({"chunk_px": 1000}, r"chunk_px \(1000\) must be a multiple of tile_px \(256\)"),
        ({"jpeg_quality": 101}, "jpeg_quality must be in 1..100"),
        ({"render_tile": None}, "render_tile must be callable"),
    ],
)
def test_invalid_arguments_raise(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"width_px": 300, "height_px": 200, "mpp": 0.25, "render_tile": gradient} | kwargs
    with pytest.raises(SynthError, match=match) as info:
        write_pyramidal_tiff(tmp_path / "x.tif", **args)
    assert isinstance(info.value, HistoError) and isinstance(info.value, ValueError)
    assert list(tmp_path.iterdir()) == []


def test_missing_output_folder_or_folder_as_output_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SynthError, match="does not exist"):
        write_pyramidal_tiff(tmp_path / "no" / "x.tif", 300, 200, 0.25, gradient)
    (tmp_path / "d.tif").mkdir()
    with pytest.raises(SynthError, match="is a folder"):
        write_pyramidal_tiff(tmp_path / "d.tif", 300, 200, 0.25, gradient)
    assert [p.name for p in tmp_path.iterdir()] == ["d.tif"]


def test_progress_bar_and_description(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = write_pyramidal_tiff(tmp_path / "p.tif", 300, 200, 0.25, gradient, progress=True, description="hello")
    assert "writing p.tif" in capsys.readouterr().err
    with openslide.OpenSlide(str(out)) as s:
        assert s.properties["tiff.ImageDescription"] == "hello"


# ---------------------------------------------------------------- SimpleTissue
def test_simple_tissue_is_deterministic_per_seed() -> None:
    a = SimpleTissue(800, 600, seed=1).render_tile(0, 0, 800, 600)
    b = SimpleTissue(800, 600, seed=1).render_tile(0, 0, 800, 600)
    c = SimpleTissue(800, 600, seed=2).render_tile(0, 0, 800, 600)
    assert a.dtype == np.uint8 and a.shape == (600, 800, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("pen", [False, True])
def test_simple_tissue_is_independent_of_how_regions_are_cut(pen: bool) -> None:
    slide = SimpleTissue(1800, 1400, seed=2, pen=pen)
    whole = slide.render_tile(0, 0, 1800, 1400)
    region = slide.render_tile(300, 200, 1301, 1001)
    assert np.array_equal(region, whole[200:1201, 300:1601])
    left = slide.render_tile(300, 200, 650, 1001)
    right = slide.render_tile(950, 200, 651, 1001)
    assert np.array_equal(np.concatenate([left, right], axis=1), region)
    top = slide.render_tile(300, 200, 1301, 333)
    bottom = slide.render_tile(300, 533, 1301, 668)
    assert np.array_equal(np.concatenate([top, bottom], axis=0), region)


def test_tissue_truth_matches_a_colour_threshold_and_fraction() -> None:
    slide = SimpleTissue(1800, 1200, seed=1, tissue_fraction=0.35)
    img = slide.render_tile(0, 0, 1800, 1200).astype(np.int16)
    coloured = (img.max(axis=2) - img.min(axis=2)) > 25
    truth = slide.tissue_truth(1)
    assert truth.shape == (1200, 1800) and truth.dtype == bool
    assert (coloured == truth).mean() > 0.999
    assert 0.30 < truth.mean() < 0.40
    # Glass is near-white, tissue is H&E-like (mean colour pinkish-purple, red and blue above green).
    glass = img[~truth]
    assert glass.min() >= 235 and glass.max() <= 245
    tissue_mean = img[truth].mean(axis=0)
    assert tissue_mean[0] > tissue_mean[1] + 40 and tissue_mean[2] > tissue_mean[1] + 30
    # Purple nucleus-like pixels are present inside the tissue.
    r, g, b = (img[..., i] for i in range(3))
    nuclei = truth & (r < 130) & (b > r + 30)
    assert 0.02 < nuclei.sum() / truth.sum() < 0.5


def test_tissue_truth_at_a_downsample_samples_pixel_centres() -> None:
    slide = SimpleTissue(1200, 900, seed=1)
    full = slide.tissue_truth(1)
    assert np.array_equal(slide.tissue_truth(3), full[1::3, 1::3])
    assert slide.tissue_truth(4).shape == (225, 300)
    assert slide.tissue_truth(7).shape == (129, 172)
    with pytest.raises(SynthError, match="downsample must be a finite number >= 1"):
        slide.tissue_truth(0.5)


def test_blank_and_pen_variants() -> None:
    blank = SimpleTissue(900, 700, seed=0, blank=True)
    img = blank.render_tile(0, 0, 900, 700)
    assert not blank.tissue_truth(1).any()
    assert img.min() >= 235 and img.max() <= 245

    pen = SimpleTissue(1600, 1200, seed=3, pen=True)
    img = pen.render_tile(0, 0, 1600, 1200)
    stroke = pen.pen_truth(1)
    tissue = pen.tissue_truth(1)
    assert pen.pen_colour in PEN_COLOURS_RGB.values()
    assert stroke.mean() > 0.01 and not (stroke & tissue).any()
    assert (img[stroke] == np.array(pen.pen_colour, np.uint8)).all()
    # Everything else keeps the plain slide's look: the pen only paints glass.
    rest = ~stroke & ~tissue
    assert img[rest].min() >= 235


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width_px": -1}, "width_px must be a positive integer"),
        ({"seed": -3}, "seed must be a non-negative integer"),
        ({"tissue_fraction": 1.5}, r"tissue_fraction must be a number in \[0, 1\]"),
        ({"pen": "yes"}, "pen must be True or False"),
    ],
)
def test_simple_tissue_validates_arguments(kwargs: dict, match: str) -> None:
    args = {"width_px": 100, "height_px": 100} | kwargs
    with pytest.raises(SynthError, match=match):
        SimpleTissue(**args)


def test_render_tile_outside_the_slide_is_an_error() -> None:
    slide = SimpleTissue(500, 400)
    with pytest.raises(SynthError, match="outside the 500x400 slide"):
        slide.render_tile(400, 0, 101, 10)
    with pytest.raises(SynthError, match="empty or outside"):
        slide.render_tile(0, 0, 0, 10)


def test_write_simple_slide_end_to_end(tmp_path: Path) -> None:
    out = write_simple_slide(tmp_path / "s.tif", 1500, 1100, seed=3, pen=True, chunk_px=512)
    slide = SimpleTissue(1500, 1100, seed=3, pen=True)
    with openslide.OpenSlide(str(out)) as s:
        assert s.properties["openslide.vendor"] == "generic-tiff"
        assert float(s.properties["openslide.mpp-x"]) == 0.25
        assert s.level_dimensions == ((1500, 1100), (750, 550))
        assert "SimpleTissue seed=3" in s.properties["tiff.ImageDescription"]
    level0 = read_level(out, 0)
    assert np.abs(level0 - slide.render_tile(0, 0, 1500, 1100)).mean() < 3.0
    with pytest.raises(SynthError, match="unknown option.*colour"):
        write_simple_slide(tmp_path / "u.tif", 100, 100, colour="red")
