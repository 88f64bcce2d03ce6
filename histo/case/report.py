"""The report step of a case: grade one prediction folder with a grading config and write its slide report."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histo.config import apply_overrides, load_yaml

if TYPE_CHECKING:
    from histo.aggregate import GradingConfig
    from histo.report import IhcInput, ReportPaths


def load_grading(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> GradingConfig:
    """The grading config: a YAML file (default: the built-in rules) plus ``KEY=VALUE`` overrides, validated."""
    from histo.aggregate import GradingConfig

    data = load_yaml(path) if path else {}
    source = str(path) if path else "<defaults>"
    if overrides:
        data = apply_overrides(data, list(overrides))
        source = f"{source} with --set overrides"
    return GradingConfig.from_dict(data, source=source)


@dataclass(frozen=True)
class SlideReport:
    """A written slide report: the high-grade verdict, its files (with the report.json dict) and the slide used."""

    verdict: str
    paths: ReportPaths
    slide: Path | None

    @property
    def report(self) -> dict[str, Any]:
        """The report.json dict."""
        return self.paths.report


def _slide_for(folder: Path, meta: dict[str, Any], slides: Sequence[Path], n_folders: int) -> Path | None:
    by_stem = {s.stem: s for s in slides}
    if folder.name in by_stem:
        return by_stem[folder.name]
    if len(slides) == 1 and n_folders == 1:
        return slides[0]
    p = meta.get("slide")
    if isinstance(p, str) and Path(p).is_file():
        return Path(p)
    return None


def report_prediction(folder: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None,
                      grading: GradingConfig | None = None, *, slides: Sequence[str | os.PathLike[str]] = (),
                      n_folders: int = 1, ihc: Sequence[str | os.PathLike[str] | IhcInput | dict[str, Any]] = (),
                      geojson_tiles: bool = True, thumbnail_px: int = 1024) -> SlideReport:
    """Grade a prediction folder and write report.json/html, annotations.geojson and images into ``out_dir``.

    ``out_dir`` defaults to the folder itself; ``grading`` to the built-in rules. The slide (for the
    thumbnail) is the one of ``slides`` named like the folder, the only one when one folder is reported,
    or the path prediction.json records; without one the heatmaps are drawn on white. ``ihc`` results
    (ihc.json paths, folders or dicts) are added to the report."""
    from histo.aggregate import GradingConfig, assess_slide
    from histo.prediction import (
        load_prediction,
        model_summary_of,
        read_tta,
        slide_mpp_of,
        tiles_metadata,
    )
    from histo.report import write_slide_report  # matplotlib loads only when reporting

    folder = Path(folder)
    tiles, mitoses, meta = load_prediction(folder)
    tmeta = tiles_metadata(folder)
    mpp = slide_mpp_of(meta, tmeta, folder)
    card = model_summary_of(meta, tmeta)
    # a null mitoses.min_score is the card's threshold (the operating point histo train chose on validation)
    cfg = (grading or GradingConfig()).for_model(card.get("mitosis_threshold"), source=f"{folder / 'prediction.json'}")
    domain_method = (meta.get("domain") or {}).get("method") if isinstance(meta.get("domain"), dict) else None
    dims = meta.get("slide_dimensions")
    assessment = assess_slide(tiles, mitoses, mpp, cfg, tuple(dims) if dims else None,
                              not_measured=meta.get("heads_not_run") or {}, domain_method=domain_method)
    spread = None
    variants = read_tta(folder)
    if variants is not None:
        from histo.aggregate.tta import tta_spread

        spread = tta_spread(
            tiles, variants[0], variants[1],
            lambda t, m: assess_slide(t, m, mpp, cfg, tuple(dims) if dims else None,
                                      not_measured=meta.get("heads_not_run") or {}, domain_method=domain_method),
            main=assessment.to_dict())
    slide = _slide_for(folder, meta, [Path(s) for s in slides], n_folders)
    paths = write_slide_report(Path(out_dir) if out_dir is not None else folder, assessment=assessment, tiles=tiles,
                               mitoses=mitoses, slide=slide, card_summary=card, prediction_meta=meta,
                               ihc=list(ihc) or None, slide_name=folder.name, geojson_tiles=geojson_tiles,
                               thumbnail_px=thumbnail_px, tta=spread)
    return SlideReport(paths.report["verdict"]["high_grade"], paths, slide)
