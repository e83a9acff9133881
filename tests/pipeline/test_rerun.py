"""What a rerun on the same output does: a copy found later gets a ``duplicate`` row (and is not
hashed again after), a ``failed`` source is retried and superseded, remote inputs are not
downloaded again to be skipped, and two ingests on one output are refused."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import fsspec
import pytest
import webdataset as wds

from manifests.locks import JobLocked, exclusive_lock
from manifests.store import read_table
from manifests.views import connect
from pipeline.config import IngestConfig
from pipeline.job import run_ingest
from pipeline.writer import ShardWriter
from tests.conftest import REPO
from tests.pipeline.test_writer import source

FAST = ["--vad", "silero", "--diarization", "none"]  # no pyannote import: the fastest real stages


def _ingest(args: list[str], **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", **env}
    p = subprocess.run([sys.executable, str(REPO / "pipeline/ingest.py"), *args, *FAST], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    return p


@pytest.mark.slow
def test_rerun_retries_failed_sources_and_records_later_copies(tmp_path, speech_dir):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus.mkdir()
    a_name = "LEAK a ü;$(x).wav"  # a name that must not reach any output path or key
    shutil.copy(speech_dir / "pocketsphinx/test/data/cards/001.wav", corpus / a_name)
    shutil.copy(speech_dir / "pocketsphinx/test/data/cards/002.wav", corpus / "c.wav")
    # special files: a FIFO in the walked folder (left out), one and a device named in a list (rows)
    os.mkfifo(corpus / "in_walk.flac")
    os.mkfifo(tmp_path / "listed.flac")
    (tmp_path / "special.txt").write_text(f"{tmp_path / 'listed.flac'}\n/dev/zero\n")
    args = ["--input", str(corpus), "--input", str(tmp_path / "special.txt"), "--output", str(out)]

    # run 1: an unexpected stage error (the test hook) fails c.wav after it was hashed and decoded
    _ingest(args, VOXFORGE_STAGE_FAULT="segment:c.wav")
    first = {r["path"]: r for r in read_table(out, "sources").to_pylist()}
    assert first[str(corpus / "c.wav")]["status"] == "failed" and first[str(corpus / "c.wav")]["source_id"]
    assert first[str(corpus / a_name)]["status"] == "ok"
    for special in (str(tmp_path / "listed.flac"), "/dev/zero"):
        assert first[special]["status"] == "rejected" and first[special]["error"].startswith("not_a_file:")
    assert str(corpus / "in_walk.flac") not in first

    # run 2: a copy of a.wav appears; the fault is gone
    shutil.copy(corpus / a_name, corpus / "b_copy.wav")
    _ingest(args)
    con = connect(out)
    rows = {p: (s, e) for p, s, e in con.execute("SELECT path, status, error FROM sources").fetchall()}
    problems = []
    if rows.get(str(corpus / "c.wav"), (None,))[0] != "ok":
        problems.append(f"failed source not retried: {rows.get(str(corpus / 'c.wav'))}")
    copy = rows.get(str(corpus / "b_copy.wav"))
    if not (copy and copy[0] == "rejected" and copy[1].startswith("duplicate:") and str(corpus / a_name) in copy[1]):
        problems.append(f"later copy has no duplicate row: {copy}")
    assert not problems, problems
    # one row per path in the view; the failed attempt stays in the parts as history; the special
    # files' rows are not written again
    assert len(rows) == 5 and con.execute("SELECT count(*) FROM sources").fetchone()[0] == 5
    assert len(read_table(out, "sources")) == 6
    # exactly once: no key twice, the tars hold exactly the kept segments, c.wav's among them
    assert con.execute("SELECT count(*) - count(DISTINCT key) FROM segments").fetchone()[0] == 0
    kept = {k for (k,) in con.execute("SELECT key FROM segments WHERE kept").fetchall()}
    in_tars = [s["__key__"] for (p,) in con.execute("SELECT path FROM shards").fetchall()
               for s in wds.WebDataset(str(out / p), shardshuffle=False)]
    assert sorted(in_tars) == sorted(kept)
    c_id = con.execute("SELECT source_id FROM sources WHERE path = ?", [str(corpus / "c.wav")]).fetchone()[0]
    assert any(k.startswith(c_id) for k in kept)
    # no output path or key comes from an input's name: only the layout's own names
    layout = re.compile(r"^(shards/audio/\d{6}\.tar|manifests/(sources|segments|shards)/\d{6}\.parquet|"
                        r"manifests/runs/ingest-[0-9T]+-[0-9a-f]{6}\.parquet|manifests/ingest\.lock|report\.html)$")
    files = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    assert files and all(layout.match(f) for f in files), files
    assert all(re.fullmatch(r"[0-9a-f]{16}_\d{5}", k) for k in in_tars)

    # run 3: everything is committed, the copy included: nothing is hashed again
    stats = run_ingest(IngestConfig(inputs=[str(corpus), str(tmp_path / "special.txt")], output=str(out),
                                    vad="silero", diarization="none"))
    assert stats["sources_total"] == 0 and stats["sources"] == {}
    # each run's row (manifests/run_record.py): ended, ok, with its summary
    runs = [json.loads(r["stats"]) for r in read_table(out, "runs").to_pylist() if r["finished"] is not None]
    assert len(runs) == 3 and all(r["status"] == "ok" and "sources_total" in r for r in runs)


def test_remote_inputs_are_not_downloaded_again_to_be_skipped(tmp_path, monkeypatch):
    fs = fsspec.filesystem("memory")
    uris = []
    for i, data in enumerate((b"RIFF" + b"a" * 100, b"RIFF" + b"b" * 200)):
        fs.pipe(f"/voxforge-test-{os.getpid()}/corpus/{i}.wav", data)
        uris.append(f"memory:///voxforge-test-{os.getpid()}/corpus/{i}.wav")
    # committed by an earlier run (the writer's own rows: path, bytes, source_id)
    w = ShardWriter(tmp_path, "r1")
    for i, u in enumerate(uris):
        src, segs, samples = source(i, 1)
        w.add_source({**src, "path": u, "bytes": fs.size(u.removeprefix("memory://"))}, segs, samples)
    w.close()
    opens = []
    real_open = type(fs)._open
    monkeypatch.setattr(type(fs), "_open", lambda self, path, *a, **k: opens.append(path) or real_open(self, path, *a, **k))
    stats = run_ingest(IngestConfig(inputs=[f"memory:///voxforge-test-{os.getpid()}/corpus/"], output=str(tmp_path)))
    assert stats["sources_total"] == 0 and opens == []
    fs.rm(f"/voxforge-test-{os.getpid()}", recursive=True)


def test_a_second_ingest_on_the_same_output_is_refused(tmp_path):
    out = tmp_path / "out"
    # the first job's part in progress: a tar without its sources marker yet
    (out / "shards/audio").mkdir(parents=True)
    (out / "shards/audio/000000.tar").write_bytes(b"in progress")
    held = exclusive_lock(out / "manifests/ingest.lock", "test", "")
    try:
        with pytest.raises(JobLocked, match="another ingest on .* is running"):
            run_ingest(IngestConfig(inputs=[str(tmp_path)], output=str(out)))
        assert (out / "shards/audio/000000.tar").exists()  # not rolled back under the first job's feet
        p = subprocess.run([sys.executable, str(REPO / "pipeline/ingest.py"), "--input", str(tmp_path),
                            "--output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert p.returncode == 2 and "another ingest on" in p.stderr, p.stderr[-2000:]
    finally:
        held.close()
    # free again once the first job is gone (the OS drops a dead process's lock)
    exclusive_lock(out / "manifests/ingest.lock", "test", "").close()


def test_a_failed_row_is_retried_and_superseded_in_the_view(tmp_path):
    w = ShardWriter(tmp_path, "r1")
    src, _, _ = source(1, 0)
    w.add_source({**src, "status": "failed", "error": "stage_failed: /x/1.wav: decode: MemoryError", "bytes": 10},
                 [], [])
    w.add_source(*source(2, 1))
    w.close()
    w2 = ShardWriter(tmp_path, "r2")
    assert src["source_id"] not in w2.committed_ids and "/x/1.wav" not in w2.committed_sizes
    assert "/x/2.wav" in w2.committed_sizes
    w2.add_source(*source(1, 2))
    w2.close()
    con = connect(tmp_path)
    assert con.execute("SELECT path, status FROM sources ORDER BY path").fetchall() == [("/x/1.wav", "ok"),
                                                                                        ("/x/2.wav", "ok")]
    assert len(read_table(tmp_path, "sources")) == 3
