"""Fixtures of the codec tests: real utterances from ../shared/speech, as files and as audio shards."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One thread: the CI machine has 2 cores shared with other jobs; OpenMP spinning on 2 threads
# under oversubscription is many times slower than 1 thread.
torch.set_num_threads(1)

SPEECH = Path(__file__).parents[2].parent / "shared" / "speech"
# Short, single-speaker English utterances with transcripts (LibriVox, ARCTIC, TIMIT, MFA read speech).
UTTERANCES = [
    "mfa/tests/data/wav/mfa_the.flac",
    "mfa/tests/data/wav/mfa_putty.flac",
    "pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav",
    "deepspeech/native_client/dotnet/DeepSpeechConsole/arctic_a0024.wav",
    "deepspeech/data/smoke_test/LDC93S1.wav",
]


def _need_speech() -> None:
    if not SPEECH.is_dir():
        pytest.skip(f"real speech folder {SPEECH} is absent (see the project README)")


def load_24k(rel: str) -> np.ndarray:
    x, sr = sf.read(SPEECH / rel, dtype="float32", always_2d=True)
    return soxr.resample(x.mean(1), sr, 24_000).astype(np.float32)


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    _need_speech()
    return SPEECH


@pytest.fixture(scope="session")
def utterances(speech_dir) -> list[np.ndarray]:
    """A few real utterances, mono float32 at 24 kHz."""
    return [load_24k(u) for u in UTTERANCES]


def write_audio_shards(out: Path, utts: list[tuple[str, np.ndarray]], per_shard: int = 2) -> list[Path]:
    """Write DESIGN.md §4 audio shards NNNNNN.tar (<key>.flac 24 kHz 16-bit + <key>.json)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(0, len(utts), per_shard):
        path = out / f"{s // per_shard:06d}.tar"
        with tarfile.open(path, "w") as tf:
            for name, x in utts[s : s + per_shard]:
                source_id = hashlib.sha256(name.encode()).hexdigest()[:16]
                key = f"{source_id}_00000"
                buf = io.BytesIO()
                sf.write(buf, x, 24_000, format="FLAC", subtype="PCM_16")
                meta = {
                    "key": key,
                    "source_id": source_id,
                    "source_path": name,
                    "start": 0.0,
                    "end": len(x) / 24_000,
                    "duration": len(x) / 24_000,
                    "sample_rate": 24_000,
                    "speaker": f"{source_id}:S0",
                    "language": "en",
                    "language_prob": 1.0,
                    "text": "",
                    "words": [],
                    "asr": {},
                    "quality": {},
                    "pipeline_version": "test",
                }
                for member, data in (
                    (f"{key}.flac", buf.getvalue()),
                    (f"{key}.json", json.dumps(meta).encode()),
                ):
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def audio_shards(tmp_path_factory, utterances) -> Path:
    root = tmp_path_factory.mktemp("shards") / "audio"
    write_audio_shards(root, list(zip(UTTERANCES, utterances)))
    return root


@pytest.fixture(scope="session")
def audio_files_dir(tmp_path_factory, utterances) -> Path:
    """The same utterances as a plain folder of wav files (the no-shards training input)."""
    root = tmp_path_factory.mktemp("files")
    for i, x in enumerate(utterances):
        sf.write(root / f"utt{i}.wav", x, 24_000)
    return root
