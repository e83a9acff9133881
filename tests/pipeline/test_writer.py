"""The commit protocol: parts become visible whole, an interrupted part is rolled back."""

from __future__ import annotations

import json

import pytest
import webdataset as wds

from manifests.store import read_table
from pipeline.writer import ShardWriter


def source(i: int, n_seg: int) -> tuple[dict, list[dict], list[dict]]:
    sid = f"{i:016x}"
    segs, samples = [], []
    for j in range(n_seg):
        key = f"{sid}_{j:05d}"
        segs.append({"key": key, "source_id": sid, "source_path": f"/x/{i}.wav", "start": j, "end": j + 1,
                     "duration": 1.0, "kept": True, "drop_reason": None, "text": "hi"})
        samples.append({"__key__": key, "flac": b"F" * 100, "json": json.dumps({"key": key}).encode()})
    src = {"source_id": sid, "path": f"/x/{i}.wav", "status": "ok", "duration": float(n_seg)}
    return src, segs, samples


def test_parts_commit_whole_and_sources_never_split(tmp_path):
    w = ShardWriter(tmp_path, "r1", max_samples=3)
    for i in range(5):
        w.add_source(*source(i, 2))
    w.close()
    shards = read_table(tmp_path, "shards").to_pylist()
    segs = read_table(tmp_path, "segments").to_pylist()
    # max 3 samples but 2 per source: each part closes after the source that crosses the limit
    assert [s["n_samples"] for s in shards] == [4, 4, 2]
    by_shard = {}
    for s in segs:
        by_shard.setdefault(s["shard"], set()).add(s["source_id"])
    assert sum(len(v) for v in by_shard.values()) == 5  # each source in exactly one shard
    keys = [s["__key__"] for s in wds.WebDataset(str(tmp_path / "shards/audio/{000000..000002}.tar"), shardshuffle=False)]
    assert sorted(keys) == sorted(s["key"] for s in segs) and len(keys) == len(set(keys))


@pytest.mark.parametrize("point", ["after_tar", "after_segments", "after_shards"])
def test_interrupted_part_is_rolled_back_and_redone(tmp_path, point):
    """SIGKILL inside a commit (via the writer's fault hook, in a child process), then recover."""
    import multiprocessing as mp
    import os

    def child():
        os.environ["VOXFORGE_FAULT"] = f"{point}:1"
        w = ShardWriter(tmp_path, "r1", max_samples=100)
        w.add_source(*source(0, 2))
        w.commit()
        w.add_source(*source(1, 2))
        w.commit()  # killed half way through part 1

    p = mp.get_context("fork").Process(target=child)
    p.start()
    p.join(60)
    assert p.exitcode == -9
    assert (tmp_path / "shards/audio/000001.tar").exists()  # half-committed part on disk

    w2 = ShardWriter(tmp_path, "r2", max_samples=100)
    assert w2.recovered == 1
    assert not (tmp_path / "shards/audio/000001.tar").exists()
    assert set(w2.committed_ids) == {f"{0:016x}"}  # source 1 will be redone
    w2.add_source(*source(1, 2))
    w2.close()
    segs = read_table(tmp_path, "segments").to_pylist()
    assert len(segs) == 4 and len({s["key"] for s in segs}) == 4
    assert len(read_table(tmp_path, "shards")) == 2


def test_duplicate_content_is_recorded_not_written_twice(tmp_path):
    w = ShardWriter(tmp_path, "r1")
    src, segs, samples = source(7, 2)
    assert w.add_source(src, segs, samples)
    dup = {**src, "path": "/elsewhere/copy.wav"}
    assert not w.add_source(dup, [dict(s) for s in segs], samples)
    w.close()
    rows = read_table(tmp_path, "sources").to_pylist()
    assert [r["status"] for r in rows] == ["ok", "rejected"]
    assert rows[1]["error"].startswith("duplicate:") and "/x/7.wav" in rows[1]["error"]
    assert len(read_table(tmp_path, "segments")) == 2
