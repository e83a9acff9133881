"""A run killed with SIGKILL at any point, restarted with the same command, finishes the
work: every source exactly once, no duplicate keys, no partial file readable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import webdataset as wds

from manifests.views import connect
from tests.conftest import REPO
from tests.pipeline.e2e import run_ingest

pytestmark = pytest.mark.slow

FILES = [
    "lhotse/test/fixtures/ljspeech/storage/LJ002-0020.wav",
    "lhotse/test/fixtures/ljspeech/storage/LJ002-0035.wav",
    "lhotse/test/fixtures/mix_cut_test/audio/storage/2412-153948-0000.flac",
    "pocketsphinx/test/data/cards/001.wav",
    "pocketsphinx/test/data/cards/002.wav",
    "deepspeech/native_client/dotnet/DeepSpeechConsole/arctic_a0024.wav",
    "mfa/tests/data/wav/mfa_breaths.flac",
    "mfa/tests/data/wav/mfa_apex.flac",
]


def check_exactly_once(out, n_sources):
    con = connect(out)
    assert con.execute("SELECT count(*), count(DISTINCT source_id) FROM sources").fetchone() == (n_sources, n_sources)
    assert con.execute("SELECT count(*) - count(DISTINCT key) FROM segments").fetchone()[0] == 0
    kept = {k for (k,) in con.execute("SELECT key FROM segments WHERE kept").fetchall()}
    in_tars = []
    for (path,) in con.execute("SELECT path FROM shards").fetchall():
        in_tars += [s["__key__"] for s in wds.WebDataset(str(out / path), shardshuffle=False)]
    assert sorted(in_tars) == sorted(kept)
    # nothing half-written or uncommitted is left where a reader looks
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert not leftovers
    tars = {p.stem for p in (out / "shards/audio").glob("*.tar")}
    assert tars == {r[0] for r in con.execute("SELECT shard FROM shards").fetchall()}


@pytest.fixture
def file_list(tmp_path, speech_dir):
    lst = tmp_path / "files.txt"
    lst.write_text("\n".join(str(speech_dir / f) for f in FILES) + "\n")
    return lst


# every commit step is covered in-process by tests/pipeline/test_writer.py; here the whole job
# is killed at the riskiest point (tar in place, no manifest yet) and from outside
@pytest.mark.parametrize("point", ["after_tar:1"])
def test_kill_inside_a_commit_then_resume(tmp_path, file_list, point):
    out = tmp_path / "out"
    args = ["--input", str(file_list), "--output", str(out), "--shard-max-samples", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VOXFORGE_FAULT": point}
    p = subprocess.run([sys.executable, str(REPO / "pipeline/ingest.py"), *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    run_ingest(args)
    check_exactly_once(out, len(FILES))


def test_sigkill_from_outside_mid_run_then_resume(tmp_path, file_list):
    out = tmp_path / "out"
    args = ["--input", str(file_list), "--output", str(out), "--shard-max-samples", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, str(REPO / "pipeline/ingest.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    # kill once some, not all, work is committed
    while time.time() < deadline and not (out / "manifests/sources/000001.parquet").exists():
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list((out / "manifests/sources").glob("*.parquet")))
    assert 0 < done_before
    run_ingest(args)
    check_exactly_once(out, len(FILES))
