"""`histo cohort DIRS... --out DIR [--csv]`: one table of every slide and case report, for statistics."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    """Add the `cohort` subcommand."""
    p = sub.add_parser("cohort", help="one table (CSV, Parquet, sortable HTML) of every slide and case report",
                       description="Collect every finished slide report (report.json), IHC result (ihc.json) and "
                                   "case report (case_report.json) under the given folders into cohort.csv, "
                                   "cohort.parquet and cohort.html: one row per slide or case with every measurement, "
                                   "the FNCLCC scores, the verdict, the domain status, each marker's % positive, "
                                   "H-score and call, the model and the histo version.")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run, slide or case folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--csv", action="store_true",
                   help="also write tiles.csv, mitoses.csv and cells.csv: every row's tile, mitosis and IHC cell "
                        "tables stacked, with case_id and slide columns")
    p.add_argument("--quiet", action="store_true", help="print nothing on success (errors only)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write the cohort files and say where they are."""
    from histo.cohort import write_cohort

    paths = write_cohort(args.dirs, args.out, csv_tables=args.csv)
    if args.quiet:
        return 0
    import pandas as pd

    n = len(pd.read_parquet(paths["parquet"], columns=["kind"]))
    print(f"histo cohort: {n} rows -> " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0
