"""The transcribe stage on long-form real speech: both decoding modes, word times inside the
windows, WER against the concatenated ground truth."""

import numpy as np
import pytest
import soundfile as sf
import soxr

from pipeline.config import ConfigError, IngestConfig
from pipeline.evaluation import has_full_transcript, read_reference_text, wer
from pipeline.segment import Segmenter, merge_for_asr
from pipeline.transcribe import Transcriber
from tests.conftest import speech_manifest


@pytest.fixture(scope="module")
def session(speech_dir):
    """~60 s of English files with full transcripts laid end to end (0.5 s apart), 16 kHz."""
    rows = [r for r in speech_manifest() if has_full_transcript(r)]
    audio, refs = [], []
    for r in rows:
        x, sr = sf.read(speech_dir / r["path"], dtype="float32", always_2d=True)
        audio += [soxr.resample(x.mean(1), sr, 16_000).astype(np.float32), np.zeros(8000, np.float32)]
        refs.append(read_reference_text(speech_dir / r["ground_truth_path"]))
        if sum(map(len, audio)) >= 60 * 16_000:
            break
    a = np.concatenate(audio)
    windows = merge_for_asr(Segmenter(threads=2)(a).speech, max_chunk=20.0)
    return a, " ".join(refs), windows


@pytest.mark.parametrize("mode", ["batched", "sequential"])
def test_both_modes_transcribe_long_form_speech_with_words_inside_the_windows(session, mode):
    audio, ref, windows = session
    assert len(windows) >= 3 and all(e - s <= 20.0 + 1e-6 for s, e in windows)
    t = Transcriber(threads=2, mode=mode)(audio, windows)
    words = [w for s in t.segments for w in s["words"]]
    assert len(words) > 50
    for w in words:  # every word comes from a window's audio (times are source times)
        mid = (w["start"] + w["end"]) / 2
        assert any(s - 0.2 <= mid <= e + 0.2 for s, e in windows), (w, windows)
    assert all(a["start"] <= b["start"] + 1e-6 for a, b in zip(words, words[1:]))
    w_mode = wer([ref], [" ".join(s["text"] for s in t.segments)])
    print(f"\n{mode}: {len(windows)} windows, WER {w_mode:.4f} on {len(audio) / 16_000:.0f} s")
    assert w_mode < 0.3


def test_asr_mode_is_validated():
    with pytest.raises(ConfigError, match="asr_mode"):
        IngestConfig(inputs=["x"], output="o", asr_mode="greedy")
    with pytest.raises(ValueError, match="mode"):
        Transcriber(mode="greedy")
