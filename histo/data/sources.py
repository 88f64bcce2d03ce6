"""Data sources of a DataConfig resolved to files: slide lists and CSVs, tile CSVs, generated phantoms; splits by slide."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from histo.data.config import DataConfig, SplitConfig
from histo.errors import ConfigError

SPLITS = ("train", "val", "test")
_GROUP_COLUMNS = ("group", "case", "patient")


@dataclass(frozen=True)
class SlideRecord:
    """A slide to tile: files, split, group, and the config key it came from (for error messages)."""

    path: Path
    annotations: Path | None
    split: str
    mpp: float | None
    group: str
    mitoses_labelled: bool
    key: str


def _csv_path(base: Path, value: object) -> Path:
    p = Path(str(value).strip()).expanduser()
    return p if p.is_absolute() else base / p


def _blank(v: object) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == ""


def _read_csv(path: Path, key: str, required: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise ConfigError(f"{key}: CSV file not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key}: {path} is not a readable CSV ({exc})") from exc
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ConfigError(f"{key}: {path} lacks column(s) {missing} (has {list(df.columns)})")
    return df


def slide_records(cfg: DataConfig) -> list[SlideRecord]:
    """The slides listed in `data.slides` (a list in the config, or a CSV with the same columns)."""
    out: list[SlideRecord] = []
    if isinstance(cfg.slides, Path):
        csv = cfg.resolve(cfg.slides)
        df = _read_csv(csv, "data.slides", ["path"])
        for i, row in df.iterrows():
            key = f"data.slides ({csv.name} row {i + 2})"
            split = str(row.get("split", "") or "auto").strip().lower()
            if split not in (*SPLITS, "auto"):
                raise ConfigError(f"{key}: split must be train, val, test or auto, got {split!r}")
            mpp = None if _blank(row.get("mpp")) else float(row["mpp"])
            ann = None if _blank(row.get("annotations")) else _csv_path(csv.parent, row["annotations"])
            path = _csv_path(csv.parent, row["path"])
            group = next((str(row[c]).strip() for c in _GROUP_COLUMNS if c in row and not _blank(row[c])), path.stem)
            labelled = str(row.get("mitoses_labelled", "true")).strip().lower() not in ("false", "0", "no")
            out.append(SlideRecord(path, ann, split, mpp, group, labelled, key))
        return out
    for i, s in enumerate(cfg.slides):
        path = cfg.resolve(s.path)
        out.append(SlideRecord(path, cfg.resolve(s.annotations) if s.annotations else None, s.split, s.mpp,
                               s.group or path.stem, s.mitoses_labelled, f"data.slides[{i}]"))
    return out


def phantom_records(cfg: DataConfig, generate: bool) -> list[SlideRecord]:
    """The phantom slides of `data.phantoms`, written with histo.synth when missing or stale (if `generate`)."""
    ph = cfg.phantoms
    if ph is None:
        return []
    from histo.synth.phantom import load_spec, make_phantom, replace_size

    cache = cfg.resolve(ph.cache_dir)
    out = []
    for si, spec_path in enumerate(ph.specs):
        key = f"data.phantoms.specs[{si}]"
        full = cfg.resolve(spec_path)
        if not full.is_file():
            raise ConfigError(f"{key}: phantom spec file not found: {full}")
        base = load_spec(full, ph.overrides or None)
        for seed in ph.seed_list():
            spec = dataclasses.replace(base, seed=int(seed))
            if ph.size_px is not None:
                spec = replace_size(spec, *ph.size_px)
            # One folder per spec, seed and size so phantoms of different seeds never overwrite each other.
            name = f"{base.name}_s{seed}_{spec.slide_width_px}x{spec.slide_height_px}"
            spec = dataclasses.replace(spec, name=name)
            folder = cache / name
            he, truth = folder / f"{name}_HE.tiff", folder / "truth.geojson"
            current = _cached_phantom_is_current(folder, spec, (he, truth))
            if not current:
                if not generate:
                    raise ConfigError(f"{key}: phantom {name} is not in {cache}, or was rendered from another spec or "
                                      "phantom code (prepare_data() writes it)")
                cache.mkdir(parents=True, exist_ok=True)
                make_phantom(spec, cache, workers=ph.workers, ihc=False)
            out.append(SlideRecord(he, truth, "auto", None, name, True, f"{key} seed {seed}"))
    return out


def _cached_phantom_is_current(folder: Path, spec: Any, files: Sequence[Path]) -> bool:
    """True when ``folder`` holds ``files`` written from this very spec by the current rendering code."""
    import json

    from histo.synth.phantom import code_digest

    if not all(f.is_file() for f in (folder / "spec.yaml", folder / "summary.json", *files)):
        return False
    same_spec = yaml.safe_load((folder / "spec.yaml").read_text(encoding="utf-8")) == yaml.safe_load(
        yaml.safe_dump(spec.to_dict(), sort_keys=False))
    try:
        rendered_by = json.loads((folder / "summary.json").read_text(encoding="utf-8")).get("renderer_digest")
    except ValueError:
        return False
    return same_spec and rendered_by == code_digest()


def check_slide_files(records: Sequence[SlideRecord]) -> None:
    """ConfigError naming the key and file for the first slide or annotation file that is missing."""
    for r in records:
        if not r.path.exists():
            raise ConfigError(f"{r.key}.path: slide file not found: {r.path}")
        if r.annotations is not None and not r.annotations.is_file():
            raise ConfigError(f"{r.key}.annotations: annotation file not found: {r.annotations}")


def tile_table(cfg: DataConfig, classes: Sequence[str]) -> pd.DataFrame:
    """The tiles CSV as a table: path (absolute), pattern index (-1 unlabelled), necrosis (1/0/-1), split, group."""
    if cfg.tiles_csv is None:
        return pd.DataFrame(columns=["path", "pattern", "necrosis", "split", "group"])
    csv = cfg.resolve(cfg.tiles_csv)
    df = _read_csv(csv, "data.tiles_csv", ["path"])
    if "split" not in df.columns and not any(c in df.columns for c in ("slide", *_GROUP_COLUMNS)):
        raise ConfigError(f"data.tiles_csv: {csv} needs a 'split' or a 'slide' column: tiles are split by slide, never one by one")
    from histo.data.sample import pattern_index

    rows = []
    for i, row in df.iterrows():
        where = f"data.tiles_csv ({csv.name} row {i + 2})"
        path = _csv_path(csv.parent, row["path"])
        if not path.is_file():
            raise ConfigError(f"{where}: tile image not found: {path}")
        nec_raw = str(row.get("necrosis", "")).strip().lower()
        if nec_raw in ("", "nan"):
            nec = -1.0
        elif nec_raw in ("1", "1.0", "true", "yes"):
            nec = 1.0
        elif nec_raw in ("0", "0.0", "false", "no"):
            nec = 0.0
        else:
            raise ConfigError(f"{where}: necrosis must be 1, 0 or blank, got {row['necrosis']!r}")
        split = str(row.get("split", "") or "auto").strip().lower()
        if split not in (*SPLITS, "auto"):
            raise ConfigError(f"{where}: split must be train, val, test or auto, got {split!r}")
        group = next((str(row[c]).strip() for c in ("group", "case", "patient", "slide") if c in row and not _blank(row[c])), "")
        if not group and split == "auto":
            raise ConfigError(f"{where}: an 'auto' split needs the tile's slide (or case/patient) to group by")
        rows.append((str(path), pattern_index(row.get("pattern"), classes, where), nec, split, group or f"<{split}>",
                     str(row["slide"]).strip() if "slide" in row and not _blank(row["slide"]) else path.parent.name))
    return pd.DataFrame(rows, columns=["path", "pattern", "necrosis", "split", "group", "slide"])


def assign_splits(groups: Sequence[str], explicit: Sequence[str], cfg: SplitConfig) -> list[str]:
    """A split per item: explicit ones kept; 'auto' items split by group with the configured fractions and seed.

    A group never straddles splits: an explicit split of one item applies to its whole group, and two
    different explicit splits in one group are an error.
    """
    fixed: dict[str, str] = {}
    for g, s in zip(groups, explicit):
        if s == "auto":
            continue
        if fixed.setdefault(g, s) != s:
            raise ConfigError(f"group/slide {g!r} is listed in both '{fixed[g]}' and '{s}': a slide or case must stay in one split")
    auto = sorted({g for g in groups if g not in fixed})
    rng = np.random.default_rng(cfg.seed)
    order = [auto[i] for i in rng.permutation(len(auto))]
    n = len(order)
    n_test = int(round(cfg.test_fraction * n))
    n_val = int(round(cfg.val_fraction * n))
    # Small sets: a requested split gets at least one group while one group is left to train on.
    has_train = "train" in fixed.values()
    if cfg.val_fraction > 0 and n_val == 0 and n - n_test >= (1 if has_train else 2):
        n_val = 1
    if cfg.test_fraction > 0 and n_test == 0 and n - n_val >= (1 if has_train else 2):
        n_test = 1
    while n_val + n_test > n - (0 if has_train else 1) and (n_val or n_test):
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    chosen = {g: "test" for g in order[:n_test]}
    chosen.update({g: "val" for g in order[n_test:n_test + n_val]})
    chosen.update({g: "train" for g in order[n_test + n_val:]})
    chosen.update(fixed)
    return [chosen[g] for g in groups]
