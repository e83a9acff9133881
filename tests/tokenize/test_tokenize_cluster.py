"""The tokenize job on a real multi-node Ray cluster (a head and two worker nodes on this
machine) that loses the worker node under an encoder batch in flight: Ray restarts the encoder
actor and resubmits the batch (max_task_retries), and every audio sample is tokenized exactly
once, in its shard's order."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from manifests.shards import read_token_shard
from manifests.store import read_table
from manifests.tokens import token_tree
from tests.conftest import REPO
from tests.ray_cluster import local_cluster, lose_node_under, wait_for

pytestmark = pytest.mark.slow


def _audio_keys(tar_path) -> list[str]:
    with tarfile.open(tar_path) as tar:
        return list(dict.fromkeys(m.name.partition(".")[0] for m in tar.getmembers()))


def test_tokenize_survives_losing_a_worker_node_under_a_batch_in_flight(ingested, codec_a, tmp_path):
    from codec.speech_codec import codec_info

    out, marks = tmp_path / "out", tmp_path / "marks"
    shutil.copytree(ingested, out)
    marks.mkdir()
    audio = sorted((out / "shards" / "audio").glob("*.tar"))
    held = audio[len(audio) // 2].stem  # a shard in the middle of the run
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "VOXFORGE_ENCODE_FAULT": f"hold:{held}", "VOXFORGE_ENCODE_FAULT_DIR": str(marks)}
    with local_cluster(n_workers=2) as cluster:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "tokenize" / "run.py"), "--input", str(out), "--codec", str(codec_a),
             "--address", cluster.address, "--device", "cpu", "--num-actors", "2", "--cpus-per-actor", "0.5",
             "--read-cpus", "0.5", "--threads", "1", "--batch-seconds", "20", "--no-report"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(marks / f"held-encode-{held}", proc)
            lose_node_under(cluster, marks / f"held-encode-{held}", marks / "release")
            log, _ = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, log[-8000:]
    # Ray's task retry brought the batch back (its raylet message, forwarded to the driver's log)
    assert "will be retried" in log, log[-8000:]
    cid = codec_info(codec_a).codec_id
    n = 0
    for tar in audio:
        keys = _audio_keys(tar)
        assert [s.key for s in read_token_shard(token_tree(out, cid) / tar.name)] == keys
        n += len(keys)
    rows = read_table(out, "tokens").to_pylist()
    assert len(rows) == len({r["key"] for r in rows}) == n >= 9
    assert {r["status"] for r in rows} == {"ok"}
    assert not [p for p in out.rglob("*") if p.suffix == ".tmp"]
