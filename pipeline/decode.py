"""Decode stage: any common audio file -> mono float32 at 16 kHz (analysis) and PCM16 at 24 kHz (output).

Streaming: the file is read in blocks, downmixed and fed to two soxr resampling streams,
so a 192 kHz 8-channel hour never exists in memory at its original rate; peak memory is
the two outputs (16 kHz float32 + 24 kHz int16: ~400 MB an hour).
Readers: libsndfile (wav/flac/ogg/opus/mp3, exact frame counts), else FFmpeg through
torchcodec (m4a/aac/mp4/webm and whatever libsndfile refuses).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from pipeline.errors import (
    EmptyFile,
    NonFinite,
    NoSamples,
    NotAudio,
    Silent,
    SourceError,
    TooLong,
    TooShort,
    Truncated,
    Unreadable,
)

BLOCK_SECONDS = 30.0


@dataclass
class DecodedAudio:
    """audio16: float32 [N16] at 16 kHz in [-1, 1]; audio24: int16 [N24] at 24 kHz."""

    audio16: np.ndarray
    audio24: np.ndarray
    duration: float  # s, of the original
    sample_rate: int  # Hz, of the original
    channels: int
    codec: str  # container/format as the reader names it, e.g. "WAV/FLOAT", "FLAC/PCM_16", "ffmpeg:aac"


class _Growable:
    """A 1-D array filled chunk by chunk; preallocated when the length is known, so a long
    file costs its output once in memory instead of chunks + a concatenated copy."""

    def __init__(self, dtype, capacity: int = 0):
        self.buf = np.empty(max(capacity, 1024), dtype)
        self.n = 0

    def append(self, x: np.ndarray) -> None:
        if self.n + len(x) > len(self.buf):
            grown = np.empty(max(2 * len(self.buf), self.n + len(x)), self.buf.dtype)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n: self.n + len(x)] = x
        self.n += len(x)

    def take(self) -> np.ndarray:
        out = self.buf[: self.n]
        # hand back a right-sized array (a view would keep the slack alive)
        return out if len(self.buf) - self.n < 1 << 16 else out.copy()


class _Streams:
    """Two resampling streams (original rate -> 16 kHz and 24 kHz) and checks on the way."""

    def __init__(self, sr: int, rate16: int | None, rate24: int, expected_frames: int = 0):
        # rate16 None: no analysis stream (the codec service needs only the 24 kHz output)
        self.analysis = rate16 is not None
        rate16 = rate16 or sr
        self.r16 = soxr.ResampleStream(sr, rate16, 1, dtype="float32", quality="HQ") if sr != rate16 else None
        self.r24 = soxr.ResampleStream(sr, rate24, 1, dtype="float32", quality="HQ") if sr != rate24 else None
        margin = 4096
        self.out16 = _Growable(np.float32, int(expected_frames * rate16 / sr) + margin
                               if expected_frames and self.analysis else 0)
        self.out24 = _Growable(np.int16, int(expected_frames * rate24 / sr) + margin if expected_frames else 0)
        self.n_in = 0
        self.sum_sq = 0.0
        self.n_bad = 0

    def feed(self, block: np.ndarray, last: bool = False) -> None:
        """block: [n, channels] float32 at the original rate."""
        mono = block.mean(axis=1, dtype=np.float32) if block.ndim == 2 else block.astype(np.float32, copy=False)
        bad = ~np.isfinite(mono)
        if bad.any():
            self.n_bad += int(bad.sum())
            mono = np.where(bad, 0.0, mono).astype(np.float32)
        self.n_in += mono.shape[0]
        self.sum_sq += float(np.dot(mono.astype(np.float64), mono.astype(np.float64)))
        if self.analysis:
            y16 = self.r16.resample_chunk(mono, last=last) if self.r16 else mono
            self.out16.append(np.clip(y16, -1.0, 1.0))
        y24 = self.r24.resample_chunk(mono, last=last) if self.r24 else mono
        self.out24.append(np.clip(np.round(y24 * 32767.0), -32768, 32767).astype(np.int16))

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        if self.r16 is not None or self.r24 is not None:
            self.feed(np.zeros((0,), np.float32), last=True)
        return self.out16.take(), self.out24.take()


def _wav_declared_data_bytes(path: str) -> tuple[int, int] | None:
    """(declared data-chunk bytes, bytes actually present) of a RIFF/WAVE file, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            while True:
                hdr = f.read(8)
                if len(hdr) < 8:
                    return None
                cid, size = hdr[:4], struct.unpack("<I", hdr[4:])[0]
                if cid == b"data":
                    start = f.tell()
                    end = os.fstat(f.fileno()).st_size
                    # 0xFFFFFFFF / 0: streaming writers that never patched the header
                    if size in (0, 0xFFFFFFFF):
                        return None
                    return size, end - start
                f.seek(size + (size & 1), 1)
    except OSError:
        return None


class Decoder:
    """Decode stage. ``__call__(path) -> DecodedAudio`` or raises a typed ``SourceError``.

    ``analysis_rate`` None skips the analysis stream (``audio16`` comes back empty).
    ``max_duration`` (s, None: no limit) stops decoding with ``TooLong`` as soon as the header or
    the samples read so far pass it, so a long (or lying) file costs at most one block more than
    the limit in memory (the codec service uses it; the ingest does not).
    """

    def __init__(self, analysis_rate: int | None = 16_000, output_rate: int = 24_000,
                 min_duration: float = 0.05, silence_dbfs: float = -70.0, max_duration: float | None = None):
        self.analysis_rate = analysis_rate
        self.output_rate = output_rate
        self.min_duration = min_duration
        self.silence_dbfs = silence_dbfs
        self.max_duration = max_duration

    def _check_length(self, path: str, n_frames: int, sr: int) -> None:
        if self.max_duration is not None and n_frames > self.max_duration * sr:
            raise TooLong(path, f"audio is longer than the {self.max_duration:g} s maximum "
                                f"({n_frames / sr:.1f} s or more)")

    def __call__(self, path: str) -> DecodedAudio:
        try:
            size = os.path.getsize(path)
        except OSError as e:
            raise Unreadable(path, f"cannot stat file ({e.strerror or e})") from e
        if size == 0:
            raise EmptyFile(path, "file is empty (0 bytes)")
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as e:
            raise Unreadable(path, f"cannot open file for reading ({e.strerror or e})") from e

        try:
            decoded, streams = self._decode_soundfile(path)
            if streams.n_bad and not decoded.codec.endswith(("/FLOAT", "/DOUBLE")):
                # non-finite samples out of a compressed codec are a decoder artefact (seen
                # with libsndfile's mp3 decoder on real files), not the file's data: let FFmpeg decode
                raise ValueError(f"libsndfile produced {streams.n_bad} non-finite samples")
        except SourceError:
            raise
        except Exception as sf_err:  # libsndfile refused it: let FFmpeg try
            try:
                decoded, streams = self._decode_ffmpeg(path)
            except SourceError:
                raise
            except Exception as ff_err:
                raise NotAudio(path, f"not decodable as audio (libsndfile: {_short(sf_err)}; ffmpeg: {_short(ff_err)})") from ff_err
        return self._check(path, decoded, streams)

    def _decode_soundfile(self, path: str) -> tuple[DecodedAudio, _Streams]:
        declared = _wav_declared_data_bytes(path)
        with sf.SoundFile(path) as f:
            sr, ch = f.samplerate, f.channels
            codec = f"{f.format}/{f.subtype}"
            if declared is not None and declared[1] < declared[0]:
                raise Truncated(path, f"WAV data chunk declares {declared[0]} bytes but only {declared[1]} are present")
            self._check_length(path, f.frames, sr)  # the header's count (exact for wav/flac)
            streams = _Streams(sr, self.analysis_rate, self.output_rate, f.frames)
            block = max(1, int(BLOCK_SECONDS * sr))
            expected = f.frames
            # f.read, not f.blocks: for MP3 the header's frame count is an estimate and blocks()
            # hands back uninitialised memory past the real end (seen as stray NaN samples)
            while len(data := f.read(block, dtype="float32", always_2d=True)):
                streams.feed(data)
                self._check_length(path, streams.n_in, sr)
        exact = f.format in ("WAV", "WAVEX", "FLAC", "AIFF", "W64", "RF64", "CAF")
        if exact and expected > 0 and streams.n_in < expected:
            raise Truncated(path, f"header declares {expected} frames but only {streams.n_in} could be decoded")
        a16, a24 = streams.finish()
        return DecodedAudio(a16, a24, streams.n_in / sr, sr, ch, codec), streams

    def _decode_ffmpeg(self, path: str) -> tuple[DecodedAudio, _Streams]:
        from torchcodec.decoders import AudioDecoder

        dec = AudioDecoder(path)
        md = dec.metadata
        sr, ch = int(md.sample_rate), int(md.num_channels or 1)
        est = int((md.duration_seconds_from_header or 0) * sr)
        self._check_length(path, est, sr)
        streams = _Streams(sr, self.analysis_rate, self.output_rate, est)
        # Read in time windows so long files stream; the last window runs to the end of stream.
        t = 0.0
        while True:
            samples = dec.get_samples_played_in_range(t, t + BLOCK_SECONDS)
            data = samples.data.numpy()  # [C, n]
            if data.shape[1] == 0:
                break
            streams.feed(np.ascontiguousarray(data.T))
            self._check_length(path, streams.n_in, sr)
            t += BLOCK_SECONDS
            if data.shape[1] < int(BLOCK_SECONDS * sr) - sr // 100:
                break
        a16, a24 = streams.finish()
        codec = f"ffmpeg:{md.codec or 'unknown'}"
        return DecodedAudio(a16, a24, streams.n_in / sr, sr, ch, codec), streams

    def _check(self, path: str, d: DecodedAudio, s: _Streams) -> DecodedAudio:
        if s.n_in == 0:
            raise NoSamples(path, "the file decodes to zero samples")
        if s.n_bad:
            raise NonFinite(path, f"{s.n_bad} of {s.n_in} samples are NaN or infinite")
        if d.duration < self.min_duration:
            raise TooShort(path, f"audio is {d.duration * 1000:.1f} ms long, shorter than the {self.min_duration * 1000:.0f} ms minimum")
        rms = np.sqrt(s.sum_sq / max(1, s.n_in))
        dbfs = 20 * np.log10(max(rms, 1e-12))
        if dbfs < self.silence_dbfs:
            raise Silent(path, f"no signal: RMS level {dbfs:.1f} dBFS is below {self.silence_dbfs:.0f} dBFS")
        return d


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:200]
