"""The codec as a service, without Ray: request parsing, limits, batched encode/decode, responses.

``codec/serve.py`` is the thin Ray Serve wiring around this module (DESIGN §2: logic never
imports Ray), so everything here runs in a unit test as plain Python:

- :class:`ServiceConfig`: the codec checkpoint, device, limits and batching of one deployment.
- :class:`CodecRuntime`: one loaded codec on one device. :meth:`CodecRuntime.encode_many` takes
  the PCM of many requests, length-buckets it with the tokenize job's :func:`plan_batches` and
  encodes the buckets with the tokenize job's :class:`TokenEncoder` (same code, so the same
  tokens); :meth:`CodecRuntime.decode_many` does the same for token sequences.
- :func:`read_audio` (request bytes -> int16 PCM at 24 kHz, through the ingest's ``Decoder``),
  :func:`read_tokens` (JSON or ``.tokens.npz`` -> checked arrays) and the response encoders.
- :class:`ServiceError` and its subclasses carry the HTTP status and a message that names the
  problem; anything else escaping a handler is a server bug (500).

What a client sends is only ever bytes: the server writes an upload to a temporary file it
creates itself (the ingest's decoder reads paths), never opens a path a client names, and
accepts only audio containers recognised by their first bytes, so FFmpeg never sees a playlist
or concat script that could make it open other files or URLs.

Units: PCM int16 mono at 24 000 Hz; tokens at 12.5 Hz (1920 samples a frame); seconds.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import zipfile
from dataclasses import asdict, dataclass

import numpy as np

from codec.token_encoder import AudioBatch, EncoderConfig, TokenEncoder
from codec.tokenizing.bucketing import plan_batches
from manifests.shards import ACOUSTIC_DIM, ACOUSTIC_LEVELS, SAMPLE_RATE, SEMANTIC_CODEBOOK_SIZE

NPZ_TYPES = ("application/x-npz", "application/npz", "application/octet-stream")
AUDIO_TYPES = {"audio/wav": "WAV", "audio/x-wav": "WAV", "audio/wave": "WAV", "audio/flac": "FLAC",
               "audio/x-flac": "FLAC"}
CODEC_ID_HEADER = "x-codec-id"


# --------------------------------------------------------------------------------------
# Errors: each carries its HTTP status


class ServiceError(Exception):
    """A request the service answers with ``status`` and this message (never a crash)."""

    status = 400

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


class BadRequest(ServiceError):
    status = 400


class PayloadTooLarge(ServiceError):
    status = 413


class CodecMismatch(ServiceError):
    """Tokens made by another codec (their ``codec_id`` is not this deployment's)."""

    status = 409


class NotAcceptable(ServiceError):
    status = 406


class RequestTimeout(ServiceError):
    status = 504


class EncodeFailed(ServiceError):
    """The codec failed on an input it accepted (a server-side problem, logged)."""

    status = 500


# --------------------------------------------------------------------------------------
# Configuration


@dataclass
class ServiceConfig:
    """One deployment: a codec checkpoint on a device, its limits and its batching.

    Limits bound what one request may cost: ``max_audio_seconds`` of audio in (decoded length)
    or out (tokens to decode), ``max_body_mb`` of request body, ``request_timeout_s`` from the
    request's arrival to its answer. Batching: up to ``max_batch_requests`` requests that arrive
    within ``batch_wait_s`` of each other share one model call, in which the tokenize job's
    length bucketing (``batch_seconds`` of padded audio, ``max_padding``) makes encoder batches.
    """

    codec_dir: str
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on cuda, fp32 on cpu) | bf16 | fp32
    threads: int | None = None  # torch intra-op threads of a CPU replica (None: torch's default)
    max_audio_seconds: float = 60.0
    max_body_mb: float = 32.0
    request_timeout_s: float = 60.0
    max_batch_requests: int = 16
    batch_wait_s: float = 0.01
    batch_seconds: float = 120.0
    max_padding: float = 0.25

    def __post_init__(self):
        if not os.path.isdir(self.codec_dir):
            raise ValueError(f"codec_dir {self.codec_dir!r}: not a directory; give a checkpoint written by Codec.save()")
        EncoderConfig(codec_dir=self.codec_dir, device=self.device, precision=self.precision,
                      threads=self.threads)  # validates device/precision/threads with its messages
        for name in ("max_audio_seconds", "max_body_mb", "request_timeout_s", "batch_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_batch_requests < 1:
            raise ValueError(f"max_batch_requests must be >= 1, got {self.max_batch_requests}")
        if not self.batch_wait_s >= 0:
            raise ValueError(f"batch_wait_s must be >= 0 (seconds a batch waits for more requests), got {self.batch_wait_s}")
        if not 0 <= self.max_padding < 1:
            raise ValueError(f"max_padding must be in [0, 1), got {self.max_padding}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------
# The model


class CodecRuntime:
    """One codec on one device, encoding and decoding lists of requests in length buckets."""

    def __init__(self, config: ServiceConfig, codec=None):
        self.config = config
        self.encoder = TokenEncoder(
            EncoderConfig(codec_dir=config.codec_dir, device=config.device, precision=config.precision,
                          threads=config.threads),
            codec=codec,
        )
        self.codec = self.encoder.codec
        self.codec_id = self.encoder.codec_id
        self.sample_rate = self.encoder.sample_rate
        self.samples_per_frame = self.encoder.samples_per_frame
        self.frame_rate = self.encoder.frame_rate
        self.max_frames = math.ceil(config.max_audio_seconds * self.frame_rate)

    def _plan(self, lengths: list[int]) -> list[list[int]]:
        """The tokenize job's bucketing (``plan_batches``), lengths in samples."""
        c = self.config
        return plan_batches(lengths, int(c.batch_seconds * self.sample_rate), max_items=max(1, len(lengths)),
                            samples_per_frame=self.samples_per_frame, max_padding=c.max_padding)

    def encode_many(self, pcm: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray] | str]:
        """int16 ``[N_i]`` at 24 kHz -> per item ``(semantic int16 [T_i], acoustic uint8 [T_i, 36])``,
        or the error message of an item the codec failed on. ``T_i = ceil(N_i / 1920)``."""
        plan = self._plan([int(x.shape[0]) for x in pcm])
        batches = [AudioBatch(shard="", batch_index=b, n_batches=len(plan), keys=[str(i) for i in idx],
                              positions=list(idx), metas=["{}"] * len(idx), pcm=[pcm[i] for i in idx])
                   for b, idx in enumerate(plan)]
        out: list = [None] * len(pcm)
        for tb in self.encoder(batches):
            for k, s, a in zip(tb.keys, tb.semantic, tb.acoustic):
                out[int(k)] = (s, a)
            for f in tb.failures:
                out[int(f.key)] = f.error
        return [x if x is not None else "the codec returned nothing for this item" for x in out]

    def decode_many(self, tokens: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """Per item ``(semantic [T_i], acoustic [T_i, 36])`` -> float32 waveform ``[T_i * 1920]`` at 24 kHz.

        Items are bucketed by length like the encoder's and zero-padded at the end; the decoder is
        causal, so padding never changes an item's own samples.
        """
        import torch

        spf = self.samples_per_frame
        plan = self._plan([int(s.shape[0]) * spf for s, _ in tokens])
        out: list = [None] * len(tokens)
        dev = self.encoder.device
        for idx in plan:
            t_max = max(int(tokens[i][0].shape[0]) for i in idx)
            sem = np.zeros((len(idx), t_max), np.int64)
            ac = np.full((len(idx), t_max, ACOUSTIC_DIM), ACOUSTIC_LEVELS // 2, np.int64)
            for j, i in enumerate(idx):
                t = tokens[i][0].shape[0]
                sem[j, :t] = tokens[i][0]
                ac[j, :t] = tokens[i][1]
            with torch.inference_mode(), self.encoder._autocast():
                wav = self.codec.decode(torch.from_numpy(sem).to(dev), torch.from_numpy(ac).to(dev))
            wav = wav[:, 0].float().cpu().numpy()
            for j, i in enumerate(idx):
                out[i] = np.ascontiguousarray(wav[j, : tokens[i][0].shape[0] * spf], dtype=np.float32)
        return out

    def info(self) -> dict:
        import platform

        import ray
        import torch

        try:
            from importlib.metadata import version

            voxforge = version("voxforge")
        except Exception:
            voxforge = "unknown"
        c = self.config
        return {
            "codec_id": self.codec_id,
            "sample_rate": self.sample_rate,
            "frame_rate": self.frame_rate,
            "samples_per_frame": self.samples_per_frame,
            "semantic_codebook_size": SEMANTIC_CODEBOOK_SIZE,
            "acoustic_dims": ACOUSTIC_DIM,
            "acoustic_levels": ACOUSTIC_LEVELS,
            "codec_config": self.codec.config.to_dict(),
            "device": str(self.encoder.device),
            "precision": self.encoder.precision,
            "limits": {"max_audio_seconds": c.max_audio_seconds, "max_body_mb": c.max_body_mb,
                       "request_timeout_s": c.request_timeout_s, "max_frames": self.max_frames},
            "batching": {"max_batch_requests": c.max_batch_requests, "batch_wait_s": c.batch_wait_s,
                         "batch_seconds": c.batch_seconds, "max_padding": c.max_padding},
            "version": {"voxforge": voxforge, "torch": torch.__version__, "ray": ray.__version__,
                        "python": platform.python_version()},
        }


# --------------------------------------------------------------------------------------
# Requests


def _sniff_audio(data: bytes) -> str | None:
    """The container of ``data`` from its first bytes, or None when it is not one we decode.

    Only these go to the decoders: a text format (an HLS playlist, an FFmpeg concat script, SDP)
    could make FFmpeg open other files or URLs, and nothing a client sends may do that.
    """
    h = data[:16]
    if h[:4] == b"RIFF" and h[8:12] == b"WAVE":
        return "wav"
    if h[:4] in (b"RF64", b"BW64"):
        return "wav"
    if h[:4] == b"fLaC":
        return "flac"
    if h[:4] == b"OggS":
        return "ogg"
    if h[:3] == b"ID3" or (len(h) > 1 and h[0] == 0xFF and (h[1] & 0xE0) == 0xE0):
        return "mp3/aac"  # ID3 tag or an MPEG audio / ADTS frame sync
    if h[4:8] == b"ftyp":
        return "mp4"
    if h[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if h[:4] == b"FORM" and h[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if h[:4] == b"\x30\x26\xb2\x75":
        return "wma"
    if h[:4] == b"caff":
        return "caf"
    return None


def read_audio(data: bytes, max_seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Request bytes (any container the ingest decodes) -> int16 mono PCM ``[N]`` at ``sample_rate``.

    Raises :class:`BadRequest` (undecodable, empty) or :class:`PayloadTooLarge` (longer than
    ``max_seconds``; decoding stops as soon as it is known).
    """
    from pipeline.decode import Decoder
    from pipeline.errors import SourceError, TooLong

    if not data:
        raise BadRequest("empty body: send the audio file's bytes (raw body or multipart field 'audio')")
    kind = _sniff_audio(data)
    if kind is None:
        raise BadRequest("not an audio file this service decodes (wav, flac, ogg/opus, mp3, aac, "
                         "m4a/mp4, webm, aiff, wma, caf), judging by its first bytes")
    # Silence and very short clips are valid codec input (the ingest rejects them, the service does not).
    dec = Decoder(analysis_rate=None, output_rate=sample_rate, min_duration=0.0, silence_dbfs=-math.inf, max_duration=max_seconds)
    with tempfile.TemporaryDirectory(prefix="voxforge-serve-") as d:
        path = os.path.join(d, "upload")  # our own name: a client's file name is never used
        with open(path, "wb") as f:
            f.write(data)
        try:
            audio = dec(path)
        except TooLong as e:
            raise PayloadTooLarge(f"audio too long: {e.detail}") from None
        except SourceError as e:
            # e.detail names the problem; e's message would name our temporary path
            raise BadRequest(f"undecodable audio ({e.reason}): {e.detail.replace(path, 'upload')}") from None
        except Exception as e:  # a decoder library failing in some other way is still bad input
            raise BadRequest(f"undecodable audio: {type(e).__name__}: {str(e).replace(path, 'upload')[:300]}") from None
    if audio.audio24.shape[0] == 0:
        raise BadRequest("undecodable audio: zero samples")
    return audio.audio24


def _as_token_array(name: str, value, ndim: int) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise BadRequest(f"{name}: not a rectangular array of integers ({e})") from None
    if arr.dtype == bool or arr.dtype.kind not in "iu":
        if arr.size == 0 and arr.dtype.kind == "f":
            arr = arr.astype(np.int64)  # json [] parses as float64
        else:
            raise BadRequest(f"{name}: must hold integers, got {arr.dtype} values")
    if arr.ndim != ndim:
        want = "[T]" if ndim == 1 else f"[T, {ACOUSTIC_DIM}]"
        raise BadRequest(f"{name}: must be {want}, got shape {list(arr.shape)}")
    return arr


def check_token_arrays(semantic: np.ndarray, acoustic: np.ndarray, max_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Shapes and ranges of DESIGN §6 -> ``(int16 [T], uint8 [T, 36])``; raises :class:`BadRequest` or
    :class:`PayloadTooLarge` naming the problem."""
    if acoustic.ndim != 2 or acoustic.shape[1] != ACOUSTIC_DIM:
        raise BadRequest(f"acoustic: must be [T, {ACOUSTIC_DIM}], got shape {list(acoustic.shape)}")
    if acoustic.shape[0] != semantic.shape[0]:
        raise BadRequest(f"semantic has {semantic.shape[0]} frames but acoustic has {acoustic.shape[0]}")
    t = int(semantic.shape[0])
    if t == 0:
        raise BadRequest("no frames: semantic and acoustic are empty")
    if t > max_frames:
        raise PayloadTooLarge(f"too many frames: {t}, the maximum is {max_frames} (max audio length)")
    if semantic.min() < 0 or semantic.max() >= SEMANTIC_CODEBOOK_SIZE:
        raise BadRequest(f"semantic: indices must be in 0..{SEMANTIC_CODEBOOK_SIZE - 1}, "
                         f"got [{semantic.min()}, {semantic.max()}]")
    if acoustic.min() < 0 or acoustic.max() >= ACOUSTIC_LEVELS:
        raise BadRequest(f"acoustic: indices must be in 0..{ACOUSTIC_LEVELS - 1}, "
                         f"got [{acoustic.min()}, {acoustic.max()}]")
    return semantic.astype(np.int16), acoustic.astype(np.uint8)


def _read_npz(data: bytes, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            members = z.infolist()
            names = {m.filename for m in members}
            if not {"semantic.npy", "acoustic.npy"} <= names:
                raise BadRequest(f"npz must hold 'semantic' and 'acoustic' arrays (DESIGN §6), it holds "
                                 f"{sorted(n.removesuffix('.npy') for n in names)[:8]}")
            # A compressed npz could expand far past the body limit: check before inflating.
            if sum(m.file_size for m in members) > 4 * max_bytes:
                raise PayloadTooLarge(f"npz expands to {sum(m.file_size for m in members)} bytes, more than "
                                      f"4x the body limit")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            sem, ac = z["semantic"], z["acoustic"]
    except ServiceError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise BadRequest(f"not a readable .tokens.npz: {type(e).__name__}: {str(e)[:200]}") from None
    if sem.dtype != np.int16 or ac.dtype != np.uint8:
        raise BadRequest(f"npz dtypes must be semantic int16 and acoustic uint8 (DESIGN §6), "
                         f"got {sem.dtype} and {ac.dtype}")
    if sem.ndim != 1:
        raise BadRequest(f"semantic: must be [T], got shape {list(sem.shape)}")
    return sem, ac


def read_tokens(data: bytes, content_type: str, header_codec_id: str | None, *, codec_id: str,
                max_frames: int, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """A decode request's body -> checked ``(semantic int16 [T], acoustic uint8 [T, 36])``.

    JSON: ``{"codec_id", "semantic": [T], "acoustic": [[36] x T]}``; npz (the ``.tokens.npz`` of
    DESIGN §6) with the codec id in the ``X-Codec-Id`` header. A missing codec id is a 400, another
    codec's a 409: tokens of different codecs never mix (DESIGN §6).
    """
    ctype = (content_type or "").split(";")[0].strip().lower()
    if not data:
        raise BadRequest("empty body: send tokens as JSON or as a .tokens.npz")
    if ctype == "application/json" or (not ctype and data[:1] == b"{"):
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"body is not valid JSON: {e}") from None
        except RecursionError:
            raise BadRequest("body is not valid JSON: nested too deeply") from None
        if not isinstance(obj, dict):
            raise BadRequest("JSON body must be an object with codec_id, semantic and acoustic")
        missing = [k for k in ("semantic", "acoustic") if k not in obj]
        if missing:
            raise BadRequest(f"JSON body lacks {missing}")
        sent_id = obj.get("codec_id", header_codec_id)
        sem = _as_token_array("semantic", obj["semantic"], 1)
        ac = _as_token_array("acoustic", obj["acoustic"], 2)
    elif ctype in NPZ_TYPES or (not ctype and data[:2] == b"PK"):
        sent_id = header_codec_id
        sem, ac = _read_npz(data, max_bytes)
    else:
        raise BadRequest(f"Content-Type {content_type!r}: send application/json or application/x-npz")
    if not sent_id:
        raise BadRequest(f"no codec_id: say which codec made the tokens (JSON field 'codec_id' or header "
                         f"X-Codec-Id; this service decodes {codec_id})")
    if not isinstance(sent_id, str) or sent_id != codec_id:
        raise CodecMismatch(f"tokens are from codec {sent_id!r}, this service decodes {codec_id!r}: "
                            f"send them to a service running that codec")
    return check_token_arrays(sem, ac, max_frames)


async def extract_upload(body: bytes, content_type: str) -> bytes:
    """The audio bytes of an encode request: the raw body, or the file part of a multipart form."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        return body
    from starlette.datastructures import Headers, UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body
        yield b""

    try:
        form = await MultiPartParser(Headers({"content-type": content_type}), stream(), max_files=1,
                                     max_fields=8, max_part_size=len(body) + 1).parse()
    except (MultiPartException, ValueError, KeyError) as e:
        raise BadRequest(f"malformed multipart/form-data: {e}") from None
    files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    if not files:
        raise BadRequest("multipart/form-data without a file part: send the audio as a file field, "
                         "e.g. curl -F audio=@speech.wav")
    f = files[0]
    f.file.seek(0)
    data = f.file.read()  # starlette spooled it to memory (or its own temporary file)
    f.file.close()
    return data


# --------------------------------------------------------------------------------------
# Responses


def wants(accept: str | None, options: dict[str, str], default: str) -> str:
    """The first media type of ``Accept`` (q-values ignored, order kept) that maps to a format."""
    if not accept:
        return default
    for part in accept.split(","):
        t = part.split(";")[0].strip().lower()
        if t in ("*/*", ""):
            return default
        if t in options:
            return options[t]
    raise NotAcceptable(f"Accept {accept!r}: this endpoint answers {sorted(options)}")


def tokens_json(semantic: np.ndarray, acoustic: np.ndarray, codec_id: str, frame_rate: float,
                n_samples: int, sample_rate: int) -> dict:
    return {"codec_id": codec_id, "frame_rate": frame_rate, "n_frames": int(semantic.shape[0]),
            "duration": n_samples / sample_rate,
            "semantic": semantic.tolist(), "acoustic": acoustic.tolist()}


def tokens_npz(semantic: np.ndarray, acoustic: np.ndarray) -> bytes:
    """The ``.tokens.npz`` of DESIGN §6, as token shards hold it (``manifests.shards``)."""
    from manifests.shards import check_tokens, tokens_npz_bytes

    check_tokens("response", semantic, acoustic)
    return tokens_npz_bytes(semantic, acoustic)


def audio_bytes(wav: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """float32 ``[N]`` -> 16-bit WAV or FLAC bytes."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(wav, -1.0, 1.0), sample_rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


__all__ = [
    "BadRequest",
    "CodecMismatch",
    "CodecRuntime",
    "EncodeFailed",
    "NotAcceptable",
    "PayloadTooLarge",
    "RequestTimeout",
    "ServiceConfig",
    "ServiceError",
    "audio_bytes",
    "check_token_arrays",
    "extract_upload",
    "read_audio",
    "read_tokens",
    "tokens_json",
    "tokens_npz",
    "wants",
]
