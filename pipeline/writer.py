"""Shard writer with an exactly-once commit protocol (runs in the driver).

The sample format inside a shard (DESIGN §4) is ``manifests/shards.py``'s; this module owns
when and how shards are committed.

A *part* N is: ``shards/audio/N.tar`` (if it has kept samples), ``manifests/segments/N.parquet``,
``manifests/shards/N.parquet`` and, written last, ``manifests/sources/N.parquet``: the commit
marker. Every file is written to a temporary name and renamed when complete. A source is
never split across parts, so a source is either fully committed or not at all.
On start, :meth:`ShardWriter.recover` deletes the files of any part without its marker (a
killed run's unfinished part) and temporaries; the sources of that part are then redone.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import time
import uuid
from pathlib import Path

from manifests.shards import add_member, audio_sample_members
from manifests.store import _fsync_dir, read_table, remove_temporaries, table_dir, write_part

PART_RE = re.compile(r"^(\d{6})\.(tar|parquet)$")


def _fault_point(name: str, index: int) -> None:
    """Fault injection for tests: ``VOXFORGE_FAULT=after_tar:2`` SIGKILLs this process right
    after part 2's tar is renamed into place (points: after_tar, after_segments, after_shards)."""
    spec = os.environ.get("VOXFORGE_FAULT")
    if spec and spec == f"{name}:{index}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


class ShardWriter:
    def __init__(self, out: str | os.PathLike, run_id: str, max_bytes: int = 1_000_000_000,
                 max_samples: int = 10_000):
        self.out = Path(out)
        self.audio_dir = self.out / "shards" / "audio"
        self.audio_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        self.max_bytes, self.max_samples = max_bytes, max_samples
        self.recovered = self.recover()
        self.committed_ids, self.committed_sizes = self._committed_sources()
        self.next_index = self._next_index()
        self._reset()

    # -- recovery -------------------------------------------------------------------------
    def _part_indices(self, directory: Path) -> set[int]:
        if not directory.is_dir():
            return set()
        return {int(m.group(1)) for p in directory.iterdir() if (m := PART_RE.match(p.name))}

    def recover(self) -> int:
        """Delete uncommitted parts and temporaries. Returns the number of parts removed."""
        dirs = [self.audio_dir] + [table_dir(self.out, t) for t in ("segments", "shards", "sources")]
        for d in dirs:
            remove_temporaries(d)
        committed = self._part_indices(table_dir(self.out, "sources"))
        removed = set()
        for d in dirs[:-1]:
            for i in self._part_indices(d) - committed:
                for ext in ("tar", "parquet"):
                    (d / f"{i:06d}.{ext}").unlink(missing_ok=True)
                removed.add(i)
        return len(removed)

    def _committed_sources(self) -> tuple[dict[str, str], dict[str, int | None]]:
        """(source_id -> path, path -> size in bytes; None where the file could not be read).

        A ``failed`` row (a stage error: a bug or a resource problem, not bad input) does not
        count as done: the next run retries that path, and its new row supersedes the failed one
        (``manifests.views`` shows the latest row of a path). A source_id maps to the path whose
        content it first committed, not to a later duplicate of it."""
        t = read_table(self.out, "sources", columns=["source_id", "path", "bytes", "status", "error"])
        first: dict[str, str] = {}
        copies: dict[str, str] = {}
        sizes: dict[str, int | None] = {}
        for sid, path, size, status, error in zip(*(t[c].to_pylist() for c in t.column_names)):
            if status == "failed":
                continue
            sizes[path] = size
            if sid:
                (copies if (error or "").startswith("duplicate:") else first).setdefault(sid, path)
        return {**copies, **first}, sizes

    def _next_index(self) -> int:
        idx = self._part_indices(table_dir(self.out, "sources")) | self._part_indices(self.audio_dir)
        return max(idx) + 1 if idx else 0

    # -- writing --------------------------------------------------------------------------
    def _reset(self) -> None:
        self.tar_tmp: Path | None = None
        self.tar: tarfile.TarFile | None = None
        self.tar_file = None
        self.sha = hashlib.sha256()
        self.n_samples = 0
        self.n_bytes = 0
        self.total_duration = 0.0
        self.source_rows: list[dict] = []
        self.segment_rows: list[dict] = []

    @property
    def shard_name(self) -> str:
        return f"{self.next_index:06d}"

    def _open_tar(self) -> None:
        self.tar_tmp = self.audio_dir / f".{self.shard_name}.tar.{uuid.uuid4().hex[:8]}.tmp"
        self.tar_file = _HashingFile(open(self.tar_tmp, "wb"), self.sha)
        self.tar = tarfile.open(fileobj=self.tar_file, mode="w", format=tarfile.USTAR_FORMAT)

    def add_source(self, source_row: dict, segment_rows: list[dict], samples: list[dict]) -> bool:
        """Queue one source with all its segments. Returns False for a duplicate (same bytes as
        a source already committed or queued), which is recorded as rejected, its segments not written."""
        sid = source_row.get("source_id")
        ok = not (sid and sid in self.committed_ids and source_row["status"] == "ok")
        if not ok:
            source_row = {**source_row, "status": "rejected",
                          "error": f"duplicate: {source_row['path']}: same content as {self.committed_ids[sid]} (source_id {sid})",
                          "n_segments": 0, "n_kept": 0, "kept_duration": 0.0}
            segment_rows, samples = [], []
        elif sid and source_row["status"] == "ok":
            self.committed_ids[sid] = source_row["path"]
        for s in samples:
            if self.tar is None:
                self._open_tar()
            for name, data in audio_sample_members(s["__key__"], s["flac"], s["json"]):
                add_member(self.tar, name, data, mtime=int(time.time()))
            self.n_samples += 1
        kept = {s["__key__"] for s in samples}
        for r in segment_rows:
            if r["key"] in kept:
                r["shard"] = self.shard_name
                self.total_duration += r["duration"]
        self.n_bytes = self.tar_file.n if self.tar_file else 0
        self.segment_rows.extend(segment_rows)
        self.source_rows.append({**source_row, "run_id": self.run_id})
        # shard boundaries fall only between sources (a source is never split across parts)
        if self.n_bytes >= self.max_bytes or self.n_samples >= self.max_samples:
            self.commit()
        return ok

    def commit(self) -> dict | None:
        """Finish the current part: tar, segments, shards, then the sources marker."""
        if not self.source_rows:
            return None
        name = self.shard_name
        shard_row = None
        if self.tar is not None:
            self.tar.close()
            self.tar_file.flush_close()
            final = self.audio_dir / f"{name}.tar"
            os.replace(self.tar_tmp, final)
            _fsync_dir(self.audio_dir)
            _fault_point("after_tar", self.next_index)
            shard_row = {"shard": name, "path": str(Path("shards") / "audio" / f"{name}.tar"),
                         "n_samples": self.n_samples, "bytes": final.stat().st_size,
                         "sha256": self.sha.hexdigest(), "total_duration": round(self.total_duration, 6),
                         "run_id": self.run_id}
        for r in self.segment_rows:
            r["run_id"] = self.run_id
        write_part(self.out, "segments", name, self.segment_rows)
        _fault_point("after_segments", self.next_index)
        write_part(self.out, "shards", name, [shard_row] if shard_row else [])
        _fault_point("after_shards", self.next_index)
        write_part(self.out, "sources", name, self.source_rows)  # the commit marker
        self.next_index += 1
        self._reset()
        return shard_row

    def close(self) -> None:
        self.commit()


class _HashingFile:
    """A write-only file wrapper that hashes and counts what goes through it."""

    def __init__(self, f, sha):
        self.f, self.sha, self.n = f, sha, 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.n += len(b)
        return self.f.write(b)

    def tell(self) -> int:
        return self.n

    def flush_close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()

    def close(self) -> None:  # tarfile does not own the file
        pass

