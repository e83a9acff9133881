"""bench/diarization.py --recordings: a user's own recordings with RTTM references are found,
paired with their reference by file stem, and scored; what cannot be scored is said, not guessed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, load_script

DIARIZATION = REPO.parent / "shared" / "diarization"


def _bench():
    return load_script(REPO / "bench" / "diarization.py", "bench_diarization")


def test_own_recordings_pair_audio_with_the_rttm_beside_it(tmp_path, capsys, monkeypatch):
    bench = _bench()
    src = DIARIZATION / "ami-en2002b-137-152"
    (tmp_path / "calls").mkdir()
    shutil.copy(src.with_suffix(".wav"), tmp_path / "a.wav")
    shutil.copy(src.with_suffix(".rttm"), tmp_path / "a.rttm")  # its uri is the source's: one uri, taken
    shutil.copy(src.with_suffix(".wav"), tmp_path / "calls" / "b.wav")  # no reference: left out, said
    recs = bench.own_recordings(tmp_path)
    assert [(r["uri"], r["split"], r["uem"]) for r in recs] == [("a", "own", None)]
    ref = recs[0]["reference"]
    assert ref.uri == "a" and len(ref.labels()) == 4
    assert "b.wav" in capsys.readouterr().err
    # named by absolute path, as the ingest's segments rows name their source, from a relative folder too
    monkeypatch.chdir(tmp_path)
    assert [r["path"] for r in bench.own_recordings(Path("."))] == [str(tmp_path / "a.wav")]
    # the scoring runs on it: a perfect hypothesis scores 0, and the speaker count is right
    turns = [(s.start, s.end, label) for s, _, label in ref.itertracks(yield_label=True)]
    res = bench.score(recs, {"a": turns})
    assert res["pooled"]["der"] == pytest.approx(0.0, abs=1e-9)
    assert res["per_recording"]["a"]["speakers_found"] == 4


def test_own_recordings_refuse_what_cannot_be_scored(tmp_path):
    bench = _bench()
    with pytest.raises(SystemExit, match="no audio file with a <stem>.rttm"):
        bench.own_recordings(tmp_path)
    with pytest.raises(SystemExit, match="not a folder"):
        bench.own_recordings(tmp_path / "nope")
    src = DIARIZATION / "ami-en2002b-137-152"
    shutil.copy(src.with_suffix(".wav"), tmp_path / "a.wav")
    # an RTTM of several recordings, none of them this one
    (tmp_path / "a.rttm").write_text("SPEAKER x 1 0.0 1.0 <NA> <NA> A <NA> <NA>\n"
                                     "SPEAKER y 1 0.0 1.0 <NA> <NA> B <NA> <NA>\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="no turns for uri 'a'"):
        bench.own_recordings(tmp_path)
