"""The tokenize job end to end on shards made by the real ingest, with tiny codecs and Ray.

One local Ray serves the module; the job runs in-process (``run(config)``) and, for the
kill-and-resume test, as ``python tokenize/run.py`` subprocesses connected to that Ray.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch

from codec.speech_codec import codec_info
from codec.tokenizing.plan import lock_codec_tree
from codec.tokenizing.resources import cpu_actor_memory, default_cpu_actors, resolve_resources
from manifests.shards import read_token_shard
from manifests.store import read_table, write_part
from manifests.tokens import token_tree
from manifests.views import connect
from tests.conftest import REPO

torch.set_num_threads(1)  # 2 threads on a busy 2-core machine spin and crawl

BAD_SHARD = "000099"


def _audio_samples(tar_path):
    """[(key, int16 pcm, meta)] of an audio shard, in order."""
    out = {}
    with tarfile.open(tar_path) as tar:
        for m in tar.getmembers():
            key, _, ext = m.name.partition(".")
            d = out.setdefault(key, {})
            data = tar.extractfile(m).read()
            if ext == "flac":
                try:
                    d["pcm"] = sf.read(io.BytesIO(data), dtype="int16")[0]
                except sf.LibsndfileError:  # the corrupt sample of BAD_SHARD
                    d["pcm"] = None
            else:
                d["meta"] = json.loads(data)
    return [(k, v.get("pcm"), v.get("meta")) for k, v in out.items()]


def _add_bad_shard(out):
    """An extra committed audio shard: one good sample (copied) and one corrupt FLAC."""
    first = sorted((out / "shards" / "audio").glob("*.tar"))[0]
    with tarfile.open(first) as tar:
        name = next(n for n in tar.getnames() if n.endswith(".flac"))
        flac = tar.extractfile(name).read()
        meta = json.loads(tar.extractfile(name.replace(".flac", ".json")).read())
    path = out / "shards" / "audio" / f"{BAD_SHARD}.tar"
    members = []
    for key, data in (("badbadbadbadbad0_00000", flac), ("badbadbadbadbad0_00001", flac[:60] + b"\x00" * 300)):
        members += [(f"{key}.flac", data), (f"{key}.json", json.dumps({**meta, "key": key}).encode())]
    with tarfile.open(path, "w") as tar:
        for n, data in members:
            info = tarfile.TarInfo(n)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    write_part(out, "shards", f"test-{BAD_SHARD}", [{"shard": BAD_SHARD, "path": f"shards/audio/{BAD_SHARD}.tar",
                                                      "n_samples": 2, "bytes": path.stat().st_size}])


@pytest.fixture(scope="module")
def tokenized(ingested, codec_a, codec_b, ray_local, run_module, tmp_path_factory):
    """Codec A, then A again (a no-op), then codec B, on one copy of the ingest output."""
    out = tmp_path_factory.mktemp("job") / "out"
    shutil.copytree(ingested, out)
    _add_bad_shard(out)
    cfg = lambda codec: run_module.TokenizeConfig(input=str(out), codec=str(codec), batch_seconds=20.0,  # noqa: E731
                                                  object_store_mb=None)
    a = run_module.run(cfg(codec_a))
    mtimes = {p: p.stat().st_mtime_ns for p in token_tree(out, codec_info(codec_a).codec_id).glob("*.tar")}
    again = run_module.run(cfg(codec_a))
    mtimes_after = {p: p.stat().st_mtime_ns for p in token_tree(out, codec_info(codec_a).codec_id).glob("*.tar")}
    b = run_module.run(cfg(codec_b))
    return {"out": out, "a": a, "again": again, "b": b, "mtimes": (mtimes, mtimes_after),
            "id_a": codec_info(codec_a).codec_id, "id_b": codec_info(codec_b).codec_id}


def test_every_audio_shard_gets_a_token_shard_that_follows_design_6(tokenized):
    out, cid = tokenized["out"], tokenized["id_a"]
    audio = sorted((out / "shards" / "audio").glob("*.tar"))
    assert len(audio) >= 3
    assert sorted(p.name for p in token_tree(out, cid).glob("*.tar")) == [p.name for p in audio]
    n = 0
    for tar in audio:
        src = [(k, pcm, meta) for k, pcm, meta in _audio_samples(tar) if not k.endswith("bad0_00001")]
        tok = list(read_token_shard(token_tree(out, cid) / tar.name))
        assert [s.key for s in tok] == [k for k, _, _ in src]  # same samples, same order
        for s, (_, pcm, meta) in zip(tok, src):
            assert s.semantic.dtype == np.int16 and s.acoustic.dtype == np.uint8
            assert s.semantic.shape == (-(-pcm.shape[0] // 1920),)  # n_frames = ceil(samples / 1920)
            assert s.acoustic.shape == (s.semantic.shape[0], 36)
            assert 0 <= s.semantic.min() and s.semantic.max() <= 8191 and s.acoustic.max() <= 20
            assert s.meta["codec_id"] == cid and s.meta["frame_rate"] == 12.5
            assert s.meta["n_frames"] == s.semantic.shape[0]
            for field in ("text", "speaker", "language", "words", "duration", "source_id"):
                assert s.meta[field] == meta[field]
            n += 1
    assert n == tokenized["a"]["samples"] >= 9


def test_stored_tokens_decode_to_the_audio_of_encode_then_decode_in_fp32(tokenized, codec_a):
    from codec import Codec

    codec = Codec.load(codec_a)
    out, cid = tokenized["out"], tokenized["id_a"]
    checked = 0
    for tar in sorted((out / "shards" / "audio").glob("0000*.tar"))[:2]:
        pcm = {k: p for k, p, _ in _audio_samples(tar)}
        for s in read_token_shard(token_tree(out, cid) / tar.name):
            x = torch.from_numpy(pcm[s.key].astype(np.float32) / 32768.0)[None, None]
            with torch.inference_mode():
                ref = codec.decode(*codec.encode(x))
                got = codec.decode(torch.from_numpy(s.semantic.astype(np.int64))[None],
                                   torch.from_numpy(s.acoustic.astype(np.int64))[None])
            assert got.shape == ref.shape
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
            checked += 1
    assert checked >= 4


def test_a_sample_that_fails_to_decode_is_recorded_with_its_reason(tokenized):
    rows = {r["key"]: r for r in read_table(tokenized["out"], "tokens").to_pylist()
            if r["codec_id"] == tokenized["id_a"] and r["shard"] == BAD_SHARD}
    assert rows["badbadbadbadbad0_00000"]["status"] == "ok"
    bad = rows["badbadbadbadbad0_00001"]
    assert bad["status"] == "failed" and "FLAC" in bad["error"]
    assert tokenized["a"]["samples_failed"] == 1 and tokenized["a"]["shards_failed"] == 0


def test_a_rerun_skips_every_committed_shard_and_rewrites_nothing(tokenized):
    again = tokenized["again"]
    assert again["shards_done"] == 0 and again["shards_skipped"] == again["shards_total"] >= 4
    before, after = tokenized["mtimes"]
    assert before == after


def test_a_second_codec_writes_a_second_tree(tokenized):
    out, ida, idb = tokenized["out"], tokenized["id_a"], tokenized["id_b"]
    assert ida != idb and ida.startswith("tiny-") and len(ida) == len("tiny-") + 12
    ta, tb = sorted(token_tree(out, ida).glob("*.tar")), sorted(token_tree(out, idb).glob("*.tar"))
    assert [p.name for p in ta] == [p.name for p in tb]
    sa, sb = list(read_token_shard(ta[0])), list(read_token_shard(tb[0]))
    assert [s.key for s in sa] == [s.key for s in sb]
    assert any(not np.array_equal(x.semantic, y.semantic) for x, y in zip(sa, sb))  # different codecs
    assert all(s.meta["codec_id"] == idb for s in sb)
    assert tokenized["b"]["shards_done"] == tokenized["a"]["shards_done"]


def test_tokens_join_segments_in_duckdb(tokenized):
    con = connect(tokenized["out"])
    ida, idb = tokenized["id_a"], tokenized["id_b"]
    n_kept = con.execute("SELECT count(*) FROM segments WHERE kept").fetchone()[0]
    assert n_kept >= 9
    for cid in (ida, idb):
        joined, max_err = con.execute(
            "SELECT count(*), max(abs(t.duration - s.duration)) FROM segments s JOIN tokens t USING (key) "
            "WHERE s.kept AND t.codec_id = ? AND t.status = 'ok' AND t.shard = s.shard", [cid]).fetchone()
        assert joined == n_kept  # every kept segment has tokens, in the shard the segment says
        assert max_err < 0.01
    dups = con.execute("SELECT key, codec_id FROM tokens GROUP BY 1, 2 HAVING count(*) > 1").fetchall()
    assert dups == []
    frames = con.execute("SELECT sum(n_frames) FROM tokens WHERE codec_id = ?", [ida]).fetchone()[0]
    assert frames == tokenized["a"]["frames"]


def test_runs_rows_record_config_versions_and_stats(tokenized):
    runs = [r for r in read_table(tokenized["out"], "runs").to_pylist() if r["job"] == "tokenize"]
    assert len(runs) == 3 and all(r["finished"] is not None for r in runs)
    full = [r for r in runs if json.loads(r["stats"])["shards_done"] > 0]
    cfg = json.loads(full[0]["config"])
    assert cfg["resolved"]["codec_id"] in (tokenized["id_a"], tokenized["id_b"])
    assert cfg["resolved"]["device"] == "cpu" and cfg["batch_seconds"] == 20.0
    assert json.loads(full[0]["versions"])["torch"]
    st = json.loads(full[0]["stats"])
    assert st["audio_seconds"] > 30 and st["audio_seconds_per_second"] > 0 and st["frames"] > 0


def _job(args, env_extra, ray_address, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "VOXFORGE_TOKENIZE_FAULT"}
    env.update(RAY_ADDRESS=ray_address, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1", **env_extra)
    return subprocess.run([sys.executable, str(REPO / "tokenize" / "run.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_killed_between_tar_and_manifest_then_rerun_gives_every_sample_exactly_once(corpus, codec_a, ray_local):
    cid = codec_info(codec_a).codec_id
    args = ["--input", str(corpus), "--codec", str(codec_a), "--batch-seconds", "20"]
    p = _job(args, {"VOXFORGE_TOKENIZE_FAULT": "after_tar:2"}, ray_local)
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    tree = token_tree(corpus, cid)
    tars = sorted(tree.glob("*.tar"))
    parts = sorted((corpus / "manifests" / "tokens").glob("*.parquet"))
    assert len(tars) == 2 and len(parts) == 1  # killed after the 2nd tar, before its manifest part
    committed = tree / (parts[0].stem.split("-")[-1] + ".tar")
    mtime = committed.stat().st_mtime_ns

    p = _job(args, {}, ray_local)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "== tokenize summary ==" in p.stdout and "s of audio per s" in p.stdout
    assert "uncommitted tars redone: 1" in p.stdout
    # the summary ends with where the rebuilt report is, and the report has the tokens now
    assert p.stdout.strip().splitlines()[-1].startswith(f"report: open {corpus / 'report.html'}"), p.stdout[-500:]
    assert 'id="tokens"' in (corpus / "report.html").read_text()
    assert committed.stat().st_mtime_ns == mtime  # the committed shard was not redone

    audio_keys = [k for t in sorted((corpus / "shards" / "audio").glob("*.tar")) for k, _, _ in _audio_samples(t)]
    token_keys = [s.key for t in sorted(tree.glob("*.tar")) for s in read_token_shard(t)]
    assert token_keys == audio_keys  # every sample exactly once, in order
    rows = read_table(corpus, "tokens").to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(audio_keys)
    assert not list(tree.glob(".*")) and not list((corpus / "manifests" / "tokens").glob(".*"))


def test_options_that_cannot_work_are_refused_with_a_fix(ingested, codec_a, ray_local, run_module):
    cfg = run_module.TokenizeConfig
    with pytest.raises(run_module.TokenizeConfigError, match="no manifests/"):
        cfg(input=str(codec_a), codec=str(codec_a))
    with pytest.raises(run_module.TokenizeConfigError, match="batch-seconds"):
        cfg(input=str(ingested), codec=str(codec_a), batch_seconds=0)
    with pytest.raises(run_module.TokenizeConfigError, match="no GPU"):
        resolve_resources(cfg(input=str(ingested), codec=str(codec_a), device="cuda"))
    # 2 actors x 1 CPU + a 1-CPU reader on a 2-CPU Ray would hang: refused up front
    with pytest.raises(run_module.TokenizeConfigError, match="lower --num-actors"):
        resolve_resources(cfg(input=str(ingested), codec=str(codec_a), num_actors=2))
    rr = resolve_resources(cfg(input=str(ingested), codec=str(codec_a), num_actors=2,
                                          cpus_per_actor=0.75, read_cpus=0.5))
    assert rr["device"] == "cpu" and rr["num_actors"] == 2 and rr["threads"] == 1


def test_a_second_job_on_the_same_output_and_codec_is_refused(corpus, codec_a, run_module):
    lock = lock_codec_tree(str(corpus), codec_info(codec_a).codec_id)
    try:
        with pytest.raises(run_module.TokenizeConfigError, match="another tokenize job"):
            run_module.run(run_module.TokenizeConfig(input=str(corpus), codec=str(codec_a)))
    finally:
        lock.close()
    lock_codec_tree(str(corpus), codec_info(codec_a).codec_id).close()  # free again


def test_cpu_actors_fill_the_cluster_and_leave_room_for_readers(run_module):
    f = default_cpu_actors
    assert f(2, 1.0, 1.0) == 1  # 1 encoder + 1 reader: what fits on 2 CPUs
    assert f(16, 1.0, 1.0) == 14  # 2 readers' CPUs kept (one per 9 CPUs)
    assert f(64, 1.0, 1.0) == 56
    assert f(64, 2.0, 1.0) == 28  # 2-CPU actors
    assert f(2, 0.75, 0.5) == 2  # the 2-core recipe of docs/tokenize.md
    assert f(1, 1.0, 1.0) == 1  # never 0; resolve_resources then says what to lower
    for cpus in (2, 3, 8, 9, 10, 17, 33, 128):
        n = f(cpus, 1.0, 1.0)
        assert n + 1 <= cpus  # at least one reader always fits: the job cannot hang for a reader
    # Memory caps the count: a 300M-parameter codec on a 64-CPU, 128 GB node must not start 56 copies.
    gib = 2**30
    big = cpu_actor_memory(1223 * 2**20, 120.0)  # voxtral's fp32 weights, 120 s batches
    small = cpu_actor_memory(31 * 2**20, 120.0)  # tiny's
    assert 0.6 * gib < small < 0.9 * gib < 2 * gib < big  # measured peaks: 0.68 GiB and (20 s) 1.9 GiB
    assert f(64, 1.0, 1.0, memory=90 * gib, actor_memory=big) == int(90 * gib // big) < 56
    assert f(64, 1.0, 1.0, memory=90 * gib, actor_memory=small) == 56  # CPUs, not memory, bound it
    assert f(64, 1.0, 1.0, memory=0.5 * gib, actor_memory=big) == 1
