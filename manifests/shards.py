"""Shard formats: what one sample of an audio shard (DESIGN §4) and of a token shard (DESIGN §6)
looks like inside its WebDataset tar, and the token spec both sides of the codec agree on.

This module is the one owner of those formats. Writers and readers elsewhere go through it:

- the token spec (:data:`TOKEN_SPEC` and the constants below): ``CodecConfig`` and the model's
  ``ModelConfig`` check their fields against it (:func:`spec_mismatches`) instead of redefining it;
- audio shard sample, written by ``pipeline/writer.py`` (:func:`audio_sample_members`), read by the
  tokenize job (:func:`index_audio_shard` + :func:`decode_audio_member`), by the codec trainer's
  crop stream (:func:`scan_flac_members`) and by the HTML report (:func:`read_flac_members`);
- token shard sample, written by ``manifests/tokens.py`` (:func:`token_tar_bytes`; it owns the
  commit protocol), read by :func:`read_token_shard` and by the model's streaming loader
  (:func:`decode_token_sample`).

A WebDataset sample is the run of consecutive tar members that share a key: the member's base
name up to its first dot (so keys never contain dots, DESIGN §3).

Units: audio in samples at 24 000 Hz, tokens in frames at 12.5 Hz (1920 samples a frame).
No torch import here: shard readers run in processes that only decode FLAC.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields

import numpy as np

# --------------------------------------------------------------------------------------
# The token spec (DESIGN §6 token shards, §7 codec interface)


@dataclass(frozen=True)
class TokenSpec:
    """Numbers every codec checkpoint and every token shard share.

    A frame is ``samples_per_frame`` samples at ``sample_rate`` (1920 at 24 kHz = 80 ms =
    ``frame_rate`` 12.5 Hz) and holds one semantic code (``0..semantic_codebook_size - 1``,
    stored int16) and ``acoustic_dim`` FSQ level indices (``0..acoustic_levels - 1``, stored uint8).
    """

    sample_rate: int = 24_000
    frame_rate: float = 12.5
    semantic_codebook_size: int = 8192
    acoustic_dim: int = 36
    acoustic_levels: int = 21

    @property
    def samples_per_frame(self) -> int:
        return int(round(self.sample_rate / self.frame_rate))


TOKEN_SPEC = TokenSpec()
SAMPLE_RATE = TOKEN_SPEC.sample_rate
FRAME_RATE = TOKEN_SPEC.frame_rate
SAMPLES_PER_FRAME = TOKEN_SPEC.samples_per_frame
SEMANTIC_CODEBOOK_SIZE = TOKEN_SPEC.semantic_codebook_size
ACOUSTIC_DIM = TOKEN_SPEC.acoustic_dim
ACOUSTIC_LEVELS = TOKEN_SPEC.acoustic_levels
SEMANTIC_DTYPE = np.int16  # 0..8191 fits; a token shard stores 2 bytes a frame for it
ACOUSTIC_DTYPE = np.uint8  # 0..20 fits; 36 bytes a frame


def spec_mismatches(owner: str, **values) -> list[str]:
    """Messages for each of ``values`` (spec field name -> value) that differs from the spec.

    ``owner`` names the config in the message, e.g. ``"CodecConfig"``. An empty list means
    they agree. Callers raise their own config error with these messages (they say how to fix).
    """
    names = {f.name for f in fields(TokenSpec)} | {"samples_per_frame"}
    out = []
    for name, value in values.items():
        if name not in names:
            raise KeyError(f"{name} is not a field of the token spec ({sorted(names)})")
        want = getattr(TOKEN_SPEC, name)
        if abs(float(value) - float(want)) > 1e-9:
            out.append(f"{owner}.{name}={value}, but the token spec (manifests.shards.TOKEN_SPEC, DESIGN §6/§7) "
                       f"says {want}: leave it at its default; tokens of another shape would not fit the "
                       f"token shards that the tokenize job writes and the model and the codec service read")
    return out


def n_frames(n_samples: int, samples_per_frame: int = SAMPLES_PER_FRAME) -> int:
    """Frames the causal codec gives for ``n_samples``: ``ceil(n / samples_per_frame)``."""
    return -(-int(n_samples) // int(samples_per_frame))


# --------------------------------------------------------------------------------------
# WebDataset members


def split_member_name(name: str) -> tuple[str, str]:
    """``"dir/abc_00001.tokens.npz"`` -> ``("abc_00001", "tokens.npz")`` (WebDataset's key rule)."""
    base = name.rsplit("/", 1)[-1]
    key, _, ext = base.partition(".")
    return key, ext


def add_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: int = 0) -> None:
    """Append one regular file member. ``mtime=0`` gives the same bytes for the same content."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = mtime
    tar.addfile(info, io.BytesIO(data))


def iter_samples(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` of each sample of a shard, in stored order (one pass, one
    sample in memory at a time): the members of a sample are consecutive, as the writers put them."""
    cur_key, parts = None, {}
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, ext = split_member_name(info.name)
            if cur_key is not None and key != cur_key:
                yield cur_key, parts
                parts = {}
            cur_key = key
            parts[ext] = tar.extractfile(info).read()
    if cur_key is not None:
        yield cur_key, parts


# --------------------------------------------------------------------------------------
# Audio shard sample (DESIGN §4): <key>.flac (mono, 24 kHz, 16-bit) + <key>.json


class ShardReadError(Exception):
    """A whole audio shard cannot be read (missing file, not a tar)."""

    def __init__(self, path: str | os.PathLike, detail: str):
        self.path = str(path)
        super().__init__(f"cannot read audio shard {path}: {detail}")


def audio_sample_members(key: str, flac: bytes, meta_json: bytes) -> list[tuple[str, bytes]]:
    """The tar members of one audio sample, in the order they are written: FLAC, then JSON."""
    return [(f"{key}.flac", flac), (f"{key}.json", meta_json)]


@dataclass
class AudioMember:
    """Where one sample's parts sit inside an audio shard tar (found by :func:`index_audio_shard`)."""

    key: str
    position: int  # order of the sample in its shard
    flac: tuple[int, int] | None = None  # (byte offset of the data, size)
    meta: str | None = None  # the JSON text
    n_samples: int | None = None  # from the FLAC STREAMINFO header
    error: str | None = None  # why the sample cannot be used (None: it can)

    @property
    def duration(self) -> float | None:
        """Seconds, from the sample's JSON when it can be read."""
        try:
            d = json.loads(self.meta)["duration"] if self.meta else None
            return float(d) if d is not None else None
        except (ValueError, KeyError, TypeError):
            return None


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


def index_audio_shard(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> list[AudioMember]:
    """Every sample of an audio shard in tar order, without decoding audio: FLAC headers and JSON only.

    A sample that cannot be used carries ``error`` (missing member, wrong rate or channels, bad
    JSON); a shard that cannot be read at all raises :class:`ShardReadError`.
    """
    members: dict[str, AudioMember] = {}
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = split_member_name(info.name)
                m = members.get(key)
                if m is None:
                    m = members[key] = AudioMember(key=key, position=len(members))
                if ext == "flac":
                    m.flac = (info.offset_data, info.size)
                    raw_pos = raw.tell()
                    raw.seek(info.offset_data)
                    head = raw.read(min(info.size, 64))
                    raw.seek(raw_pos)
                    try:
                        sr, ch, total = flac_stream_info(head)
                        m.n_samples = total
                        if sr != sample_rate:
                            m.error = f"sample rate {sr} Hz, the codec needs {sample_rate} Hz"
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


def decode_audio_member(raw, member: AudioMember, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """int16 mono PCM ``[N]`` of ``member``, read from ``raw`` (the shard file opened "rb").

    Raises ValueError (or soundfile's error) if it is not mono FLAC at ``sample_rate``.
    """
    import soundfile as sf

    off, size = member.flac
    raw.seek(off)
    data = raw.read(size)
    pcm, sr = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    if sr != sample_rate:
        raise ValueError(f"sample rate {sr} Hz, the codec needs {sample_rate} Hz")
    if pcm.shape[1] != 1:
        raise ValueError(f"{pcm.shape[1]} channels, the codec needs mono")
    if pcm.shape[0] == 0:
        raise ValueError("no samples")
    return np.ascontiguousarray(pcm[:, 0])


def read_flac_members(tar_path: str | os.PathLike, keys: Iterable[str]) -> dict[str, bytes]:
    """The ``<key>.flac`` bytes of ``keys`` in one audio shard (one pass over its headers).

    Stops as soon as all are found; keys absent from the shard are absent from the result."""
    want = {f"{k}.flac": k for k in keys}
    found: dict[str, bytes] = {}
    with tarfile.open(tar_path, mode="r:") as tar:  # seekable: skipping a member's data is a seek
        for info in tar:
            key = want.get(info.name.rsplit("/", 1)[-1])  # the exact "<key>.flac" member
            if key is not None and info.isfile():
                found[key] = tar.extractfile(info).read()
                if len(found) == len(want):
                    break
    return found


def scan_flac_members(fileobj, offset: int = 0) -> Iterator[tuple[str, int, int, int]]:
    """``(key, data offset, size, offset of the next header)`` of each FLAC member of an audio shard,
    starting at the tar header at byte ``offset`` of ``fileobj``: a reader can stop anywhere and
    resume from the last ``next offset``. A damaged tar raises ``tarfile.ReadError`` when reached."""
    fileobj.seek(offset)
    tf = tarfile.open(fileobj=fileobj, mode="r:")
    while True:
        m = tf.next()
        if m is None:
            return
        if m.isfile() and split_member_name(m.name)[1] == "flac":
            yield split_member_name(m.name)[0], m.offset_data, m.size, tf.offset


# --------------------------------------------------------------------------------------
# Token shard sample (DESIGN §6): <key>.tokens.npz (semantic int16 [T], acoustic uint8 [T, 36])
# + <key>.json (the audio sample's JSON plus codec_id, frame_rate, n_frames)


class TokenShardError(RuntimeError):
    """A token shard, or one of its samples, breaks DESIGN §6; the message names the shard or key."""


@dataclass
class TokenSample:
    """One utterance of a token shard.

    ``semantic`` ``[T]`` and ``acoustic`` ``[T, 36]`` are the stored int16 / uint8 codes (a reader
    may widen them, e.g. to int64 for embedding lookups); ``meta`` is the sample's JSON.
    """

    key: str
    semantic: np.ndarray
    acoustic: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.semantic.shape[0])

    @property
    def speaker(self) -> str:
        """Global speaker id (``"<source_id>:S<n>"``); the source, or the key, when absent."""
        return str(self.meta.get("speaker") or self.meta.get("source_id") or self.key)

    @property
    def text(self) -> str:
        return str(self.meta.get("text", ""))

    @property
    def words(self) -> list[dict]:
        """``{"word", "start", "end", ...}`` in seconds relative to the SOURCE."""
        return list(self.meta.get("words") or [])

    @property
    def start(self) -> float:
        """Segment start in its source, seconds."""
        return float(self.meta.get("start", 0.0))


def check_tokens(key: str, semantic: np.ndarray, acoustic: np.ndarray) -> None:
    """Raise :class:`TokenShardError` unless the arrays follow DESIGN §6 (dtype, shape, range)."""
    if semantic.dtype != SEMANTIC_DTYPE or semantic.ndim != 1:
        raise TokenShardError(f"{key}: semantic must be int16 [T], got {semantic.dtype} {semantic.shape}")
    if acoustic.dtype != ACOUSTIC_DTYPE or acoustic.ndim != 2 or acoustic.shape[1] != ACOUSTIC_DIM:
        raise TokenShardError(
            f"{key}: acoustic must be uint8 [T, {ACOUSTIC_DIM}], got {acoustic.dtype} {acoustic.shape}")
    if acoustic.shape[0] != semantic.shape[0]:
        raise TokenShardError(f"{key}: {semantic.shape[0]} semantic frames but {acoustic.shape[0]} acoustic frames")
    if semantic.size and (semantic.min() < 0 or semantic.max() >= SEMANTIC_CODEBOOK_SIZE):
        raise TokenShardError(f"{key}: semantic indices outside 0..{SEMANTIC_CODEBOOK_SIZE - 1}")
    if acoustic.size and acoustic.max() >= ACOUSTIC_LEVELS:
        raise TokenShardError(f"{key}: acoustic indices outside 0..{ACOUSTIC_LEVELS - 1}")


def tokens_npz_bytes(semantic: np.ndarray, acoustic: np.ndarray) -> bytes:
    """The ``.tokens.npz`` member (arrays not checked here: see :func:`check_tokens`)."""
    buf = io.BytesIO()
    # Uncompressed: FSQ/VQ indices are near-random, compression buys little and costs CPU.
    np.savez(buf, semantic=semantic, acoustic=acoustic)
    return buf.getvalue()


def token_sample_members(sample: TokenSample) -> list[tuple[str, bytes]]:
    """The tar members of one token sample, checked, in the order they are written: npz, then JSON."""
    check_tokens(sample.key, sample.semantic, sample.acoustic)
    return [(f"{sample.key}.tokens.npz", tokens_npz_bytes(sample.semantic, sample.acoustic)),
            (f"{sample.key}.json", json.dumps(sample.meta, ensure_ascii=False).encode("utf-8"))]


def token_tar_bytes(samples: list[TokenSample]) -> bytes:
    """A WebDataset tar of ``samples`` in the given order (same samples, same bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            for name, data in token_sample_members(s):
                add_member(tar, name, data)
    return buf.getvalue()


def decode_token_sample(where: str, key: str, npz: bytes | None, meta_json: bytes | str | None) -> TokenSample:
    """One token sample from its two members' bytes, checked against DESIGN §6.

    ``where`` (the shard's path) prefixes every error message. A ``frame_rate`` in the JSON must
    be the spec's. The key is the tar key (the JSON's ``key`` is not trusted over it).
    """
    if npz is None or meta_json is None:
        raise TokenShardError(f"{where}: sample {key} lacks its .tokens.npz or .json member")
    try:
        meta = json.loads(meta_json)
        with np.load(io.BytesIO(npz), allow_pickle=False) as z:
            semantic, acoustic = z["semantic"], z["acoustic"]
    except Exception as e:  # noqa: BLE001 - any decoding error is this sample's, named with it
        raise TokenShardError(f"{where}: sample {key} is unreadable: {type(e).__name__}: {e}") from e
    if not isinstance(meta, dict):
        raise TokenShardError(f"{where}: sample {key}: its .json is not an object")
    try:
        check_tokens(key, semantic, acoustic)
    except TokenShardError as e:
        raise TokenShardError(f"{where}: {e}") from None
    rate = meta.get("frame_rate", FRAME_RATE)
    if abs(float(rate) - FRAME_RATE) > 1e-6:
        raise TokenShardError(f"{where}: sample {key}: frame_rate {rate} != {FRAME_RATE}")
    return TokenSample(key=key, semantic=semantic, acoustic=acoustic, meta=meta)


def read_token_shard(path: str | os.PathLike) -> Iterator[TokenSample]:
    """Samples of a token shard in stored order (each checked by :func:`decode_token_sample`)."""
    for key, parts in iter_samples(path):
        yield decode_token_sample(str(path), key, parts.get("tokens.npz"), parts.get("json"))
