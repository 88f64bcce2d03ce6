"""`histo view` speed: slide handles opened and every level read before requests come, layer JSON encoded once."""

from __future__ import annotations

import threading

import pytest

import histo.view.server as server_mod
import histo.view.tiles as tiles_mod
from histo.slide import Slide
from histo.view import DeepZoom, ViewerApp, load_panes
from histo.view.tiles import POOL_HANDLES


@pytest.fixture
def spied(monkeypatch):
    """Counts of slide opens and of (handle, level) first reads."""
    opened: list[Slide] = []
    reads: set[tuple[int, int]] = set()
    real_open, real_read_level, real_read = tiles_mod.open_slide, Slide.read_level, Slide.read

    def open_slide(*a, **k):
        s = real_open(*a, **k)
        opened.append(s)
        return s

    def read_level(self, level, *a, **k):
        reads.add((id(self), level))
        return real_read_level(self, level, *a, **k)

    def read(self, x, y, w, h, mpp):
        reads.add((id(self), self.best_level(mpp)))
        return real_read(self, x, y, w, h, mpp)

    monkeypatch.setattr(tiles_mod, "open_slide", open_slide)
    monkeypatch.setattr(Slide, "read_level", read_level)
    monkeypatch.setattr(Slide, "read", read)
    return opened, reads


def test_warm_opens_the_pool_and_reads_every_level_with_every_handle(test_slide_path, spied):
    opened, reads = spied
    dz = DeepZoom(test_slide_path)
    try:
        dz.warm()
        assert len(opened) == POOL_HANDLES  # the first handle and the rest of the pool
        levels = set(range(dz.slide.level_count))
        for h in opened:
            assert {lv for hid, lv in reads if hid == id(h)} == levels
        # a burst of parallel requests now opens nothing and reads no level a handle has not read yet
        before = set(reads)
        tiles = [(dz.max_level - k, c, r) for k in range(3) for c in range(2) for r in range(2)]
        threads = [threading.Thread(target=dz.tile, args=t) for t in tiles]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(opened) == POOL_HANDLES
        assert {lv for _, lv in reads - before} <= levels and all(
            lv in {lv2 for hid2, lv2 in before if hid2 == hid} for hid, lv in reads - before)
    finally:
        dz.close()


def test_the_app_warms_in_the_background_and_close_stops_it(test_slide_path):
    app = ViewerApp.build(load_panes([test_slide_path]))
    z = app.zooms[0]
    assert z._warmer is not None
    app.close()  # joins the warmer before closing the handles it may be using
    assert not z._warmer.is_alive()


def test_layer_json_is_encoded_once(tmp_path, test_slide_path, monkeypatch):
    from test_view import write_case_folder

    app = ViewerApp.build(load_panes([write_case_folder(tmp_path, test_slide_path)]))
    try:
        app.encode_layers()
        status, ctype, first = app.respond("/layer/0/mitoses.json")

        def no_dumps(*a, **k):
            raise AssertionError("layer JSON encoded again on request")

        monkeypatch.setattr(server_mod.json, "dumps", no_dumps)
        assert app.respond("/layer/0/mitoses.json") == (200, "application/json", first)
        assert app.respond("/layer/1/cells.json")[0] == 200
    finally:
        monkeypatch.undo()
        app.close()
