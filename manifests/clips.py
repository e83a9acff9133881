"""Audio clips of segments for the report's listen section, encoded small enough to embed in a page.

Kept segments are read from their audio shard (``<key>.flac`` members, DESIGN §4). Dropped
segments are not in any shard, so their audio is cut from the source file (``source_path``,
``start``..``end``) when libsndfile can read it here; otherwise the clip says why it has no audio.
Clips are re-encoded as Ogg/Vorbis, mono 24 kHz (~5 KB per second of speech, a tenth of the
shard's FLAC), and cut to at most ``max_seconds``. Not Opus, which is as small: libsndfile's
Opus encoder took 15x longer (1 s against 0.07 s for 7 s of speech on this 2-core machine).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from manifests.shards import SAMPLE_RATE

CLIP_RATE = SAMPLE_RATE  # Hz: the shards' rate
VORBIS_LEVEL = 0.8  # libsndfile's compression level (0..1): ~5 KB/s of 24 kHz speech, clear enough to judge it


class ClipError(Exception):
    """A segment's audio could not be read; the message says where and why."""


@dataclass
class Clip:
    """One encoded clip: ``data`` bytes of ``mime`` type, ``seconds`` of audio (after the cut)."""

    data: bytes
    mime: str
    seconds: float
    cut: bool  # True when the segment was longer than the clip


def encode_clip(audio: np.ndarray, rate: int, max_seconds: float) -> Clip:
    """``audio`` float [N] at ``rate`` Hz -> an Ogg/Vorbis clip at 24 kHz of at most ``max_seconds``.

    Falls back to FLAC when this libsndfile cannot write Vorbis."""
    if rate != CLIP_RATE:
        import soxr

        audio = soxr.resample(audio.astype(np.float32), rate, CLIP_RATE)
    n_max = int(max_seconds * CLIP_RATE)
    cut = len(audio) > n_max
    audio = np.clip(audio[:n_max], -1.0, 1.0).astype(np.float32)
    buf = io.BytesIO()
    try:
        sf.write(buf, audio, CLIP_RATE, format="OGG", subtype="VORBIS", compression_level=VORBIS_LEVEL)
        mime = "audio/ogg"
    except (sf.LibsndfileError, ValueError, TypeError):
        buf = io.BytesIO()
        sf.write(buf, audio, CLIP_RATE, format="FLAC", subtype="PCM_16")
        mime = "audio/flac"
    return Clip(buf.getvalue(), mime, len(audio) / CLIP_RATE, cut)


def flac_clip(flac: bytes, max_seconds: float) -> Clip:
    audio, rate = sf.read(io.BytesIO(flac), dtype="float32", always_2d=False)
    return encode_clip(audio if audio.ndim == 1 else audio.mean(axis=1), rate, max_seconds)


def source_clip(path: str, start: float, end: float, max_seconds: float) -> Clip:
    """Cut ``start``..``end`` (s) out of a source file (downmixed), seeking instead of decoding it all."""
    if "://" in path:
        raise ClipError(f"{path}: a remote source is not read back for the report")
    if not Path(path).is_file():
        raise ClipError(f"{path}: the source file is not here any more")
    try:
        with sf.SoundFile(path) as f:
            rate = f.samplerate
            a = int(max(start, 0.0) * rate)
            b = min(int(min(end, start + max_seconds) * rate), f.frames)
            f.seek(a)
            audio = f.read(max(b - a, 0), dtype="float32", always_2d=True).mean(axis=1)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise ClipError(f"{path}: libsndfile cannot read it here ({e})") from e
    if not len(audio):
        raise ClipError(f"{path}: no audio between {start:.2f} s and {end:.2f} s")
    clip = encode_clip(audio, rate, max_seconds)
    clip.cut = end - start > max_seconds
    return clip
