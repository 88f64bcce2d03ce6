"""`histo demo`: the main job end to end on built-in data, for a newcomer with no slides of their own.

1. Writes two phantom cases (histo.synth presets high_grade_alk_positive and low_grade_alk_positive, at
   seeds never used to train the demo model): an H&E slide and an ALK IHC slide each, with exact truth.
2. Runs the case pipeline (`histo case`) with the small demo model shipped in the package (trained on
   phantoms by configs/train/phantom_multitask.yaml): tile predictions and mitosis points, grading, the
   ALK score in the predicted tumour, and the slide and case reports.
3. Prints each case's verdict next to the phantom's truth, and where the reports are.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from histo.errors import HistoError

# The presets of configs/synth and the seeds of the demo cases (training used seeds 0-7).
DEMO_CASES = (("high_grade_alk_positive", 901), ("low_grade_alk_positive", 902))
DEMO_SIZE_PX = 8192  # 2 mm squares at 0.25 µm/px: big enough for a 10-HPF hotspot window, seconds to write


def demo_model_dir() -> Path:
    """The folder of the demo model shipped in the package (weights + card)."""
    return Path(__file__).resolve().parents[1] / "resources" / "models" / "demo"


def _presets_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "configs" / "synth"


def register(sub: Any) -> None:
    """Add the `demo` subcommand."""
    p = sub.add_parser("demo", help="run the main job end to end on built-in phantom cases (no data needed)",
                       description="Write two phantom cases (H&E + ALK IHC), grade them with the shipped demo model, "
                                   "score ALK in the tumour and write the slide and case reports; prints where "
                                   "they are. Research use only.")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--size-px", type=int, default=DEMO_SIZE_PX, help=f"phantom edge in px at 0.25 µm/px (default {DEMO_SIZE_PX})")
    p.add_argument("--model", help="model folder to use instead of the shipped demo model")
    p.add_argument("--workers", type=int, default=2, help="worker processes rendering phantoms and reading H&E tiles, and worker threads scoring IHC tiles "
                        "(0 = in this process; default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def write_cases(out: Path, size_px: int, workers: int, progress: bool) -> list[tuple[Path, dict]]:
    """Write the demo phantoms (once) and their case files; returns (case file, phantom summary) pairs."""
    from histo.synth.phantom import make_phantom

    slides = out / "slides"
    cases = out / "cases"
    cases.mkdir(parents=True, exist_ok=True)
    made = []
    for preset, seed in DEMO_CASES:
        folder = slides / preset
        summary_path = folder / "summary.json"
        if summary_path.is_file():
            from histo.synth.phantom import read_summary

            summary = read_summary(summary_path)  # a demo folder written before summary/2 reads too
        else:
            print(f"writing phantom case {preset} ({size_px} x {size_px} px at 0.25 µm/px, H&E + IHC) ...", file=sys.stderr)
            summary = make_phantom(_presets_dir() / f"{preset}.yaml", slides, seed=seed, size_px=(size_px, size_px),
                                   workers=workers, progress=progress).summary
        files = summary["files"]
        case = {"case_id": preset, "he": str((folder / files["he"]).resolve()),
                "ihc": {"ALK": str((folder / files["ihc"]).resolve())}}
        case_file = cases / f"{preset}.yaml"
        case_file.write_text(yaml.safe_dump(case, sort_keys=False), encoding="utf-8")
        made.append((case_file, summary))
    return made


def _truth_line(summary: dict) -> str:
    """The phantom's truth in the words of the report."""
    m = summary.get("mitoses") or {}
    ihc = summary.get("ihc") or {}
    g = summary.get("grading") or {}
    parts = []
    if "high_grade" in g:
        parts.append(f"high grade {'yes' if g['high_grade'] else 'no'}")
    if m.get("hotspot_per_10hpf") is not None:
        parts.append(f"mitoses {m['hotspot_per_10hpf']:.0f} per 10 HPF in the hotspot, "
                     f"{m['per_10hpf']:.1f} over the whole tumour")
    elif m.get("per_10hpf") is not None:
        parts.append(f"mitoses {m['per_10hpf']:.1f} per 10 HPF (whole tumour)")
    if summary.get("necrosis_pct_of_tumour") is not None:
        parts.append(f"necrosis {summary['necrosis_pct_of_tumour']:.1f} % of tumour")
    if ihc.get("pct_positive") is not None:
        parts.append(f"{ihc.get('marker', 'IHC')} {ihc['pct_positive']:.0f} % of tumour cells >= 1+, "
                     f"H-score {ihc['h_score']:.0f}")
    return "; ".join(parts)


def run(args: argparse.Namespace) -> int:
    """Make the demo cases (once), run the case pipeline with the demo model, print where the reports are."""
    from histo.case import CaseOptions, load_grading
    from histo.cli.case import run_cases
    from histo.ihc import load_panel
    from histo.models import describe_model, load_model

    t0 = time.perf_counter()
    out = Path(args.out)
    model = Path(args.model) if args.model else demo_model_dir()
    if not model.is_dir() or not any(model.glob("*.card.json")):
        raise HistoError(f"demo model not found in {model}: reinstall histo, or train one with "
                         "`histo train -c configs/train/phantom_multitask.yaml` and pass --model")
    made = write_cases(out, args.size_px, args.workers, not args.quiet)
    net, card = load_model(model, "cpu")
    if not args.quiet:
        print(f"histo demo: {describe_model(card, model, 'demo model' if not args.model else '--model')}",
              file=sys.stderr)
    rc = run_cases([c for c, _ in made], out / "reports", model=net, card=card, grading=load_grading(),
                   panel=load_panel(), options=CaseOptions(workers=args.workers, progress=not args.quiet))
    status = (out / "reports" / "status.csv")
    print(f"\nhisto demo finished in {time.perf_counter() - t0:.0f} s (research use only, not a diagnostic device)")
    for case_file, summary in made:
        case_id = case_file.stem
        report = out / "reports" / case_id / "case_report.json"
        print(f"\n  case {case_id}")
        if report.is_file():
            case = json.loads(report.read_text(encoding="utf-8"))
            print(f"    histo:  {case.get('summary', '')}")
            print(f"    truth:  {_truth_line(summary)}")
            print(f"    report: {report.with_name('case_report.html')}")
        else:
            print(f"    failed: see {status}")
    print(f"\n  slides and their truth: {out / 'slides'}\n  case files: {out / 'cases'}")
    return rc
