"""A cohort table: one row per slide or case from finished reports, as CSV, Parquet and a sortable HTML page.

A case folder (case_report.json) gives one row with its H&E slide's measurements and each marker's
IHC figures; a slide report (report.json) outside any case gives one row. ``export_tables`` also writes
the tile, mitosis and IHC cell tables of every row as long CSV tables (one ``slide`` column added).
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from histo.atomic import atomic_path, write_text
from histo.errors import HistoError
from histo.jsonsafe import read_json_object
from histo.prediction import MITOSES_FILE, TILES_FILE, read_tiles

COHORT_CSV, COHORT_PARQUET, COHORT_HTML = "cohort.csv", "cohort.parquet", "cohort.html"
TABLE_CSVS = ("tiles.csv", "mitoses.csv", "cells.csv")
THUMB_PX = 160
#: the columns every cohort table starts with, in this order
LEAD_COLUMNS = ("kind", "case_id", "slide", "verdict", "verdict_status", "verdict_line", "fnclcc_mitotic_score",
                "fnclcc_necrosis_score", "domain_status", "domain_in_domain_fraction", "model_name",
                "model_weights_sha256", "histo_version", "report")


@dataclass
class Entry:
    """One cohort row's sources: its H&E report folder and its IHC result folders."""

    kind: str  # slide | case
    folder: Path
    case_id: str | None = None
    he_report: Path | None = None
    ihc_dirs: list[Path] = field(default_factory=list)
    case_report: Path | None = None


def find_entries(dirs: Iterable[str | os.PathLike[str]]) -> list[Entry]:
    """Every case folder, and every slide report and IHC result outside a case, under each folder given in turn."""
    entries: dict[Path, Entry] = {}
    for raw in dirs:
        root = Path(raw)
        if not root.is_dir():
            raise HistoError(f"{root}: no such folder")
        cases = sorted({p.parent.resolve() for p in root.rglob("case_report.json")})
        for case in cases:
            he = sorted(case.glob("he/*/report.json"))
            cr = read_json_object(case / "case_report.json")
            entries[case] = Entry("case", case, str(cr.get("case_id") or case.name), he[0] if he else None,
                                  sorted(p.parent for p in case.glob("ihc/*/*/ihc.json")), case / "case_report.json")
        for rep in sorted(root.rglob("report.json")):
            folder = rep.parent.resolve()
            if any(c == folder or c in folder.parents for c in cases) or folder in entries:
                continue
            entries[folder] = Entry("slide", folder, None, rep)
        for ij in sorted(root.rglob("ihc.json")):
            folder = ij.parent.resolve()
            if not any(c in folder.parents for c in cases) and folder not in entries:
                entries[folder] = Entry("ihc", folder, None, None, [folder])
    if not entries:
        raise HistoError("no finished report under " + ", ".join(str(d) for d in dirs)
                         + " (report.json or case_report.json; run histo predict / histo case first)")
    return list(entries.values())  # the folders in the order given, each in path order


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Scalar leaves of nested dicts as prefix_key columns (lists of numbers become one column per item)."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}_{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj) and len(obj) <= 8:
            for i, v in enumerate(obj):
                out[f"{prefix}_{i}"] = v
    else:
        out[prefix] = obj
    return out


def _marker_columns(ihc: Mapping[str, Any]) -> dict[str, Any]:
    m = str(ihc.get("marker", "IHC"))
    call = ihc.get("call")
    label = call.get("label") if isinstance(call, Mapping) else call
    counts = list(ihc.get("counts") or [])
    out = {f"{m}_pct_positive": ihc.get("pct_positive"), f"{m}_h_score": ihc.get("h_score"), f"{m}_call": label,
           f"{m}_n_cells": ihc.get("n_cells"), f"{m}_region": ihc.get("region")}
    for k, name in enumerate(("0", "1plus", "2plus", "3plus")):
        out[f"{m}_cells_{name}"] = counts[k] if k < len(counts) else None
    reg = ihc.get("registration")
    if isinstance(reg, Mapping):
        out[f"{m}_registration_status"] = reg.get("status")
    return out


def entry_row(e: Entry) -> dict[str, Any]:
    """The cohort row of one slide or case."""
    row: dict[str, Any] = {"kind": e.kind, "case_id": e.case_id,
                           "slide": e.folder.name if e.kind == "ihc" else None}
    rep = read_json_object(e.he_report) if e.he_report is not None else {}
    if rep:
        g = rep.get("grading") or {}
        dom = rep.get("domain") or {}
        model = rep.get("model") or {}
        row.update({
            "slide": (rep.get("slide") or {}).get("name"),
            "verdict": (rep.get("verdict") or {}).get("high_grade"),
            "verdict_status": (rep.get("verdict") or {}).get("status"),
            "verdict_line": (rep.get("verdict") or {}).get("line"),
            "fnclcc_mitotic_score": (g.get("mitotic_score") or {}).get("score"),
            "fnclcc_necrosis_score": (g.get("necrosis_score") or {}).get("score"),
            "domain_status": dom.get("status"), "domain_in_domain_fraction": dom.get("in_domain_fraction"),
            "model_name": model.get("name"), "model_weights_sha256": model.get("weights_sha256"),
            "histo_version": rep.get("histo_version"), "report": str(Path(e.he_report).with_name("report.html")) if e.he_report else None,
        })
        row.update(flatten(rep.get("measurements") or {}))
    ihc_items = [read_json_object(d / "ihc.json") for d in e.ihc_dirs] if e.ihc_dirs else list(rep.get("ihc") or [])
    for item in ihc_items:
        row.update(_marker_columns(item))
        if e.kind == "ihc":
            row["histo_version"] = item.get("histo_version")
    if e.case_report is not None:
        cr = read_json_object(e.case_report)
        row["histo_version"] = row.get("histo_version") or cr.get("histo_version")
        row["case_summary"] = cr.get("summary")
        row["report"] = str(e.case_report.with_name("case_report.html"))
        co = cr.get("co_expression") or {}
        if co:
            row["co_expressed"] = co.get("co_expressed")
    row["folder"] = str(e.folder)
    return row


def cohort_frame(entries: list[Entry]) -> pd.DataFrame:
    """The cohort table: the lead columns, then every measurement and marker column seen, in first-seen order."""
    rows = [entry_row(e) for e in entries]
    cols = list(LEAD_COLUMNS)
    for r in rows:
        cols += [c for c in r if c not in cols]
    df = pd.DataFrame(rows, columns=cols)
    # a list (say a hotspot box) that is null in one report: its numbered columns hold it, not a null twin
    stray = [c for c in cols if f"{c}_0" in cols and df[c].isna().all()]
    return _arrow_safe(df.drop(columns=stray))


def _arrow_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding more than one type (say a number in one report, text in another) become text."""
    for c in df.columns:
        if df[c].dtype == object:
            kinds = {type(v) for v in df[c] if v is not None and not (isinstance(v, float) and v != v)}
            if len(kinds) > 1:
                df[c] = df[c].map(lambda v: None if v is None or (isinstance(v, float) and v != v) else str(v))
    return df


def _thumb_uri(e: Entry) -> str | None:
    if e.he_report is None:
        return None
    png = e.he_report.parent / "images" / "thumbnail.png"
    if not png.is_file():
        return None
    from PIL import Image

    with Image.open(png) as im:
        im = im.convert("RGB")
        im.thumbnail((THUMB_PX, THUMB_PX))
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_PAGE_CSS = ("body{font-family:Helvetica,Arial,sans-serif;margin:1em;font-size:13px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 5px;white-space:nowrap}th{background:#f0f0f0;cursor:pointer;"
             "position:sticky;top:0}th.asc:after{content:' ▲'}th.desc:after{content:' ▼'}td.num{text-align:right}"
             ".disclaimer{background:#fff4d6;border:1px solid #e0b84c;padding:.4em;font-weight:bold}"
             "@media print{th{position:static}}")
_SORT_JS = """
document.querySelectorAll('#cohort th').forEach((th, i) => th.addEventListener('click', () => {
  const tb = document.querySelector('#cohort tbody'), rows = Array.from(tb.rows);
  const dir = th.classList.contains('asc') ? -1 : 1;
  document.querySelectorAll('#cohort th').forEach(h => h.classList.remove('asc', 'desc'));
  th.classList.add(dir > 0 ? 'asc' : 'desc');
  const key = r => { const c = r.cells[i], v = c.dataset.v; return v === undefined ? c.textContent : v; };
  rows.sort((a, b) => { const x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
    if (x === '' && y !== '') return 1; if (y === '' && x !== '') return -1;
    return (!isNaN(nx) && !isNaN(ny) ? nx - ny : String(x).localeCompare(String(y))) * dir; });
  rows.forEach(r => tb.appendChild(r));
}));
"""


def cohort_html(df: pd.DataFrame, entries: list[Entry]) -> str:
    """A self-contained page: the cohort table, sortable by any column, with a thumbnail per slide."""
    esc = lambda v: html.escape("" if v is None or (isinstance(v, float) and v != v) else str(v), quote=True)  # noqa: E731
    head = "<th>thumbnail</th>" + "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    body = []
    for e, (_, r) in zip(entries, df.iterrows()):
        uri = _thumb_uri(e)
        cells = [f'<td data-v=""><img src="{uri}" alt="{esc(r["slide"])}"></td>' if uri else '<td data-v=""></td>']
        for c in df.columns:
            v = r[c]
            if isinstance(v, float) and v == v:
                cells.append(f'<td class="num" data-v="{v!r}">{esc(f"{v:.4g}")}</td>')
            elif c == "report" and isinstance(v, str):
                cells.append(f'<td><a href="{esc(Path(v).as_uri())}">{esc(Path(v).name)}</a></td>')
            else:
                cells.append(f"<td>{esc(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>histo cohort</title>"
            f"<style>{_PAGE_CSS}</style></head><body><p class=\"disclaimer\">Research use only — not a diagnostic "
            f"device.</p><h1>Cohort: {len(df)} rows</h1><p>Click a column header to sort.</p>"
            f"<table id=\"cohort\"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<script>{_SORT_JS}</script></body></html>\n")


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise HistoError(f"{path}: cannot read ({exc})") from exc


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


def write_cohort(dirs: Iterable[str | os.PathLike[str]], out_dir: str | os.PathLike[str],
                 csv_tables: bool = False) -> dict[str, Path]:
    """Write cohort.csv, cohort.parquet and cohort.html (and with ``csv_tables`` the long tables); returns the paths."""
    entries = find_entries(list(dirs))
    df = cohort_frame(entries)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": _write_csv(df, out / COHORT_CSV)}
    with atomic_path(out / COHORT_PARQUET) as tmp:
        df.to_parquet(tmp, index=False)
    paths["parquet"] = out / COHORT_PARQUET
    paths["html"] = write_text(out / COHORT_HTML, cohort_html(df, entries))
    if csv_tables:
        paths.update(export_tables(entries, out))
    return paths


def export_tables(entries: list[Entry], out: Path) -> dict[str, Path]:
    """tiles.csv, mitoses.csv and cells.csv: every row's tables stacked, with slide (and case_id, marker) columns."""
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLE_CSVS}
    for e in entries:
        if e.he_report is not None:
            pred = e.he_report.parent
            slide = pred.name
            for name, file in (("tiles.csv", TILES_FILE), ("mitoses.csv", MITOSES_FILE)):
                if (pred / file).is_file():
                    t = read_tiles(pred)[0] if file == TILES_FILE else _read_parquet(pred / file)
                    t.insert(0, "slide", slide)
                    t.insert(0, "case_id", e.case_id)
                    parts[name].append(t)
        for d in e.ihc_dirs:
            if (d / "ihc_cells.parquet").is_file():
                info = read_json_object(d / "ihc.json")
                c = _read_parquet(d / "ihc_cells.parquet")
                c.insert(0, "marker", info.get("marker"))
                c.insert(0, "slide", d.name)
                c.insert(0, "case_id", e.case_id)
                parts["cells.csv"].append(c)
    written = {}
    for name, frames in parts.items():
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"case_id": [], "slide": []})
        written[name.removesuffix(".csv")] = _write_csv(df, out / name)
    return written
