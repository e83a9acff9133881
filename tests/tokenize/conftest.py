"""Fixtures of the tokenize tests: real audio shards made by the real ingest, tiny codecs, one Ray.

The ingest runs once per session on a few short English files of ../shared/speech
(--shard-max-samples 3, so there are several shards). Tests that write copy it first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, load_script  # its import also sets the offline environment

# Short English utterances of different lengths (1.3 s .. 11.7 s) and formats (wav 16/22 kHz, flac).
SPEECH_FILES = [
    "pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav",
    "pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0890.wav",
    "deepspeech/data/smoke_test/LDC93S1.wav",
    "deepspeech/native_client/dotnet/DeepSpeechConsole/arctic_a0024.wav",
    "lhotse/test/fixtures/ljspeech/storage/LJ002-0020.wav",
    "mfa/tests/data/wav/mfa_affectation.flac",
    "pocketsphinx/test/data/cards/005.wav",
    "lhotse/test/fixtures/mix_cut_test/audio/storage/2412-153948-0000.flac",
]


def load_run_module():
    """tokenize/run.py as a module (it is a script in a folder that must not be a package)."""
    return load_script(REPO / "tokenize" / "run.py", "tokenize_run")


@pytest.fixture(scope="session")
def speech(speech_dir) -> Path:
    """The real speech folder (``tests/conftest.py``'s ``speech_dir``: skips where it is missing)."""
    return speech_dir


@pytest.fixture(scope="session")
def ingested(tmp_path_factory, speech) -> Path:
    """An ingest output (shards/audio + manifests) made by pipeline/ingest.py. Read-only: copy to write."""
    ingest = REPO / "pipeline" / "ingest.py"
    if not ingest.is_file():
        pytest.skip("pipeline/ingest.py is missing: the tokenize tests need the real ingest")
    root = tmp_path_factory.mktemp("ingest")
    lst = root / "files.txt"
    lst.write_text("".join(f"{speech / f}\n" for f in SPEECH_FILES))
    out = root / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, str(ingest), "--input", str(lst), "--output", str(out),
                        "--shard-max-samples", "3"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise AssertionError(f"ingest failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    assert len(list((out / "shards" / "audio").glob("*.tar"))) >= 2, "expected several audio shards"
    return out


@pytest.fixture
def corpus(ingested, tmp_path) -> Path:
    """A private, writable copy of the ingest output."""
    dst = tmp_path / "out"
    shutil.copytree(ingested, dst)
    return dst


def _save_tiny(path: Path, seed: int) -> Path:
    import torch

    from codec import Codec, CodecConfig

    torch.manual_seed(seed)
    Codec(CodecConfig.tiny()).save(path)
    return path


@pytest.fixture(scope="session")
def codec_a(tmp_path_factory) -> Path:
    """A tiny codec checkpoint (random init, fixed seed): directory for --codec."""
    return _save_tiny(tmp_path_factory.mktemp("codec_a"), 0)


@pytest.fixture(scope="session")
def codec_b(tmp_path_factory) -> Path:
    """A second tiny codec (another seed, so another codec_id)."""
    return _save_tiny(tmp_path_factory.mktemp("codec_b"), 1)


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for a whole test module (~6 s to start). Yields its address for subprocesses."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def run_module():
    return load_run_module()
