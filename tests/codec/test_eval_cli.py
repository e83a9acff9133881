"""codec/eval.py and the command lines of train.py / eval.py / bench/codec_inference.py."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from codec import Codec, CodecConfig
from codec.eval import evaluate, format_table, normalize_text

ROOT = Path(__file__).parents[2]


def test_evaluate_reports_every_metric(tmp_path, audio_shards):
    torch.manual_seed(0)
    Codec(CodecConfig.tiny()).save(tmp_path / "ck")
    codec = Codec.load(tmp_path / "ck")
    res = evaluate(codec, [str(audio_shards / "000000.tar")], max_items=1, asr=True)
    s = res["summary"]
    assert s["n_utterances"] == 1 and s["codec_id"] == codec.codec_id
    assert s["bitrate_bps"] == pytest.approx(12.5 * (13 + 36 * math.log2(21)))
    # An untrained codec decodes noise: the metrics must say so.
    assert s["mel"] > 0.5 and s["pesq_wb"] < 1.5 and s["estoi"] < 0.3
    item = res["items"][0]
    assert len(item["asr_original"].split()) >= 3  # the offline ASR heard the real utterance
    assert s["wer"] >= 80.0
    assert 0 < s["vq_used_frac"] <= 1 and s["vq_perplexity"] >= 1
    table = format_table(res)
    for k in ("mel", "stft", "pesq_wb", "estoi", "wer", "bitrate_bps", "vq_perplexity", "vq_used_frac"):
        assert f"| {k} |" in table


def test_evaluate_identity_codec_scores_perfect():
    """The metrics themselves: comparing a signal with itself gives the ideal values."""
    from codec.losses import mel_distance, stft_distance

    x = torch.randn(24_000) * 0.1
    assert mel_distance(x, x) == 0.0 and stft_distance(x, x) == 0.0
    assert normalize_text("Hello, World-wide!") == "hello world wide"


def _run_script(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """A repo script run as users run it; fails the test with its stderr when it fails."""
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_command_lines(tmp_path, audio_files_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ck"
    r = _run_script(["codec/train.py", "--shards", str(audio_files_dir), "--config", "tiny", "--output", str(out),
                     "--steps", "2", "--log-every", "1", "--threads", "1",
                     "--set", "feature_weight=0", "--set", "batch_size=1"], env)
    assert "step 2 |" in r.stderr and (out / "model.safetensors").is_file()
    r = _run_script(["codec/eval.py", "--codec", str(out), "--audio", str(audio_files_dir / "utt0.wav"), "--no-asr"],
                    env)
    assert "| pesq_wb |" in r.stdout and "| bitrate_bps | 2139 |" in r.stdout
    r = _run_script(["bench/codec_inference.py", "--configs", "tiny", "--batch-sizes", "1", "--seconds", "1", "--repeats", "1",
                     "--device", "cpu"], env)
    assert "| tiny | 4.0M | cpu | 1 |" in r.stdout
