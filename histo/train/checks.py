"""Training data checks before a Trainer starts: label counts printed and saved, bad labels and empty heads refused.

A run stops here, with a ConfigError listing every problem, when
- annotations have a class the label map does not know, lie outside their slide or image, or lie only on
  glass (unless ``data.allow_label_problems: true``, which lists them as warnings and leaves them out);
- there is no validation split while the checkpoint or early stopping monitors a ``val/`` metric;
- a head has no positive label (necrosis: also no negative; pattern: a class missing in train, fewer
  than two classes in val) in train or val. A metric measured on no labels is never recorded: the
  run does not start.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from histo.atomic import write_text
from histo.errors import ConfigError

MAX_LISTED = 20  # label problems printed in full; the rest are counted (all are in label_problems.txt)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def format_counts(counts: pd.DataFrame) -> str:
    """The label counts as a small text table: one line per split, head and label (sources summed), figures for mitosis."""
    if counts.empty:
        return "  (no labelled tiles)"
    tot = counts.groupby(["split", "head", "label"], sort=False)[["n_tiles", "n_figures"]].sum().reset_index()
    lines = [f"  {'split':<6} {'head':<9} {'label':<14} {'tiles':>8} {'figures':>8}"]
    for r in tot.itertuples():
        fig = str(r.n_figures) if r.head == "mitosis" and r.label == "positive" else ""
        lines.append(f"  {r.split:<6} {r.head:<9} {r.label:<14} {r.n_tiles:>8} {fig:>8}")
    return "\n".join(lines)


def save_counts(counts: pd.DataFrame, problems: Sequence[Any], run_dir: Path) -> None:
    """Write label_counts.csv, label_counts.json (per split/source/head/label) and label_problems.txt into the run folder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "label_counts.csv", counts.to_csv(index=False))
    write_text(run_dir / "label_counts.json", json.dumps(counts.to_dict(orient="records"), indent=1) + "\n")
    write_text(run_dir / "label_problems.txt", "".join(f"{p}\n" for p in problems))


def check_datamodule(dm: Any, heads: Sequence[str], run_dir: Path | None, *, allow_label_problems: bool | None = None,
                     needs_val: bool = True, echo: Callable[[str], None] = _stderr) -> pd.DataFrame:
    """Set up `dm` (a histo.data.TileDataModule), print and save its label counts, raise ConfigError on any problem.

    `allow_label_problems` None takes the data config's ``allow_label_problems``.
    """
    if allow_label_problems is None:
        allow_label_problems = bool(getattr(dm.config, "allow_label_problems", False))
    dm.prepare_data()
    dm.setup("fit")
    counts = dm.label_counts
    counts = counts[counts["head"].isin(list(heads))].reset_index(drop=True)  # only the heads this model trains
    problems = list(dm.label_problems)
    if run_dir is not None:
        save_counts(counts, problems, Path(run_dir))
    where = f" (saved to {Path(run_dir) / 'label_counts.csv'})" if run_dir is not None else ""
    echo(f"label counts per split, head and label{where}:\n{format_counts(counts)}")
    errors: list[str] = []
    if problems:
        listed = "\n".join(f"    {p}" for p in problems[:MAX_LISTED])
        more = f"\n    ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        kinds = ", ".join(f"{k}: {sum(p.kind == k for p in problems)}" for k in dict.fromkeys(p.kind for p in problems))
        text = f"{len(problems)} annotation(s) cannot be used ({kinds}):\n{listed}{more}"
        if allow_label_problems:
            echo(f"warning: {text}\n  (left out: data.allow_label_problems is true)")
        else:
            errors.append(f"{text}\n  fix them, map their class in the label map, or set data.allow_label_problems: true "
                          "to leave them out")
    from histo.data.checks import head_problems

    has_val = "val" in dm.datasets and len(dm.datasets["val"]) > 0
    heads_bad = head_problems(counts, list(heads), dm.input_spec.pattern_classes)
    if not has_val and needs_val:
        table = getattr(dm, "split_table", None)
        names = sorted(set(table["name"])) if table is not None and len(table) else []
        frac = dm.config.split.val_fraction
        errors.append(f"no validation split: every annotated slide/group ({', '.join(names[:10]) or 'none'}) went to "
                      f"train (split.val_fraction {frac} of {len(names)} group(s) leaves none for validation). Add a "
                      "slide or case for validation (split: val), name val_groups in a frames/images source, or "
                      "add more slides; the checkpoint monitors a val/ metric that would never be measured")
        heads_bad = [h for h in heads_bad if " in val" not in h]
    errors += heads_bad
    if errors:
        raise ConfigError("training data checks failed, training not started:\n  - " + "\n  - ".join(errors))
    return counts

