"""What the viewer shows: panes (one slide each) and their layers, built from prediction, IHC and case folders.

Layers are level-0 pixel data: rasters (RGBA PNG spanning the slide), points and shapes (JSON). Only
files named here are read; the server never maps a URL onto the file system.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from histo.errors import HistoError
from histo.jsonsafe import read_json_object
from histo.prediction import PATTERN_PREFIX, PREDICTION_FILE, load_prediction

RASTER_MAX_PX = 2048
RASTER_PX_PER_TILE = 4
TISSUE_RGB = (0, 160, 60)
NECROSIS_RGB = (230, 0, 40)
MITOSIS_RGB = (255, 0, 255)
HOTSPOT_RGB = (0, 255, 255)
REGISTRATION_RGB = (255, 200, 0)
REGISTRATION_FILE = "registration.json"
# histo.ihc.result.CLASS_NAMES and histo.ihc.outputs.CLASS_COLOURS, repeated so that viewing IHC results does
# not import the IHC pipeline (scikit-image: seconds at start-up); tests/test_view_speed.py keeps them equal
IHC_CLASS_NAMES = ("0", "1+", "2+", "3+")
IHC_CLASS_COLOURS = ((112, 112, 225), (255, 215, 0), (255, 140, 0), (200, 0, 0))


@dataclass
class Layer:
    """One overlay: ``kind`` raster (PNG bytes) or points / shapes (JSON-able dict), with its legend."""

    id: str
    name: str
    kind: str
    data: bytes | dict[str, Any]
    on: bool = True
    opacity: float = 0.6
    legend: list[tuple[str, tuple[int, int, int]]] = field(default_factory=list)

    def meta(self) -> dict[str, Any]:
        """The layer's entry in view.json (without its data)."""
        return {"id": self.id, "name": self.name, "kind": self.kind, "on": self.on, "opacity": self.opacity,
                "legend": [[n, list(c)] for n, c in self.legend]}


@dataclass
class Pane:
    """One slide with its layers and measurements."""

    title: str
    kind: str  # prediction | ihc | slide
    slide_path: Path
    mpp: float | None
    layers: list[Layer] = field(default_factory=list)
    measurements: list[tuple[str, Any]] = field(default_factory=list)


def load_panes(paths: list[str | os.PathLike[str]]) -> list[Pane]:
    """Panes of every path given: a case folder (H&E + IHC), a prediction or IHC folder, or a slide file."""
    panes: list[Pane] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise HistoError(f"{p}: no such file or folder")
        if p.is_file():
            panes.append(Pane(p.stem, "slide", p, None))
        elif (p / "case_report.json").is_file():
            panes += case_panes(p)
        elif (p / PREDICTION_FILE).is_file():
            panes.append(prediction_pane(p))
        elif (p / "ihc.json").is_file():
            panes.append(ihc_pane(p))
        else:
            raise HistoError(f"{p}: not a prediction folder (prediction.json), an IHC folder (ihc.json), a case "
                             "folder (case_report.json) or a slide file")
    if not panes:
        raise HistoError("nothing to view: give a prediction, IHC or case folder")
    return panes


def case_panes(case_dir: Path) -> list[Pane]:
    """The H&E prediction pane first, then one pane per IHC slide of a case folder."""
    he = sorted(d for d in (case_dir / "he").glob("*") if (d / PREDICTION_FILE).is_file())
    ihc = sorted(d for d in (case_dir / "ihc").glob("*/*") if (d / "ihc.json").is_file())
    if not he and not ihc:
        raise HistoError(f"{case_dir}: a case folder without he/<slide>/prediction.json or ihc/<marker>/<slide>/ihc.json")
    return [prediction_pane(d) for d in he] + [ihc_pane(d, case_dir) for d in ihc]


def _slide_path(folder: Path, recorded: Any) -> Path:
    if not recorded:
        raise HistoError(f"{folder}: the folder does not name its slide file")
    p = Path(str(recorded))
    if not p.is_absolute():
        p = (folder / p).resolve()
    if not p.is_file():
        raise HistoError(f"{folder}: its slide {p} is not there (moved?); the viewer needs the slide file")
    return p


def rgba_png(rgb: np.ndarray, mask: np.ndarray) -> bytes:
    """An RGBA PNG: colours where mask, transparent elsewhere."""
    h, w = mask.shape
    out = np.zeros((h, w, 4), np.uint8)
    out[..., :3] = rgb
    out[..., 3] = np.where(mask, 255, 0)
    buf = io.BytesIO()
    Image.fromarray(out, "RGBA").save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _dims2(v: Any) -> tuple[int, int]:
    """Level-0 (width, height) as ints."""
    return int(v[0]), int(v[1])


def _canvas(dims: tuple[int, int], tiles: pd.DataFrame) -> Any:
    """A canvas of RASTER_PX_PER_TILE px per tile side (tile edges land within a fraction of a tile), capped."""
    from histo.report import images as I

    tile = float(tiles["w"].min()) if len(tiles) else float(max(dims))
    side = math.ceil(max(dims) / max(tile, 1.0) * RASTER_PX_PER_TILE)
    return I.make_canvas(None, dims, tiles, max_px=int(min(max(side, 16), RASTER_MAX_PX)))


def _raster_layer(lid: str, name: str, tiles: pd.DataFrame, dims: tuple[int, int], colour: tuple[int, int, int],
                  on: bool = True) -> Layer:
    from histo.report import images as I

    canvas = _canvas(dims, tiles)
    _, covered = I.rasterise(tiles, np.ones(len(tiles)), canvas)
    return Layer(lid, name, "raster", rgba_png(np.array(colour, np.uint8), covered), on=on, opacity=0.35,
                 legend=[(name, colour)])


def prediction_pane(folder: Path) -> Pane:
    """A prediction folder's slide with tissue, pattern, necrosis, mitoses and hotspot layers."""
    from histo.aggregate import GradingConfig, necrotic_mask
    from histo.report import images as I

    tiles, mitoses, meta = load_prediction(folder)  # PredictionFolderError is a HistoError
    report = read_json_object(folder / "report.json") if (folder / "report.json").is_file() else None
    slide = _slide_path(folder, meta.get("slide"))
    mpp = float(meta["slide_mpp"])
    dims = _dims2(meta.get("slide_dimensions") or _dims_of(slide, mpp))
    layers: list[Layer] = []
    keep = I.tissue_tiles(tiles)
    tissue = tiles[keep]
    layers.append(_raster_layer("tissue", "Tissue", tissue, dims, TISSUE_RGB, on=False))
    classes = [c[len(PATTERN_PREFIX):] for c in tiles.columns if c.startswith(PATTERN_PREFIX)]
    if classes and len(tissue):
        canvas = _canvas(dims, tissue)
        mean, covered = I.rasterise(tissue, tissue[[PATTERN_PREFIX + c for c in classes]].to_numpy(float), canvas)
        palette = np.array([I.PATTERN_COLOURS[i % len(I.PATTERN_COLOURS)] for i in range(len(classes))], np.uint8)
        layers.append(Layer("pattern", "Pattern map", "raster", rgba_png(palette[np.argmax(mean, -1)], covered),
                            on=False, opacity=0.45,
                            legend=[(c, (int(palette[i][0]), int(palette[i][1]), int(palette[i][2])))
                                    for i, c in enumerate(classes)]))
    cfg = GradingConfig.from_dict(report["grading_config"], "report.json") if report else GradingConfig()
    if "p_necrosis" in tiles.columns and classes:
        necrotic = necrotic_mask(tiles, mpp, cfg)
        layers.append(_raster_layer("necrosis", "Necrosis regions", tiles[necrotic], dims, NECROSIS_RGB))
    min_score = _min_score(report, meta)
    pts = mitoses[mitoses["score"].to_numpy(float) >= min_score]
    px, py = I.mitosis_px(pts, mpp)
    layers.append(Layer("mitoses", f"Mitoses (score ≥ {min_score:.2f})", "points",
                        {"x": _round(px), "y": _round(py), "score": [round(float(s), 3) for s in pts["score"]],
                         "colour": list(MITOSIS_RGB), "radius_um": 6.0},
                        opacity=1.0, legend=[("mitosis", MITOSIS_RGB)]))
    hs = (report or {}).get("hotspot")
    if hs and hs.get("box_px"):
        shape: dict[str, Any] = {"type": "rect", "box": [float(v) for v in hs["box_px"]],
                                 "label": hs.get("text") or "hotspot"}
        if hs.get("shape") == "circle" and hs.get("centre_um"):
            r_px = float(np.sqrt(float(hs["area_mm2"]) * 1e6 / np.pi)) / mpp
            shape = {"type": "circle", "centre": [float(v) / mpp for v in hs["centre_um"]], "radius": r_px,
                     "label": shape["label"]}
        layers.append(Layer("hotspot", "Hotspot window", "shapes", {"shapes": [shape], "colour": list(HOTSPOT_RGB)},
                            opacity=1.0, legend=[("hotspot", HOTSPOT_RGB)]))
    return Pane(meta.get("slide_name") or slide.stem, "prediction", slide, mpp, layers,
                _prediction_rows(report, meta, len(pts)))


def _dims_of(slide: Path, mpp: float) -> tuple[int, int]:
    from histo.slide import open_slide

    with open_slide(slide, mpp=mpp) as s:
        return s.dimensions


def _round(v: np.ndarray, digits: int = 1) -> list[float]:
    r = np.round(np.asarray(v, float), digits)
    return (r.astype(np.int64) if digits == 0 else r).tolist()


def _min_score(report: dict[str, Any] | None, meta: dict[str, Any]) -> float:
    if report:
        ms = ((report.get("measurements") or {}).get("mitoses") or {}).get("min_score")
        if ms is not None:
            return float(ms)
    thr = (meta.get("model") or {}).get("mitosis_threshold")
    return float(thr) if thr is not None else 0.5


def _prediction_rows(report: dict[str, Any] | None, meta: dict[str, Any], n_points: int) -> list[tuple[str, Any]]:
    if report:
        from histo.report.html import measurement_rows

        return [("Verdict", (report.get("verdict") or {}).get("line")), *measurement_rows(report)]
    return [("Tiles", meta.get("n_tiles")), ("Mitoses shown", n_points),
            ("Mitosis candidates", meta.get("n_mitosis_candidates")), ("Report", "none yet (run histo report)")]


def ihc_pane(folder: Path, case_dir: Path | None = None) -> Pane:
    """An IHC folder's slide with its tissue, cell-class and (when present) registration layers."""
    info = read_json_object(folder / "ihc.json")
    slide = _slide_path(folder, info.get("slide_path"))
    mpp = float(info["slide_mpp"])
    dims = _dims2(info.get("slide_dimensions") or _dims_of(slide, mpp))
    layers: list[Layer] = []
    tiles_path, cells_path = folder / "ihc_tiles.parquet", folder / "ihc_cells.parquet"
    if tiles_path.is_file():
        t = pd.read_parquet(tiles_path)
        t = t[t["tissue_fraction"].to_numpy(float) > 0] if "tissue_fraction" in t.columns else t
        layers.append(_raster_layer("tissue", "Tissue (IHC tiles)", t, dims, TISSUE_RGB, on=False))
    if cells_path.is_file():
        cells = pd.read_parquet(cells_path, columns=["x", "y", "ihc_class", "in_region"])
        cells = cells[cells["in_region"].to_numpy(bool)]
        layers.append(Layer("cells", "IHC cell classes", "points",
                            {"x": _round(cells["x"].to_numpy(), 0), "y": _round(cells["y"].to_numpy(), 0),  # level-0 px: ample
                             "cls": cells["ihc_class"].to_numpy().astype(int).tolist(), "class_names": list(IHC_CLASS_NAMES),
                             "class_colours": [list(c) for c in IHC_CLASS_COLOURS], "radius_um": 3.0},
                            opacity=0.9, legend=[(n, c) for n, c in zip(IHC_CLASS_NAMES, IHC_CLASS_COLOURS)]))
    rows: list[tuple[str, Any]] = [
        ("Marker", info.get("marker")), ("Call", (info.get("call") or {}).get("label") or (info.get("call") or {}).get("call")),
        ("Positive cells (≥ 1+)", None if info.get("pct_positive") is None else f"{float(info['pct_positive']):.1f} %"),
        ("H-score", None if info.get("h_score") is None else round(float(info["h_score"]))),
        ("Cells 0 / 1+ / 2+ / 3+", " / ".join(str(c) for c in info.get("counts") or [])),
        ("Region", info.get("region")),
    ]
    reg_file = next((p / REGISTRATION_FILE for p in (folder, folder.parent, *( [case_dir] if case_dir else []))
                     if (p / REGISTRATION_FILE).is_file()), None)
    if reg_file is not None:
        layer, reg_rows = registration_layer(read_json_object(reg_file), dims)
        rows += reg_rows
        if layer is not None:
            layers.append(layer)
    return Pane(f"{info.get('marker', 'IHC')}: {info.get('slide') or slide.stem}", "ihc", slide, mpp, layers, rows)


def _section(d: dict[str, Any], key: str) -> dict[str, Any]:
    """``d[key]`` when it is a mapping, else an empty one."""
    v = d.get(key)
    return v if isinstance(v, dict) else {}


def affine_of(reg: dict[str, Any]) -> np.ndarray | None:
    """The 3×3 moving (IHC) → fixed (H&E) level-0 px matrix of a registration.json (histo.register's
    ``transform.affine_px`` maps fixed → moving, so it is inverted), or None when it states none."""
    t = _section(reg, "transform")
    for node, fixed_to_moving in ((t.get("affine_px"), True), (reg.get("moving_to_fixed_px"), False)):
        if node is None:
            continue
        m = np.asarray(node, float)
        if m.shape == (2, 3):
            m = np.vstack([m, [0, 0, 1]])
        if m.shape == (3, 3) and np.isfinite(m).all() and abs(np.linalg.det(m)) > 1e-12:
            return np.linalg.inv(m) if fixed_to_moving else m
    return None


def registration_layer(reg: dict[str, Any], moving_dims: tuple[int, int]) -> tuple[Layer | None, list[tuple[str, Any]]]:
    """The fixed (H&E) slide's outline drawn on the moving (IHC) slide, and the registration's rows."""
    quality = _section(reg, "quality")
    err = next((quality.get(k) for k in ("error_um", "estimated_error_um", "tre_um") if quality.get(k) is not None),
               reg.get("error_um"))
    if (reg.get("transform") or {}).get("field") if isinstance(reg.get("transform"), dict) else False:
        quality = {**quality, "note": "non-rigid field not drawn"}
    rows: list[tuple[str, Any]] = [("Registration", reg.get("status", "unknown")),
                                   ("Registration error", "n/a" if err is None else f"{float(err):.1f} µm")]
    m = affine_of(reg)
    fr = _section(reg, "fixed")
    fixed = fr.get("dimensions") or ([fr["width_px"], fr["height_px"]] if "width_px" in fr and "height_px" in fr else None)
    if m is None:
        return None, rows
    fw, fh = (fixed or moving_dims)[:2]
    inv = np.linalg.inv(m)  # fixed → moving: where the H&E frame lies on this slide
    corners = np.array([[0, 0, 1], [fw, 0, 1], [fw, fh, 1], [0, fh, 1]], float) @ inv.T
    shape = {"type": "polygon", "points": [[float(x), float(y)] for x, y, _ in corners], "label": "H&E frame"}
    return (Layer("registration", "Registration (H&E frame)", "shapes",
                  {"shapes": [shape], "colour": list(REGISTRATION_RGB), "matrix": m.tolist()}, on=False, opacity=1.0,
                  legend=[("H&E frame", REGISTRATION_RGB)]), rows)
