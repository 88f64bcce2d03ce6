"""Write a scored IHC slide (docs/formats.md, `histo ihc`): cell and tile Parquet tables, QuPath GeoJSON, a heatmap PNG and ihc.json.

Every file is written atomically (temp file, then rename), ihc.json last: a folder whose ihc.json exists
is complete, which is what a rerun checks before skipping the slide.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from histo.atomic import atomic_path, write_text
from histo.errors import HistoError
from histo.ihc.result import CLASS_NAMES, SlideIHCResult
from histo.leftovers import clean_stale_temps

GEOJSON_MAX_FEATURES = 50_000
GEOJSON_SEED = 0
CLASS_COLOURS = ((112, 112, 225), (255, 215, 0), (255, 140, 0), (200, 0, 0))  # 0, 1+, 2+, 3+ (as the phantom truth)
#: % positive: pale yellow at 0 to dark red at 100 %, every step a saturated colour (none ends in grey)
HEATMAP_CMAP = "YlOrRd"
FILES = ("ihc_cells.parquet", "ihc_tiles.parquet", "ihc_cells.geojson", "ihc_heatmap.png", "ihc.json")
# With --csv: the cell and tile tables again as CSV beside their Parquet files (same columns).
CSV_FILES = {"ihc_cells.parquet": "ihc_cells.csv", "ihc_tiles.parquet": "ihc_tiles.csv"}


def _write_parquet(df: pd.DataFrame, path: Path, meta: dict[str, Any]) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"histo.ihc": json.dumps(meta).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def cells_geojson(result: SlideIHCResult, max_features: int = GEOJSON_MAX_FEATURES, seed: int = GEOJSON_SEED) -> dict[str, Any]:
    """QuPath detections (points, level-0 px) of the scored cells, classified 0/1+/2+/3+; a seeded sample past the cap."""
    cells = result.cells[result.cells["in_region"].to_numpy()]
    n_total = len(cells)
    sampled = n_total > max_features
    if sampled:
        rng = np.random.default_rng(seed)
        cells = cells.iloc[np.sort(rng.choice(n_total, max_features, replace=False))]
    feats = []
    for x, y, cls, dab, area in zip(cells["x"].to_numpy(), cells["y"].to_numpy(), cells["ihc_class"].to_numpy(),
                                    cells["dab_od"].to_numpy(), cells["area_um2"].to_numpy()):
        k = int(cls)
        feats.append({
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [round(float(x), 2), round(float(y), 2)]},
            "properties": {
                "objectType": "detection",
                "classification": {"name": CLASS_NAMES[k], "color": list(CLASS_COLOURS[k])},
                "measurements": {f"{result.spec.compartment}: DAB OD {result.spec.cell_params.dab_statistic}": round(float(dab), 4),
                                 "Nucleus: area µm^2": round(float(area), 2)},
            },
        })
    return {
        "type": "FeatureCollection",
        "histo": {
            "schema": "histo.ihc.cells/1",
            "marker": result.spec.name,
            "region": result.region,
            "n_cells_scored": n_total,
            "n_features": len(feats),
            "sampled": sampled,
            "sample_seed": seed if sampled else None,
            "note": (f"a seeded random sample of {max_features} of the {n_total} scored cells; ihc_cells.parquet lists every cell"
                     if sampled else "every scored cell (cells in the counting region)"),
        },
        "features": feats,
    }


def heatmap_png(result: SlideIHCResult, path: Path, thumb_px: int = 1024, slide: Any = None) -> None:
    """Per-tile % positive (cells ≥ 1+ in the counting region) over a slide thumbnail, with a colour bar."""
    # A Figure of its own on the Agg canvas: no pyplot state and no backend switch, so a notebook's plots
    # are left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    W, H = result.slide_dimensions
    scale = thumb_px / max(W, H)
    tw, th = max(1, round(W * scale)), max(1, round(H * scale))
    thumb: np.ndarray | None = None
    try:
        from histo.slide import open_slide

        s = slide if slide is not None else open_slide(result.slide_path, mpp=result.slide_mpp)
        try:
            thumb = s.read_overview(result.slide_mpp / scale)
        finally:
            if slide is None:
                s.close()
    except Exception:  # noqa: BLE001 - the heatmap is still useful without the thumbnail (e.g. slide moved)
        thumb = None
    blank = thumb is None
    if thumb is None:
        thumb = np.full((th, tw, 3), 255, np.uint8)
    heat = np.full(thumb.shape[:2], np.nan, np.float32)
    # painted over tissue only: the glass inside a tile stays as scanned
    tissue = np.ones(thumb.shape[:2], bool)
    if not blank:
        try:
            from histo.tissue import tissue_mask

            tissue = tissue_mask(thumb, result.slide_mpp / scale)
        except Exception:  # noqa: BLE001 - an odd thumbnail: paint the whole tiles rather than nothing
            pass
    t = result.tiles
    for x, y, w, h, p in zip(t["x"], t["y"], t["w"], t["h"], t["pct_positive"]):
        if not np.isfinite(p):
            continue
        c0, r0 = int(round(x * scale)), int(round(y * scale))
        c1, r1 = int(round((x + w) * scale)), int(round((y + h) * scale))
        heat[max(r0, 0):max(r1, r0 + 1), max(c0, 0):max(c1, c0 + 1)] = p
    heat[~tissue] = np.nan
    fig = Figure(figsize=(8, 8 * thumb.shape[0] / max(thumb.shape[1], 1) + 0.8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.imshow(thumb)
    im = ax.imshow(np.ma.masked_invalid(heat), cmap=HEATMAP_CMAP, vmin=0, vmax=100, alpha=0.65, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"{result.slide}: {result.sentence}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02, label=f"% cells ≥ 1+ per tile ({result.region})")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")


def write_ihc_outputs(result: SlideIHCResult, out_dir: str | Path, *, max_features: int = GEOJSON_MAX_FEATURES,
                      slide: Any = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the five contract-D files into ``out_dir`` (created), ihc.json last; returns the ihc.json dict.

    ``extra`` keys are added to ihc.json (e.g. the CLI's run settings); ``slide`` is an open handle for the
    heatmap's thumbnail (else the slide is reopened from its path).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out, [*FILES, *CSV_FILES.values()])  # what a killed run left (.ihc_heatmap.png.*.tmp, ...)
    for name in CSV_FILES.values():  # CSVs of older tables must not outlive them
        (out / name).unlink(missing_ok=True)
    summary = result.summary
    meta = {"schema": summary["schema"], "slide": summary["slide"], "marker": summary["marker"],
            "region": summary["region"], "slide_mpp": summary["slide_mpp"], "mpp_analysis": summary["mpp_analysis"]}
    _write_parquet(result.cells.reset_index(drop=True), out / "ihc_cells.parquet", meta)
    _write_parquet(result.tiles.reset_index(drop=True), out / "ihc_tiles.parquet", meta)
    gj = cells_geojson(result, max_features=max_features)
    write_text(out / "ihc_cells.geojson", json.dumps(gj, ensure_ascii=False, separators=(",", ":")))
    heatmap_png(result, out / "ihc_heatmap.png", slide=slide)
    summary["geojson"] = {k: gj["histo"][k] for k in ("n_cells_scored", "n_features", "sampled", "sample_seed", "note")}
    summary["files"] = list(FILES)
    summary.update(extra or {})
    write_text(out / "ihc.json", json.dumps(summary, indent=1, ensure_ascii=False))
    return summary


def write_csv_tables(out_dir: str | Path) -> list[Path]:
    """ihc_cells.csv and ihc_tiles.csv beside the Parquet tables of a finished IHC folder, written atomically."""
    out = Path(out_dir)
    if not (out / "ihc.json").is_file():
        raise HistoError(f"{out}: not a finished IHC folder (no ihc.json)")
    paths = []
    for parquet, name in CSV_FILES.items():
        try:
            df = pd.read_parquet(out / parquet)
        except (OSError, ValueError) as exc:
            raise HistoError(f"{out / parquet}: cannot read ({exc})") from exc
        with atomic_path(out / name) as tmp:
            df.to_csv(tmp, index=False)
        paths.append(out / name)
    return paths
