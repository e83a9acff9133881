"""Atomic Parquet parts of the manifest tables, and reading them back.

Layout: ``<out>/manifests/<table>/<part>.parquet``. A part is written to a
temporary name in the same directory and renamed when complete, so a reader
(DuckDB, pyarrow) never sees half a file. Temporary names start with ``.`` and
end with ``.tmp`` so that ``*.parquet`` globs never match them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from manifests.schemas import SCHEMA_VERSION, TABLES


def table_dir(out: str | os.PathLike, table: str) -> Path:
    if table not in TABLES:
        raise ValueError(f"unknown manifest table {table!r}; known: {sorted(TABLES)}")
    return Path(out) / "manifests" / table


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def to_table(table: str, rows: Iterable[dict]) -> pa.Table:
    """Rows (dicts) -> an Arrow table with the table's explicit schema.

    Missing columns become nulls; ``schema_version`` is filled in.
    """
    schema = TABLES[table]
    rows = list(rows)
    cols = {}
    for field in schema:
        if field.name == "schema_version":
            cols[field.name] = pa.array([SCHEMA_VERSION] * len(rows), type=field.type)
        else:
            cols[field.name] = pa.array([r.get(field.name) for r in rows], type=field.type)
    return pa.table(cols, schema=schema)


def write_part(out: str | os.PathLike, table: str, part: str, rows: Iterable[dict]) -> Path:
    """Write rows as ``<out>/manifests/<table>/<part>.parquet``, atomically."""
    d = table_dir(out, table)
    d.mkdir(parents=True, exist_ok=True)
    t = to_table(table, rows)
    path = d / f"{part}.parquet"
    tmp = d / f".{part}.{uuid.uuid4().hex[:8]}.tmp"
    pq.write_table(t, tmp, compression="zstd")
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(d)
    return path


def list_parts(out: str | os.PathLike, table: str) -> list[Path]:
    d = table_dir(out, table)
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("*.parquet") if not p.name.startswith("."))


def read_table(out: str | os.PathLike, table: str, columns: list[str] | None = None) -> pa.Table:
    """All parts of a table concatenated (an empty table with the schema if none)."""
    schema = TABLES[table]
    parts = list_parts(out, table)
    if not parts:
        t = schema.empty_table()
        return t.select(columns) if columns else t
    tables = [pq.read_table(p, columns=columns, schema=schema) for p in parts]
    return pa.concat_tables(tables)


def remove_temporaries(directory: str | os.PathLike) -> int:
    """Delete leftover ``.*.tmp`` files of a killed writer. Returns how many."""
    d = Path(directory)
    n = 0
    if d.is_dir():
        for p in d.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            n += 1
    return n
