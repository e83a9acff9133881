"""Batched codec inference over audio shards: read, length-bucket, encode.

The parts of the tokenize job (``tokenize/run.py``) that do not depend on Ray, so that
they run in a unit test, in a benchmark, or inside a Ray Data actor unchanged:

- :func:`plan_batches`: length bucketing. Utterances of one shard are sorted by
  length and cut into batches whose *padded* size stays under a budget in seconds,
  so little compute is spent on padding.
- :class:`AudioShardReader`: reads an audio shard (DESIGN.md §4, WebDataset tar of
  ``<key>.flac`` + ``<key>.json``) in two passes: an index pass (headers and JSON
  only, nothing decoded) to know every utterance's length, then one decode pass per
  batch, so a reader holds one batch of PCM at a time, not a whole shard.
- :class:`TokenEncoder`: one codec on one device (CPU or a GPU); encodes
  :class:`AudioBatch` es into :class:`TokenBatch` es. On CUDA: bf16 autocast,
  ``torch.inference_mode``, pinned host buffers, host-to-device copies on a side
  stream overlapped with the previous batch's compute, device-to-host copies
  overlapped with the next batch's compute.
- :func:`read_stage` / :class:`EncodeStage`: the same, as callables from one Arrow
  table to another, which is what Ray Data's ``map_batches`` calls (the adapter
  needs no Ray import; ``tokenize/run.py`` wires them).

A sample that cannot be used (missing member, unreadable FLAC, wrong rate or
channels, a batch the codec fails on even alone) becomes a :class:`SampleFailure`
carried along with its batch, never an exception that stops the shard.

Units: lengths in samples at the codec rate (24 000 Hz), frames at 12.5 Hz
(1920 samples), durations in seconds.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SEMANTIC_CODEBOOK_SIZE = 8192  # DESIGN §6/§7: semantic indices 0..8191 (stored int16)
ACOUSTIC_DIMS = 36  # FSQ dims
ACOUSTIC_LEVELS = 21  # FSQ levels: indices 0..20 (stored uint8)


class BatchingError(Exception):
    """Base class of the errors of this module."""


class ShardReadError(BatchingError):
    """A whole audio shard cannot be read (missing file, not a tar)."""

    def __init__(self, path: str | os.PathLike, detail: str):
        self.path = str(path)
        super().__init__(f"cannot read audio shard {path}: {detail}")


class CodecContractError(BatchingError):
    """The codec returned tokens that break DESIGN §6 (shape, range): a codec bug, not bad input."""


# --------------------------------------------------------------------------------------
# Configuration


@dataclass
class BatchingConfig:
    """How utterances are grouped into encoder batches.

    ``batch_seconds`` bounds the *padded* audio of one batch (``n_items x longest``),
    which is what the encoder's memory and time scale with.
    """

    batch_seconds: float = 120.0  # s of padded audio per encoder batch
    max_items: int = 256  # utterances per batch at most (many tiny ones)
    max_padding: float = 0.25  # an item joins a batch only if padding it wastes at most this fraction
    sample_rate: int = 24_000  # Hz, the codec's
    samples_per_frame: int = 1920  # the codec's hop: 24 kHz / 12.5 Hz

    def __post_init__(self):
        if not (self.batch_seconds > 0):
            raise ValueError(f"batch_seconds must be > 0 (seconds of padded audio per batch), got {self.batch_seconds}")
        if self.max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {self.max_items}")
        if not 0 <= self.max_padding < 1:
            raise ValueError(f"max_padding must be in [0, 1) (fraction of a padded item), got {self.max_padding}")
        if self.sample_rate <= 0 or self.samples_per_frame <= 0:
            raise ValueError(
                f"sample_rate and samples_per_frame must be > 0 (take them from the codec), "
                f"got {self.sample_rate} and {self.samples_per_frame}"
            )

    @property
    def budget_samples(self) -> int:
        return int(self.batch_seconds * self.sample_rate)


def n_frames(n_samples: int, samples_per_frame: int = 1920) -> int:
    """Frames the causal codec gives for ``n_samples``: ``ceil(n / samples_per_frame)``."""
    return -(-int(n_samples) // int(samples_per_frame))


# --------------------------------------------------------------------------------------
# Length bucketing


def plan_batches(
    lengths: Sequence[int],
    budget_samples: int,
    max_items: int = 256,
    samples_per_frame: int = 1920,
    max_padding: float = 0.25,
) -> list[list[int]]:
    """Group item indices into batches of similar length.

    Items are sorted by length, longest first (so an out-of-memory batch shows up at
    once, not at the end), and added to the current batch while
    ``n_items * padded_longest <= budget_samples`` and ``n_items <= max_items``;
    ``padded_longest`` is the longest item rounded up to whole frames, i.e. exactly
    the tensor the encoder sees. An item is also not added when padding it to the
    batch's length would waste more than ``max_padding`` of it (so a small shard with
    very different lengths makes a few small batches rather than one mostly-padding
    one; a large shard's sorted lengths are dense and fill batches to the budget).
    An item longer than the budget gets a batch of its own.

    Args:
        lengths: samples of each item, ``[N]``.
        budget_samples: padded samples per batch at most.

    Returns:
        Batches of indices into ``lengths``; every index appears exactly once.
    """
    if budget_samples <= 0:
        raise ValueError(f"budget_samples must be > 0, got {budget_samples}")
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_padded = 0
    for i in order:
        padded = max(1, n_frames(lengths[i], samples_per_frame)) * samples_per_frame
        if cur and (
            (len(cur) + 1) * cur_padded > budget_samples
            or len(cur) >= max_items
            or padded < (1.0 - max_padding) * cur_padded
        ):
            batches.append(cur)
            cur = []
        if not cur:
            cur_padded = padded  # sorted descending: the first item is the longest
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def padding_ratio(lengths: Sequence[int], batches: Sequence[Sequence[int]], samples_per_frame: int = 1920) -> float:
    """Padded samples / real samples of a batch plan (1.0 = no padding)."""
    real = sum(int(lengths[i]) for b in batches for i in b)
    padded = sum(len(b) * max(n_frames(lengths[i], samples_per_frame) for i in b) * samples_per_frame for b in batches)
    return padded / real if real else 1.0


# --------------------------------------------------------------------------------------
# Data types


@dataclass
class SampleFailure:
    """A sample that produced no tokens, and why (goes to the ``tokens`` table, status ``failed``)."""

    key: str
    position: int  # order of the sample in its audio shard
    error: str
    duration: float | None = None  # s, from the sample's JSON when it could be read


@dataclass
class AudioBatch:
    """One encoder batch of one audio shard.

    ``pcm[i]`` is int16 mono at the codec rate, ``[lengths[i]]``. ``metas[i]`` is the
    sample's JSON text (passed through to the token shard). ``batch_index`` /
    ``n_batches`` say where this batch sits in its shard, so that the writer knows when
    a shard is complete. A shard with no usable sample still yields one batch (empty,
    maybe with failures) so that it gets committed.
    """

    shard: str
    batch_index: int
    n_batches: int
    keys: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    metas: list[str] = field(default_factory=list)
    pcm: list[np.ndarray] = field(default_factory=list)
    failures: list[SampleFailure] = field(default_factory=list)
    shard_error: str | None = None  # the whole shard could not be read: nothing to commit

    @property
    def lengths(self) -> list[int]:
        return [int(x.shape[0]) for x in self.pcm]

    def to_row(self) -> dict:
        """A flat dict of Arrow-friendly values (PCM concatenated into one bytes value)."""
        return {
            "shard": self.shard,
            "batch_index": self.batch_index,
            "n_batches": self.n_batches,
            "keys": list(self.keys),
            "positions": list(self.positions),
            "metas": list(self.metas),
            "lengths": self.lengths,
            "pcm": b"".join(np.ascontiguousarray(x, dtype="<i2").tobytes() for x in self.pcm),
            "failures": json.dumps([asdict(f) for f in self.failures]),
            "shard_error": self.shard_error,
        }

    @classmethod
    def from_row(cls, row: dict) -> AudioBatch:
        flat = np.frombuffer(row["pcm"], dtype="<i2")
        pcm, off = [], 0
        for n in row["lengths"]:
            pcm.append(flat[off : off + n])
            off += n
        return cls(
            shard=row["shard"],
            batch_index=int(row["batch_index"]),
            n_batches=int(row["n_batches"]),
            keys=list(row["keys"]),
            positions=[int(p) for p in row["positions"]],
            metas=list(row["metas"]),
            pcm=pcm,
            failures=[SampleFailure(**f) for f in json.loads(row["failures"])],
            shard_error=row.get("shard_error"),
        )


@dataclass
class TokenBatch:
    """Tokens of one :class:`AudioBatch`, trimmed per item to ``ceil(len / 1920)`` frames.

    ``semantic[i]``: int16 ``[T_i]`` in 0..8191; ``acoustic[i]``: uint8 ``[T_i, 36]`` in 0..20.
    ``n_samples[i]`` is the audio length the tokens came from (for durations).
    """

    shard: str
    batch_index: int
    n_batches: int
    keys: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    metas: list[str] = field(default_factory=list)
    n_samples: list[int] = field(default_factory=list)
    semantic: list[np.ndarray] = field(default_factory=list)
    acoustic: list[np.ndarray] = field(default_factory=list)
    failures: list[SampleFailure] = field(default_factory=list)
    padded_samples: int = 0  # samples the encoder actually ran over (padding included)
    encode_seconds: float = 0.0  # wall time the encoder spent on this batch
    encode_end: float = 0.0  # time.time() when the encoder finished it (0: never encoded)
    shard_error: str | None = None

    @property
    def n_frames(self) -> list[int]:
        return [int(s.shape[0]) for s in self.semantic]

    def to_row(self) -> dict:
        return {
            "shard": self.shard,
            "batch_index": self.batch_index,
            "n_batches": self.n_batches,
            "keys": list(self.keys),
            "positions": list(self.positions),
            "metas": list(self.metas),
            "n_samples": list(self.n_samples),
            "n_frames": self.n_frames,
            "semantic": b"".join(np.ascontiguousarray(s, dtype="<i2").tobytes() for s in self.semantic),
            "acoustic": b"".join(np.ascontiguousarray(a, dtype=np.uint8).tobytes() for a in self.acoustic),
            "failures": json.dumps([asdict(f) for f in self.failures]),
            "padded_samples": int(self.padded_samples),
            "encode_seconds": float(self.encode_seconds),
            "encode_end": float(self.encode_end),
            "shard_error": self.shard_error,
        }

    @classmethod
    def from_row(cls, row: dict) -> TokenBatch:
        sem_flat = np.frombuffer(row["semantic"], dtype="<i2")
        ac_flat = np.frombuffer(row["acoustic"], dtype=np.uint8)
        semantic, acoustic, off = [], [], 0
        for t in row["n_frames"]:
            t = int(t)
            semantic.append(sem_flat[off : off + t])
            acoustic.append(ac_flat[off * ACOUSTIC_DIMS : (off + t) * ACOUSTIC_DIMS].reshape(t, ACOUSTIC_DIMS))
            off += t
        return cls(
            shard=row["shard"],
            batch_index=int(row["batch_index"]),
            n_batches=int(row["n_batches"]),
            keys=list(row["keys"]),
            positions=[int(p) for p in row["positions"]],
            metas=list(row["metas"]),
            n_samples=[int(n) for n in row["n_samples"]],
            semantic=semantic,
            acoustic=acoustic,
            failures=[SampleFailure(**f) for f in json.loads(row["failures"])],
            padded_samples=int(row["padded_samples"]),
            encode_seconds=float(row["encode_seconds"]),
            encode_end=float(row.get("encode_end") or 0.0),
            shard_error=row.get("shard_error"),
        )


# --------------------------------------------------------------------------------------
# Reading audio shards


@dataclass
class ShardMember:
    """Where one sample's parts sit inside an audio shard tar (index pass)."""

    key: str
    position: int
    flac: tuple[int, int] | None = None  # (byte offset of the data, size)
    meta: str | None = None  # the JSON text
    n_samples: int | None = None  # from the FLAC STREAMINFO header
    error: str | None = None


def flac_stream_info(head: bytes) -> tuple[int, int, int]:
    """``(sample_rate, channels, n_samples)`` from the start of a FLAC file (STREAMINFO).

    Raises ValueError if ``head`` is not a FLAC stream or its length is not recorded.
    """
    if len(head) < 26 or head[:4] != b"fLaC" or (head[4] & 0x7F) != 0:
        raise ValueError("not a FLAC stream (no fLaC/STREAMINFO header)")
    v = int.from_bytes(head[18:26], "big")
    sample_rate = v >> 44
    channels = ((v >> 41) & 0x7) + 1
    total = v & ((1 << 36) - 1)
    if total == 0:
        raise ValueError("FLAC header does not record the number of samples")
    return sample_rate, channels, total


def _split_member_name(name: str) -> tuple[str, str]:
    # WebDataset convention: the key is the base name up to the first dot.
    base = name.rsplit("/", 1)[-1]
    key, _, ext = base.partition(".")
    return key, ext


class AudioShardReader:
    """Reads an audio shard tar into bucketed :class:`AudioBatch` es (see module doc)."""

    def __init__(self, config: BatchingConfig):
        self.config = config

    def index(self, path: str | os.PathLike) -> list[ShardMember]:
        """Index pass: every sample of the shard in tar order, without decoding audio."""
        members: dict[str, ShardMember] = {}
        try:
            with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    key, ext = _split_member_name(info.name)
                    m = members.get(key)
                    if m is None:
                        m = members[key] = ShardMember(key=key, position=len(members))
                    if ext == "flac":
                        m.flac = (info.offset_data, info.size)
                        raw_pos = raw.tell()
                        raw.seek(info.offset_data)
                        head = raw.read(min(info.size, 64))
                        raw.seek(raw_pos)
                        try:
                            sr, ch, total = flac_stream_info(head)
                            m.n_samples = total
                            if sr != self.config.sample_rate:
                                m.error = f"sample rate {sr} Hz, the codec needs {self.config.sample_rate} Hz"
                            elif ch != 1:
                                m.error = f"{ch} channels, the codec needs mono"
                        except ValueError:
                            m.n_samples = None  # decoded later; the decoder says what is wrong
                    elif ext == "json":
                        f = tar.extractfile(info)
                        m.meta = f.read().decode("utf-8") if f is not None else None
        except FileNotFoundError as e:
            raise ShardReadError(path, "file not found") from e
        except tarfile.TarError as e:
            raise ShardReadError(path, f"not a readable tar ({e})") from e
        for m in members.values():
            if m.error:
                continue
            if m.flac is None:
                m.error = "no .flac member"
            elif m.meta is None:
                m.error = "no .json member"
            else:
                try:
                    meta = json.loads(m.meta)
                    if not isinstance(meta, dict):
                        raise ValueError("not a JSON object")
                except ValueError as e:
                    m.error = f"bad .json member: {e}"
        return list(members.values())

    def batches(self, path: str | os.PathLike, shard: str) -> Iterator[AudioBatch]:
        """Bucketed batches of the shard, one decoded batch at a time.

        Every sample of the shard is in exactly one batch, as audio or as a failure.
        """
        members = self.index(path)
        cfg = self.config
        bad = [m for m in members if m.error]
        good = [m for m in members if not m.error]
        # Length unknown from the header: plan it as a budget-sized item (a batch of its own).
        lengths = [m.n_samples if m.n_samples is not None else cfg.budget_samples for m in good]
        plan = plan_batches(lengths, cfg.budget_samples, cfg.max_items, cfg.samples_per_frame, cfg.max_padding)
        n_batches = max(1, len(plan))
        if not plan:
            yield AudioBatch(shard=shard, batch_index=0, n_batches=1,
                             failures=[_failure(m, m.error) for m in bad])
            return
        with open(path, "rb") as raw:
            for bi, idx in enumerate(plan):
                batch = AudioBatch(shard=shard, batch_index=bi, n_batches=n_batches)
                if bi == 0:
                    batch.failures.extend(_failure(m, m.error) for m in bad)
                for i in idx:
                    m = good[i]
                    try:
                        pcm = self._decode(raw, m)
                    except Exception as e:  # any decoder error is this sample's problem
                        batch.failures.append(_failure(m, f"cannot decode FLAC: {e}"))
                        continue
                    batch.keys.append(m.key)
                    batch.positions.append(m.position)
                    batch.metas.append(m.meta)
                    batch.pcm.append(pcm)
                yield batch

    def _decode(self, raw, m: ShardMember) -> np.ndarray:
        import soundfile as sf

        off, size = m.flac
        raw.seek(off)
        data = raw.read(size)
        pcm, sr = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
        if sr != self.config.sample_rate:
            raise ValueError(f"sample rate {sr} Hz, the codec needs {self.config.sample_rate} Hz")
        if pcm.shape[1] != 1:
            raise ValueError(f"{pcm.shape[1]} channels, the codec needs mono")
        if pcm.shape[0] == 0:
            raise ValueError("no samples")
        return np.ascontiguousarray(pcm[:, 0])


def _failure(m: ShardMember, error: str) -> SampleFailure:
    duration = None
    try:
        d = json.loads(m.meta)["duration"] if m.meta else None
        duration = float(d) if d is not None else None
    except (ValueError, KeyError, TypeError):
        duration = None
    return SampleFailure(key=m.key, position=m.position, error=error, duration=duration)


# --------------------------------------------------------------------------------------
# Encoding


@dataclass
class EncoderConfig:
    """One codec on one device.

    ``device``: ``auto`` (CUDA if visible, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    ``precision``: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``bf16`` or ``fp32``.
    ``threads``: torch intra-op threads on CPU (None: leave torch's default).
    """

    codec_dir: str | None = None
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    pin_memory: bool = True

    def __post_init__(self):
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}")


@dataclass
class _Staged:
    """A batch whose padded int16 PCM is on its way to (or on) the device."""

    batch: AudioBatch
    wav: object  # torch int16 [B, N_pad] on the device
    lengths: object  # torch long [B] on the device
    ready: object  # CUDA event after the copy, or None on CPU
    host: object  # pinned host tensor kept alive until the copy is done


class TokenEncoder:
    """Encodes :class:`AudioBatch` es with one codec on one device.

    Build it with a loaded codec (``TokenEncoder(codec=...)``, tests and benchmarks) or
    with ``EncoderConfig(codec_dir=...)`` (``Codec.load``, inside a Ray actor).
    """

    def __init__(self, config: EncoderConfig | None = None, codec=None):
        import torch

        self.config = config or EncoderConfig()
        cfg = self.config
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        if cfg.device == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            dev = cfg.device
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise BatchingError("device 'cuda' asked for but torch sees no CUDA device; use --device cpu")
        self.device = torch.device(dev)
        self.is_cuda = self.device.type == "cuda"
        prec = cfg.precision if cfg.precision != "auto" else ("bf16" if self.is_cuda else "fp32")
        self.precision = prec
        if codec is None:
            if cfg.codec_dir is None:
                raise ValueError("TokenEncoder needs a codec object or EncoderConfig.codec_dir")
            from codec import Codec

            codec = Codec.load(cfg.codec_dir)
        self.codec = codec.to(self.device).eval()
        self.codec_id = codec.codec_id
        self.samples_per_frame = int(codec.samples_per_frame)
        self.sample_rate = int(codec.sample_rate)
        self.frame_rate = float(codec.frame_rate)
        if self.is_cuda:
            self._copy_stream = torch.cuda.Stream(device=self.device)

    # -- public ------------------------------------------------------------------------

    def __call__(self, batches: Sequence[AudioBatch]) -> list[TokenBatch]:
        """Encode batches in order; on CUDA the copies of batch i+1 overlap the compute of i."""
        if self.is_cuda:
            return self._encode_pipelined(list(batches))
        return [self._encode_one(b) for b in batches]

    def encode_arrays(self, pcm: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Tokens of int16 PCM arrays encoded as one padded batch: ``([T_i] int16, [T_i, 36] uint8)``."""
        b = AudioBatch(shard="", batch_index=0, n_batches=1, keys=[str(i) for i in range(len(pcm))],
                       positions=list(range(len(pcm))), metas=["{}"] * len(pcm), pcm=list(pcm))
        t = self([b])[0]
        if t.failures:
            raise BatchingError(f"encoding failed: {t.failures[0].error}")
        return t.semantic, t.acoustic

    # -- internals ---------------------------------------------------------------------

    def _autocast(self):
        import contextlib

        import torch

        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _pad(self, batch: AudioBatch, pin: bool):
        import torch

        lengths = batch.lengths
        n_pad = max(1, n_frames(max(lengths), self.samples_per_frame)) * self.samples_per_frame
        host = torch.zeros((len(lengths), n_pad), dtype=torch.int16, pin_memory=pin)
        hv = host.numpy()
        for i, x in enumerate(batch.pcm):
            hv[i, : x.shape[0]] = x
        return host, torch.tensor(lengths, dtype=torch.long)

    def _forward(self, wav_i16, lengths):
        """int16 [B, N] on the device -> (semantic [B, T] long, acoustic [B, T, 36] long)."""
        import torch

        # int16 travels (half the bytes of float32); scaling happens on the device.
        wav = (wav_i16.to(torch.float32) / 32768.0).unsqueeze(1)
        with torch.inference_mode(), self._autocast():
            return self.codec.encode(wav, lengths)

    def _check(self, batch: AudioBatch, sem, ac) -> None:
        b = len(batch.pcm)
        t_need = max(n_frames(n, self.samples_per_frame) for n in batch.lengths)
        if sem.ndim != 2 or sem.shape[0] != b or sem.shape[1] < t_need:
            raise CodecContractError(f"codec.encode gave semantic of shape {tuple(sem.shape)}, expected [{b}, >={t_need}]")
        if ac.ndim != 3 or ac.shape[0] != b or ac.shape[1] != sem.shape[1] or ac.shape[2] != ACOUSTIC_DIMS:
            raise CodecContractError(
                f"codec.encode gave acoustic of shape {tuple(ac.shape)}, expected [{b}, {sem.shape[1]}, {ACOUSTIC_DIMS}]"
            )

    def _finish(self, batch: AudioBatch, sem: np.ndarray, ac: np.ndarray, elapsed: float,
                padded: int, failures: list[SampleFailure]) -> TokenBatch:
        """Trim each item to its own frames and check ranges; ``sem``/``ac`` are host int arrays."""
        if sem.size and (sem.min() < 0 or sem.max() >= SEMANTIC_CODEBOOK_SIZE):
            raise CodecContractError(f"semantic tokens outside 0..{SEMANTIC_CODEBOOK_SIZE - 1}: "
                                     f"[{sem.min()}, {sem.max()}]")
        if ac.size and (ac.min() < 0 or ac.max() >= ACOUSTIC_LEVELS):
            raise CodecContractError(f"acoustic tokens outside 0..{ACOUSTIC_LEVELS - 1}: [{ac.min()}, {ac.max()}]")
        out = TokenBatch(shard=batch.shard, batch_index=batch.batch_index, n_batches=batch.n_batches,
                         failures=list(batch.failures) + failures, padded_samples=padded, encode_seconds=elapsed,
                         encode_end=time.time())
        for i, n in enumerate(batch.lengths):
            t = n_frames(n, self.samples_per_frame)
            out.keys.append(batch.keys[i])
            out.positions.append(batch.positions[i])
            out.metas.append(batch.metas[i])
            out.n_samples.append(n)
            out.semantic.append(np.ascontiguousarray(sem[i, :t], dtype=np.int16))
            out.acoustic.append(np.ascontiguousarray(ac[i, :t], dtype=np.uint8))
        return out

    def _empty(self, batch: AudioBatch) -> TokenBatch:
        return TokenBatch(shard=batch.shard, batch_index=batch.batch_index, n_batches=batch.n_batches,
                          failures=list(batch.failures), shard_error=batch.shard_error)

    def _encode_one(self, batch: AudioBatch) -> TokenBatch:
        """Synchronous path (CPU, and the fallback on CUDA): whole batch, else item by item."""
        if not batch.pcm:
            return self._empty(batch)
        t0 = time.perf_counter()
        try:
            return self._encode_sync(batch, t0)
        except CodecContractError:
            raise
        except Exception as e:
            if len(batch.pcm) == 1:
                return self._empty_with(batch, [0], f"codec failed: {type(e).__name__}: {e}")
            log.warning("shard %s batch %d: codec failed on the batch (%s: %s); retrying item by item",
                        batch.shard, batch.batch_index, type(e).__name__, e)
            self._release_memory()
            return self._encode_items(batch, t0)

    def _encode_sync(self, batch: AudioBatch, t0: float, failures=None) -> TokenBatch:
        host, lengths = self._pad(batch, pin=False)
        sem, ac = self._forward(host.to(self.device), lengths.to(self.device))
        self._check(batch, sem, ac)
        sem_np = sem.to("cpu").numpy()
        ac_np = ac.to("cpu").numpy()
        return self._finish(batch, sem_np, ac_np, time.perf_counter() - t0, host.numel(), failures or [])

    def _empty_with(self, batch: AudioBatch, idx: list[int], error: str) -> TokenBatch:
        out = self._empty(batch)
        for i in idx:
            out.failures.append(SampleFailure(key=batch.keys[i], position=batch.positions[i], error=error,
                                              duration=batch.lengths[i] / self.sample_rate))
        return out

    def _encode_items(self, batch: AudioBatch, t0: float) -> TokenBatch:
        merged = self._empty(batch)
        for i in range(len(batch.pcm)):
            single = AudioBatch(shard=batch.shard, batch_index=batch.batch_index, n_batches=batch.n_batches,
                                keys=[batch.keys[i]], positions=[batch.positions[i]], metas=[batch.metas[i]],
                                pcm=[batch.pcm[i]])
            try:
                r = self._encode_sync(single, time.perf_counter())
            except CodecContractError:
                raise
            except Exception as e:
                self._release_memory()
                merged.failures.extend(self._empty_with(single, [0], f"codec failed: {type(e).__name__}: {e}").failures)
                continue
            for name in ("keys", "positions", "metas", "n_samples", "semantic", "acoustic"):
                getattr(merged, name).extend(getattr(r, name))
            merged.padded_samples += r.padded_samples
        merged.encode_seconds = time.perf_counter() - t0
        merged.encode_end = time.time()
        return merged

    def _release_memory(self) -> None:
        if self.is_cuda:
            import torch

            torch.cuda.empty_cache()

    # -- CUDA pipeline -----------------------------------------------------------------

    def _stage(self, batch: AudioBatch) -> _Staged:
        """Pad into pinned memory and start the host-to-device copy on the side stream."""
        import torch

        host, lengths = self._pad(batch, pin=self.config.pin_memory)
        with torch.cuda.stream(self._copy_stream):
            wav = host.to(self.device, non_blocking=True)
            lens = lengths.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._copy_stream)
        return _Staged(batch=batch, wav=wav, lengths=lens, ready=ready, host=host)

    def _encode_pipelined(self, batches: list[AudioBatch]) -> list[TokenBatch]:
        import torch

        results: list[TokenBatch | None] = [None] * len(batches)
        todo = [i for i, b in enumerate(batches) if b.pcm]
        for i, b in enumerate(batches):
            if not b.pcm:
                results[i] = self._empty(b)
        main = torch.cuda.current_stream(self.device)
        pending = None  # (index, staged, sem_host, ac_host, done_event, t0)
        nxt = self._stage(batches[todo[0]]) if todo else None
        for k, i in enumerate(todo):
            cur = nxt
            t0 = time.perf_counter()
            # Start copying the next batch now: it runs on the copy stream during this compute.
            nxt = self._stage(batches[todo[k + 1]]) if k + 1 < len(todo) else None
            main.wait_event(cur.ready)
            # Tensors made on the copy stream and used on the main one: tell the allocator.
            cur.wav.record_stream(main)
            cur.lengths.record_stream(main)
            try:
                sem, ac = self._forward(cur.wav, cur.lengths)
                self._check(cur.batch, sem, ac)
                sem_h = torch.empty(sem.shape, dtype=torch.int16, pin_memory=self.config.pin_memory)
                ac_h = torch.empty(ac.shape, dtype=torch.uint8, pin_memory=self.config.pin_memory)
                # Narrow on the device first: 2 + 36 bytes a frame cross the bus, not 8 + 288.
                # Clamp-free cast is safe only for in-range values: ranges are checked on the host.
                sem_h.copy_(_checked_narrow(sem, torch.int16, SEMANTIC_CODEBOOK_SIZE), non_blocking=True)
                ac_h.copy_(_checked_narrow(ac, torch.uint8, ACOUSTIC_LEVELS), non_blocking=True)
                done = torch.cuda.Event()
                done.record(main)
                failed = None
            except CodecContractError:
                raise
            except Exception as e:
                failed = e
            # Finish the previous batch while this one computes.
            if pending is not None:
                results[pending[0]] = self._collect(pending)
                pending = None
            if failed is not None:
                torch.cuda.synchronize(self.device)
                log.warning("shard %s batch %d: codec failed (%s: %s); retrying item by item",
                            cur.batch.shard, cur.batch.batch_index, type(failed).__name__, failed)
                del cur
                self._release_memory()
                results[i] = self._encode_items(batches[i], t0)
                continue
            pending = (i, cur, sem_h, ac_h, done, t0)
        if pending is not None:
            results[pending[0]] = self._collect(pending)
        return results

    def _collect(self, pending) -> TokenBatch:
        i, staged, sem_h, ac_h, done, t0 = pending
        done.synchronize()
        sem = sem_h.numpy()
        ac = ac_h.numpy()
        return self._finish(staged.batch, sem, ac, time.perf_counter() - t0, staged.host.numel(), [])


def _checked_narrow(x, dtype, upper: int):
    """Cast token indices to a narrow dtype, mapping out-of-range values to a sentinel
    that the host-side range check catches (int16: -1; uint8: 255)."""
    import torch

    bad = (x < 0) | (x >= upper)
    sentinel = -1 if dtype == torch.int16 else 255
    return torch.where(bad, torch.full_like(x, sentinel), x).to(dtype)


# --------------------------------------------------------------------------------------
# Arrow-table stages (what Ray Data's map_batches calls; no Ray import here)


def read_stage(table, config: BatchingConfig) -> Iterator:
    """``pa.Table`` of shards (columns ``shard``, ``path``) -> one table per bucketed batch.

    A generator, so that Ray Data streams a shard's batches downstream as they are
    decoded instead of holding the whole shard. A shard that cannot be read at all
    yields one batch carrying ``shard_error`` (the job reports it and does not commit).
    """
    import pyarrow as pa

    reader = AudioShardReader(config)
    for row in table.to_pylist():
        try:
            for batch in reader.batches(row["path"], row["shard"]):
                yield pa.Table.from_pylist([batch.to_row()], schema=AUDIO_BATCH_SCHEMA)
        except ShardReadError as e:
            bad = AudioBatch(shard=row["shard"], batch_index=0, n_batches=1, shard_error=str(e))
            yield pa.Table.from_pylist([bad.to_row()], schema=AUDIO_BATCH_SCHEMA)


class EncodeStage:
    """``pa.Table`` of audio batches -> ``pa.Table`` of token batches, one codec per actor."""

    def __init__(self, config: EncoderConfig, expected_codec_id: str | None = None):
        self.encoder = TokenEncoder(config)
        if expected_codec_id is not None and self.encoder.codec_id != expected_codec_id:
            raise CodecContractError(
                f"codec at {config.codec_dir} loads as {self.encoder.codec_id}, the job expected "
                f"{expected_codec_id}: was the checkpoint replaced while the job ran?"
            )
        log.info("encoder ready: codec %s on %s (%s)", self.encoder.codec_id, self.encoder.device,
                 self.encoder.precision)

    def __call__(self, table):
        import pyarrow as pa

        batches = [AudioBatch.from_row(r) for r in table.to_pylist()]
        _encode_fault(batches)
        rows = [t.to_row() for t in self.encoder(batches)]
        return pa.Table.from_pylist(rows, schema=TOKEN_BATCH_SCHEMA)


def _encode_fault(batches) -> None:
    """Test hook: ``VOXFORGE_ENCODE_FAULT=hold:SHARD`` makes the encoder actor that gets a batch of
    shard SHARD write its pid to ``held-encode-SHARD`` in ``$VOXFORGE_ENCODE_FAULT_DIR`` and wait
    until a file ``release`` appears there (a test removes its node with the batch in flight)."""
    import os

    spec = os.environ.get("VOXFORGE_ENCODE_FAULT")
    if not spec:
        return
    mode, _, shard = spec.partition(":")
    if mode != "hold":
        raise ValueError(f"VOXFORGE_ENCODE_FAULT: unknown mode {mode!r}; use hold:SHARD")
    if any(b.shard == shard for b in batches):
        from pipeline.stages import hold_until_released

        hold_until_released(os.environ["VOXFORGE_ENCODE_FAULT_DIR"], f"encode-{shard}")


def _schemas():
    import pyarrow as pa

    common = [
        ("shard", pa.string()),
        ("batch_index", pa.int64()),
        ("n_batches", pa.int64()),
        ("keys", pa.list_(pa.string())),
        ("positions", pa.list_(pa.int64())),
        ("metas", pa.list_(pa.string())),
    ]
    audio = pa.schema(common + [
        ("lengths", pa.list_(pa.int64())),
        ("pcm", pa.large_binary()),
        ("failures", pa.string()),
        ("shard_error", pa.string()),
    ])
    tokens = pa.schema(common + [
        ("n_samples", pa.list_(pa.int64())),
        ("n_frames", pa.list_(pa.int64())),
        ("semantic", pa.large_binary()),
        ("acoustic", pa.large_binary()),
        ("failures", pa.string()),
        ("padded_samples", pa.int64()),
        ("encode_seconds", pa.float64()),
        ("encode_end", pa.float64()),
        ("shard_error", pa.string()),
    ])
    return audio, tokens


AUDIO_BATCH_SCHEMA, TOKEN_BATCH_SCHEMA = _schemas()


@dataclass(frozen=True)
class CodecInfo:
    """What the job needs to know of a checkpoint without building the model."""

    codec_id: str
    sample_rate: int
    samples_per_frame: int
    frame_rate: float


def codec_info(codec_dir: str | os.PathLike) -> CodecInfo:
    """``codec_id`` (DESIGN §6: name + 12 hex of the weights' SHA-256) and rates of a saved codec.

    Same rule as ``Codec.codec_id`` of a loaded model; :class:`EncodeStage` checks that
    they agree.
    """
    from codec.config import CodecConfig, CodecConfigError
    from codec.speech_codec import CONFIG_FILE, WEIGHTS_FILE, CodecCheckpointError, _sha256_file

    d = Path(codec_dir)
    cfg_path, w_path = d / CONFIG_FILE, d / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise CodecCheckpointError(f"{p}: missing; --codec must be a directory written by Codec.save()")
    try:
        cfg = CodecConfig.from_dict(json.loads(cfg_path.read_text())["config"])
    except (ValueError, KeyError, TypeError, CodecConfigError) as e:
        raise CodecCheckpointError(f"{cfg_path}: not a valid codec config ({e})") from e
    sha = _sha256_file(w_path)
    return CodecInfo(codec_id=f"{cfg.name}-{sha[:12]}", sample_rate=int(cfg.sample_rate),
                     samples_per_frame=int(cfg.samples_per_frame), frame_rate=float(cfg.frame_rate))


__all__ = [
    "ACOUSTIC_DIMS",
    "ACOUSTIC_LEVELS",
    "AUDIO_BATCH_SCHEMA",
    "AudioBatch",
    "AudioShardReader",
    "BatchingConfig",
    "BatchingError",
    "CodecContractError",
    "EncodeStage",
    "EncoderConfig",
    "CodecInfo",
    "SEMANTIC_CODEBOOK_SIZE",
    "SampleFailure",
    "ShardReadError",
    "TOKEN_BATCH_SCHEMA",
    "TokenBatch",
    "TokenEncoder",
    "codec_info",
    "flac_stream_info",
    "n_frames",
    "padding_ratio",
    "plan_batches",
    "read_stage",
]
