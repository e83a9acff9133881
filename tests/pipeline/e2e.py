"""The end-to-end ingest of the real speech folder (plus a corpus of bad inputs), run once per session.

``e2e_ingested`` is registered in tests/conftest.py so that every test module shares the one
run (a session fixture defined in a test module would run again for each module that imports it):
tests/pipeline/test_ingest_e2e.py checks the ingest, tests/manifests/test_report.py opens its report.
It is the slow part of the suite (~38 min of audio on 2 CPU cores).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.pipeline.bad_inputs import make_bad_corpus


def run_ingest(args: list[str], timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
    p = subprocess.run([sys.executable, str(REPO / "pipeline" / "ingest.py"), *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"ingest failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


@pytest.fixture(scope="session")
def e2e_ingested(tmp_path_factory, speech_dir):
    root = tmp_path_factory.mktemp("ingest")
    bad = root / "bad"
    expected = make_bad_corpus(bad, speech_dir / "lhotse/test/fixtures/mix_cut_test/audio/storage/2412-153948-0000.flac")
    out = root / "out"
    p = run_ingest(["--input", str(speech_dir), "--input", str(bad), "--output", str(out),
                    "--shard-max-samples", "200"])
    return {"out": out, "bad": bad, "expected": expected, "stdout": p.stdout, "stderr": p.stderr, "speech": speech_dir}
