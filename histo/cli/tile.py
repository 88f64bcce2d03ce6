"""`histo tile SLIDES... -c CONFIG --out DIR`: plan tile grids over tissue and, on request, extract tiles.

Writes `DIR/config.yaml` (the resolved config), `DIR/status.csv` (one row per slide, merged in under
the table's lock after each slide) and one folder per slide (see `histo.tiling.run`). Finished slides
are skipped on a rerun with the same slide file, mpp and settings, and redone (saying what changed)
otherwise; a failed slide is reported and the others go on.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histo.cli.batch import report_problem
from histo.errors import ConfigError, HistoError

if TYPE_CHECKING:
    from histo.tiling import SlideResult, TilingConfig

# histo.tiling (scikit-image, pandas) loads in run(): every `histo` command builds this parser.


def register(sub: Any) -> None:
    """Add the `tile` subcommand."""
    p = sub.add_parser(
        "tile",
        help="plan tile grids over tissue (and extract tiles on request)",
        description="Detect tissue, lay a grid of tiles at a target µm/px over it and save it as Parquet; "
                    "optionally read every tile for QC and extract them as images or one zip per slide.",
    )
    p.add_argument("slides", nargs="+", help="slide files (any OpenSlide format, or PNG/JPEG/TIFF with --mpp)")
    p.add_argument("-c", "--config", help="tiling config YAML (default: the built-in defaults, "
                                          "as in configs/tiling/default.yaml)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set grid.mpp=1.0 (repeatable)")
    p.add_argument("--extract", choices=["png", "jpeg"], help="also write the tiles (shortcut for extract.format)")
    p.add_argument("--store", choices=["files", "zip"], help="tile images as files or one zip per slide")
    p.add_argument("--workers", type=int,
                   help="worker threads reading tiles (processes with --set pool=process; 0 = in this process; "
                        "default: the config's workers)")
    p.add_argument("--mpp", type=float, help="level-0 µm/px for slides whose file lacks it")
    p.add_argument("--force-mpp", action="store_true",
                   help="use --mpp even when it is far (over 2.1x) from the µm/px the file states")
    p.add_argument("--overwrite", action="store_true", help="redo slides that are already done")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def resolve_config(args: argparse.Namespace) -> TilingConfig:
    """The config file plus --set overrides plus the shortcut flags, validated."""
    from histo.config import apply_overrides, load_yaml
    from histo.tiling import TilingConfig

    data = load_yaml(args.config) if args.config else {}
    source = args.config or "<defaults>"
    overrides = list(args.overrides)
    if args.extract:
        overrides.append(f"extract.format={args.extract}")
    if args.store:
        overrides.append(f"extract.store={args.store}")
    if args.workers is not None:
        overrides.append(f"workers={args.workers}")
    data = apply_overrides(data, overrides)
    return TilingConfig.from_dict(data, source if not overrides else f"{source} with overrides")


def run(args: argparse.Namespace) -> int:
    """Tile every slide; one status row each; exit 1 if any failed."""
    from histo.slide import mpp_argument

    args.mpp = mpp_argument(args.mpp, args.force_mpp)  # issue 17: a bad --mpp exits 2 here as in `info`
    import yaml
    from tqdm.auto import tqdm

    from histo.atomic import write_text
    from histo.isolate import unexpected_reason
    from histo.status import update_status
    from histo.tiling import SlideResult, make_pool, tile_slide_isolated

    status_fields = [f.name for f in dataclasses.fields(SlideResult)]
    config = resolve_config(args)
    out = Path(args.out)
    slides = [Path(s) for s in args.slides]
    names: dict[str, Path] = {}
    for s in slides:
        if s.stem in names and names[s.stem].resolve() != s.resolve():
            raise ConfigError(f"two slides share the name {s.stem!r} ({names[s.stem]} and {s}); "
                              "outputs are named by slide, so tile them into different --out folders")
        names[s.stem] = s
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    pool = make_pool(config.workers, config.pool)
    failed = 0
    try:
        bar = tqdm(slides, desc="slides", unit="slide", disable=args.quiet or len(slides) < 2)
        for path in bar:
            try:
                # issue 17: each slide is tiled in a child process, so a native crash costs only its row
                result = tile_slide_isolated(path, out, config, mpp=args.mpp,
                                             overwrite=args.overwrite, progress=not args.quiet)
            except HistoError as exc:
                result = SlideResult(str(path), path.stem, "failed", reason=str(exc))
            except Exception as exc:  # noqa: BLE001 - one broken slide must not lose the rest of the batch
                result = SlideResult(str(path), path.stem, "failed", reason=unexpected_reason(exc))
            failed += result.status == "failed"
            update_status(out / "status.csv", {result.slide: dataclasses.asdict(result)}, status_fields)
            _report(result)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    ok = len(slides) - failed
    print(f"histo tile: {ok} of {len(slides)} slides done, {failed} failed; status in {out / 'status.csv'}",
          file=sys.stderr)
    return 1 if failed else 0


def _report(r: SlideResult) -> None:
    if report_problem(r):
        return
    if r.status == "no_tissue":
        print(f"no tissue {r.slide}: empty grid written to {r.grid_path}", file=sys.stderr)
    else:
        print(f"ok       {r.slide}: {r.n_tiles} tiles, {r.tissue_area_mm2:.2f} mm² tissue, {r.seconds:.1f} s "
              f"-> {r.grid_path}", file=sys.stderr)
    if r.reason.startswith("redone"):
        print(f"         {r.reason}", file=sys.stderr)
