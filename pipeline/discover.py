"""Discover stage: inputs (directories, globs, list files, URIs) -> a sorted list of audio paths.

- a directory: every file below it with an audio extension (recursive);
- a glob (``/data/**/*.flac``);
- a ``.txt`` list (one path/URI a line, ``#`` comments) or a ``.parquet`` list (column ``path``);
- any fsspec/pyarrow URI (``s3://bucket/corpus/``, ``gs://...``): listed with fsspec.

Directory walks and glob matches take regular files only, after following links (and dangling
links, which get an ``unreadable`` row): a named pipe, device or socket found there is logged and
left out. One named explicitly (an argument, a list entry) is kept, and the hashing step records
it as ``not_a_file`` without opening it for a blocking read.
"""

from __future__ import annotations

import glob
import logging
import os

from pipeline.config import AUDIO_EXTENSIONS

log = logging.getLogger("ingest")


class InputError(ValueError):
    """An --input cannot be listed; the message names it."""


def _is_audio(p: str) -> bool:
    return p.lower().endswith(AUDIO_EXTENSIONS)


def _walk_entry(path: str) -> bool:
    """A directory walk (or glob) keeps regular files (after links) and dangling links (recorded as
    unreadable); special files are left out: opening a FIFO to read blocks until a writer comes."""
    if os.path.isfile(path) or not os.path.exists(path):
        return True
    log.warning("skipped %s: not a regular file (a named pipe, device or socket)", path)
    return False


def _remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _list_remote(uri: str) -> list[str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    proto = uri.split("://", 1)[0]
    if fs.isdir(root):
        paths = [p for p in fs.find(root) if _is_audio(p)]
    else:
        paths = fs.glob(root) if any(c in root for c in "*?[") else [root]
    return [p if "://" in p else f"{proto}://{p}" for p in paths]


def _read_list(path: str) -> list[str]:
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        t = pq.read_table(path)
        if "path" not in t.column_names:
            raise InputError(f"{path}: a Parquet input list needs a 'path' column, found {t.column_names}")
        return [p for p in t["path"].to_pylist() if p]
    with open(path, encoding="utf-8") as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]


def discover(inputs: list[str]) -> list[str]:
    """Expand the inputs into unique audio paths/URIs, sorted for a deterministic order."""
    found: list[str] = []
    for inp in inputs:
        if _remote(inp):
            found += _list_remote(inp)
            continue
        inp = inp.removeprefix("file://")
        if os.path.isdir(inp):
            for root, _dirs, files in os.walk(inp, followlinks=True):
                found += [p for f in files if _is_audio(f) and _walk_entry(p := os.path.join(root, f))]
        elif os.path.isfile(inp) and inp.lower().endswith((".txt", ".lst", ".parquet")):
            for p in _read_list(inp):
                found += discover([p]) if (os.path.isdir(p) or any(c in p for c in "*?[")) else [p]
        elif os.path.lexists(inp):
            found.append(inp)  # a single file, readable or not: decode will say
        elif any(c in inp for c in "*?["):
            found += [p for p in glob.glob(inp, recursive=True) if os.path.lexists(p) and not os.path.isdir(p)
                      and _walk_entry(p)]
        else:
            raise InputError(f"input {inp!r} does not exist (expected a directory, file, glob, list or URI)")
    return sorted(dict.fromkeys(os.path.abspath(p) if not _remote(p) else p for p in found))
