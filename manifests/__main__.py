"""``python -m manifests OUT "SQL"``: query an output directory's manifests with DuckDB.

Views: sources, segments, shards, tokens, runs (see README, "Manifests").
Without SQL, prints a summary of the corpus.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb

from manifests.views import connect

SUMMARY = """
SELECT
  (SELECT count(*) FROM sources) AS sources,
  (SELECT count(*) FROM sources WHERE status <> 'ok') AS sources_not_ok,
  (SELECT round(coalesce(sum(duration), 0) / 3600, 3) FROM sources WHERE status = 'ok') AS hours_in,
  (SELECT count(*) FROM segments WHERE kept) AS segments_kept,
  (SELECT count(*) FROM segments WHERE NOT kept) AS segments_dropped,
  (SELECT round(coalesce(sum(duration), 0) / 3600, 3) FROM segments WHERE kept) AS hours_kept,
  (SELECT count(DISTINCT speaker) FROM segments WHERE kept) AS speakers,
  (SELECT count(*) FROM shards) AS shards
"""


def main(argv: list[str] | None = None) -> int:
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
