"""The IHC step of a case: score one IHC slide for its marker, in the tumour of the H&E predictions, resumably.

Outputs go to ``out/<slide_stem>/`` (ihc.json last, holding the run key under ``run_settings``): a slide whose
ihc.json holds the same run key (slide file, its mpp, the marker's panel entry, the options, the tumour map
file, the H&E slide registered onto and the necrosis rules) is skipped, and redone otherwise, the reason naming
what changed. With a tumour map, the IHC slide is registered onto the H&E slide the prediction was made on
(prediction.json's ``slide``, or ``he_slide``) and the mask carried over (histo.register; a no-op when the
frames agree, all tissue when the registration is poor or failed). When that H&E file cannot be found the
slides must share a level-0 frame, as before, and ihc.json carries a ``registration_not_possible`` flag.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from histo.errors import ConfigError, HistoError
from histo.prediction import PREDICTION_FILE, TILES_FILE, match_prediction, read_tiles, tiles_metadata
from histo.rerun import (
    describe_changes,
    file_fingerprint,
    read_json,
    redo_reason,
    stored_settings,
)

if TYPE_CHECKING:
    from histo.aggregate import GradingConfig
    from histo.ihc import MarkerSpec
    from histo.slide import Slide
    from histo.tissue import TissueMask


@dataclass(frozen=True)
class IHCOptions:
    """How an IHC slide is scored (the `histo ihc` options); every field but the last three is in the run key."""

    mpp: float | None = None  # level-0 µm/px for a slide whose file lacks it
    analysis_mpp: float | None = None  # None: the marker's analysis_mpp in the panel, never finer than the slide
    stain: Literal["ruifrok", "estimate"] = "ruifrok"
    non_spindle_class: str = "none"  # the pattern class that is not tumour
    necrosis_min_p: float | None = None  # None: the grading config's
    allow_frame_mismatch: bool = False
    register: bool = True  # register onto the H&E before using its tumour mask (False: the frames must agree)
    workers: int = 2  # tiles scored at once by `pool` workers (0 = in this thread)
    pool: Literal["thread", "process"] = "thread"
    overwrite: bool = False
    progress: bool = False


@dataclass
class IHCStatus:
    """One IHC slide's outcome: its row of status.csv."""

    slide: str
    path: str
    status: str  # ok | no_tissue | skipped | failed
    reason: str = ""
    marker: str = ""
    region: str = ""
    call: str = ""
    n_cells: int = 0
    pct_positive: float | str = ""
    h_score: float | str = ""
    seconds: float = 0.0


@dataclass
class IHCSlideResult:
    """What scoring one IHC slide gave: its status row, its ihc.json dict and folder."""

    status: IHCStatus
    folder: Path
    summary: dict[str, Any] = field(default_factory=dict)  # ihc.json as written (or as found, when skipped)


def necrosis_rules(grading: GradingConfig | None = None, necrosis_min_p: float | None = None) -> GradingConfig:
    """The grading config whose tile rules find the necrotic regions left out of the IHC count."""
    from histo.aggregate import GradingConfig

    cfg = grading or GradingConfig()
    if necrosis_min_p is not None:
        if not 0.0 < necrosis_min_p <= 1.0:
            raise HistoError(f"--necrosis-min-p must lie in (0, 1], got {necrosis_min_p}")
        t = cfg.tiles
        cfg = dataclasses.replace(cfg, tiles=dataclasses.replace(
            t, necrosis_min_p=necrosis_min_p, necrosis_grow_p=min(t.necrosis_grow_p, necrosis_min_p)))
    return cfg


def resolve_tumour_tiles(source: str | os.PathLike[str] | None, slide_stem: str) -> Path | None:
    """The H&E tiles.parquet for an IHC slide: a tiles.parquet, a prediction folder, or a folder of them."""
    if source is None:
        return None
    p = Path(source)
    return match_prediction(p, slide_stem) if p.is_dir() else p


def recorded_he_slide(tumour: Path) -> str | None:
    """The H&E slide path a prediction records: prediction.json's ``slide``, else its tile table's; None when neither."""
    folder = tumour if tumour.is_dir() else tumour.parent
    pj = read_json(folder / PREDICTION_FILE)
    if pj is not None and isinstance(pj.get("slide"), str) and pj["slide"]:
        return str(pj["slide"])
    try:
        meta = tiles_metadata(tumour)
    except HistoError:
        return None
    v = meta.get("slide")
    return str(v) if isinstance(v, str) and v else None


@dataclass(frozen=True)
class HESource:
    """The H&E slide an IHC slide is registered onto (path None: not registered, ``note`` says why)."""

    path: Path | None
    note: str = ""  # why registration was not possible ('' when it is, or was not asked for)


def he_source(tumour: Path | None, he_slide: str | os.PathLike[str] | None, options: IHCOptions) -> HESource:
    """Which H&E to register onto: ``he_slide`` when given (it must exist), else the one the prediction records."""
    if tumour is None or not options.register:
        return HESource(None)
    if he_slide is not None:
        p = Path(he_slide)
        if not p.is_file():
            raise ConfigError(f"H&E slide {p} not found (it is registered onto before the tumour mask is used)")
        return HESource(p)
    recorded = recorded_he_slide(tumour)
    if recorded is None:
        return HESource(None, f"the prediction {tumour} does not record its H&E slide")
    if not Path(recorded).is_file():
        return HESource(None, f"the H&E slide the prediction records, {recorded}, is not there (moved? pass --he-slide)")
    return HESource(Path(recorded))


def ihc_run_settings(options: IHCOptions, spec: MarkerSpec, tumour: Path | None, slide_path: Path,
                     slide_mpp: float, grading: GradingConfig | None, he_path: Path | None = None) -> dict[str, Any]:
    """The run key of one IHC slide: everything that changes its cells, scores and call."""
    tumour_file = (tumour / TILES_FILE if tumour.is_dir() else tumour) if tumour is not None else None
    return {
        "slide": file_fingerprint(slide_path),
        "mpp": float(slide_mpp),
        "marker": spec.name,
        "compartment": spec.compartment,
        "thresholds_od": list(spec.thresholds_od),
        "call": asdict(spec.call),
        "cell_params": asdict(spec.cell_params),
        "analysis_mpp": options.analysis_mpp,
        "panel_analysis_mpp": spec.analysis_mpp,
        "stain": options.stain,
        "tumour_tiles": ({"path": str(tumour_file.resolve()), **file_fingerprint(tumour_file)}
                         if tumour_file is not None and tumour_file.is_file() else
                         (str(tumour.resolve()) if tumour is not None else None)),
        "non_spindle_class": options.non_spindle_class,
        "necrosis": asdict(necrosis_rules(grading, options.necrosis_min_p).tiles) if tumour is not None else None,
        "allow_frame_mismatch": bool(options.allow_frame_mismatch),
        "registered_onto": ({"path": str(he_path.resolve()), **file_fingerprint(he_path)}
                            if he_path is not None else None),
    }


def tumour_mask_for(slide: Slide, tumour_tiles: Path, options: IHCOptions,
                    grading: GradingConfig | None = None, he: Slide | None = None) -> TissueMask:
    """The viable-tumour counting region from H&E tile predictions (necrotic regions left out), in the H&E frame.

    Without ``he`` (the H&E slide, registered onto later) that frame must be the IHC ``slide``'s (checked
    here on mpp when the prediction does not record its slide's size; on size by score_slide)."""
    from histo.aggregate import necrotic_mask
    from histo.ihc import tumour_mask_from_tiles

    tiles, meta = read_tiles(tumour_tiles)
    ref = he if he is not None else slide
    he_mpp = float(meta.get("slide_mpp") or ref.mpp)
    he_dims = meta.get("slide_dimensions") or meta.get("dimensions") or (he.dimensions if he is not None else None)
    if not he_dims and abs(he_mpp - slide.mpp) / slide.mpp > 0.03 and not options.allow_frame_mismatch:
        raise HistoError(f"{tumour_tiles}: the H&E slide was {he_mpp:g} µm/px, this IHC slide {slide.mpp:g} µm/px: "
                         "not the same level-0 frame, and the H&E slide was not found to register onto (--he-slide)")
    # Necrosis as the H&E report measured it (regions, not single tiles), so the IHC is counted in the
    # viable tumour the report shows.
    necrotic = necrotic_mask(tiles, he_mpp, necrosis_rules(grading, options.necrosis_min_p))
    return tumour_mask_from_tiles(tiles, tuple(he_dims) if he_dims else slide.dimensions, slide_mpp=he_mpp,
                                  non_spindle_class=options.non_spindle_class, necrotic=necrotic)


def registration_phrase(reg: dict[str, Any] | None) -> str:
    """The status line's note on registration: '' when none was done, else its status, error and what it meant."""
    if not reg:
        return ""
    status, err = reg.get("status"), reg.get("estimated_error_um")
    err_s = f", estimated error {float(err):.1f} µm" if isinstance(err, (int, float)) else ""
    if status == "ok":
        return f"; registered onto the H&E (ok{err_s})"
    if status == "not_registered":
        return "; not registered onto the H&E (H&E slide not found): same frame assumed"
    return f"; registration onto the H&E {status}{err_s}: counted in all tissue"


def _fmt(v: Any) -> float | str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return ""
    return round(f, 2) if f == f else ""


def score_ihc_slide(path: str | os.PathLike[str], spec: MarkerSpec, out_dir: str | os.PathLike[str], *,
                    tumour_tiles: str | os.PathLike[str] | None = None, grading: GradingConfig | None = None,
                    options: IHCOptions | None = None,
                    he_slide: str | os.PathLike[str] | None = None) -> IHCSlideResult:
    """Score one IHC slide into ``out_dir/<slide_stem>/``; a finished slide with the same run key is skipped.

    ``tumour_tiles`` is the H&E prediction (tiles.parquet, its folder, or a folder of prediction folders
    matched by slide stem) whose tumour, less the necrotic regions ``grading`` finds, is the counting
    region; without it cells are counted in the tissue. This slide is first registered onto the H&E the
    prediction was made on (``he_slide``, else the path prediction.json records; not with ``options.register``
    False) and the mask carried over (histo.register); a poor or failed registration counts in all tissue and
    says so; an H&E that cannot be found leaves the same-frame check and a ``registration_not_possible`` flag.
    Raises HistoError (nothing written) when it cannot."""
    from histo.ihc import score_slide, write_ihc_outputs
    from histo.ihc.regions import FrameMismatchError
    from histo.ihc.result import SlideQCFlag
    from histo.slide import open_slide

    opts = options or IHCOptions()
    if opts.workers < 0:
        raise ConfigError(f"workers must be >= 0, got {opts.workers}")
    t0 = time.perf_counter()
    path = Path(path)
    slide_dir = Path(out_dir) / path.stem
    tumour = resolve_tumour_tiles(tumour_tiles, path.stem)
    reason = ""
    he = he_source(tumour, he_slide, opts)
    with open_slide(path, mpp=opts.mpp) as slide:
        settings = ihc_run_settings(opts, spec, tumour, path, slide.mpp, grading, he.path)  # MppError when unknown
        prev = None if opts.overwrite else read_json(slide_dir / "ihc.json")
        if prev is not None:
            changes = describe_changes(stored_settings(prev), settings)
            if not changes:
                row = IHCStatus(path.stem, str(path), "skipped",
                                "ihc.json exists with the same slide, mpp and settings (--overwrite redoes it)",
                                spec.name, prev.get("region", ""), (prev.get("call") or {}).get("label", ""),
                                int(prev.get("n_cells") or 0), _fmt(prev.get("pct_positive")),
                                _fmt(prev.get("h_score")), 0.0)
                return IHCSlideResult(row, slide_dir, prev)
            reason = redo_reason(changes)
            # The old completion mark must not vouch for the files while they are being replaced.
            (slide_dir / "ihc.json").unlink(missing_ok=True)
        he_open = open_slide(he.path, mpp=opts.mpp) if he.path is not None else None
        try:
            tmask = tumour_mask_for(slide, tumour, opts, grading, he_open) if tumour is not None else None
            result = score_slide(slide, spec, analysis_mpp=opts.analysis_mpp, tumour_mask=tmask, stain=opts.stain,
                                 workers=opts.workers, pool=opts.pool, progress=opts.progress,
                                 allow_frame_mismatch=opts.allow_frame_mismatch,
                                 he_slide=he_open if tmask is not None else None)
        except FrameMismatchError as exc:
            if not he.note:
                raise
            raise FrameMismatchError(f"not registered onto the H&E: {he.note}; {exc}") from None
        finally:
            if he_open is not None:
                he_open.close()
        if he.note:  # registration was asked for but not possible: the same-frame check was all there was
            msg = f"not registered onto the H&E: {he.note}; the tumour mask was used in this slide's own frame"
            result.qc.append(SlideQCFlag("registration_not_possible", "warning", float("nan"), 0.0, msg))
            result.qc_values["registration"] = {"status": "not_registered", "estimated_error_um": None,
                                                "applied": "same frame assumed", "reasons": [he.note]}
        summary = write_ihc_outputs(result, slide_dir, slide=slide, extra={"run_settings": settings})
    status = "no_tissue" if "no_tissue" in summary["qc"] else "ok"
    sentence = result.sentence + registration_phrase(result.qc_values.get("registration"))
    sentence = f"{reason} — {sentence}" if reason else sentence
    row = IHCStatus(path.stem, str(path), status, sentence, spec.name, result.region, result.call.call,
                    result.score.n_cells, _fmt(result.score.pct_positive), _fmt(result.score.h_score),
                    round(time.perf_counter() - t0, 2))
    return IHCSlideResult(row, slide_dir, summary)
