from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from pipeline.config import IngestConfig
from pipeline.decode import Decoder
from pipeline.errors import SourceError
from pipeline.stages import HashAndDecode
from tests.conftest import speech_manifest
from tests.pipeline.bad_inputs import make_bad_corpus

SPEECH_FILE = "lhotse/test/fixtures/mix_cut_test/audio/storage/2412-153948-0000.flac"


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory, speech_dir):
    d = tmp_path_factory.mktemp("bad")
    return d, make_bad_corpus(d, speech_dir / SPEECH_FILE)


def test_bad_inputs_are_rejected_with_a_reason_naming_the_file(bad_corpus):
    d, expected = bad_corpus
    stage = HashAndDecode(IngestConfig(inputs=[str(d)], output="unused"))
    rows = [{"path": str(d / name), "status": "ok", "error": None} for name in expected]
    out = stage({k: [r[k] for r in rows] for k in rows[0]})
    for path, status, error in zip(out["path"], out["status"], out["error"]):
        name = path.rsplit("/", 1)[1]
        want_status, want_reason = expected[name]
        assert status == want_status, (name, status, error)
        if want_reason:
            assert error.startswith(want_reason + ":"), (name, error)
            assert path in error  # the message names the file


def test_awkward_valid_inputs_decode_to_mono_16k_and_24k(bad_corpus):
    d, _ = bad_corpus
    dec = Decoder()
    eight = dec(str(d / "eight_channels.wav"))
    assert eight.channels == 8 and eight.sample_rate == 48_000
    hi = dec(str(d / "hi_rate_192k.wav"))
    assert hi.sample_rate == 192_000
    for a in (eight, hi):
        assert a.audio16.ndim == 1 and a.audio24.ndim == 1 and a.audio24.dtype == np.int16
        assert abs(len(a.audio16) / 16_000 - a.duration) < 0.01
        assert abs(len(a.audio24) / 24_000 - a.duration) < 0.01


def test_resampling_is_band_limited():
    # a 10 kHz tone at 48 kHz must vanish at 16 kHz (Nyquist 8 kHz), not alias to 6 kHz
    import tempfile

    t = np.arange(48_000) / 48_000
    x = 0.5 * np.sin(2 * np.pi * 10_000 * t) + 0.1 * np.sin(2 * np.pi * 440 * t)
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        sf.write(f.name, x.astype(np.float32), 48_000, subtype="FLOAT")
        a = Decoder()(f.name)
    spec = np.abs(np.fft.rfft(a.audio16[2000:-2000]))
    freqs = np.fft.rfftfreq(len(a.audio16[2000:-2000]), 1 / 16_000)
    alias = spec[(freqs > 5_800) & (freqs < 6_200)].max()
    tone = spec[(freqs > 430) & (freqs < 450)].max()
    assert alias < tone * 1e-2


def test_every_format_of_the_real_speech_folder_decodes(speech_dir):
    dec = Decoder()
    seen = set()
    for row in speech_manifest():
        path = speech_dir / row["path"]
        if path.suffix == ".raw":  # headerless PCM: not a format a decoder can recognise
            continue
        try:
            a = dec(str(path))
        except SourceError as e:  # pragma: no cover - the assertion message is the point
            pytest.fail(f"{row['path']}: {e}")
        seen.add(path.suffix)
        assert abs(a.duration - float(row["duration_s"])) < 0.06, (row["path"], a.duration, row["duration_s"])
        assert a.channels == int(row["channels"]), row["path"]
        if a.codec != "OGG/OPUS":  # Opus always decodes at 48 kHz; libsndfile reports the input rate
            assert a.sample_rate == int(row["sample_rate"]), row["path"]
    assert {".wav", ".flac", ".ogg", ".mp3", ".opus"} <= seen


def test_m4a_goes_through_ffmpeg(tmp_path, speech_dir):
    import shutil
    import subprocess

    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg not installed")
    src = speech_dir / SPEECH_FILE
    out = tmp_path / "x.m4a"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(src), "-c:a", "aac", str(out)], check=True)
    a = Decoder()(str(out))
    assert a.codec.startswith("ffmpeg:")
    assert abs(a.duration - sf.info(src).duration) < 0.1
