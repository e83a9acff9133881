"""The ingest on a real multi-node Ray cluster (a head and two worker nodes on this machine)
when a worker node is lost under a batch in flight, and when a stage actor's process dies:
the job finishes, every source and every segment key exactly once, the same keys as an
uninterrupted run, and a source that kills its actor on every attempt ends ``failed``
(``actor_died``) after the configured retries (README "Faults and retries")."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from manifests.views import connect
from tests.conftest import REPO
from tests.ray_cluster import local_cluster, lose_node_under, wait_for

FAST = ["--vad", "silero", "--diarization", "none", "--no-report"]  # no pyannote import: the fastest real stages
FILES = [  # 6 short files, ~22 s of speech; one source per part (--shard-max-samples 1)
    "lhotse/test/fixtures/ljspeech/storage/LJ002-0020.wav",
    "lhotse/test/fixtures/ljspeech/storage/LJ002-0035.wav",
    "lhotse/test/fixtures/mix_cut_test/audio/storage/2412-153948-0000.flac",
    "pocketsphinx/test/data/cards/001.wav",
    "pocketsphinx/test/data/cards/002.wav",
    "deepspeech/native_client/dotnet/DeepSpeechConsole/arctic_a0024.wav",
]


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(n_workers=2) as c:
        yield c


@pytest.fixture(scope="module")
def file_list(tmp_path_factory, speech_dir):
    lst = tmp_path_factory.mktemp("cluster_in") / "files.txt"
    lst.write_text("".join(f"{speech_dir / f}\n" for f in FILES))
    return lst


def start(cluster, file_list, out, *extra, **env) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1", **env}
    return subprocess.Popen([sys.executable, str(REPO / "pipeline/ingest.py"), "--input", str(file_list),
                             "--output", str(out), "--address", cluster.address, "--shard-max-samples", "1",
                             *FAST, *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-8000:]
    return out


def result(out) -> tuple[dict[str, tuple[str, str | None]], dict[str, set[str]]]:
    """({path: (status, error)}, {path: kept segment keys})."""
    con = connect(out)
    sources = {p: (s, e) for p, s, e in con.execute("SELECT path, status, error FROM sources").fetchall()}
    keys: dict[str, set[str]] = {p: set() for p in sources}
    for p, k in con.execute("SELECT source_path, key FROM segments WHERE kept").fetchall():
        keys[p].add(k)
    return sources, keys


def check_exactly_once(out, n_sources: int) -> None:
    """Each source one row (a failed one too), no key twice, the tars hold exactly the kept
    segments, nothing uncommitted left (as tests/pipeline/test_kill_resume.py checks)."""
    import webdataset as wds

    con = connect(out)
    assert con.execute("SELECT count(*), count(DISTINCT path) FROM sources").fetchone() == (n_sources, n_sources)
    ids = [i for (i,) in con.execute("SELECT source_id FROM sources WHERE source_id IS NOT NULL").fetchall()]
    assert len(ids) == len(set(ids))
    assert con.execute("SELECT count(*) - count(DISTINCT key) FROM segments").fetchone()[0] == 0
    kept = {k for (k,) in con.execute("SELECT key FROM segments WHERE kept").fetchall()}
    in_tars = [s["__key__"] for (path,) in con.execute("SELECT path FROM shards").fetchall()
               for s in wds.WebDataset(str(out / path), shardshuffle=False)]
    assert sorted(in_tars) == sorted(kept)
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


@pytest.fixture(scope="module")
def reference(cluster, file_list, tmp_path_factory):
    """An uninterrupted run on the same cluster and inputs."""
    out = tmp_path_factory.mktemp("cluster_ref") / "out"
    finish(start(cluster, file_list, out))
    sources, keys = result(out)
    assert {s for s, _ in sources.values()} == {"ok"} and len(sources) == len(FILES)
    assert sum(map(len, keys.values())) >= 5
    return keys


def test_ingest_survives_losing_a_worker_node_under_a_batch_in_flight(cluster, file_list, reference, tmp_path):
    """The transcribe actor holds the 4th source (the hook) until its worker node is removed
    and a fresh one added; Ray restarts the actors and resubmits their batches there."""
    out, marks = tmp_path / "out", tmp_path / "marks"
    marks.mkdir()
    proc = start(cluster, file_list, out, VOXFORGE_STAGE_FAULT="transcribe:001.wav:hold",
                 VOXFORGE_STAGE_FAULT_DIR=str(marks))
    try:
        wait_for(marks / "held-transcribe-001.wav", proc)
        lose_node_under(cluster, marks / "held-transcribe-001.wav", marks / "release")
        log = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    sources, keys = result(out)
    assert {p: s for p, (s, _) in sources.items()} == dict.fromkeys(reference, "ok"), log[-4000:]
    assert keys == reference
    check_exactly_once(out, len(FILES))
    # Ray's own retry (max_task_retries) recovered the batch, not the driver's isolation pass
    assert "once more in isolation" not in log, log[-4000:]


@pytest.mark.slow
def test_a_crashing_actor_is_restarted_and_a_source_that_always_kills_it_ends_failed(
        cluster, file_list, reference, tmp_path):
    """transcribe dies once on LJ002-0035 (restarted, batch retried: all its keys come out);
    segment dies on every attempt on 002.wav: after 1 + max_task_retries attempts in the first
    pass and as many in the isolation pass, 002.wav ends failed (actor_died), the rest as in the
    uninterrupted run."""
    out, marks = tmp_path / "out", tmp_path / "marks"
    marks.mkdir()
    proc = start(cluster, file_list, out, "--max-task-retries", "1",
                 VOXFORGE_STAGE_FAULT="transcribe:LJ002-0035.wav:exit_once,segment:002.wav:exit",
                 VOXFORGE_STAGE_FAULT_DIR=str(marks))
    log = finish(proc)
    poisoned = next(p for p in reference if p.endswith("/002.wav"))
    sources, keys = result(out)
    status, error = sources.pop(poisoned)
    assert status == "failed" and error.startswith(f"actor_died: {poisoned}:"), (status, error)
    assert {p: s for p, (s, _) in sources.items()} == {p: "ok" for p in reference if p != poisoned}, log[-4000:]
    assert keys.pop(poisoned) == set()
    assert keys == {p: k for p, k in reference.items() if p != poisoned}
    check_exactly_once(out, len(FILES))
    attempts = list(marks.glob("segment-*.attempts"))
    assert len(attempts) == 1 and len(attempts[0].read_text().split()) == 2 * (1 + 1)
    assert len(list(marks.glob("transcribe-*"))) == 1  # the once-only crash did happen
    assert "once more in isolation" in log
