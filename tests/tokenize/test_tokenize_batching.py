"""The tokenize job's parts without Ray: bucketing and the shard reader (codec/tokenizing/),
the encoder (codec/token_encoder.py), on real speech."""

from __future__ import annotations

import csv
import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch

from codec.token_encoder import AudioBatch, SampleFailure, TokenBatch, TokenEncoder
from codec.tokenizing.bucketing import AudioShardReader, BatchingConfig, padding_ratio, plan_batches
from codec.tokenizing.engines import AUDIO_BATCH_SCHEMA, TOKEN_BATCH_SCHEMA, read_stage
from codec.tokenizing.stats import Stats
from manifests.shards import flac_stream_info, n_frames

torch.set_num_threads(1)  # 2 threads on a busy 2-core machine spin and crawl


# ---------------------------------------------------------------------------- bucketing


def test_plan_covers_every_item_once_and_respects_the_padded_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1920, 24000 * 30, size=500).tolist()
    budget = 24000 * 60
    plan = plan_batches(lengths, budget, max_items=32)
    flat = sorted(i for b in plan for i in b)
    assert flat == list(range(500))
    for b in plan:
        padded = len(b) * n_frames(max(lengths[i] for i in b)) * 1920
        assert padded <= budget or len(b) == 1
        assert len(b) <= 32
        # within a batch, padding an item never adds more than max_padding (0.25) of the longest
        longest = n_frames(max(lengths[i] for i in b)) * 1920
        assert all(n_frames(lengths[i]) * 1920 >= 0.75 * longest for i in b)


def test_an_item_longer_than_the_budget_gets_its_own_batch():
    plan = plan_batches([24000 * 100, 24000, 24000], 24000 * 10)
    assert plan[0] == [0] and sorted(plan[1]) == [1, 2]


def test_bucketing_of_the_real_speech_durations_pads_little(speech):
    # every file of ../shared/speech, as utterances of at most 30 s (what the ingest writes)
    with open(speech / "MANIFEST.tsv", encoding="utf-8") as f:
        durs = [float(r["duration_s"]) for r in csv.DictReader(f, delimiter="\t")]
    lengths = []
    for d in durs:
        while d > 0:
            lengths.append(int(min(d, 30.0) * 24000))
            d -= 30.0
    plan = plan_batches(lengths, 24000 * 120)
    ratio = padding_ratio(lengths, plan)
    naive = padding_ratio(lengths, [list(range(i, min(i + 16, len(lengths)))) for i in range(0, len(lengths), 16)])
    assert ratio < 1.08, ratio  # sorted buckets: under 8% padding
    assert naive > 1.3 * ratio  # unsorted fixed-size batches pad far more


# ---------------------------------------------------------------------------- reading


def _flac(pcm: np.ndarray, sr: int = 24000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm, sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _tar(path, members: list[tuple[str, bytes]]):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_reader_gives_every_sample_of_a_real_shard_in_order_with_its_pcm(ingested):
    shard = sorted((ingested / "shards" / "audio").glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        names = [m.name for m in tar.getmembers()]
        flacs = {n.split(".")[0]: tar.extractfile(n).read() for n in names if n.endswith(".flac")}
    keys_in_order = list(dict.fromkeys(n.split(".")[0] for n in names))
    reader = AudioShardReader(BatchingConfig(batch_seconds=8.0))  # small: several batches
    members = reader.index(shard)
    assert [m.key for m in members] == keys_in_order
    for m in members:  # header lengths without decoding = decoded lengths
        ref, sr = sf.read(io.BytesIO(flacs[m.key]), dtype="int16")
        assert m.n_samples == ref.shape[0] and sr == 24000
        assert flac_stream_info(flacs[m.key][:64]) == (24000, 1, ref.shape[0])
    batches = list(reader.batches(shard, "000000"))
    assert all(b.n_batches == len(batches) for b in batches)
    seen = {}
    for b in batches:
        assert not b.failures
        for k, p, x in zip(b.keys, b.positions, b.pcm):
            seen[k] = p
            np.testing.assert_array_equal(x, sf.read(io.BytesIO(flacs[k]), dtype="int16")[0])
    assert sorted(seen, key=seen.get) == keys_in_order


def test_reader_records_bad_samples_with_reasons_instead_of_failing(tmp_path, ingested):
    good = sorted((ingested / "shards" / "audio").glob("*.tar"))[0]
    with tarfile.open(good) as tar:
        name = next(n for n in tar.getnames() if n.endswith(".flac"))
        flac = tar.extractfile(name).read()
        meta = json.loads(tar.extractfile(name.replace(".flac", ".json")).read())
    pcm16k = (np.sin(np.arange(16000) / 10) * 3000).astype(np.int16)
    stereo = np.zeros((24000, 2), dtype=np.int16)
    j = json.dumps(meta).encode()
    path = tmp_path / "bad.tar"
    _tar(path, [
        ("aaa_00000.flac", flac), ("aaa_00000.json", j),                       # fine
        ("bbb_00000.flac", flac[:40] + b"\x00" * 500), ("bbb_00000.json", j),  # corrupt body
        ("ccc_00000.flac", _flac(pcm16k, 16000)), ("ccc_00000.json", j),      # wrong rate
        ("ddd_00000.flac", _flac(stereo)), ("ddd_00000.json", j),             # stereo
        ("eee_00000.flac", flac),                                             # no json
        ("fff_00000.flac", flac), ("fff_00000.json", b"{not json"),           # bad json
        ("ggg_00000.flac", b"not a flac at all"), ("ggg_00000.json", j),      # not flac
    ])
    batches = list(AudioShardReader(BatchingConfig()).batches(path, "000009"))
    keys = [k for b in batches for k in b.keys]
    fails = {f.key: f for b in batches for f in b.failures}
    assert keys == ["aaa_00000"]
    assert set(fails) == {"bbb_00000", "ccc_00000", "ddd_00000", "eee_00000", "fff_00000", "ggg_00000"}
    assert "16000 Hz" in fails["ccc_00000"].error
    assert "2 channels" in fails["ddd_00000"].error
    assert "no .json" in fails["eee_00000"].error
    assert "bad .json" in fails["fff_00000"].error
    assert "decode" in fails["bbb_00000"].error and "decode" in fails["ggg_00000"].error
    assert fails["ccc_00000"].position == 2 and fails["ccc_00000"].duration == pytest.approx(meta["duration"])


def test_batches_survive_the_arrow_round_trip():
    import pyarrow as pa

    b = AudioBatch(shard="000001", batch_index=2, n_batches=3, keys=["a", "b"], positions=[4, 1],
                   metas=['{"x": 1}', "{}"], pcm=[np.arange(5, dtype=np.int16), np.arange(3, dtype=np.int16) - 7])
    row = pa.Table.from_pylist([b.to_row()], schema=AUDIO_BATCH_SCHEMA).to_pylist()[0]
    b2 = AudioBatch.from_row(row)
    assert b2.keys == b.keys and b2.positions == b.positions and b2.metas == b.metas
    for x, y in zip(b.pcm, b2.pcm):
        np.testing.assert_array_equal(x, y)
    t = TokenBatch(shard="000001", batch_index=0, n_batches=1, keys=["a"], positions=[0], metas=["{}"],
                   n_samples=[3000], semantic=[np.array([1, 8191], np.int16)],
                   acoustic=[np.arange(72, dtype=np.uint8).reshape(2, 36) % 21])
    row = pa.Table.from_pylist([t.to_row()], schema=TOKEN_BATCH_SCHEMA).to_pylist()[0]
    t2 = TokenBatch.from_row(row)
    np.testing.assert_array_equal(t2.semantic[0], t.semantic[0])
    np.testing.assert_array_equal(t2.acoustic[0], t.acoustic[0])


def test_steady_rate_is_timed_on_the_encoders_clocks():
    """Audio after the first encoded batch over the encoders' span, whatever the driver saw:
    3 batches of 10 s finished at t=100, 102, 104 -> 20 s of audio in 4 s."""
    st = Stats(shards_done=1, audio_seconds=30.0, wall_seconds=60.0, started_at=90.0)
    for end in (104.0, 100.0, 102.0):  # the driver may receive them in any order, in bursts
        st.record_batch(end, 10.0)
    d = st.finish({"num_actors": 1, "device": "cpu"})
    assert d["steady_audio_seconds_per_second"] == pytest.approx(5.0)
    assert d["first_batch_seconds"] == pytest.approx(10.0)
    import pyarrow as pa

    t = TokenBatch(shard="s", batch_index=0, n_batches=1, encode_end=123.5)
    row = pa.Table.from_pylist([t.to_row()], schema=TOKEN_BATCH_SCHEMA).to_pylist()[0]
    assert TokenBatch.from_row(row).encode_end == 123.5


# ---------------------------------------------------------------------------- encoding


@pytest.fixture(scope="module")
def tiny_codec(codec_a):
    from codec import Codec

    return Codec.load(codec_a)


@pytest.fixture(scope="module")
def real_batches(ingested):
    reader = AudioShardReader(BatchingConfig(batch_seconds=20.0))
    out = []
    for i, shard in enumerate(sorted((ingested / "shards" / "audio").glob("*.tar"))):
        out += list(reader.batches(shard, f"{i:06d}"))
    return out


def test_batched_encoding_equals_one_at_a_time_in_fp32(tiny_codec, real_batches):
    enc = TokenEncoder(codec=tiny_codec)
    assert enc.precision == "fp32" and not enc.is_cuda
    results = enc(real_batches)
    assert sum(len(t.keys) for t in results) == sum(len(b.keys) for b in real_batches) >= 6
    assert any(len(b.keys) > 1 for b in real_batches)  # some real batching happened
    for b, t in zip(real_batches, results):
        assert t.keys == b.keys and t.padded_samples >= sum(b.lengths)
        for x, sem, ac in zip(b.pcm, t.semantic, t.acoustic):
            wav = torch.from_numpy(x.astype(np.float32) / 32768.0)[None, None]
            with torch.inference_mode():
                s1, a1 = tiny_codec.encode(wav)
            assert sem.dtype == np.int16 and ac.dtype == np.uint8
            assert sem.shape == (n_frames(x.shape[0]),) and ac.shape == (sem.shape[0], 36)
            np.testing.assert_array_equal(sem, s1[0].numpy())
            np.testing.assert_array_equal(ac, a1[0].numpy())


class _Flaky:
    """Wraps a codec: fails on any batch of more than one item, and on one given length."""

    def __init__(self, codec, bad_len):
        self.c, self.bad_len = codec, bad_len

    def __getattr__(self, name):
        return getattr(self.c, name)

    def to(self, device):
        return self

    def eval(self):
        return self

    def encode(self, wav, lengths=None):
        if wav.shape[0] > 1:
            raise RuntimeError("out of memory (simulated)")
        if lengths is not None and int(lengths[0]) == self.bad_len:
            raise RuntimeError("simulated codec failure")
        return self.c.encode(wav, lengths)


def test_a_batch_the_codec_fails_on_is_retried_item_by_item_and_bad_items_recorded(tiny_codec, real_batches):
    b = max(real_batches, key=lambda b: len(b.keys))
    assert len(b.keys) >= 2
    bad = b.lengths[1]
    t = TokenEncoder(codec=_Flaky(tiny_codec, bad))([b])[0]
    assert [f.key for f in t.failures] == [b.keys[1]]
    assert "simulated codec failure" in t.failures[0].error
    assert t.keys == [k for i, k in enumerate(b.keys) if i != 1]
    ref = TokenEncoder(codec=tiny_codec)([b])[0]
    np.testing.assert_array_equal(t.semantic[0], ref.semantic[0])


def test_empty_batch_passes_failures_through(tiny_codec):
    b = AudioBatch(shard="000003", batch_index=0, n_batches=1,
                   failures=[SampleFailure(key="k", position=0, error="cannot decode FLAC: x")])
    t = TokenEncoder(codec=tiny_codec)([b])[0]
    assert t.keys == [] and t.failures[0].key == "k"


def test_an_unreadable_shard_becomes_one_batch_with_the_error(tmp_path):
    import pyarrow as pa

    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file" * 40)
    table = pa.table({"shard": ["000001", "000002"], "path": [str(tmp_path / "missing.tar"), str(tmp_path / "junk.tar")]})
    rows = [AudioBatch.from_row(t.to_pylist()[0]) for t in read_stage(table, BatchingConfig())]
    assert [(b.shard, b.n_batches) for b in rows] == [("000001", 1), ("000002", 1)]
    assert "missing.tar" in rows[0].shard_error and "file not found" in rows[0].shard_error
    assert "not a readable tar" in rows[1].shard_error


def test_the_entry_script_runs_as_a_file_without_shadowing_the_stdlib(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    p = subprocess.run([sys.executable, str(REPO / "tokenize" / "run.py"), "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "--batch-seconds" in p.stdout and "--gpus-per-actor" in p.stdout, p.stderr
    p = subprocess.run([sys.executable, str(REPO / "tokenize" / "run.py"), "--input", str(tmp_path),
                        "--codec", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no manifests/ directory" in p.stderr
    assert not (REPO / "tokenize" / "__init__.py").exists()


def test_shard_reader_does_not_import_torch(tmp_path):
    """Readers run as Ray tasks in their own processes: importing torch there cost ~2 s and a few
    hundred MiB per reader (codec/__init__.py imports Codec lazily for this)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    shard = tmp_path / "000000.tar"
    _tar(shard, [("k0.flac", _flac((0.1 * np.sin(np.arange(24000) / 10)).astype(np.float32))),
                 ("k0.json", b'{"key": "k0"}')])
    code = ("import sys, pyarrow as pa, codec.tokenizing.engines as e, codec.tokenizing.bucketing as b\n"
            f"t = pa.table({{'shard': ['000000'], 'path': [{str(shard)!r}]}})\n"
            "rows = sum(len(x) for x in e.read_stage(t, b.BatchingConfig()))\n"
            "print(rows, 'torch' in sys.modules)\n"
            "from codec import Codec\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "False", "True"]
