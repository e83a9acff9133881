"""Committing one complete token shard, and the fault-injection hook of the job's crash tests."""

from __future__ import annotations

import logging
import os
import signal
import time

from codec.tokenizing.stats import Stats

log = logging.getLogger(__name__)

FAULT_ENV = "VOXFORGE_TOKENIZE_FAULT"  # test hook: "after_tar:N" / "after_commit:N" -> SIGKILL self


def fault_hook():
    """Test hook: ``VOXFORGE_TOKENIZE_FAULT=after_tar:N`` SIGKILLs this process right after
    the N-th token tar is written and before its manifest part (the worst moment);
    ``after_commit:N`` right after the N-th commit. Returns ``hit(point)``; a no-op when unset."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return lambda point: None
    point_name, _, n = spec.partition(":")
    count = {"n": 0}
    limit = int(n or 1)

    def hit(point: str):
        if point == point_name:
            count["n"] += 1
            if count["n"] >= limit:
                log.warning("%s=%s: killing this process (SIGKILL) at %s", FAULT_ENV, spec, point)
                logging.shutdown()
                os.kill(os.getpid(), signal.SIGKILL)

    return hit


def commit_shard(out: str, info, shard, run_id: str, stats: Stats, fault, n_todo: int) -> None:
    """Write one complete shard (``manifests.tokens.CompleteShard``) of codec ``info``
    (``CodecInfo``): token tar, then its manifest part (the commit marker); count it in ``stats``.
    A shard that could not be read is counted as failed and not committed. ``n_todo`` (shards
    of the run) and ``stats.started_at`` only serve the progress line."""
    from manifests.tokens import commit_token_shard

    if shard.shard_error:
        stats.shards_failed += 1
        log.error("shard %s not tokenized: %s", shard.shard, shard.shard_error)
        return
    c = commit_token_shard(out, info.codec_id, shard.shard, shard.samples, shard.failures,
                           frame_rate=info.frame_rate, sample_rate=info.sample_rate,
                           n_samples=shard.n_samples, run_id=run_id,
                           between=lambda: fault("after_tar"))
    stats.record_commit(c, shard, info.sample_rate)
    for f in shard.failures:
        log.warning("shard %s: sample %s failed: %s", shard.shard, f["key"], f["error"])
    el = time.time() - stats.started_at
    log.info("shard %s committed [%d/%d]: %d samples (%d failed), %.1f s audio, %d frames | %.1f s/s",
             c.shard, stats.shards_done + stats.shards_failed, n_todo, c.n_ok, c.n_failed,
             c.audio_seconds, c.n_frames, stats.audio_seconds / max(el, 1e-9))
    fault("after_commit")
