"""``python -m manifests OUT "SQL"``: query an output directory's manifests with DuckDB.

Views: sources, segments, shards, tokens, runs (see README, "Manifests").
Without SQL, prints a summary of the corpus.
``python -m manifests report OUT`` writes the HTML report (see ``manifests.report``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb

from manifests.views import SUMMARY, connect


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"] and not (Path("report") / "manifests").is_dir():  # not an output dir named report
        from manifests.report import main as report_main

        return report_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m manifests", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output directory of an ingest run (holds manifests/)")
    ap.add_argument("sql", nargs="?", default=None, help="SQL over the views; default: a summary")
    ap.add_argument("--max-rows", type=int, default=100, help="rows to print (default 100)")
    ap.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    args = ap.parse_args(argv)
    if not (Path(args.out) / "manifests").is_dir():
        print(f"error: {args.out!r} has no manifests/ directory (is it an ingest output?)", file=sys.stderr)
        return 2
    con = connect(args.out)
    try:
        rel = con.sql(args.sql or SUMMARY)
    except duckdb.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if rel is None:  # a statement without a result
        return 0
    if args.csv:
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(rel.columns)
        for row in rel.fetchmany(args.max_rows):
            w.writerow(row)
    else:
        rel.show(max_rows=args.max_rows, max_width=200)
    return 0


if __name__ == "__main__":
    sys.exit(main())
