"""Token shards (DESIGN.md §6): layout, atomic writing, reading, resume bookkeeping.

Layout, per codec (``codec_id`` = name + 12 hex of the checkpoint's SHA-256):

    <out>/shards/tokens/<codec_id>/NNNNNN.tar          same number and sample order as
                                                        <out>/shards/audio/NNNNNN.tar
    <out>/manifests/tokens/<codec_id>-NNNNNN.parquet   one row per sample of that shard

A token shard is a WebDataset tar: per sample ``<key>.tokens.npz`` (``semantic`` int16
``[T]`` in 0..8191, ``acoustic`` uint8 ``[T, 36]`` in 0..20) then ``<key>.json`` (the
audio sample's JSON plus ``codec_id, frame_rate, n_frames``). Samples that failed have
no tar members, only a manifest row with ``status = 'failed'`` and the reason.

Commit protocol: the tar is written atomically first (temporary name, fsync, rename),
then its manifest part, also atomically. **The manifest part is the commit marker**: a
tar without its part is the trace of a killed run; :func:`clean_uncommitted` deletes
it and the shard is done again. A reader therefore trusts only tars that have a part.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from manifests.store import atomic_write_bytes, list_parts, remove_temporaries, table_dir, write_part

TOKENS_TABLE = "tokens"


class TokenShardError(Exception):
    """A token shard is malformed or does not match its manifest."""


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
# Samples and shards


@dataclass
class TokenSample:
    """One utterance's tokens. ``semantic`` int16 ``[T]``, ``acoustic`` uint8 ``[T, 36]``."""

    key: str
    semantic: np.ndarray
    acoustic: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.semantic.shape[0])


def check_tokens(key: str, semantic: np.ndarray, acoustic: np.ndarray) -> None:
    """Raise :class:`TokenShardError` unless the arrays follow DESIGN §6."""
    if semantic.dtype != np.int16 or semantic.ndim != 1:
        raise TokenShardError(f"{key}: semantic must be int16 [T], got {semantic.dtype} {semantic.shape}")
    if acoustic.dtype != np.uint8 or acoustic.ndim != 2 or acoustic.shape[1] != 36:
        raise TokenShardError(f"{key}: acoustic must be uint8 [T, 36], got {acoustic.dtype} {acoustic.shape}")
    if acoustic.shape[0] != semantic.shape[0]:
        raise TokenShardError(f"{key}: {semantic.shape[0]} semantic frames but {acoustic.shape[0]} acoustic frames")
    if semantic.size and (semantic.min() < 0 or semantic.max() > 8191):
        raise TokenShardError(f"{key}: semantic indices outside 0..8191")
    if acoustic.size and acoustic.max() > 20:
        raise TokenShardError(f"{key}: acoustic indices outside 0..20")


def _npz_bytes(semantic: np.ndarray, acoustic: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # Uncompressed: FSQ/VQ indices are near-random, compression buys little and costs CPU.
    np.savez(buf, semantic=semantic, acoustic=acoustic)
    return buf.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # deterministic bytes: the same tokens give the same tar
    tar.addfile(info, io.BytesIO(data))


def token_tar_bytes(samples: list[TokenSample]) -> bytes:
    """A WebDataset tar of ``samples`` in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            check_tokens(s.key, s.semantic, s.acoustic)
            _add_member(tar, f"{s.key}.tokens.npz", _npz_bytes(s.semantic, s.acoustic))
            _add_member(tar, f"{s.key}.json", json.dumps(s.meta, ensure_ascii=False).encode("utf-8"))
    return buf.getvalue()


def read_token_shard(path: str | os.PathLike) -> Iterator[TokenSample]:
    """Samples of a token shard in order (arrays checked against DESIGN §6)."""
    cur_key, arrays, meta = None, None, None
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, _, ext = info.name.rsplit("/", 1)[-1].partition(".")
            if cur_key is not None and key != cur_key:
                yield _sample(path, cur_key, arrays, meta)
                arrays, meta = None, None
            cur_key = key
            data = tar.extractfile(info).read()
            if ext == "tokens.npz":
                with np.load(io.BytesIO(data), allow_pickle=False) as z:
                    arrays = (z["semantic"], z["acoustic"])
            elif ext == "json":
                meta = json.loads(data)
    if cur_key is not None:
        yield _sample(path, cur_key, arrays, meta)


def _sample(path, key, arrays, meta) -> TokenSample:
    if arrays is None or meta is None:
        raise TokenShardError(f"{path}: sample {key} lacks its .tokens.npz or .json member")
    check_tokens(key, *arrays)
    return TokenSample(key=key, semantic=arrays[0], acoustic=arrays[1], meta=meta)


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

    Accepts objects with the fields of ``codec.batching.TokenBatch`` (``shard,
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
