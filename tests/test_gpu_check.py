"""The GPU benchmark kit's CPU smoke mode (bench/gpu_check.py --smoke --device cpu), so that the kit
cannot rot between GPU runs: every part runs for real at tiny sizes on real speech, and the report
records each one. A second run provokes a hanging and a failing part: the kit records both and
still writes its report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, load_script

KIT = REPO / "bench" / "gpu_check.py"


def _kit():
    return load_script(KIT, "gpu_check")


def _tokenize_job():
    return load_script(REPO / "bench" / "tokenize_job.py", "tokenize_job")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, speech_dir):
    """Audio shards of real speech in the ingest's format (bench/tokenize_job.py's corpus maker):
    ~50 s cut from several source files, 4 utterances a shard."""
    out = tmp_path_factory.mktemp("gpu_kit") / "out"
    secs = _tokenize_job().make_corpus(out, 0.85, 4, seed=3)
    assert secs > 40
    return out


def _run(args, env_extra=None, timeout=1000):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, str(KIT), *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=timeout)


def test_smoke_mode_runs_every_part_and_writes_the_report(corpus, tmp_path):
    """Run with the packages the GPU image lacks made unimportable (tests/gpu_image/sitecustomize.py),
    in the kit and every process it starts."""
    out = tmp_path / "report"
    image = str(REPO / "tests" / "gpu_image")
    p = _run(["--smoke", "--device", "cpu", "--data", str(corpus), "--out", str(out)],
             {"PYTHONPATH": os.pathsep.join(filter(None, [image, os.environ.get("PYTHONPATH")]))})
    log = (out / "gpu_log.txt").read_text() if (out / "gpu_log.txt").is_file() else ""
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:] + log[-4000:]
    rep = json.loads((out / "gpu_report.json").read_text())
    md = (out / "gpu_report.md").read_text()
    kit = _kit()
    parts = rep["parts"]
    assert set(kit.PART_NAMES) <= set(parts), parts.keys()
    for name in kit.PART_NAMES:
        assert parts[name]["status"] in ("ok", "skipped"), (name, parts[name])
        assert f"| {name} |" in md
    assert rep["checkout"]["commit"] and rep["mode"] == "smoke"
    assert rep["bundle"]["total_MiB"] > 0 and rep["bundle"]["limit_MiB"] == 64
    assert rep["data"]["heldout_utterances"] >= 1 and rep["data"]["train_utterances"] >= 1
    # env
    assert parts["env"]["torch"] and parts["env"]["cuda_available"] is False
    # cuda_tests: found the GPU-marked modules and ran them (skipped here, no CUDA)
    ct = parts["cuda_tests"]
    assert "tests/tokenize/test_tokenize_cuda.py" in ct["files"] and ct["tests"] >= 3
    assert ct["skipped"] == ct["tests"]
    # tokenizer: throughput and the batching agreement of DESIGN §6 (fp32 on CPU: must be identical)
    tok = parts["tokenizer"]
    assert tok["tiny_throughput"]["audio_s_per_s"] > 0 and tok["tiny_throughput"]["samples"] >= 1
    assert tok["tiny_model_only"]["encode_audio_s_per_s"] > 0 and tok["tiny_model_only"]["decode_audio_s_per_s"] > 0
    agree = tok["tiny_agreement"]["fp32_batch120_vs_batch30"]
    assert agree["utterances"] >= 1 and agree["missing"] == 0 and agree["identical"], agree
    assert tok["tiny_agreement"]["design_6_batching_invariance"].startswith("fp32: holds")
    # codec_speed, trainer
    assert parts["codec_speed"]["tiny"]["steps_per_s"] > 0
    assert parts["trainer"]["tiny_eager"]["status"] == "ok" and parts["trainer"]["tiny_eager"]["tokens_per_s"] > 0
    # codec_quality: trained, then evaluated on held-out utterances; the codec came back
    q = parts["codec_quality"]
    assert q["trained"]["steps"] >= 1
    assert -1 <= q["eval"]["estoi"] <= 1 and q["eval"]["mel"] > 0 and q["eval_random_init"]["mel"] > 0
    assert {"estoi", "mel"} <= set(q["cpu_run_comparison"])
    ret = q["checkpoint_returned"]
    assert ret["files"] and all((out / f).is_file() for f in ret["files"])
    assert sum((out / f).stat().st_size for f in ret["files"]) == ret["bytes"]
    assert any(t["what"].startswith("codec quality estoi") for t in rep["targets"])
    # service: the codec service's model path (CodecRuntime) encoded and decoded real utterances
    svc = parts["service"]["tiny"]
    assert svc["encode_audio_s_per_s"] > 0 and svc["decode_audio_s_per_s"] > 0 and svc["requests_per_batch"] == 16
    # asr: faster-whisper is not on the image and does not travel: skipped, with why
    assert parts["asr"]["status"] == "skipped" and "64 MiB" in parts["asr"]["reason"]
    assert parts["env"]["packages"]["soundfile"]  # carried ones stay importable


def test_a_hanging_and_a_failing_part_are_recorded_and_the_run_goes_on(corpus, tmp_path):
    out = tmp_path / "report"
    # env gets min(its 30 s, 18 s less 10 s kept for asr) = 8 s, hangs and is killed; asr still runs.
    p = _run(["--smoke", "--device", "cpu", "--data", str(corpus), "--out", str(out),
              "--parts", "env", "asr", "--budget", "18"],
             {"VOXFORGE_GPU_CHECK_FAULT": "env=hang,asr=fail"})
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    parts = json.loads((out / "gpu_report.json").read_text())["parts"]
    assert parts["env"]["status"] == "timeout" and parts["env"]["before_hang"] == "recorded"
    assert parts["env"]["seconds"] < 15
    assert parts["asr"]["status"] == "failed" and "fault injected" in parts["asr"]["error"]
    md = (out / "gpu_report.md").read_text()
    assert "| env | timeout |" in md and "| asr | failed |" in md


def _sources(folder):
    import tarfile

    out = set()
    for t in folder.glob("*.tar"):
        with tarfile.open(t) as tf:
            out |= {json.loads(tf.extractfile(m).read())["source_id"] for m in tf if m.name.endswith(".json")}
    return out


def test_held_out_utterances_come_from_sources_not_trained_on(corpus, tmp_path):
    info = _kit().split_heldout(corpus, tmp_path, max_heldout=50)
    train, held = _sources(tmp_path / "train"), _sources(tmp_path / "heldout")
    assert train and held and not (train & held)
    assert len(train | held) == info["sources"] and len(held) == info["heldout_sources"]
    # the same split from the command line (to evaluate a returned codec, with WER, on a CPU)
    p = _run(["--data", str(corpus), "--write-split", str(tmp_path / "cli")], timeout=120)
    assert p.returncode == 0 and json.loads(p.stdout) == info, p.stderr
    assert _sources(tmp_path / "cli" / "heldout") == held


def test_codec_eval_leaves_pesq_out_when_it_cannot_be_imported(corpus, monkeypatch):
    """The GPU image may lack pesq (PyPI has no wheel): the evaluation still gives the other metrics."""
    import torch

    from codec import Codec, CodecConfig
    from codec.eval import evaluate

    monkeypatch.setitem(sys.modules, "pesq", None)  # `from pesq import pesq` raises ImportError
    torch.manual_seed(0)
    r = evaluate(Codec(CodecConfig.tiny()).eval(), [str(corpus / "shards" / "audio")], max_items=1, asr=False)
    s = r["summary"]
    assert "pesq_wb" not in s and "pesq_wb" not in r["items"][0]
    assert -1 <= s["estoi"] <= 1 and s["mel"] > 0 and s["n_utterances"] == 1
