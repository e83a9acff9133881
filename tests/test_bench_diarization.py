"""bench/diarization.py --recordings: a user's own recordings with RTTM references are found,
paired with their reference by file stem, and scored; what cannot be scored is said, not guessed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import DIARIZATION, REPO, load_script


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
    # a UEM that names one other recording is taken as this one's; one that names several, none
    # of them this one, would silently not apply: refused
    shutil.copy(src.with_suffix(".rttm"), tmp_path / "a.rttm")
    (tmp_path / "a.uem").write_text("other 1 2.0 9.0\n", encoding="utf-8")
    (uem,) = [r["uem"] for r in bench.own_recordings(tmp_path)]
    assert uem.uri == "a" and [(s.start, s.end) for s in uem] == [(2.0, 9.0)]
    (tmp_path / "a.uem").write_text("x 1 0.0 1.0\ny 1 0.0 1.0\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="no scored region for uri 'a'"):
        bench.own_recordings(tmp_path)


def test_own_recordings_named_by_their_path_where_two_share_a_stem(tmp_path):
    """A corpus laid out by speaker or day (``a/call.wav``, ``b/call.wav``, each with its RTTM)
    is scored, each recording with its own reference, not refused nor merged."""
    bench = _bench()
    src = DIARIZATION / "ami-en2002b-137-152"
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(src.with_suffix(".wav"), tmp_path / sub / "call.wav")
    shutil.copy(src.with_suffix(".rttm"), tmp_path / "a" / "call.rttm")
    (tmp_path / "b" / "call.rttm").write_text("SPEAKER call 1 1.0 2.0 <NA> <NA> X <NA> <NA>\n", encoding="utf-8")
    (tmp_path / "b" / "call.uem").write_text("call 1 0.5 4.0\n", encoding="utf-8")
    shutil.copy(src.with_suffix(".wav"), tmp_path / "solo.wav")
    shutil.copy(src.with_suffix(".rttm"), tmp_path / "solo.rttm")
    recs = {r["uri"]: r for r in bench.own_recordings(tmp_path)}
    assert sorted(recs) == ["a/call", "b/call", "solo"]
    assert len(recs["a/call"]["reference"].labels()) == 4 and recs["b/call"]["reference"].labels() == ["X"]
    assert recs["b/call"]["uem"].uri == "b/call" and recs["a/call"]["uem"] is None
    assert recs["b/call"]["path"] == str(tmp_path / "b" / "call.wav")
    # each scored against its own reference
    turns = {u: [(s.start, s.end, lab) for s, _, lab in r["reference"].itertracks(yield_label=True)]
             for u, r in recs.items()}
    turns["b/call"] = [(1.0, 3.0, "Y")]
    res = bench.score(list(recs.values()), turns)
    assert res["pooled"]["der"] == pytest.approx(0.0, abs=1e-9)
    assert [res["per_recording"][u]["speakers_found"] for u in sorted(recs)] == [4, 1, 4]
    # two files of one stem side by side (one RTTM for both) keep their suffixes apart
    shutil.copy(src.with_suffix(".wav"), tmp_path / "a" / "call.flac")
    recs = bench.own_recordings(tmp_path)
    assert sorted(r["uri"] for r in recs) == ["a/call.flac", "a/call.wav", "b/call", "solo"]


def test_two_voice_floor_cuts_the_third_voice_and_scores_it(tmp_path):
    """The two-voice floor keeps, wherever three or more speak, the two voices whose turns began
    first; scored against the reference, exactly the cut speech is missed."""
    from pyannote.core import Annotation, Segment

    bench = _bench()
    ref = Annotation(uri="x")
    ref[Segment(0, 10)] = "A"
    ref[Segment(2, 6)] = "B"
    ref[Segment(4, 8)] = "C"  # 4-6 s: three voices; C began last and is cut there
    cut = bench.two_voice_reference(ref)
    assert cut.label_timeline("A").duration() == pytest.approx(10)
    assert cut.label_timeline("B").duration() == pytest.approx(4)
    assert cut.label_timeline("C").duration() == pytest.approx(2)  # 6-8 s only
    rec = {"uri": "x", "reference": ref, "uem": None, "group": "g"}
    res = bench.score([rec], {"x": [(s.start, s.end, label) for s, _, label in cut.itertracks(yield_label=True)]})
    # C's 4-6 s are missed. The collar takes ±0.25 s around every reference boundary (0, 2, 4, 6,
    # 8, 10 s) out of the scoring: 1.5 s missed of 13.5 s scored (A 7.5, B 3, C 3)
    assert res["pooled"]["two_voice_floor"] == pytest.approx(res["pooled"]["der"])
    assert res["pooled"]["der"] == pytest.approx(1.5 / 13.5, abs=1e-6)
    # a real meeting excerpt: at most two voices at any time after the cut, and a floor above 0
    real = bench.reference_of(DIARIZATION / "ami-en2002a-184-214.rttm", "ami-en2002a-184-214")
    cut = bench.two_voice_reference(real)
    tracks = [s for s, _ in cut.itertracks()]
    for t in [x / 10 for x in range(300)]:
        assert sum(s.start <= t < s.end for s in tracks) <= 2
    rec = {"uri": real.uri, "reference": real, "uem": None, "group": "g"}
    assert bench.score([rec], {real.uri: []})["pooled"]["two_voice_floor"] > 0.05


def test_oracle_clustering_leaves_only_the_segmentations_error():
    """--oracle-clustering gives each (window, local speaker) the reference speaker it overlaps
    most: on a real 4-speaker meeting excerpt the oracle finds all four (the offline clustering
    merges two of them today) and scores no worse than the stage's own clustering."""
    bench = _bench()
    rec = next(r for r in bench.recordings() if r["uri"] == "ami-en2002a-184-214")
    ours = bench.score([rec], bench.run_stage([rec], []))["per_recording"][rec["uri"]]
    oracle = bench.score([rec], bench.run_stage([rec], [], oracle=True))["per_recording"][rec["uri"]]
    assert oracle["speakers_found"] == oracle["speakers_ref"] == 4
    assert oracle["der"] <= ours["der"]
    with pytest.raises(SystemExit, match="offline diarizer"):
        bench.run_stage([rec], ["--diarization", "none"], oracle=True)
    with pytest.raises(SystemExit):  # the ingest runs as a subprocess: no clustering to replace there
        bench.main(["--mode", "ingest", "--oracle-clustering"])


def test_runs_without_the_shared_folder_and_takes_a_diarization_folder_without_manifest(tmp_path, capsys, monkeypatch):
    """A user's machine has no ../shared: --split none --recordings DIR still scores their
    recordings without looking for it, a split that needs ../shared says where it looked, and a
    diarization folder laid out as its README says (<stem>.wav beside <stem>.rttm) needs no
    MANIFEST.tsv: its EN2002b pairs stay tune, the rest held; one with nothing to score is left out."""
    import json

    bench = _bench()
    empty = tmp_path / "shared"
    empty.mkdir()
    monkeypatch.setattr(bench, "SHARED", empty)
    assert bench.recordings() == []
    err = capsys.readouterr().err
    assert "debug.train.rttm" in err and "diarization: not found" in err
    with pytest.raises(SystemExit, match="no held recordings .*VOXFORGE_SHARED"):
        bench.main(["--split", "held", "--mode", "stage"])
    with pytest.raises(SystemExit, match="--meetings: none"):
        bench.main(["--split", "none", "--meetings", "--mode", "stage"])
    capsys.readouterr()

    own = tmp_path / "own"
    own.mkdir()
    src = DIARIZATION / "ami-en2002b-137-152"
    shutil.copy(src.with_suffix(".wav"), own / "talk.wav")
    shutil.copy(src.with_suffix(".rttm"), own / "talk.rttm")
    out = tmp_path / "figures.json"
    assert bench.main(["--split", "none", "--mode", "stage", "--recordings", str(own), "--json", str(out)]) == 0
    assert "not found" not in capsys.readouterr().err  # ../shared was not looked for
    res = json.loads(out.read_text(encoding="utf-8"))["stage_own"]
    assert res["per_recording"]["talk"]["speakers_ref"] == 4
    assert 0.0 <= res["pooled"]["der"] < 0.5  # scored against its reference, not an empty one

    (empty / "diarization").mkdir()  # there, but nothing to score: left out, said
    assert bench.recordings() == []
    assert "no audio file with a <stem>.rttm" in capsys.readouterr().err
    shutil.copytree(own, empty / "diarization", dirs_exist_ok=True)
    pair = next((DIARIZATION / "pairs").glob("ami-en2002b-*.wav"))
    (empty / "diarization" / "pairs").mkdir()
    for suffix in (".wav", ".rttm"):
        shutil.copy(pair.with_suffix(suffix), empty / "diarization" / "pairs" / pair.with_suffix(suffix).name)
    got = {r["uri"]: (r["split"], r["group"]) for r in bench.recordings()}
    assert got == {"talk": ("held", "diarization"), pair.stem: ("tune", "diarization")}


def test_cuts_score_the_stage_at_each_cut_from_one_embedding_pass(tmp_path, capsys, monkeypatch):
    """--cuts: at the default cut each recording scores as in the stage's own run, a lower cut
    finds more speakers and a higher one fewer (near 2, the largest distance between unit
    embeddings, the clustering makes one cluster; pyannote still names a second speaker where the
    segmentation hears two at once), and the speaker encoder runs no more for five cuts than for
    the one stage run (its window pass; the second pass, which splits a speaker, runs per cut).
    What cannot be swept is refused before any work."""
    import json

    from pipeline.speaker_embedding import CamPlusPlusEmbedding

    bench = _bench()
    for name, src in (("a", "ami-en2002b-137-152"), ("b", "pairs/ami-es2002a-bc-0526")):  # 4 and 2 voices
        shutil.copy((DIARIZATION / src).with_suffix(".wav"), tmp_path / f"{name}.wav")
        shutil.copy((DIARIZATION / src).with_suffix(".rttm"), tmp_path / f"{name}.rttm")
    recs = bench.own_recordings(tmp_path)
    assert [r["uri"] for r in recs] == ["a", "b"]
    calls = []
    encode = CamPlusPlusEmbedding.__call__
    # the window pass: embeddings of masked (window, local speaker) batches; the second pass
    # (pipeline.speaker_split) embeds unmasked pieces of each speaker, which differ with the cut
    monkeypatch.setattr(CamPlusPlusEmbedding, "__call__",
                        lambda self, w, masks=None: (masks is not None and calls.append(1)) or encode(self, w, masks))
    stage = bench.score(recs, bench.run_stage(recs, []))
    once = len(calls)
    assert once > 0
    cuts = [0.3, 0.5, 0.85, 1.0, 1.99]
    swept = bench.run_stage_at_cuts(recs, [], cuts)
    assert len(calls) == 2 * once  # one embedding pass for the five cuts
    scores = {cut: bench.score(recs, turns) for cut, turns in swept.items()}
    for uri in ("a", "b"):  # each recording with its own embeddings
        assert scores[0.85]["per_recording"][uri]["der"] == pytest.approx(stage["per_recording"][uri]["der"], abs=1e-9)
        assert scores[0.85]["per_recording"][uri]["speakers_found"] == stage["per_recording"][uri]["speakers_found"]
    found = [scores[c]["per_recording"]["a"]["speakers_found"] for c in cuts]
    assert found == sorted(found, reverse=True) and found[0] > found[2] > found[-1]
    # the command line: a table and the best cut, and the figures in the JSON
    out = tmp_path / "cuts.json"
    assert bench.main(["--mode", "stage", "--split", "none", "--recordings", str(tmp_path), "--cuts", "0.85,1.99",
                       "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "at each clustering cut" in text and "lowest DER" in text and "is 0.85)" in text
    report = json.loads(out.read_text())
    assert report["stage_cuts_own"]["0.85"]["pooled"]["der"] == pytest.approx(stage["pooled"]["der"], abs=1e-9)
    assert report["stage_own"]["pooled"]["der"] == pytest.approx(stage["pooled"]["der"], abs=1e-9)  # from that pass
    with pytest.raises(SystemExit, match="clustering cut"):
        bench.run_stage_at_cuts(recs, ["--clustering", "silhouette"], [0.7])
    # refused before the stage runs
    for stage_run in ("run_stage", "run_stage_at_cuts"):
        monkeypatch.setattr(bench, stage_run, lambda *a, **k: pytest.fail("the stage ran before the refusal"))
    base = ["--mode", "stage", "--split", "none", "--recordings", str(tmp_path)]
    for bad in ("0.7,x", "0", "2.5"):
        with pytest.raises(SystemExit):
            bench.main([*base, "--cuts", bad])
    with pytest.raises(SystemExit):
        bench.main(["--mode", "ingest", "--split", "none", "--recordings", str(tmp_path), "--cuts", "0.7"])
    for args, why in (("--clustering silhouette", "clustering cut"), ("--diarization none", "clustering cut"),
                      ("--num-speakers 2", "num-speakers"), ("--cluster-threshold 0.7", "cluster-threshold")):
        with pytest.raises(SystemExit, match=why):
            bench.main([*base, "--cuts", "0.7", "--pipeline-args", args])
