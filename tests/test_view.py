"""`histo view`: Deep Zoom tiles through histo.slide, every layer's data, and a server that serves only its routes."""

from __future__ import annotations

import http.client
import io
import json
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_report_tables import mitoses_table, tiles_table, write_prediction_folder

from histo.cli import build_parser, main
from histo.errors import HistoError
from histo.view import DeepZoom, load_panes, open_viewer

SMALL_HPF = ["--set", "hpf.preset=custom", "--set", "hpf.area_mm2=0.001"]


def write_ihc_folder(folder: Path, slide_path: Path, n_cells: int = 60, seed: int = 1) -> Path:
    """A contract-D IHC folder on the test slide: ihc.json, ihc_cells.parquet, ihc_tiles.parquet."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(560, 1480, n_cells), rng.uniform(300, 1240, n_cells)
    cls = rng.integers(0, 4, n_cells).astype(np.int8)
    pd.DataFrame({"x": x, "y": y, "x_um": x * 0.25, "y_um": y * 0.25, "ihc_class": cls,
                  "in_region": np.ones(n_cells, bool)}).to_parquet(folder / "ihc_cells.parquet")
    t = tiles_table()
    pd.DataFrame({"x": t["x"], "y": t["y"], "w": t["w"], "h": t["h"], "tissue_fraction": t["tissue_fraction"],
                  "pct_positive": np.where(t["tissue_fraction"] > 0, 70.0, np.nan)}).to_parquet(folder / "ihc_tiles.parquet")
    counts = [int((cls == k).sum()) for k in range(4)]
    info = {"schema": "histo.ihc/1", "slide": f"{folder.name}", "slide_path": str(slide_path), "marker": "ALK",
            "slide_mpp": 0.25, "slide_dimensions": [2048, 1536], "n_cells": n_cells, "counts": counts,
            "pct_positive": 100.0 * sum(counts[1:]) / n_cells, "h_score": 150.0, "region": "tumour",
            "call": {"label": "positive", "reason": "% positive >= 10"}}
    (folder / "ihc.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def write_case_folder(root: Path, slide_path: Path, registration: dict | None = None) -> Path:
    """A case folder: case_report.json, he/<slide>/ (graded prediction) and ihc/ALK/<slide>/."""
    case = root / "case1"
    pred = write_prediction_folder(case / "he" / "case1_HE", slide_path, tiles_table(), mitoses_table())
    assert main(["report", "--thumbnail-px", "128", str(pred), *SMALL_HPF]) == 0
    ihc = write_ihc_folder(case / "ihc" / "ALK" / "case1_ALK", slide_path)
    if registration is not None:
        (ihc / "registration.json").write_text(json.dumps(registration), encoding="utf-8")
    (case / "case_report.json").write_text(json.dumps({"schema": "histo.case_report/1", "case_id": "case1"}))
    return case


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory, test_slide_path) -> Path:
    """One case folder shared by the module's tests."""
    # histo.register's registration.json: transform.affine_px maps fixed (H&E) px to moving (IHC) px
    reg = {"status": "ok", "quality": {"estimated_error_um": 4.2},
           "transform": {"affine_px": [[1, 0, -30.0], [0, 1, 20.0], [0, 0, 1]]},
           "fixed": {"width_px": 2048, "height_px": 1536}}
    return write_case_folder(tmp_path_factory.mktemp("view"), test_slide_path, reg)


@pytest.fixture(scope="module")
def server(case_dir):
    """A running viewer of the case on a free port of 127.0.0.1."""
    srv = open_viewer([case_dir], port=0).start()
    yield srv
    srv.stop()


def get(server, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one raw request (the path is sent exactly as given)."""
    host, port = server.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.putrequest(method, path, skip_accept_encoding=True)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), body


def test_deep_zoom_tiles_are_the_slide_read_at_each_level(test_slide_path):
    from histo.slide import open_slide

    dz = DeepZoom(test_slide_path)
    assert dz.max_level == 11  # 2048 px wide: 2**11
    assert dz.level_size(11) == (2048, 1536) and dz.level_size(10) == (1024, 768) and dz.level_size(0) == (1, 1)
    assert 'Width="2048" Height="1536"' in dz.dzi_xml()
    tile = np.asarray(Image.open(io.BytesIO(dz.tile(10, 2, 1))).convert("RGB")).astype(int)
    with open_slide(test_slide_path) as s:
        want = s.read(2 * 256 * 2, 1 * 256 * 2, 256, 256, mpp=0.5).astype(int)
    assert tile.shape == (256, 256, 3)
    assert np.abs(tile - want).mean() < 3  # JPEG only
    edge = Image.open(io.BytesIO(dz.tile(10, 3, 2)))
    assert edge.size == (256, 768 - 512)  # the last row is cut at the level's edge
    with pytest.raises(HistoError):
        dz.tile(10, 4, 0)
    with pytest.raises(HistoError):
        dz.tile(12, 0, 0)
    dz.close()


def test_case_folder_gives_he_and_ihc_panes_with_every_layer(case_dir):
    he, ihc = load_panes([case_dir])
    assert he.kind == "prediction" and ihc.kind == "ihc"
    assert [la.id for la in he.layers] == ["tissue", "pattern", "necrosis", "mitoses", "hotspot"]
    mit = next(la for la in he.layers if la.id == "mitoses").data
    assert len(mit["x"]) == 30 and min(mit["score"]) >= 0.5  # the low-score detections are below the threshold
    hs = next(la for la in he.layers if la.id == "hotspot").data["shapes"][0]
    report = json.loads((case_dir / "he" / "case1_HE" / "report.json").read_text())
    assert hs["box"] == pytest.approx(report["hotspot"]["box_px"])
    rows = dict(he.measurements)
    assert rows["Verdict"].startswith("High grade:") and "Mitoses per 10 HPF (hotspot)" in rows
    assert [la.id for la in ihc.layers] == ["tissue", "cells", "registration"]
    cells = next(la for la in ihc.layers if la.id == "cells").data
    assert len(cells["x"]) == 60 and set(cells["cls"]) <= {0, 1, 2, 3} and cells["class_names"] == ["0", "1+", "2+", "3+"]
    assert dict(ihc.measurements)["Registration"] == "ok" and dict(ihc.measurements)["Registration error"] == "4.2 µm"
    outline = next(la for la in ihc.layers if la.id == "registration").data["shapes"][0]["points"]
    assert outline[0] == pytest.approx([-30.0, 20.0])  # the H&E origin seen on the IHC slide


def test_raster_layers_sit_on_the_tiles_they_paint(case_dir):
    he = load_panes([case_dir / "he" / "case1_HE"])[0]
    necrosis = next(la for la in he.layers if la.id == "necrosis")
    img = np.asarray(Image.open(io.BytesIO(necrosis.data)))
    assert img.shape[2] == 4
    sx, sy = img.shape[1] / 2048, img.shape[0] / 1536
    tiles = tiles_table()
    from test_report_tables import NECROTIC

    for _, t in tiles.iterrows():
        cx, cy = int((t.x + t.w / 2) * sx), int((t.y + t.h / 2) * sy)
        painted = img[cy, cx, 3] > 0
        assert painted == ((int(t.row), int(t.col)) in NECROTIC)


def test_server_serves_the_viewer_tiles_and_layers(server):
    status, headers, body = get(server, "/")
    assert status == 200 and b"openseadragon.min.js" in body and headers["Content-Type"].startswith("text/html")
    status, _, body = get(server, "/static/openseadragon.min.js")
    assert status == 200 and body.startswith(b"//! openseadragon")
    view = json.loads(get(server, "/view.json")[2])
    assert [p["kind"] for p in view["panes"]] == ["prediction", "ihc"]
    assert view["panes"][0]["mpp"] == 0.25 and view["command"].startswith("histo view ")
    status, headers, body = get(server, "/slide/1_files/8/0_0.jpeg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and Image.open(io.BytesIO(body)).size == (256, 192)
    assert get(server, "/layer/0/necrosis.png")[0] == 200
    assert json.loads(get(server, "/layer/0/mitoses.json")[2])["score"]


@pytest.mark.parametrize("path", [
    "/../../../../etc/passwd", "/static/../../etc/passwd", "/static/..%2f..%2fetc%2fpasswd", "/%2e%2e/%2e%2e/etc/passwd",
    "/static/", "/static", "/slide/", "/layer/0/", "/layer/", "/static/sources.py", "/static/../tiles.py",
    "/slide/0_files/12/0_0.jpeg", "/slide/0_files/11/99_0.jpeg", "/slide/7.dzi", "/layer/0/nothing.json",
    "/layer/0/necrosis.json", "/layer/0/mitoses.png", "/tiles.parquet", "/he/case1_HE/report.json",
    "/case_report.json", "http://127.0.0.1/../../etc/passwd", "/index.html/..", "//etc/passwd",
])
def test_anything_but_a_route_is_not_found(server, path):
    status, _, body = get(server, path)
    assert status == 404 and body == b"not found\n"


def test_writes_are_refused(server):
    assert get(server, "/view.json", method="POST")[0] == 405
    assert get(server, "/", method="DELETE")[0] == 405


def test_binds_loopback_by_default(case_dir):
    from histo.view import DEFAULT_HOST, DEFAULT_PORT

    args = build_parser().parse_args(["view", str(case_dir)])
    assert args.host == "127.0.0.1" == DEFAULT_HOST and args.port == 8765 == DEFAULT_PORT
    srv = open_viewer([case_dir], port=0)
    try:
        assert srv.httpd.server_address[0] == "127.0.0.1"
        with pytest.raises(OSError):  # nothing answers on another interface of this machine
            addr = socket.gethostbyname(socket.gethostname())
            if addr.startswith("127."):
                raise OSError("only loopback here")
            socket.create_connection((addr, srv.httpd.server_address[1]), timeout=2)
    finally:
        srv.httpd.server_close()
        srv.app.close()


def test_not_a_result_folder_is_a_named_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HistoError, match="not a prediction folder"):
        load_panes([tmp_path / "empty"])
    assert main(["view", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
