"""Trainer end to end: exact resume, 2-process data parallelism (gloo), generation to a wav."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.config import DataConfig, ModelConfig, TrainConfig
from model.trainer import RunSpec, run_training

REPO = Path(__file__).parents[2]


def _spec(token_dir: Path, out: Path, resume: bool = False) -> RunSpec:
    data = DataConfig(seq_len=512, batch_size=1, num_workers=1, shuffle_buffer=4, eval_shards=1)
    train = TrainConfig(
        steps=6,
        lr=2e-3,
        warmup_steps=2,
        grad_accum=2,
        log_every=1,
        eval_every=3,
        ckpt_every=3,
        keep_checkpoints=3,
        data=data,
    )
    return RunSpec(
        tokens=str(token_dir),
        output=str(out),
        model=ModelConfig.tiny(),
        train=train,
        resume=resume,
        device="cpu",
    )


@pytest.fixture(scope="module")
def full_run(token_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "full"
    history = run_training(_spec(token_dir, out))
    return out, history


def _train_losses(history, after=0):
    return {
        r["step"]: (r["loss"], r["semantic_ce"], r["flow"])
        for r in history
        if r["kind"] == "train" and r["step"] > after
    }


def test_run_directory_contents(full_run):
    out, history = full_run
    cfg = json.loads((out / "config.json").read_text())
    assert (
        cfg["model"]["name"] == "tiny" and cfg["train"]["steps"] == 6 and cfg["codec_id"].startswith("tiny-")
    )
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 7))
    for r in train:
        assert r["tokens_per_s"] > 0 and r["tflops"] > 0 and 0 <= r["padding"] < 1
        assert torch.isfinite(torch.tensor([r["loss"], r["semantic_ce"], r["flow"], r["grad_norm"]])).all()
    evals = [r for r in lines if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6] and all(r["eval_frames"] > 0 for r in evals)
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step_0000003", "step_0000006"]
    state = json.loads((out / "checkpoints" / "step_0000006" / "state.json").read_text())
    assert state["step"] == 6 and state["data"][0]["consumed"] == 12  # 6 steps x 2 micro-batches
    # the stream's own position (shard, offset, buffers): a resume opens one shard, replays nothing
    assert state["data"][0]["workers"][0]["index"] == 11
    assert (out / "checkpoints" / "step_0000006" / "data_rank0.safetensors").is_file()
    assert state["scheduler"]["step"] == 6


def test_resume_gives_the_same_next_losses(full_run, token_dir, tmp_path):
    """Kill after the step-3 checkpoint (simulated: later outputs removed), resume, compare."""
    out, history = full_run
    killed = tmp_path / "killed"
    shutil.copytree(out, killed)
    shutil.rmtree(killed / "checkpoints" / "step_0000006")
    (killed / "log.jsonl").unlink()
    resumed = run_training(_spec(token_dir, killed, resume=True))
    want, got = _train_losses(history, after=3), _train_losses(resumed)
    assert list(got) == [4, 5, 6]
    for step in got:
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-7), f"step {step}"
    a = load_file(str(out / "checkpoints" / "step_0000006" / "model.safetensors"))
    b = load_file(str(killed / "checkpoints" / "step_0000006" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)


def test_warm_start_loads_the_trained_weights(full_run, token_dir, tmp_path):
    out, history = full_run
    spec = _spec(token_dir, tmp_path / "warm")
    spec.warm_start = str(out)
    spec.train.steps, spec.train.grad_accum = 1, 1
    first = next(r for r in run_training(spec) if r["kind"] == "train")
    fresh_first = next(r for r in history if r["kind"] == "train")
    trained_last = [r for r in history if r["kind"] == "train"][-1]
    assert first["loss"] < fresh_first["loss"] - 1.0
    assert first["loss"] == pytest.approx(trained_last["loss"], abs=1.5)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_data_parallel_gloo(token_dir, tmp_path, parallel):
    out = tmp_path / parallel
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc-per-node",
        "2",
        str(REPO / "model" / "train.py"),
        "--tokens",
        str(token_dir),
        "--output",
        str(out),
        "--steps",
        "3",
        "--seq-len",
        "512",
        "--batch-size",
        "1",
        "--log-every",
        "1",
        "--ckpt-every",
        "2",
        "--eval-every",
        "3",
        "--parallel",
        parallel,
        "--device",
        "cpu",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["train"]["parallel"] == parallel
    ck = out / "checkpoints" / "step_0000003"
    state = json.loads((ck / "state.json").read_text())
    assert state["world_size"] == 2 and [d["rank"] for d in state["data"]] == [0, 1]
    assert all(d["consumed"] == 3 for d in state["data"])
    assert (ck / "rng_rank0.safetensors").exists() and (ck / "rng_rank1.safetensors").exists()
    # Ranks drew different noise: their saved generator states differ.
    assert not torch.equal(
        load_file(str(ck / "rng_rank0.safetensors"))["torch_cpu"],
        load_file(str(ck / "rng_rank1.safetensors"))["torch_cpu"],
    )
    # The saved model is whole (unsharded) and loads into a plain TTSModel.
    from model.tts import TTSModel

    m = TTSModel(ModelConfig.tiny())
    m.load_state_dict(load_file(str(ck / "model.safetensors")))
    train = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"train"' in x]
    assert [r["step"] for r in train] == [1, 2, 3] and all(r["loss"] == r["loss"] for r in train)
    assert "step 3 loss" in proc.stderr + proc.stdout
    # Killed after the step-2 checkpoint: 2 ranks resume (each its own RNG and stream position, the
    # sharded model and optimiser refilled) and step 3 comes out the same.
    killed = tmp_path / f"{parallel}_killed"
    shutil.copytree(out, killed)
    shutil.rmtree(killed / "checkpoints" / "step_0000003")
    (killed / "log.jsonl").unlink()
    again = subprocess.run(
        [str(killed) if c == str(out) else c for c in cmd] + ["--resume"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "from the saved stream position" in again.stderr + again.stdout
    resumed = [json.loads(x) for x in (killed / "log.jsonl").read_text().splitlines() if '"train"' in x]
    assert [r["step"] for r in resumed] == [3]
    assert resumed[0]["loss"] == pytest.approx(train[2]["loss"], rel=1e-6, abs=1e-7)
    a = load_file(str(ck / "model.safetensors"))
    b = load_file(str(killed / "checkpoints" / "step_0000003" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)


def test_generate_writes_a_wav_whose_length_matches_its_frames(full_run, codec_dir, tmp_path):
    import soundfile as sf

    from model.generate import build_parser, synthesize

    out, _ = full_run
    prompt = (
        Path(__file__).parents[2].parent
        / "shared"
        / "speech"
        / "pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0930.wav"
    )
    wav_path = tmp_path / "out.wav"
    args = build_parser().parse_args(
        [
            "--checkpoint",
            str(out),
            "--codec",
            str(codec_dir),
            "--text",
            "he was not an ill disposed young man",
            "--prompt",
            str(prompt),
            "--output",
            str(wav_path),
            "--max-seconds",
            "2.0",
            "--min-seconds",
            "2.0",
            "--save-tokens",
            "--device",
            "cpu",
        ]
    )
    result = synthesize(args)
    info = sf.info(str(wav_path))
    assert info.samplerate == 24_000 and info.channels == 1
    # End-of-audio masked for 2 s and the bound is 2 s: exactly 25 frames of 1920 samples.
    assert result["frames"] == 25 and not result["stopped_at_eoa"]
    assert info.frames == result["frames"] * 1920 == result["samples"]
    assert result["prompt_frames"] > 30
    import numpy as np

    tok = np.load(wav_path.with_suffix(".tokens.npz"))
    assert (
        tok["semantic"].shape == (25,) and tok["acoustic"].shape == (25, 36) and tok["acoustic"].max() <= 20
    )


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("VOXFORGE_SKIP_RAY") == "1", reason="VOXFORGE_SKIP_RAY=1")
def test_ray_train_two_workers(token_dir, tmp_path):
    out = tmp_path / "ray"
    cmd = [
        sys.executable,
        str(REPO / "model" / "train.py"),
        "--ray",
        "--ray-workers",
        "2",
        "--tokens",
        str(token_dir),
        "--output",
        str(out),
        "--steps",
        "2",
        "--seq-len",
        "512",
        "--batch-size",
        "1",
        "--log-every",
        "1",
        "--device",
        "cpu",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["last_train_log"]["step"] == 2
    state = json.loads((out / "checkpoints" / "step_0000002" / "state.json").read_text())
    assert state["world_size"] == 2
    # recorded as the data jobs are (manifests/run_record.py)
    from manifests.store import read_table

    [row] = read_table(out, "runs").to_pylist()
    stats = json.loads(row["stats"])
    assert row["run_id"] == result["run_id"] and row["job"] == "train" and row["finished"] is not None
    assert stats["status"] == "ok" and stats["last_train_log"]["step"] == 2 and stats["workers"] == 2


def test_codec_id_comes_from_the_samples_not_the_folder_name(token_dir, codec_dir, tmp_path):
    """Copied or renamed token shards keep their codec: generate.py must accept the right one."""
    from codec import Codec
    from model.trainer import Trainer

    renamed = tmp_path / "my tokens (copy)"
    shutil.copytree(token_dir, renamed)
    trainer = Trainer(_spec(renamed, tmp_path / "run"))
    assert trainer.codec_id == Codec.load(codec_dir).codec_id
