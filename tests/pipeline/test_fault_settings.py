"""Fast checks of the fault settings and hooks (no Ray): the retry settings are validated, and
the stage fault hook's modes do what tests/pipeline/test_cluster_faults.py relies on."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from manifests.fault_hooks import hold_until_released
from pipeline.config import ConfigError, IngestConfig
from pipeline.errors import ActorDied
from pipeline.stages import _stage_fault
from tests.conftest import REPO


def cfg(**kw) -> IngestConfig:
    return IngestConfig(inputs=["x"], output="x", **kw)


def test_retry_settings_are_validated_with_a_way_out():
    c = cfg()
    assert (c.max_restarts, c.max_task_retries, c.max_errored_blocks) == (-1, 3, -1)
    with pytest.raises(ConfigError, match="--max-task-retries must be >= 0"):
        cfg(max_task_retries=-1)  # Ray's "forever" would never end a run with a poisoned source
    with pytest.raises(ConfigError, match="needs --max-restarts != 0"):
        cfg(max_restarts=0, max_task_retries=2)
    with pytest.raises(ConfigError, match=">= 0, or -1"):
        cfg(max_errored_blocks=-2)
    assert cfg(max_restarts=0, max_task_retries=0).max_restarts == 0


def test_actor_died_is_a_failed_source_with_its_reason():
    e = ActorDied("/d/a.wav", "no result")
    assert (e.status, str(e)) == ("failed", "actor_died: /d/a.wav: no result")


def test_fault_hook_modes(tmp_path, monkeypatch):
    monkeypatch.setenv("VOXFORGE_STAGE_FAULT", "segment:a.wav,transcribe:b.wav:hold,decode:c.wav:nope")
    monkeypatch.setenv("VOXFORGE_STAGE_FAULT_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="injected fault"):
        _stage_fault("segment", "/d/a.wav")
    _stage_fault("decode", "/d/a.wav")  # other stage, other file: nothing
    (tmp_path / "release").touch()
    _stage_fault("transcribe", "/d/b.wav")  # already released: returns at once
    with pytest.raises(ValueError, match="unknown mode 'nope'"):
        _stage_fault("decode", "/d/c.wav")


def test_exit_once_ends_the_process_only_on_the_first_attempt(tmp_path):
    code = textwrap.dedent("""
        from pipeline.stages import _stage_fault
        _stage_fault("segment", "/d/a.wav")
        _stage_fault("segment", "/d/other.wav")
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "VOXFORGE_STAGE_FAULT": "segment:a.wav:exit_once",
           "VOXFORGE_STAGE_FAULT_DIR": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode for _ in range(2)]
    assert runs == [1, 0]


def test_hold_announces_its_pid_and_waits_for_release(tmp_path):
    import threading

    t = threading.Thread(target=hold_until_released, args=(str(tmp_path), "x", 60.0))
    t.start()
    held = tmp_path / "held-x"
    for _ in range(100):
        if held.exists():
            break
        t.join(0.05)
    assert held.read_text() == str(os.getpid()) and t.is_alive()
    (tmp_path / "release").touch()
    t.join(5)
    assert not t.is_alive()
