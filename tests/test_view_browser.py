"""`histo view` in a real headless Chromium: tiles paint, layers toggle, a click shows a mitosis score, panes stay synced.

Needs Debian's chromium + chromium-driver and selenium (`.ci/run` installs them); elsewhere it skips,
except under CI where a missing browser is a failure.
"""

from __future__ import annotations

import io
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image
from test_view import write_case_folder

from histo.view import open_viewer

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _driver():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("selenium is not installed (.ci/run installs it)")
    if not (CHROMIUM and DRIVER):
        if os.environ.get("CI"):
            pytest.fail("chromium / chromedriver missing under CI (.ci/run should have installed them)")
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,700",
              "--force-device-scale-factor=1", "--disable-extensions", "--no-first-run"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)


def _wait(driver, script: str, timeout_s: float = 30.0):
    end = time.time() + timeout_s
    while time.time() < end:
        v = driver.execute_script(script)
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {script!r}; state {driver.execute_script('return window.histoView')}")


def _shot(driver, path) -> np.ndarray:
    png = driver.get_screenshot_as_png()
    path.write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _count(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> int:
    return int((np.abs(img - np.array(rgb)).max(-1) <= tol).sum())


def _red(img: np.ndarray) -> int:
    """Pixels of the red necrosis wash (not the magenta mitosis rings)."""
    return int((((img[..., 0] - img[..., 1]) > 110) & ((img[..., 0] - img[..., 2]) > 50)).sum())


@pytest.fixture(scope="module")
def viewer_url(tmp_path_factory, test_slide_path):
    """A viewer of a case (H&E + ALK with a registration shift) on a free loopback port."""
    reg = {"status": "ok", "quality": {"error_um": 3.0}, "moving_to_fixed_px": [[1, 0, 40.0], [0, 1, 0.0], [0, 0, 1]]}
    case = write_case_folder(tmp_path_factory.mktemp("browser"), test_slide_path, reg)
    srv = open_viewer([case], port=0).start()
    yield srv.url
    srv.stop()


def test_viewer_paints_slide_and_overlays_and_toggles_layers(viewer_url, tmp_path):
    driver = _driver()
    try:
        driver.get(viewer_url)
        _wait(driver, "return window.histoView.ready && window.histoView.tilesLoaded >= 4")
        _wait(driver, "return window.histoView.panes.every(p => p.viewer.world.getItemAt(0).getFullyLoaded())")
        time.sleep(0.5)  # the opening animation settles
        # first paint: the 2-D canvas drawer (WebGL without a GPU is software and slow) and many tiles a frame
        assert driver.execute_script("return window.histoView.panes.map(p => [p.viewer.drawer.getType(), "
                                     "p.viewer.world.getItemAt(0).maxTilesPerFrame])") == [["canvas", 16]] * 2
        img = _shot(driver, tmp_path / "viewer.png")
        # the slide: glass and the pink tissue (conftest's test slide) under both panes
        assert _count(img, (242, 242, 242), 6) > 20_000
        pink = _count(img, (195, 115, 175), 35)
        assert pink > 5_000
        # the hotspot outline is drawn in pure cyan, the necrosis regions in red at 0.35 opacity
        assert _count(img, (0, 255, 255), 30) > 50
        left = driver.execute_script("return document.getElementById('osd-0').getBoundingClientRect().right")
        he = slice(None), slice(0, int(left))  # the H&E pane only (the IHC pane has red 3+ cells)
        red_before = _red(img[he])
        assert red_before > 500
        # the scale bar is on screen with a round length
        label = driver.find_element("css selector", "#viewer-0 .scalebar .label").text
        assert label.endswith(("µm", "mm")) and label.split()[0] in {"1", "2", "5", "10", "20", "50", "100", "200", "500"}

        # toggling necrosis off removes the red; tissue on paints green
        driver.find_element("id", "layer-0-necrosis").click()
        driver.find_element("id", "layer-0-tissue").click()
        time.sleep(0.3)
        img2 = _shot(driver, tmp_path / "toggled.png")
        assert _red(img2[he]) < red_before / 10
        changed = np.abs(img2[he] - img[he]).sum(-1) > 30
        assert changed.sum() > 5_000  # the tissue under a green wash
        assert (img2[he][..., 1] - img[he][..., 1])[changed].mean() > 10
        # opacity 0 hides the hotspot outline
        driver.execute_script("const r = document.getElementById('opacity-0-hotspot'); r.value = '0';"
                              "r.dispatchEvent(new Event('input'));")
        time.sleep(0.2)
        assert _count(_shot(driver, tmp_path / "no_hotspot.png")[he], (0, 255, 255), 30) < 10

        # clicking a mitosis shows its score
        x, y = driver.execute_script(
            "const p = window.histoView.panes[0], L = p.layers.find(l => l.id === 'mitoses');"
            "const ti = p.viewer.world.getItemAt(0);"
            "const s = ti.imageToViewerElementCoordinates(new OpenSeadragon.Point(L.data.x[0], L.data.y[0]));"
            "return [s.x, s.y];")
        from selenium.webdriver.common.action_chains import ActionChains

        osd = driver.find_element("id", "osd-0")
        w, h = osd.size["width"], osd.size["height"]
        ActionChains(driver).move_to_element_with_offset(osd, int(x - w / 2), int(y - h / 2)).click().perform()
        _wait(driver, "return document.getElementById('info').textContent.includes('Mitosis score')", 5)
        assert "Mitosis score 0.900" in driver.find_element("id", "info").text

        # navigation is synchronised: zooming the H&E moves the IHC to the registered point
        driver.execute_script("const v = window.histoView.panes[0].viewer;"
                              "v.viewport.zoomTo(v.viewport.imageToViewportZoom(1.0), null, true);"
                              "v.viewport.panTo(v.viewport.imageToViewportCoordinates(new OpenSeadragon.Point(1000, 700)), true);")
        time.sleep(0.3)
        cx, cy, zoom = driver.execute_script(
            "const v = window.histoView.panes[1].viewer.viewport, c = v.viewportToImageCoordinates(v.getCenter(true));"
            "return [c.x, c.y, v.viewportToImageZoom(v.getZoom(true))];")
        assert (cx, cy) == pytest.approx((960.0, 700.0), abs=2)  # the IHC point that maps onto H&E (1000, 700)
        assert zoom == pytest.approx(1.0, rel=0.02)
        _wait(driver, "return window.histoView.panes.every(p => p.viewer.world.getItemAt(0).getFullyLoaded())")
        close = _shot(driver, tmp_path / "synced.png")
        assert _count(close, (195, 115, 175), 35) > 20_000  # full-resolution tissue in both panes
    finally:
        driver.quit()


def test_many_cells_paint_through_the_overview_image(tmp_path, test_slide_path):
    """30 000 cells in view: drawn once into the layer's overview image (pixels set directly), then scaled."""
    from test_view import write_ihc_folder

    folder = write_ihc_folder(tmp_path / "ihc" / "many", test_slide_path, n_cells=30_000)
    srv = open_viewer([folder], port=0).start()
    driver = _driver()
    try:
        driver.get(srv.url)
        _wait(driver, "return window.histoView.ready && "
                      "window.histoView.panes.every(p => p.viewer.world.getItemAt(0).getFullyLoaded())")
        time.sleep(0.5)
        assert driver.execute_script("const L = window.histoView.panes[0].layers.find(l => l.id === 'cells');"
                                     "return !!L.data.overview && L.data.overview.width === 2048")
        img = _shot(driver, tmp_path / "many.png")
        for colour in ((255, 215, 0), (200, 0, 0)):  # 1+ yellow and 3+ red cells show
            assert _count(img, colour, 30) > 2_000
        # zoomed in to a few hundred cells, each is drawn as its own disc again
        driver.execute_script("const v = window.histoView.panes[0].viewer;"
                              "v.viewport.zoomTo(v.viewport.imageToViewportZoom(2.0), null, true);"
                              "v.viewport.panTo(v.viewport.imageToViewportCoordinates(new OpenSeadragon.Point(1000, 700)), true);")
        time.sleep(0.5)
        assert not driver.execute_script("const p = window.histoView.panes[0], t = p.viewer.viewport;"
                                         "return t.viewportToImageZoom(t.getZoom(true)) < 1")
        zoomed = _shot(driver, tmp_path / "many_zoomed.png")
        assert _count(zoomed, (200, 0, 0), 30) > 2_000  # 3+ drawn last, on top of the weaker classes
        assert _count(zoomed, (255, 140, 0), 30) > 2_000
    finally:
        driver.quit()
        srv.stop()
