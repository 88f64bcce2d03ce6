"""Per-head provenance for the model card: which data each head learned from and was validated on.

Built from the data module's label counts (tiles and figures per split, source, head and label), its split
table (the groups of each split) and the config's ``provenance.sources`` descriptions, so the report can
say, for example, "mitosis: MITOS-ATYPIA-14 (breast, 40x), F1 0.52 on 2 held-out slides; pattern:
synthetic phantoms only".
"""

from __future__ import annotations

from typing import Any

import pandas as pd

# Source names histo.data gives to sources that are never real tissue.
SYNTHETIC_SOURCES = ("phantoms",)
HEAD_METRIC_KEYS = {
    "pattern": ("pattern_bacc", "pattern_auroc"),
    "necrosis": ("necrosis_auroc",),
    "mitosis": ("mitosis_f1", "mitosis_precision", "mitosis_recall"),
}


def _info(config: Any, source: str) -> dict[str, Any]:
    """The config's description of a source (phantoms are synthetic whatever the config says)."""
    described = getattr(getattr(config, "provenance", None), "sources", {}) or {}
    info = described.get(source)
    synthetic = source in SYNTHETIC_SOURCES or source.startswith("phantom")
    out = {"source": source, "description": getattr(info, "description", "") if info else "",
           "licence": getattr(info, "licence", "") if info else "",
           "real": (bool(getattr(info, "real", True)) if info else False) and not synthetic}
    if synthetic and not out["description"]:
        out["description"] = "synthetic phantom slides (histo.synth)"
        out["licence"] = out["licence"] or "generated"
    return out


def _groups(dm: Any, split: str, source: str) -> list[str]:
    table = getattr(dm, "split_table", None)
    if table is None or not len(table):
        return []
    sel = table[(table["split"] == split) & (table["source"] == source)]
    return sorted({str(n) for n in sel["name"]})


def head_provenance(config: Any, heads: Any, dm: Any, metrics: dict[str, float]) -> dict[str, dict[str, Any]]:
    """One provenance entry per head: train and validation sources with label counts, groups and figures."""
    counts = getattr(dm, "label_counts", None)
    out: dict[str, dict[str, Any]] = {}
    for head in heads:
        entry: dict[str, Any] = {"train": [], "validation": {"sources": [], "metrics": {}}}
        if isinstance(counts, pd.DataFrame) and len(counts):
            sel = counts[counts["head"] == head]
            for split in ("train", "val"):
                for source, part in sel[sel["split"] == split].groupby("source"):
                    labelled = int(part["n_tiles"].sum())
                    if labelled == 0:
                        continue
                    positive = part[part["label"] == "positive"] if head != "pattern" else part
                    row = {**_info(config, str(source)), "n_labelled_tiles": labelled,
                           "n_positive_tiles": int(positive["n_tiles"].sum()) if head != "pattern" else labelled,
                           "groups": _groups(dm, split, str(source))}
                    if head == "mitosis":
                        row["n_figures"] = int(part["n_figures"].sum())
                    if head == "pattern":
                        row["per_class"] = {str(r.label): int(r.n_tiles) for r in part.itertuples()}
                    (entry["train"] if split == "train" else entry["validation"]["sources"]).append(row)
        entry["validation"]["metrics"] = {k: float(metrics[k]) for k in HEAD_METRIC_KEYS.get(head, ()) if k in metrics}
        entry["real"] = any(r["real"] for r in entry["train"])
        if head == "pattern":
            # A pattern head is real only when every class (each spindle pattern too) has real labels.
            classes = list(heads[head].get("classes", [])) if isinstance(heads, dict) else []
            real_classes = sorted({c for r in entry["train"] if r["real"] for c, n in r.get("per_class", {}).items() if n})
            entry["real_classes"] = real_classes
            entry["real"] = bool(classes) and set(classes) <= set(real_classes)
        entry["summary"] = summary_line(head, entry)
        out[head] = entry
    return out


def summary_line(head: str, entry: dict[str, Any]) -> str:
    """e.g. "mitosis: MITOS-ATYPIA-14 ... + phantoms; F1 0.52 on 2 held-out groups" or "... synthetic phantoms only"."""
    train = entry.get("train", [])
    if not train:
        return f"{head}: no training data recorded"
    if not any(r.get("real") for r in train):
        what = "synthetic phantoms only"
    elif head == "pattern" and not entry.get("real"):
        real = entry.get("real_classes", [])
        synthetic = [c for c in train[0].get("per_class", {}) if c not in real] if train else []
        what = (f"{', '.join(synthetic) or 'spindle patterns'} from synthetic phantoms only"
                f" ({', '.join(real)} also from real tissue)" if real else "synthetic phantoms only")
    else:
        what = " + ".join(r.get("description") or r["source"] for r in train)
    val = entry.get("validation", {})
    groups = sum(len(r.get("groups", [])) for r in val.get("sources", []))
    figures = ", ".join(f"{k.split('_', 1)[1]} {v:.2f}" for k, v in val.get("metrics", {}).items()
                        if k.endswith(("f1", "auroc", "bacc")))
    real_val = [r for r in val.get("sources", []) if r.get("real")]
    where = (f" on {groups} held-out group(s)" + ("" if real_val else " of phantoms")) if groups else ""
    return f"{head}: {what}" + (f"; validation {figures}{where}" if figures else "")
