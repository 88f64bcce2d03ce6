"""The slide report: report.json + self-contained report.html + annotations.geojson + PNG images, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from histo import __version__
from histo.aggregate import SlideAssessment, necrotic_mask
from histo.atomic import atomic_path, write_text
from histo.errors import HistoError
from histo.jsonsafe import json_safe
from histo.report import html as H
from histo.report import images as I
from histo.report.geojson import slide_geojson
from histo.report.schema import REPORT_SCHEMA, validate_report
from histo.report.sentences import (
    fmt_num,
    hotspot_label,
    hotspot_phrase,
    ihc_sentence,
    verdict_line,
    verdict_of,
    verdict_reasons,
)
from histo.slide import Slide, open_slide

JSON_NAME, HTML_NAME, GEOJSON_NAME, IMAGES_DIR = "report.json", "report.html", "annotations.geojson", "images"
IHC_JSON, IHC_HEATMAP, IHC_TILES = "ihc.json", "ihc_heatmap.png", "ihc_tiles.parquet"
#: tiles may overhang the slide edge by part of a tile; more than this means the slide is not the one predicted
_EDGE_SLACK = 1.05


@dataclass(frozen=True)
class ReportPaths:
    """The files of one slide report."""

    folder: Path
    json: Path
    html: Path
    geojson: Path
    images: dict[str, Path] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)  # what report.json holds, so callers need not re-read it


@dataclass(frozen=True)
class IhcInput:
    """One IHC result for a report: the contract-D ihc.json dict and, when known, its folder."""

    data: dict[str, Any]
    folder: Path | None = None

    @property
    def heatmap_png(self) -> bytes | None:
        """The ihc_heatmap.png beside ihc.json, else one rendered from ihc_tiles.parquet, else None."""
        if self.folder is None:
            return None
        png = self.folder / IHC_HEATMAP
        if png.is_file():
            return png.read_bytes()
        tiles = self.folder / IHC_TILES
        if tiles.is_file():
            return ihc_heatmap_png(pd.read_parquet(tiles), title=f"{self.data.get('marker', 'IHC')}: % positive cells")
        return None


def load_ihc(item: Mapping[str, Any] | str | os.PathLike[str] | IhcInput) -> IhcInput:
    """An IHC result from a dict, an ihc.json file or the folder holding it."""
    if isinstance(item, IhcInput):
        return item
    if isinstance(item, Mapping):
        return IhcInput(dict(item))
    p = Path(item)
    path = p / IHC_JSON if p.is_dir() else p
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise HistoError(f"{path}: cannot read IHC result ({exc})") from exc
    if not isinstance(data, dict) or "marker" not in data:
        raise HistoError(f"{path}: not an ihc.json result (no 'marker')")
    return IhcInput(data, path.parent)


def ihc_heatmap_png(ihc_tiles: pd.DataFrame, *, title: str, max_px: int = 800) -> bytes:
    """% positive cells per IHC tile, on white, with a colourbar (fallback when no ihc_heatmap.png exists)."""
    canvas = I.make_canvas(None, None, ihc_tiles, max_px=max_px)
    return I.heatmap_image(canvas, ihc_tiles, ihc_tiles["pct_positive"].fillna(0).to_numpy(float), title=title,
                           label="% positive cells", cmap="YlOrBr", vmin=0, vmax=100).png


def summarise_card(card: Any) -> dict[str, Any]:
    """The model card fields a report shows, from a ModelCard, its dict or a prediction's summary of it."""
    d = card.to_dict() if hasattr(card, "to_dict") else dict(card or {})
    classes = d.get("classes")
    if classes is None:
        classes = ((d.get("heads") or {}).get("pattern") or {}).get("classes", [])
    prov = dict(d.get("provenance") or {})
    synthetic = d.get("synthetic_only")
    if synthetic is None:  # a ModelCard's dict: synthetic unless some head says it learned from real tissue
        synthetic = not any(isinstance(p, Mapping) and p.get("real") for p in prov.values())
    scales = d.get("scales") or {}
    return {
        "name": d.get("name"), "backbone": d.get("backbone"), "classes": list(classes or []),
        "tile_px": d.get("tile_px"), "mpp": d.get("mpp"), "weights_sha256": d.get("weights_sha256"),
        "metrics": dict(d.get("metrics") or {}),
        "scales": {k: {"heads": list((v or {}).get("heads") or []), "tile_px": (v or {}).get("tile_px"),
                       "mpp": (v or {}).get("mpp"), "backbone": (v or {}).get("backbone")} for k, v in scales.items()},
        "mitosis_threshold": d.get("mitosis_threshold"),
        "threshold_selection": d.get("threshold_selection"),
        "provenance": {h: (p.get("summary") if isinstance(p, Mapping) else str(p)) for h, p in prov.items()},
        "synthetic_only": bool(synthetic),
        "domain_method": ((d.get("domain") or {}).get("method") if isinstance(d.get("domain"), Mapping)
                          else d.get("domain_method")),
    }


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _config_sha256(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8")).hexdigest()


def _hotspot(a: Mapping[str, Any], mpp: float, dims: tuple[int, int] | None = None) -> dict[str, Any] | None:
    hs = a["measurements"]["mitoses"].get("hotspot")
    if not hs or hs.get("box_um") is None:
        return None
    box = [float(v) for v in hs["box_um"]]
    if dims:  # the slide's own edge: tiles, and so the aggregate's clip, may hang over it
        box = [max(box[0], 0.0), max(box[1], 0.0), min(box[2], dims[0] * mpp), min(box[3], dims[1] * mpp)]
    keys = ("shape", "n_hpf", "area_mm2", "count", "per_10hpf", "counted_in", "counted_area_mm2", "hpf_area_mm2",
            "window_count", "window_exceeds_tumour")
    out = {k: hs[k] for k in keys}
    return {**out, "text": hotspot_phrase(hs), "centre_um": [hs["centre_x_um"], hs["centre_y_um"]], "box_um": box,
            "box_px": [v / mpp for v in box]}


def _write_bytes(path: Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_slide_report(
    out_dir: str | os.PathLike[str],
    *,
    assessment: SlideAssessment,
    tiles: pd.DataFrame,
    mitoses: pd.DataFrame | None,
    slide: Slide | str | os.PathLike[str] | None = None,
    card_summary: Mapping[str, Any] | Any = None,
    prediction_meta: Mapping[str, Any] | None = None,
    ihc: Sequence[Mapping[str, Any] | str | os.PathLike[str] | IhcInput] | None = None,
    slide_name: str | None = None,
    thumbnail_px: int = 1024,
    geojson_tiles: bool = True,
    tta: Mapping[str, Any] | None = None,
) -> ReportPaths:
    """Write report.json, report.html, annotations.geojson and images/*.png of one slide into out_dir.

    ``tta``: the spread of the measurements over test-time flips and turns (histo.aggregate.tta.tta_spread)."""
    out = Path(out_dir)
    a = assessment.to_dict()
    mpp = float(assessment.measurements.mpp)
    cfg = assessment.config
    classes = list(cfg.tiles.pattern_classes)
    meta = dict(prediction_meta or {})
    ihc_inputs = [load_ihc(i) for i in (ihc or [])]

    opened = None
    if slide is not None and not isinstance(slide, Slide):
        opened = slide = open_slide(slide, mpp=mpp)
    try:
        if slide is not None:
            dims = (int(slide.dimensions[0]), int(slide.dimensions[1]))
            _check_slide_matches(slide, dims, tiles)
            thumb = slide.thumbnail(thumbnail_px)
            name = slide_name or slide.name
            extras = _hotspot_pictures(slide, tiles, mitoses, mpp, cfg, _hotspot(a, mpp, dims))
            slide_info = {"name": name, "path": str(slide.path), "mpp": mpp, "dimensions": list(dims),
                          "vendor": slide.vendor}
        else:
            dims, thumb = None, None
            extras = {}
            name = slide_name or (Path(str(meta["slide"])).stem if meta.get("slide") else "slide")
            slide_info = {"name": name, "path": str(meta["slide"]) if meta.get("slide") else None, "mpp": mpp,
                          "dimensions": None, "vendor": None}
    finally:
        if opened is not None:
            opened.close()

    hotspot = _hotspot(a, mpp, dims)
    hs_box = None if hotspot is None else I.HotspotBox.from_report(hotspot, mpp, hotspot_label(hotspot))
    canvas = I.make_canvas(thumb, dims, tiles, max_px=thumbnail_px, mpp=mpp)
    rendered: dict[str, tuple[I.RenderedImage, str]] = {}
    if thumb is not None:
        rendered["thumbnail"] = (I.thumbnail_image(canvas, title=f"{name}", hotspot=hs_box),
                                 "Slide thumbnail; cyan outline: mitotic hotspot window.")
    rendered["necrosis"] = (
        I.heatmap_image(canvas, tiles, tiles["p_necrosis"].to_numpy(float), title="Necrosis probability",
                        label="p(necrosis)", cmap="inferno", hotspot=hs_box),
        f"Necrosis probability per tile. Necrosis is measured as confluent regions: tiles at p ≥ "
        f"{fmt_num(cfg.tiles.necrosis_min_p)} seed a region that grows through neighbours at p ≥ "
        f"{fmt_num(cfg.tiles.necrosis_grow_p)}; regions under {fmt_num(cfg.tiles.necrosis_min_region_mm2)} mm² "
        f"(and under {fmt_num(cfg.tiles.necrosis_min_region_pct_of_tissue)} % of the tissue) are dropped.")
    rendered["pattern"] = (
        I.pattern_image(canvas, tiles, classes, title="Most probable pattern", hotspot=hs_box),
        "Most probable spindle-cell pattern per tile (mean of overlapping tiles).")
    density = I.mitoses_per_tile(tiles, mitoses, assessment.measurements.mitoses.min_score, mpp)
    rendered["mitoses"] = (
        I.heatmap_image(canvas, tiles, density, title="Mitotic density", label="mitoses per mm² of tile",
                        cmap="viridis", vmax=I.nice_max(float(density.max()) if len(density) else 0.0), hotspot=hs_box,
                        clear_at_vmin=True),
        f"Mitoses with score ≥ {fmt_num(assessment.measurements.mitoses.min_score)} per mm² of each tile, unpainted where none (all "
        "tissue tiles; the counts for grading use viable tumour only).")

    image_paths: dict[str, Path] = {}
    for key, (img, _) in rendered.items():
        image_paths[key] = _write_bytes(out / IMAGES_DIR / f"{key}.png", img.png)
    ihc_pngs = []
    for i, item in enumerate(ihc_inputs):
        png = item.heatmap_png
        ihc_pngs.append(png)
        if png is not None:
            marker = "".join(ch if ch.isalnum() else "_" for ch in str(item.data.get("marker", i)))
            image_paths[f"ihc_{marker}"] = _write_bytes(out / IMAGES_DIR / f"ihc_{i}_{marker}.png", png)

    gj = slide_geojson(tiles, mitoses, mpp=mpp, classes=classes, necrotic=necrotic_mask(tiles, mpp, cfg),
                       mitosis_min_score=assessment.measurements.mitoses.min_score, include_tiles=geojson_tiles, hotspot=hotspot)
    geojson_path = write_text(out / GEOJSON_NAME, json.dumps(gj, separators=(",", ":"), allow_nan=False))

    report = {
        "schema": REPORT_SCHEMA,
        "histo_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "slide": slide_info,
        "model": card_summary_dict(card_summary, meta),
        "prediction": json_safe(meta) if prediction_meta is not None else None,
        "assessment_schema_version": a["schema_version"],
        "measurements": a["measurements"],
        "grading": a["grading"],
        "grading_config": a["config"],
        "grading_config_sha256": _config_sha256(a["config"]),
        "verdict": {
            "high_grade": verdict_of(a["grading"]["high_grade"]["high_grade"]),
            "status": a["grading"]["status"],
            "line": verdict_line(a),
            "reasons": verdict_reasons(a),
        },
        "hotspot": hotspot,
        "domain": a.get("domain"),
        "tta": dict(tta) if tta else {"enabled": False},
        "ihc": [json_safe({**item.data, "sentence": ihc_sentence(item.data)}) for item in ihc_inputs],
        "files": {
            "json": JSON_NAME, "html": HTML_NAME, "geojson": GEOJSON_NAME,
            "images": {k: p.relative_to(out).as_posix() for k, p in image_paths.items()},
        },
    }
    report = json_safe(report)
    validate_report(report)
    figures = [(img.png, caption, key) for key, (img, caption) in rendered.items()]
    if extras.get("closeup"):
        figures.insert(1 if thumb is not None else 0, (extras["closeup"], "Close-up of the hotspot window; magenta "
                                                       "rings: the mitoses it counted.", "hotspot close-up"))
    html_path = write_text(out / HTML_NAME, H.slide_page(report, figures, ihc_pngs, gallery=extras.get("gallery", []),
                                                         n_counted=extras.get("n_counted"),
                                                         view_cmd=f"histo view {shlex.quote(str(out))}"))
    # report.json last: its presence means the report is complete
    json_path = write_text(out / JSON_NAME, _dump(report))
    return ReportPaths(out, json_path, html_path, geojson_path, image_paths, report)


def _hotspot_pictures(slide: Slide, tiles: pd.DataFrame, mitoses: pd.DataFrame | None, mpp: float, cfg: Any,
                      hotspot: dict[str, Any] | None) -> dict[str, Any]:
    """The gallery of mitoses counted in the hotspot and its close-up, read from the slide ({} without a hotspot)."""
    from histo.report import gallery as G

    if hotspot is None:
        return {}
    counted = G.counted_in_hotspot(tiles, mitoses, mpp, cfg, hotspot)
    return {"gallery": G.gallery(slide, counted, mpp), "n_counted": len(counted),
            "closeup": G.closeup(slide, hotspot, counted, mpp, f"Hotspot: {hotspot_label(hotspot)}")}


def card_summary_dict(card: Any, prediction_meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report's model section: from the card given, else from the prediction metadata."""
    if card is None and prediction_meta:
        for key in ("model", "card", "model_card"):
            if isinstance(prediction_meta.get(key), Mapping):
                card = prediction_meta[key]
                break
    return json_safe(summarise_card(card))


def _check_slide_matches(slide: Slide, dims: tuple[int, int], tiles: pd.DataFrame) -> None:
    """Refuse a slide smaller than the tile grid: its thumbnail would put the heatmaps on the wrong tissue."""
    if not len(tiles):
        return
    x1 = float((tiles["x"] + tiles["w"]).max())
    y1 = float((tiles["y"] + tiles["h"]).max())
    tile = float(max(tiles["w"].max(), tiles["h"].max()))
    if x1 > dims[0] + tile * _EDGE_SLACK or y1 > dims[1] + tile * _EDGE_SLACK:
        raise HistoError(f"{slide.path}: slide is {dims[0]} x {dims[1]} px but the predictions reach "
                         f"x {x1:.0f}, y {y1:.0f}; is this the slide that was predicted?")


def slide_report(pred_dir: str | os.PathLike[str], slide_path: str | os.PathLike[str] | None,
                 assessment: SlideAssessment, card_summary: Mapping[str, Any] | None,
                 out_dir: str | os.PathLike[str]) -> ReportPaths:
    """Contract E: the report of a prediction folder (tiles.parquet, mitoses.parquet, prediction.json)."""
    tiles, mitoses, meta = read_prediction(pred_dir)
    return write_slide_report(out_dir, assessment=assessment, tiles=tiles, mitoses=mitoses, slide=slide_path,
                              card_summary=card_summary, prediction_meta=meta)


def read_prediction(pred_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The tile table, mitosis table and prediction.json of a prediction folder (read by histo.prediction)."""
    from histo.prediction import load_prediction

    return load_prediction(pred_dir)
