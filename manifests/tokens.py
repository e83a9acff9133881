"""Token shards (DESIGN.md §6) of the tokenize job: layout, atomic commit, resume bookkeeping.

Layout, per codec (``codec_id`` = name + 12 hex of the checkpoint's SHA-256):

    <out>/shards/tokens/<codec_id>/NNNNNN.tar          same number and sample order as
                                                        <out>/shards/audio/NNNNNN.tar
    <out>/manifests/tokens/<codec_id>-NNNNNN.parquet   one row per sample of that shard

A token shard is a WebDataset tar of token samples; their format (``<key>.tokens.npz`` +
``<key>.json``), its writer and its reader are ``manifests/shards.py``'s. Samples that failed
have no tar members, only a manifest row with ``status = 'failed'`` and the reason.

Commit protocol: the tar is written atomically first (temporary name, fsync, rename),
then its manifest part, also atomically. **The manifest part is the commit marker**: a
tar without its part is the trace of a killed run; :func:`clean_uncommitted` deletes
it and the shard is done again. A reader therefore trusts only tars that have a part.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from manifests.shards import TokenSample, TokenShardError, token_tar_bytes
from manifests.store import atomic_write_bytes, list_parts, remove_temporaries, table_dir, write_part

TOKENS_TABLE = "tokens"


# --------------------------------------------------------------------------------------
# Paths


def token_tree(out: str | os.PathLike, codec_id: str) -> Path:
    """``<out>/shards/tokens/<codec_id>``: all token shards of one codec."""
    return Path(out) / "shards" / "tokens" / codec_id


def token_shard_path(out: str | os.PathLike, codec_id: str, shard: str) -> Path:
    return token_tree(out, codec_id) / f"{shard}.tar"


def part_name(codec_id: str, shard: str) -> str:
    """Manifest part name of one token shard: ``<codec_id>-<shard>``."""
    return f"{codec_id}-{shard}"


def committed_shards(out: str | os.PathLike, codec_id: str) -> set[str]:
    """Shards of ``codec_id`` whose manifest part exists (i.e. committed)."""
    prefix = f"{codec_id}-"
    return {p.stem[len(prefix):] for p in list_parts(out, TOKENS_TABLE) if p.stem.startswith(prefix)}


def clean_uncommitted(out: str | os.PathLike, codec_id: str) -> list[Path]:
    """Delete what a killed run left for ``codec_id``: token tars without a manifest part,
    and temporary files. Returns the tars deleted."""
    tree = token_tree(out, codec_id)
    removed: list[Path] = []
    if tree.is_dir():
        remove_temporaries(tree)
        done = committed_shards(out, codec_id)
        for tar in sorted(tree.glob("*.tar")):
            if tar.stem not in done:
                tar.unlink(missing_ok=True)
                removed.append(tar)
    remove_temporaries(table_dir(out, TOKENS_TABLE))
    return removed


# --------------------------------------------------------------------------------------
# Writing one shard, and assembling shards from encoder batches


@dataclass
class ShardCommit:
    """What committing one token shard wrote."""

    shard: str
    tar: Path
    part: Path
    n_ok: int
    n_failed: int
    n_frames: int
    audio_seconds: float
    bytes: int


def commit_token_shard(
    out: str | os.PathLike,
    codec_id: str,
    shard: str,
    samples: list[TokenSample],
    failures: list[dict],
    *,
    frame_rate: float,
    sample_rate: int,
    n_samples: list[int],
    run_id: str,
    between=None,
) -> ShardCommit:
    """Write the tar (atomically), then the manifest part (the commit marker).

    Args:
        samples: the shard's encoded samples in shard order; ``meta`` is the audio JSON.
        failures: ``{key, position, error, duration}`` of the samples without tokens.
        n_samples: audio samples of each of ``samples`` (for ``duration``).
        between: called between the two writes (fault-injection hook of the job's tests).
    """
    full = []
    for s in samples:
        meta = dict(s.meta)
        meta.update(codec_id=codec_id, frame_rate=frame_rate, n_frames=s.n_frames)
        full.append(TokenSample(key=s.key, semantic=s.semantic, acoustic=s.acoustic, meta=meta))
    data = token_tar_bytes(full)
    tar_path = token_shard_path(out, codec_id, shard)
    atomic_write_bytes(tar_path, data)
    if between is not None:
        between()
    rows = [
        {"key": s.key, "codec_id": codec_id, "shard": shard, "n_frames": s.n_frames,
         "duration": n / sample_rate, "status": "ok", "error": None, "run_id": run_id}
        for s, n in zip(full, n_samples)
    ]
    rows += [
        {"key": f["key"], "codec_id": codec_id, "shard": shard, "n_frames": 0,
         "duration": f.get("duration"), "status": "failed", "error": f["error"], "run_id": run_id}
        for f in failures
    ]
    part = write_part(out, TOKENS_TABLE, part_name(codec_id, shard), rows)
    return ShardCommit(
        shard=shard, tar=tar_path, part=part, n_ok=len(full), n_failed=len(failures),
        n_frames=sum(s.n_frames for s in full), audio_seconds=sum(n_samples) / sample_rate, bytes=len(data),
    )


@dataclass
class CompleteShard:
    """All encoded batches of one shard, put back in shard order."""

    shard: str
    samples: list[TokenSample]
    n_samples: list[int]
    failures: list[dict]
    padded_samples: int
    encode_seconds: float
    shard_error: str | None = None  # the shard could not be read: do not commit it


class ShardAssembler:
    """Collects encoder batches (in any order, from any actor) until a shard is complete.

    Accepts objects with the fields of ``codec.token_encoder.TokenBatch`` (``shard,
    batch_index, n_batches, keys, positions, metas, n_samples, semantic, acoustic,
    failures, padded_samples, encode_seconds``).
    """

    def __init__(self):
        self._pending: dict[str, dict[int, object]] = {}

    @property
    def open_shards(self) -> list[str]:
        return sorted(self._pending)

    def add(self, batch) -> CompleteShard | None:
        """Store ``batch``; return the shard once all its batches arrived."""
        got = self._pending.setdefault(batch.shard, {})
        if batch.batch_index in got:
            raise TokenShardError(f"shard {batch.shard}: batch {batch.batch_index} arrived twice")
        got[batch.batch_index] = batch
        if len(got) < batch.n_batches:
            return None
        del self._pending[batch.shard]
        items, failures, padded, secs = [], [], 0, 0.0
        errors = [b.shard_error for b in got.values() if getattr(b, "shard_error", None)]
        for b in got.values():
            for i, key in enumerate(b.keys):
                items.append((b.positions[i], key, b.metas[i], b.n_samples[i], b.semantic[i], b.acoustic[i]))
            failures += [{"key": f.key, "position": f.position, "error": f.error, "duration": f.duration}
                         for f in b.failures]
            padded += b.padded_samples
            secs += b.encode_seconds
        items.sort(key=lambda x: x[0])
        failures.sort(key=lambda f: f["position"])
        keys = [x[1] for x in items] + [f["key"] for f in failures]
        if len(set(keys)) != len(keys):
            raise TokenShardError(f"shard {batch.shard}: a key appears twice among its batches")
        return CompleteShard(
            shard=batch.shard,
            samples=[TokenSample(key=k, semantic=s, acoustic=a, meta=json.loads(m)) for _, k, m, _, s, a in items],
            n_samples=[n for _, _, _, n, _, _ in items],
            failures=failures,
            padded_samples=padded,
            encode_seconds=secs,
            shard_error=errors[0] if errors else None,
        )
