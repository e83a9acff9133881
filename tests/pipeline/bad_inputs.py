"""A corpus of bad and awkward inputs, made from real speech where audio is needed.

``make_bad_corpus(dir, speech_file)`` writes the files and returns {name: expected}, where
expected is ("rejected", reason) or ("ok", None).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


def _speech(path: Path, rate: int, seconds: float = 4.0) -> np.ndarray:
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    x = x[: int(seconds * sr)]
    return soxr.resample(x, sr, rate).astype(np.float32)


def make_bad_corpus(d: Path, speech_file: Path) -> dict[str, tuple[str, str | None]]:
    d.mkdir(parents=True, exist_ok=True)
    exp: dict[str, tuple[str, str | None]] = {}

    (d / "empty.wav").write_bytes(b"")
    exp["empty.wav"] = ("rejected", "empty_file")

    good = _speech(speech_file, 16_000)
    sf.write(d / "full.wav", good, 16_000, subtype="PCM_16")
    data = (d / "full.wav").read_bytes()
    (d / "truncated.wav").write_bytes(data[: len(data) // 2])
    exp["truncated.wav"] = ("rejected", "truncated")
    (d / "full.wav").unlink()

    (d / "not_audio.wav").write_bytes(b"this is not audio at all, just text pretending\n" * 50)
    exp["not_audio.wav"] = ("rejected", "not_audio")
    (d / "random_bytes.mp3").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    exp["random_bytes.mp3"] = ("rejected", "not_audio")

    # a valid WAV header with a data chunk of zero bytes
    hdr = b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
    (d / "zero_length.wav").write_bytes(hdr + b"data" + struct.pack("<I", 0))
    exp["zero_length.wav"] = ("rejected", "zero_length")

    sf.write(d / "too_short_20ms.wav", good[:320], 16_000, subtype="PCM_16")
    exp["too_short_20ms.wav"] = ("rejected", "too_short")

    sf.write(d / "silence.flac", np.zeros(16_000 * 3, np.float32), 16_000, subtype="PCM_16")
    exp["silence.flac"] = ("rejected", "silent")

    nan = good.copy()
    nan[1000:1010] = np.nan
    nan[2000] = np.inf
    sf.write(d / "nan_inf.wav", nan, 16_000, subtype="FLOAT")
    exp["nan_inf.wav"] = ("rejected", "non_finite")

    os.symlink(d / "does_not_exist.wav", d / "unreadable_dangling_link.wav")
    exp["unreadable_dangling_link.wav"] = ("rejected", "unreadable")

    # awkward but valid: must be processed, not rejected
    g48 = _speech(speech_file, 48_000)
    sf.write(d / "eight_channels.wav", np.stack([g48 * (0.5 + 0.05 * c) for c in range(8)], axis=1), 48_000,
             subtype="PCM_24")
    exp["eight_channels.wav"] = ("ok", None)
    sf.write(d / "hi_rate_192k.wav", _speech(speech_file, 192_000), 192_000, subtype="PCM_32")
    exp["hi_rate_192k.wav"] = ("ok", None)
    name = "name with spaces, ünïcødé 'single' \"double\" — dash.flac"
    sf.write(d / name, good, 16_000, subtype="PCM_16")
    exp[name] = ("ok", None)
    return exp
