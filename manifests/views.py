"""DuckDB views over the manifest tables: ``sources, segments, shards, tokens, runs``.

``sources`` shows one row per input path: a ``failed`` attempt that a later run retried is
superseded by the retry's row (the Parquet parts keep both).

    con = connect("OUT")
    con.execute("SELECT speaker, sum(duration)/3600 AS hours FROM segments WHERE kept GROUP BY 1").fetchall()

A table with no parts yet gets an empty view with the right columns, so queries
never fail on a fresh output directory.
"""

from __future__ import annotations

import os

import duckdb

from manifests.schemas import TABLES
from manifests.store import list_parts, table_dir

# The corpus summary (``python -m manifests OUT`` and the report's first table).
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

_DUCK_TYPES = {
    "string": "VARCHAR",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "double": "DOUBLE",
    "bool": "BOOLEAN",
}


def _empty_select(table: str) -> str:
    cols = []
    for f in TABLES[table]:
        t = _DUCK_TYPES.get(str(f.type), None)
        if t is None:
            # nested or timestamp types: NULL of a JSON-ish type is enough for an empty view
            t = "TIMESTAMPTZ" if str(f.type).startswith("timestamp") else "VARCHAR"
        cols.append(f"CAST(NULL AS {t}) AS \"{f.name}\"")
    return f"SELECT {', '.join(cols)} WHERE false"


# One row per input path: a ``failed`` row (a stage error, retried by the next run) is superseded
# by any row of the same path in a later part (part names sort in commit order). The parquet
# parts keep every attempt, as history.
_SOURCES_LATEST = """SELECT * EXCLUDE (filename, _last_part) FROM (
    SELECT *, max(filename) OVER (PARTITION BY path) AS _last_part FROM ({parts})
) WHERE NOT (status = 'failed' AND filename < _last_part)"""


def connect(out: str | os.PathLike, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per manifest table of ``out``."""
    con = duckdb.connect(database)
    for table in TABLES:
        if list_parts(out, table):
            glob = str(table_dir(out, table) / "*.parquet").replace("'", "''")
            # union_by_name: parts written by different schema versions still read together
            sql = f"SELECT * FROM read_parquet('{glob}', union_by_name=true)"
            if table == "sources":
                sql = _SOURCES_LATEST.format(parts=sql.replace("union_by_name=true", "union_by_name=true, filename=true"))
        else:
            sql = _empty_select(table)
        con.execute(f"CREATE OR REPLACE VIEW {table} AS {sql}")
    return con
