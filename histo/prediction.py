"""The prediction folder of one slide (``histo predict``'s output): the one reader and writer of its files.

A folder holds ``tiles.parquet`` (one row per tile: level-0 box, tissue_fraction, p_necrosis,
p_pattern_<class>; its schema metadata key ``histo.predict`` names the slide, its mpp and dimensions and
the model), ``mitoses.parquet`` (x_um, y_um, score, x, y) and ``prediction.json`` (schema
``histo.predict/1``), written last as the completion mark. The file layout is documented in
docs/formats.md. This module needs only pandas and pyarrow (no torch), so reports and IHC read
predictions without loading the model stack; pandas and pyarrow load on first use.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histo.atomic import atomic_path, write_text
from histo.errors import HistoError

if TYPE_CHECKING:
    import pandas as pd

SCHEMA = "histo.predict/1"
META_KEY = b"histo.predict"
TILES_FILE, MITOSES_FILE, PREDICTION_FILE = "tiles.parquet", "mitoses.parquet", "prediction.json"
# With --tta: each flip/turn's own tables (long form, a ``variant`` column), for the spread of the measurements.
TTA_TILES_FILE, TTA_MITOSES_FILE = "tta_tiles.parquet", "tta_mitoses.parquet"
PATTERN_PREFIX = "p_pattern_"
# With --csv: the two tables again as CSV beside the Parquet files (same columns, index-free).
TILES_CSV, MITOSES_CSV = "tiles.csv", "mitoses.csv"


class PredictionFolderError(HistoError, FileNotFoundError):
    """A folder is not a finished prediction folder, or one of its files cannot be read."""


def _write_parquet(df: pd.DataFrame, path: Path, meta: dict[str, Any] | None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    if meta is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_prediction(slide_dir: str | os.PathLike[str], tiles: pd.DataFrame, mitoses: pd.DataFrame,
                     tiles_meta: dict[str, Any], prediction: dict[str, Any],
                     tta: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> None:
    """Write the files atomically, prediction.json last (its presence means the folder is complete).

    ``tta``: (tiles, mitoses) of every test-time variant in long form; without it old TTA files are removed.
    """
    slide_dir = Path(slide_dir)
    slide_dir.mkdir(parents=True, exist_ok=True)
    # An old completion mark must not vouch for the new tables while they are being replaced.
    (slide_dir / PREDICTION_FILE).unlink(missing_ok=True)
    _write_parquet(tiles, slide_dir / TILES_FILE, tiles_meta)
    _write_parquet(mitoses, slide_dir / MITOSES_FILE, None)
    if tta is not None:
        _write_parquet(tta[0], slide_dir / TTA_TILES_FILE, None)
        _write_parquet(tta[1], slide_dir / TTA_MITOSES_FILE, None)
    else:
        for name in (TTA_TILES_FILE, TTA_MITOSES_FILE):
            (slide_dir / name).unlink(missing_ok=True)
    for name in (TILES_CSV, MITOSES_CSV):  # CSVs of older tables must not outlive them
        (slide_dir / name).unlink(missing_ok=True)
    write_text(slide_dir / PREDICTION_FILE, json.dumps(prediction, indent=2) + "\n")


def write_csv_tables(slide_dir: str | os.PathLike[str]) -> list[Path]:
    """tiles.csv and mitoses.csv beside the Parquet tables of a finished prediction folder, written atomically."""
    tiles, mitoses, _ = load_prediction(slide_dir)
    paths = []
    for df, name in ((tiles, TILES_CSV), (mitoses, MITOSES_CSV)):
        path = Path(slide_dir) / name
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False)
        paths.append(path)
    return paths


def read_tta(slide_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(tiles, mitoses) of each TTA variant in long form (column ``variant``), or None for a run without --tta."""
    import pandas as pd

    d = Path(slide_dir)
    if not (d / TTA_TILES_FILE).is_file():
        return None
    try:
        return pd.read_parquet(d / TTA_TILES_FILE), pd.read_parquet(d / TTA_MITOSES_FILE)
    except (OSError, ValueError) as exc:
        raise PredictionFolderError(f"{d}: cannot read the TTA tables ({exc})") from exc


def read_done(slide_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """prediction.json of a complete folder (all three files present, schema histo.predict/1), or None."""
    slide_dir = Path(slide_dir)
    pj = slide_dir / PREDICTION_FILE
    if not (pj.is_file() and (slide_dir / TILES_FILE).is_file() and (slide_dir / MITOSES_FILE).is_file()):
        return None
    try:
        data = json.loads(pj.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # unreadable leftovers are redone
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def _tiles_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / TILES_FILE
    if not p.is_file():
        raise PredictionFolderError(f"{p}: no prediction tile table ({TILES_FILE}) here")
    return p


def tiles_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``histo.predict`` metadata of a tiles.parquet (or of the one in a prediction folder); {} when absent."""
    import pyarrow.parquet as pq

    p = _tiles_path(path)
    try:
        raw = (pq.read_schema(p).metadata or {}).get(META_KEY)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a broken file
        raise PredictionFolderError(f"{p}: cannot read the tile table as Parquet ({exc})") from None
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError:
        raise PredictionFolderError(f"{p}: its {META_KEY.decode()} metadata is not valid JSON") from None
    return meta if isinstance(meta, dict) else {}


def read_tiles(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The tile table (a tiles.parquet, or the one in a prediction folder) and its ``histo.predict`` metadata."""
    import pyarrow.parquet as pq

    p = _tiles_path(path)
    try:
        table = pq.read_table(p)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a broken file
        raise PredictionFolderError(f"{p}: cannot read the tile table as Parquet ({exc})") from None
    raw = (table.schema.metadata or {}).get(META_KEY)
    meta: dict[str, Any] = {}
    if raw:
        try:
            meta = json.loads(raw)
        except ValueError:
            raise PredictionFolderError(f"{p}: its {META_KEY.decode()} metadata is not valid JSON") from None
    return table.to_pandas(), meta


def load_prediction(slide_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(tiles, mitoses, prediction.json dict) of a finished prediction folder; PredictionFolderError otherwise."""
    import pandas as pd

    d = Path(slide_dir)
    missing = [n for n in (TILES_FILE, MITOSES_FILE, PREDICTION_FILE) if not (d / n).is_file()]
    if missing:
        raise PredictionFolderError(f"{d}: not a finished prediction folder (missing {', '.join(missing)})")
    try:
        tiles = pd.read_parquet(d / TILES_FILE)
        mitoses = pd.read_parquet(d / MITOSES_FILE)
        meta = json.loads((d / PREDICTION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PredictionFolderError(f"{d}: cannot read prediction files ({exc})") from exc
    if not isinstance(meta, dict):
        raise PredictionFolderError(f"{d / PREDICTION_FILE}: expected a JSON object")
    return tiles, mitoses, meta


def slide_mpp_of(meta: dict[str, Any], tiles_meta: dict[str, Any], folder: str | os.PathLike[str]) -> float:
    """The predicted slide's level-0 µm/px, from prediction.json or else the tile table's metadata."""
    for d in (meta, tiles_meta):
        v = d.get("slide_mpp")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    raise PredictionFolderError(f"{folder}: prediction.json has no slide_mpp (the slide's level-0 µm/px)")


def model_summary_of(meta: dict[str, Any], tiles_meta: dict[str, Any]) -> dict[str, Any]:
    """The model section of a prediction: prediction.json's card summary, else the tile table's model fields."""
    for key in ("model", "card", "model_card"):
        if isinstance(meta.get(key), dict):
            return dict(meta[key])
    return {"name": tiles_meta.get("model_name"), "weights_sha256": tiles_meta.get("model_weights_sha256"),
            "tile_px": tiles_meta.get("tile_px"), "mpp": tiles_meta.get("mpp"), "classes": tiles_meta.get("classes", [])}


def match_prediction(folder: str | os.PathLike[str], stem: str) -> Path:
    """The tiles.parquet for slide ``stem`` in a folder of prediction folders (<stem>, <case>_HE or <case>)."""
    folder = Path(folder)
    if (folder / TILES_FILE).is_file():
        return folder / TILES_FILE
    case = stem.split("_IHC")[0]
    tried = list(dict.fromkeys([stem, f"{case}_HE", case]))
    for name in tried:
        p = folder / name / TILES_FILE
        if p.is_file():
            return p
    raise PredictionFolderError(f"no prediction for slide {stem!r} in {folder} "
                                f"(looked for {', '.join(n + '/' + TILES_FILE for n in tried)})")
