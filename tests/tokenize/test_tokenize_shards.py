"""manifests/shards.py (token shard format) and manifests/tokens.py (commit protocol, cleanup, reassembly)."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from codec.token_encoder import SampleFailure, TokenBatch
from manifests.shards import TokenSample, TokenShardError, read_token_shard, token_tar_bytes
from manifests.store import read_table
from manifests.tokens import (
    ShardAssembler,
    clean_uncommitted,
    commit_token_shard,
    committed_shards,
    token_shard_path,
)

CID = "tiny-0123456789ab"


def _sample(key, t, seed=0, meta=None):
    rng = np.random.default_rng(seed)
    return TokenSample(key=key, semantic=rng.integers(0, 8192, t).astype(np.int16),
                       acoustic=rng.integers(0, 21, (t, 36)).astype(np.uint8), meta=meta or {"key": key, "text": "hi"})


def test_commit_writes_tar_then_manifest_and_reads_back(tmp_path):
    samples = [_sample("a_00000", 5, 1), _sample("b_00001", 0, 2), _sample("c_00000", 17, 3)]
    fails = [{"key": "d_00000", "position": 3, "error": "cannot decode FLAC: bad", "duration": 2.0}]
    c = commit_token_shard(tmp_path, CID, "000004", samples, fails, frame_rate=12.5, sample_rate=24000,
                           n_samples=[9000, 100, 32000], run_id="r1")
    assert c.tar == tmp_path / "shards" / "tokens" / CID / "000004.tar"
    assert c.part.name == f"{CID}-000004.parquet"
    with tarfile.open(c.tar) as tar:
        names = tar.getnames()
    assert names == ["a_00000.tokens.npz", "a_00000.json", "b_00001.tokens.npz", "b_00001.json",
                     "c_00000.tokens.npz", "c_00000.json"]
    back = list(read_token_shard(c.tar))
    assert [s.key for s in back] == ["a_00000", "b_00001", "c_00000"]
    for s, b in zip(samples, back):
        assert b.semantic.dtype == np.int16 and b.acoustic.dtype == np.uint8
        np.testing.assert_array_equal(s.semantic, b.semantic)
        np.testing.assert_array_equal(s.acoustic, b.acoustic)
        assert b.meta["codec_id"] == CID and b.meta["frame_rate"] == 12.5 and b.meta["n_frames"] == s.n_frames
        assert b.meta["text"] == "hi"
    rows = read_table(tmp_path, "tokens").to_pylist()
    assert [(r["key"], r["status"], r["n_frames"]) for r in rows] == [
        ("a_00000", "ok", 5), ("b_00001", "ok", 0), ("c_00000", "ok", 17), ("d_00000", "failed", 0)]
    assert rows[0]["duration"] == pytest.approx(9000 / 24000) and rows[3]["error"].startswith("cannot decode")
    assert committed_shards(tmp_path, CID) == {"000004"}
    assert committed_shards(tmp_path, "other-000000000000") == set()


def test_out_of_range_tokens_are_refused():
    bad = _sample("a", 3)
    bad.acoustic[0, 0] = 21
    with pytest.raises(TokenShardError, match="0..20"):
        token_tar_bytes([bad])
    with pytest.raises(TokenShardError, match="int16"):
        token_tar_bytes([TokenSample("a", np.zeros(3, np.int64), np.zeros((3, 36), np.uint8))])


def test_clean_uncommitted_removes_only_tars_without_a_manifest_part(tmp_path):
    commit_token_shard(tmp_path, CID, "000000", [_sample("a", 3)], [], frame_rate=12.5, sample_rate=24000,
                       n_samples=[5000], run_id="r")
    tree = token_shard_path(tmp_path, CID, "000000").parent
    orphan = tree / "000001.tar"
    orphan.write_bytes(token_tar_bytes([_sample("b", 2)]))
    tmp = tree / ".000002.tar.deadbeef.tmp"
    tmp.write_bytes(b"half")
    other = token_shard_path(tmp_path, "tiny-ffffffffffff", "000001")  # another codec's tree: untouched
    other.parent.mkdir(parents=True)
    other.write_bytes(b"x")
    removed = clean_uncommitted(tmp_path, CID)
    assert removed == [orphan]
    assert not orphan.exists() and not tmp.exists() and other.exists()
    assert token_shard_path(tmp_path, CID, "000000").exists()


def _tb(shard, bi, nb, keys, positions, failures=()):
    t = [3 + p for p in positions]
    return TokenBatch(shard=shard, batch_index=bi, n_batches=nb, keys=list(keys), positions=list(positions),
                      metas=[json.dumps({"key": k}) for k in keys], n_samples=[x * 1920 for x in t],
                      semantic=[np.full(x, p, np.int16) for x, p in zip(t, positions)],
                      acoustic=[np.zeros((x, 36), np.uint8) for x in t], failures=list(failures),
                      padded_samples=100, encode_seconds=0.5)


def test_assembler_restores_shard_order_from_batches_in_any_order():
    a = ShardAssembler()
    # length bucketing reorders samples; batches come back in any order, shards interleaved
    assert a.add(_tb("000001", 1, 2, ["k2", "k0"], [2, 0])) is None
    assert a.add(_tb("000002", 0, 1, ["z"], [0])).shard == "000002"
    done = a.add(_tb("000001", 0, 2, ["k3", "k1"], [3, 1],
                     failures=[SampleFailure(key="k4", position=4, error="x")]))
    assert done is not None and a.open_shards == []
    assert [s.key for s in done.samples] == ["k0", "k1", "k2", "k3"]
    assert [int(s.semantic[0]) for s in done.samples] == [0, 1, 2, 3]
    assert done.n_samples == [3 * 1920, 4 * 1920, 5 * 1920, 6 * 1920]
    assert [f["key"] for f in done.failures] == ["k4"]
    assert done.padded_samples == 200 and done.encode_seconds == pytest.approx(1.0)


def test_assembler_refuses_a_batch_twice():
    a = ShardAssembler()
    a.add(_tb("000001", 0, 2, ["k0"], [0]))
    with pytest.raises(TokenShardError, match="twice"):
        a.add(_tb("000001", 0, 2, ["k0"], [0]))
