"""The diarization figures of pipeline.evaluation."""

from __future__ import annotations

import pytest

from pipeline.evaluation import annotation, der, speaker_purity_consistency


def test_a_recording_without_hypothesis_counts_as_missed_not_skipped():
    refs = {"a": annotation([(0.0, 10.0, "X")], "a"), "b": annotation([(0.0, 10.0, "Y")], "b")}
    res = der(refs, {"a": annotation([(0.0, 10.0, "S0")], "a")})
    assert res["n_files"] == 2
    assert res["der"] == pytest.approx(0.5) and res["missed"] == pytest.approx(0.5)
    assert res["per_uri"]["b"] == pytest.approx(1.0)


def test_purity_and_consistency_weigh_by_duration():
    ref = annotation([(0.0, 8.0, "X"), (8.0, 10.0, "Y")], "a")
    # one segment over both voices (8 s of X, 2 s of Y), one over Y alone labelled as X's segment
    pc = speaker_purity_consistency(ref, [(0.0, 10.0, "S0"), (8.0, 10.0, "S1")])
    assert pc["purity"] == pytest.approx((8.0 + 2.0) / (10.0 + 2.0))
    # Y's 4 s of kept time: 2 under S0, 2 under S1 -> half under its majority label; X's all under S0
    assert pc["consistency"] == pytest.approx((8.0 + 2.0) / 12.0)
