"""Regression: the same audio shard and the same codec give the same tokens, bit for bit (the
semantic codes up to the near-copies the fixture's codebook holds, see the test).

The stored result (``tests/fixtures/stored_tokens/tokens.npz``) was made by the tokenize job
(``tokenize/run.py``, local engine, CPU, fp32, one torch thread) *before* the shard formats and
``codec/batching.py`` were reorganised (issue 13); every later change must reproduce it exactly.

Fixture (``tests/fixtures/stored_tokens/``, ~1.2 MB):

- ``audio/000000.tar``: a DESIGN §4 audio shard of 4 real utterances (LJSpeech, public domain;
  CMU ARCTIC; the free TIMIT sample), 1.5-4 s, 24 kHz 16-bit FLAC + JSON.
- ``codec/``: a small codec checkpoint (``Codec.save``; 50 k parameters, 8-dim semantic latent,
  8192 codes, 36 x 21 FSQ), seeded init, VQ codebook initialised from the latents of those
  utterances so that the semantic stream is not one constant code.
- ``tokens.npz``: per key ``<key>/semantic`` int16 ``[T]`` and ``<key>/acoustic`` uint8
  ``[T, 36]``, plus ``keys`` (shard order).

``python -m tests.tokenize.test_stored_tokens --rebuild-inputs`` rewrites the shard and the
checkpoint; ``--rebuild-tokens`` rewrites the stored tokens from the current code. Neither is
part of the test: rebuilding the tokens after a change would defeat the point.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "stored_tokens"
SHARD = FIXTURE / "audio" / "000000.tar"
CODEC = FIXTURE / "codec"
STORED = FIXTURE / "tokens.npz"
# 3.5 s of padded audio per batch: the two LJSpeech utterances share a padded batch, the two
# longer ones get a batch each (the job puts a shard's batches back in order).
BATCH_SECONDS = 3.5
UTTERANCES = [
    "lhotse/test/fixtures/ljspeech/storage/LJ002-0020.wav",
    "lhotse/test/fixtures/ljspeech/storage/LJ002-0035.wav",
    "deepspeech/native_client/dotnet/DeepSpeechConsole/arctic_a0024.wav",
    "deepspeech/data/smoke_test/LDC93S1.wav",
]


def tokenize_fixture(out: Path, run_module) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Run the tokenize job over the fixture shard into ``out``; ``{key: (semantic, acoustic)}``
    in shard order, read back from the token shard it wrote."""
    import shutil

    from manifests.store import write_part

    audio = out / "shards" / "audio"
    audio.mkdir(parents=True)
    shutil.copy(SHARD, audio / SHARD.name)
    data = SHARD.read_bytes()
    write_part(out, "shards", "000000", [{
        "shard": "000000", "path": "shards/audio/000000.tar", "n_samples": len(UTTERANCES),
        "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "total_duration": None,
        "run_id": "fixture"}])
    cfg = run_module.TokenizeConfig(input=str(out), codec=str(CODEC), engine="local", device="cpu",
                                    precision="fp32", threads=1, batch_seconds=BATCH_SECONDS, report=False)
    stats = run_module.run(cfg)
    assert stats["shards_done"] == 1 and stats["samples_failed"] == 0, stats
    tars = list((out / "shards" / "tokens").glob("*/000000.tar"))
    assert len(tars) == 1, tars
    got: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with tarfile.open(tars[0]) as tar:
        for m in tar:
            if m.name.endswith(".tokens.npz"):
                with np.load(io.BytesIO(tar.extractfile(m).read()), allow_pickle=False) as z:
                    got[m.name.split(".", 1)[0]] = (z["semantic"], z["acoustic"])
    return got


def test_the_same_shard_and_codec_give_the_stored_tokens(tmp_path, run_module):
    got = tokenize_fixture(tmp_path / "out", run_module)
    with np.load(STORED, allow_pickle=False) as z:
        keys = [str(k) for k in z["keys"]]
        want = {k: (z[f"{k}/semantic"], z[f"{k}/acoustic"]) for k in keys}
    assert list(got) == keys, "keys or their order changed"
    from codec import Codec

    codebook = Codec.load(CODEC).vq.codebook.detach().numpy()
    for k in keys:
        (gs, ga), (ws, wa) = got[k], want[k]
        assert gs.dtype == ws.dtype == np.int16 and ga.dtype == wa.dtype == np.uint8, k
        assert gs.shape == ws.shape, f"{k}: semantic tokens changed"
        if gs.tobytes() != ws.tobytes():
            # The fixture's codebook starts on its own latents, drawn with replacement (8192 codes
            # from ~130 frames) plus 1e-3 std of noise (codec/vq.py _init_from): each frame has
            # dozens of near-copies, and which copy is nearest is float rounding, which differs
            # between CPUs (AVX2 against AVX-512 kernels: 25-50 % of the codes). A copy is
            # within 0.0025 of another; codes of distinct frames are 0.004-0.1 apart.
            d = np.linalg.norm(codebook[gs.astype(int)] - codebook[ws.astype(int)], axis=1)
            assert d.max() < 0.003, f"{k}: semantic tokens changed (a code {d.max():.3g} from the stored one)"
        assert ga.tobytes() == wa.tobytes() and ga.shape == wa.shape, f"{k}: acoustic tokens changed"
    # the fixture is worth something only if its tokens vary
    assert len(np.unique(np.concatenate([s for s, _ in want.values()]))) > 10


# ---------------------------------------------------------------------------- building the fixture


def _rebuild_inputs(speech: Path) -> None:  # pragma: no cover - run by hand, see the module doc
    import soundfile as sf
    import soxr
    import torch

    from codec import Codec, CodecConfig

    utts = []
    for rel in UTTERANCES:
        x, sr = sf.read(speech / rel, dtype="float32", always_2d=True)
        y = soxr.resample(x.mean(1), sr, 24_000).astype(np.float32)
        sid = hashlib.sha256((speech / rel).read_bytes()).hexdigest()[:16]
        utts.append((rel, sid, y))
    SHARD.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(SHARD, "w", format=tarfile.USTAR_FORMAT) as tar:
        for rel, sid, y in utts:
            key = f"{sid}_00000"
            buf = io.BytesIO()
            sf.write(buf, y, 24_000, format="FLAC", subtype="PCM_16")
            dur = len(y) / 24_000
            meta = {"key": key, "source_id": sid, "source_path": rel, "start": 0.0, "end": dur, "duration": dur,
                    "sample_rate": 24_000, "speaker": f"{sid}:S0", "language": "en", "language_prob": 1.0,
                    "text": "", "words": [], "asr": {}, "quality": {}, "pipeline_version": "fixture"}
            for name, data in ((f"{key}.flac", buf.getvalue()), (f"{key}.json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    torch.manual_seed(0)
    cfg = CodecConfig.tiny(name="fixture", dims=(16, 16, 16, 32), depths=(1, 1, 1, 1), head_dim=16,
                           semantic_dim=8, teacher_dim=8, disc_channels=2)
    codec = Codec(cfg).eval()
    with torch.inference_mode():
        lat = torch.cat([codec.encode_latent(torch.from_numpy(y)[None, None])[0] for _, _, y in utts])
    codec.vq._init_from(lat[:, : cfg.semantic_dim].clone())
    codec.save(CODEC)


def _rebuild_tokens() -> None:  # pragma: no cover - run by hand, see the module doc
    import tempfile

    import torch

    from tests.tokenize.conftest import load_run_module

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        got = tokenize_fixture(Path(d) / "out", load_run_module())
    arrays = {"keys": np.array(list(got))}
    for k, (s, a) in got.items():
        arrays[f"{k}/semantic"], arrays[f"{k}/acoustic"] = s, a
    np.savez(STORED, **arrays)


if __name__ == "__main__":  # pragma: no cover
    from tests.conftest import SPEECH

    if "--rebuild-inputs" in sys.argv:
        _rebuild_inputs(SPEECH)
    if "--rebuild-tokens" in sys.argv:
        _rebuild_tokens()
    if not {"--rebuild-inputs", "--rebuild-tokens"} & set(sys.argv):
        sys.exit(__doc__)
