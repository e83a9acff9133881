"""`ray start --head`, `ray job submit --working-dir . -- python pipeline/ingest.py ...`, check, stop."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from manifests.views import connect
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ingest_as_a_ray_job_on_a_local_head(tmp_path, speech_dir):
    bindir = Path(sys.executable).parent
    ray = bindir / "ray"
    if not ray.exists():
        pytest.skip("ray CLI not installed next to the interpreter")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    port, dash = free_port(), free_port()
    tmp_ray = Path("/tmp") / f"rayt{os.getpid()}"  # short: Ray's socket paths have a length limit
    start = subprocess.run([str(ray), "start", "--head", f"--port={port}", f"--dashboard-port={dash}",
                            "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--num-cpus=2",
                            f"--temp-dir={tmp_ray}", "--disable-usage-stats"],
                           env=env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stderr[-3000:]
    out = tmp_path / "out"
    try:
        files = [speech_dir / "lhotse/test/fixtures/mix_cut_test/audio/storage/2412-153948-0000.flac",
                 speech_dir / "pocketsphinx/test/data/cards/001.wav"]
        lst = tmp_path / "files.txt"
        lst.write_text("\n".join(map(str, files)))
        job = subprocess.run(
            [str(ray), "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(REPO),
             "--", "python", "pipeline/ingest.py", "--input", str(lst), "--output", str(out)],
            env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
        assert job.returncode == 0, (job.stdout[-4000:], job.stderr[-4000:])
        assert "succeeded" in job.stdout.lower()
        assert "== ingest summary ==" in job.stdout
        con = connect(out)
        assert con.execute("SELECT count(*) FROM sources WHERE status = 'ok'").fetchone()[0] == 2
        assert con.execute("SELECT count(*) FROM segments WHERE kept").fetchone()[0] >= 2
        assert len(list((out / "shards/audio").glob("*.tar"))) == 1
    finally:
        stop_head(tmp_ray)
        shutil.rmtree(tmp_ray, ignore_errors=True)


def stop_head(temp_dir: Path) -> None:
    """Stop only this test's head: `ray stop` would kill every Ray on the machine."""
    import psutil

    mine = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(temp_dir) in a for a in (p.info["cmdline"] or [])):
                mine.append(p)
        except psutil.Error:
            pass
    for p in mine:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(mine, timeout=30)
