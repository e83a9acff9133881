"""ASR windowing of VAD regions (pipeline.segment.merge_for_asr)."""

import pytest

from pipeline.config import ConfigError, IngestConfig
from pipeline.segment import merge_for_asr

SPEECH = [(0.0, 4.0), (7.0, 12.0), (12.5, 19.0), (25.0, 31.0), (40.0, 85.0), (86.0, 88.0)]


def test_packing_fills_windows_across_pauses_and_never_exceeds_the_window():
    windows = merge_for_asr(SPEECH, max_chunk=20.0)
    assert all(e - s <= 20.0 + 1e-9 for s, e in windows)
    # every second of speech lies in exactly one window
    for s, e in SPEECH:
        covered = sum(max(0.0, min(e, we) - max(s, ws)) for ws, we in windows)
        assert covered == pytest.approx(e - s)
    # three regions across 3 s and 0.5 s pauses share a window; the 45 s region is cut into
    # three equal parts, and the last part takes the short region after it
    assert windows == [(0.0, 19.0), (25.0, 31.0), (40.0, 55.0), (55.0, 70.0), (70.0, 88.0)]


def test_max_gap_keeps_long_pauses_out_of_a_window():
    packed = merge_for_asr(SPEECH, max_chunk=30.0)
    by_pause = merge_for_asr(SPEECH, max_chunk=30.0, max_gap=2.0)
    assert packed[:2] == [(0.0, 19.0), (25.0, 31.0)]  # (0, 31) would exceed 30 s
    assert by_pause[:2] == [(0.0, 4.0), (7.0, 19.0)]  # the 3 s pause splits


def test_window_config_is_validated():
    with pytest.raises(ConfigError, match="asr_window"):
        IngestConfig(inputs=["x"], output="o", asr_window=45.0)
    with pytest.raises(ConfigError, match="asr_max_gap"):
        IngestConfig(inputs=["x"], output="o", asr_max_gap=-1.0)
