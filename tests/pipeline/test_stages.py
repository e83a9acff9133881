"""The stages composed without Ray, on real speech: the same code the Ray adapter maps."""

from __future__ import annotations

import io
import json

import soundfile as sf

from pipeline.config import IngestConfig
from pipeline.stages import Assemble, Diarize, HashAndDecode, Segment, Transcribe, source_id_of

FILE = "lhotse/test/fixtures/mix_cut_test/audio/storage/2412-153948-0000.flac"


def run_stages(cfg, path):
    batch = {"path": [str(path)], "status": ["ok"], "error": [None]}
    for stage in (HashAndDecode(cfg), Segment(cfg), Transcribe(cfg), Diarize(cfg), Assemble(cfg)):
        batch = stage(batch)
    return {k: v[0] for k, v in batch.items()}


def test_silero_vad_without_diarization(speech_dir, tmp_path):
    cfg = IngestConfig(inputs=["x"], output=str(tmp_path), vad="silero", diarization="none")
    row = run_stages(cfg, speech_dir / FILE)
    assert row["status"] == "ok", row.get("error")
    assert row["source_id"] == source_id_of(str(speech_dir / FILE))
    assert "audio16" not in row  # big arrays stop at the assemble stage
    kept = [r for r in row["segment_rows"] if r["kept"]]
    assert kept and all(r["speaker"] == f"{row['source_id']}:S0" for r in kept)
    text = " ".join(r["text"] for r in row["segment_rows"]).lower()
    assert "narrative" in text and "antecedents" in text
    for s in row["samples"]:
        audio, sr = sf.read(io.BytesIO(s["flac"]))
        meta = json.loads(s["json"])
        assert sr == 24_000 and abs(len(audio) / sr - meta["duration"]) < 1e-3
        assert meta["start"] <= meta["words"][0]["start"] and meta["words"][-1]["end"] <= meta["end"]


def test_a_failing_stage_marks_the_source_failed_and_the_batch_goes_on(speech_dir, tmp_path):
    cfg = IngestConfig(inputs=["x"], output=str(tmp_path), diarization="none")
    seg = Segment(cfg)
    batch = HashAndDecode(cfg)({"path": [str(speech_dir / FILE)] * 2, "status": ["ok"] * 2, "error": [None] * 2})
    batch["audio16"][0] = "not an array"  # provoke a bug-like failure in one row
    out = seg(batch)
    assert out["status"] == ["failed", "ok"]
    assert out["error"][0].startswith("stage_failed:") and "segment" in out["error"][0]


def test_stages_sharing_an_actor_all_see_the_larger_settings():
    from pipeline.ingest import parse_args
    from pipeline.ray_adapter import sharing

    cfg = parse_args(["--input", "x", "--output", "y", "--threads", "diarize=3", "--cpus", "segment=0.5"])
    res, shared_cfg = sharing(cfg, "segment", "diarize")
    assert (res.threads, res.num_cpus) == (3, 0.5)
    assert shared_cfg.resources["segment"] == shared_cfg.resources["diarize"] == res
    assert cfg.resources["segment"].threads == 1  # the user's config is left as it was
    assert shared_cfg.resources["transcribe"] == cfg.resources["transcribe"]

