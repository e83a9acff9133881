"""The real job on the real speech folder (plus a corpus of bad inputs), checked end to end.

One ingest run (the session fixture ``e2e_ingested`` of tests/pipeline/e2e.py) serves the
checks; it is the slow part of the suite (~38 min of audio on 2 CPU cores).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import soundfile as sf
import webdataset as wds

from manifests.views import connect
from pipeline.evaluation import der, load_rttm, load_uem, read_reference_text, segments_to_annotations, wer
from pipeline.quality import DROP_REASONS
from tests.conftest import speech_manifest
from tests.pipeline.e2e import run_ingest

pytestmark = pytest.mark.slow


def test_every_input_has_a_sources_row_and_bad_ones_are_rejected_with_reasons(e2e_ingested):
    con = connect(e2e_ingested["out"])
    rows = {r[0]: r[1:] for r in con.execute("SELECT path, status, error FROM sources").fetchall()}
    n_speech = sum(1 for r in speech_manifest() if not r["path"].endswith(".raw"))
    assert len(rows) == n_speech + len(e2e_ingested["expected"])
    for name, (status, reason) in e2e_ingested["expected"].items():
        st, err = rows[str(e2e_ingested["bad"] / name)]
        assert st == status, (name, st, err)
        if reason:
            assert err.startswith(reason + ":") and name in err
    for r in speech_manifest():
        if not r["path"].endswith(".raw"):
            st, err = rows[str(e2e_ingested["speech"] / r["path"])]
            assert st == "ok", (r["path"], err)
    assert "== ingest summary ==" in e2e_ingested["stdout"]


def test_shards_read_back_as_24k_mono_matching_the_manifest(e2e_ingested):
    out = e2e_ingested["out"]
    con = connect(out)
    seg = {k: (d, s) for k, d, s in con.execute("SELECT key, duration, shard FROM segments WHERE kept").fetchall()}
    shards = [r[0] for r in con.execute("SELECT path FROM shards ORDER BY shard").fetchall()]
    assert len(shards) >= 2  # --shard-max-samples 200
    seen = []
    for rel in shards:
        for sample in wds.WebDataset(str(out / rel), shardshuffle=False):
            audio, sr = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
            meta = json.loads(sample["json"])
            assert sr == 24_000 and audio.ndim == 1
            key = sample["__key__"]
            assert meta["key"] == key and "." not in key
            assert abs(len(audio) / sr - seg[key][0]) < 1e-3
            assert abs(meta["duration"] - seg[key][0]) < 1e-3
            assert seg[key][1] == Path(rel).stem
            for f in ("source_id", "source_path", "start", "end", "speaker", "language", "language_prob", "text",
                      "words", "asr", "quality", "pipeline_version"):
                assert f in meta
            seen.append(key)
    assert sorted(seen) == sorted(seg) and len(seen) == len(set(seen))
    # every kept segment has one speaker, and all its words carry that speaker
    for words, spk in con.execute("SELECT words, speaker FROM segments WHERE kept").fetchall():
        assert all(w["speaker"] == spk for w in words)


def test_dropped_segments_are_recorded_with_a_reason(e2e_ingested):
    con = connect(e2e_ingested["out"])
    n_null = con.execute("SELECT count(*) FROM segments WHERE NOT kept AND drop_reason IS NULL").fetchone()[0]
    assert n_null == 0
    reasons = dict(con.execute("SELECT drop_reason, count(*) FROM segments WHERE NOT kept GROUP BY 1").fetchall())
    assert reasons  # the AMI meetings have overlapped speech at least
    assert set(reasons) <= set(DROP_REASONS)
    assert "overlap" in reasons


def test_wer_of_the_pipeline_is_within_2_points_of_whisper_on_whole_files(e2e_ingested):
    from faster_whisper import WhisperModel

    from pipeline.transcribe import resolve_asr_model

    speech = e2e_ingested["speech"]
    rows = [r for r in speech_manifest() if r["notes"].startswith("cat=A") and r["language"] == "en"
            and r["ground_truth_path"] and not r["path"].endswith(".raw")]
    con = connect(e2e_ingested["out"])
    texts = {}
    for path, text in con.execute(
            "SELECT source_path, string_agg(text, ' ' ORDER BY start) FROM segments GROUP BY 1").fetchall():
        texts[path] = text
    model = WhisperModel(resolve_asr_model("tiny.en"), device="cpu", compute_type="int8", cpu_threads=2)
    refs, hyp_pipe, hyp_direct = [], [], []
    for r in rows:
        audio = str(speech / r["path"])
        refs.append(read_reference_text(speech / r["ground_truth_path"]))
        hyp_pipe.append(texts.get(audio, ""))
        segs, _ = model.transcribe(audio, language="en", beam_size=5)
        hyp_direct.append(" ".join(s.text for s in segs))
    w_pipe, w_direct = wer(refs, hyp_pipe), wer(refs, hyp_direct)
    print(f"\nWER on {len(rows)} English files: pipeline {w_pipe:.4f}, faster-whisper tiny.en whole files {w_direct:.4f}")
    assert w_pipe <= w_direct + 0.02


def test_der_on_the_ami_clips_is_computed_and_reported(e2e_ingested):
    data = e2e_ingested["speech"] / "pyannote-audio/tests/data"
    refs, uems = {}, {}
    for split in ("train", "development", "test"):
        refs.update(load_rttm(data / f"debug.{split}.rttm"))
        uems.update(load_uem(data / f"debug.{split}.uem"))
    con = connect(e2e_ingested["out"])
    rows = [dict(zip(("source_path", "start", "end", "speaker"), r)) for r in con.execute(
        "SELECT source_path, start, \"end\", speaker FROM segments WHERE source_path LIKE '%pyannote-audio/tests/data/%'"
    ).fetchall()]
    hyps = {k.replace("ñ", "n"): v for k, v in segments_to_annotations(rows).items()}
    result = der(refs, hyps, uems)
    print(f"\nDER of the pipeline's segments on {result['n_files']} AMI clips: {result}")
    assert result["n_files"] == 14
    # utterance-level speakers vs a meeting reference with heavy overlap: a sanity bound, not a target
    assert 0.0 < result["der"] < 0.8

    # the diarization stage alone (its speaker turns, overlap included), same models and settings
    from pipeline.decode import Decoder
    from pipeline.diarize import Diarizer
    from pipeline.evaluation import annotation
    from pipeline.segment import Segmenter

    dec, seg, dia = Decoder(), Segmenter(), Diarizer()
    turns = {}
    for wav in sorted(data.glob("*.wav")):
        a = dec(str(wav)).audio16
        turns[wav.stem.replace("ñ", "n")] = annotation(dia(a, seg(a)).turns, wav.stem)
    stage = der(refs, turns, uems)
    print(f"DER of the diarization stage on {stage['n_files']} AMI clips: {stage}")
    assert stage["n_files"] == 14 and stage["der"] < result["der"]


def test_rerun_is_a_no_op(e2e_ingested):
    out = e2e_ingested["out"]
    before = connect(out).execute("SELECT count(*) FROM segments").fetchone()[0]
    p = run_ingest(["--input", str(e2e_ingested["speech"]), "--input", str(e2e_ingested["bad"]), "--output", str(out),
                    "--shard-max-samples", "200"])
    con = connect(out)
    assert con.execute("SELECT count(*) FROM segments").fetchone()[0] == before
    assert con.execute("SELECT count(*) - count(DISTINCT key) FROM segments").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 2
    # each run stores the settings that ran, the diarizer's defaults written in (None: "its default")
    configs = [json.loads(c) for (c,) in con.execute("SELECT config FROM runs").fetchall()]
    assert all(c["cluster_threshold"] == 0.85 and c["min_clean_speech"] == 1.5 for c in configs)
    assert "sources: 0 to do" in p.stdout
