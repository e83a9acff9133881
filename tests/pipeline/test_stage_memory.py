"""Declared stage memory: config and CLI, the pool sizing, and a real Ray node with too little
memory for the requested actors (it gets fewer, and the run completes)."""

from __future__ import annotations

import logging
import shutil
import threading

import pytest

from pipeline.config import ConfigError, IngestConfig, StageResources, _default_resources
from pipeline.ingest import parse_args
from pipeline.ray_adapter import plan_pools
from tests.conftest import REPO

MIB = 2**20


def test_every_stage_declares_its_measured_memory_and_the_cli_overrides_it():
    assert all(r.memory_mib > 0 for r in _default_resources().values())
    cfg = parse_args(["--input", "x", "--output", "y", "--memory", "transcribe=3000", "--memory", "decode=0"])
    assert cfg.resources["transcribe"].memory_mib == 3000
    assert cfg.resources["decode"].memory_mib == 0  # 0: nothing declared
    assert cfg.resources["assemble"].memory_mib == _default_resources()["assemble"].memory_mib


def test_negative_memory_is_refused_with_how_to_fix_it(capsys):
    with pytest.raises(ConfigError, match="memory_mib must be >= 0"):
        StageResources(memory_mib=-1)
    with pytest.raises(SystemExit) as e:  # set after construction, as the CLI does: an argparse error
        parse_args(["--input", "x", "--output", "y", "--memory", "transcribe=-5"])
    assert e.value.code == 2 and "memory_mib must be >= 0" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="memory_mib must be >= 0"):
        IngestConfig(inputs=["x"], output="y", resources={"decode": {"memory_mib": -1}})


def pools(**conc_mem) -> dict[str, StageResources]:
    return {k: StageResources(concurrency=c, memory_mib=m) for k, (c, m) in conc_mem.items()}


def sizes(planned: dict[str, StageResources]) -> dict[str, int]:
    return {k: r.concurrency for k, r in planned.items()}


def test_pools_that_fit_keep_their_concurrency():
    p = pools(decode=(2, 100), transcribe=(4, 1000))
    assert plan_pools(p, 10_000 * MIB) == p
    assert plan_pools(p, None) == p  # memory unknown: nothing cut


def test_too_little_memory_cuts_the_largest_actors_first_and_says_why(caplog):
    p = pools(decode=(4, 100), transcribe=(4, 1000))
    with caplog.at_level(logging.WARNING, logger="ingest"):
        planned = plan_pools(p, 2_500 * MIB)
    assert sizes(planned) == {"decode": 4, "transcribe": 2}  # 4 x 100 + 2 x 1000 <= 2500
    assert planned["transcribe"].memory_mib == 1000  # the declaration itself stays
    assert "transcribe: 2 actor(s) instead of the 4 asked for" in caplog.text
    assert "--memory transcribe=MiB" in caplog.text
    assert sizes(plan_pools(p, 1_150 * MIB)) == {"decode": 1, "transcribe": 1}


def test_less_than_one_actor_per_stage_runs_one_each_scaled_down_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="ingest"):
        planned = plan_pools(pools(decode=(3, 100), transcribe=(2, 1000)), 550 * MIB)
    assert sizes(planned) == {"decode": 1, "transcribe": 1}
    assert planned["decode"].memory_mib == pytest.approx(50) and planned["transcribe"].memory_mib == pytest.approx(500)
    assert "less than one actor per stage declares" in caplog.text and "out-of-memory kill is possible" in caplog.text


@pytest.fixture
def small_ray_node():
    """A local Ray node with 4 CPUs but only 550 MiB of Ray's memory resource."""
    import ray

    ray.init(address="local", num_cpus=4, _memory=550 * MIB, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}})
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_node_with_little_memory_gets_fewer_actors_and_the_run_completes(small_ray_node, speech_dir, tmp_path):
    """4 decode actors asked for, 100 MiB each, next to 3 other pools of 100 MiB: 550 MiB hold 5
    actors, so 2 decode actors run (not 4 with 2 pending forever, nor all 7 over-packed)."""
    import ray
    from ray._private.state import actors

    from pipeline.ray_adapter import build_dataset, unpack

    src = speech_dir / "lhotse/test/fixtures/mix_cut_test/audio/storage/2412-153948-0000.flac"
    files = [shutil.copy(src, tmp_path / f"s{i}.flac") for i in range(3)]
    res = {k: StageResources(num_cpus=0.25, memory_mib=100) for k in _default_resources()}
    res["decode"] = StageResources(num_cpus=0.25, concurrency=4, memory_mib=100)
    # the cheapest models: silero VAD, no diarization (the actors still load them)
    cfg = IngestConfig(inputs=["x"], output=str(tmp_path / "out"), resources=res, vad="silero", diarization="none")
    assert ray.available_resources()["memory"] == pytest.approx(550 * MIB, rel=0.01)
    held, stop = [], threading.Event()

    def watch():  # Ray's view of the memory its actors hold, while the run goes
        while not stop.wait(0.2):
            held.append(550 * MIB - ray.available_resources().get("memory", 0))

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        rows = [r for b in build_dataset([str(f) for f in files], cfg, frozenset()).iter_batches(batch_size=1)
                for r in unpack(b)]
    finally:
        stop.set()
        t.join()
    # all pools up at once: Ray counted their declared memory as taken, 5 actors x 100 MiB
    assert max(held) == pytest.approx(500 * MIB, rel=0.02), sorted({h / MIB for h in held})
    assert sorted(r["status"] for r in rows) == ["ok"] * 3
    started = [a["ActorClassName"] for a in actors().values()]
    assert sum("DecodeActor" in n for n in started) == 2, started
    for name in ("SegmentDiarizeActor", "TranscribeActor", "AssembleActor"):
        assert sum(name in n for n in started) == 1, started


def test_segment_and_diarize_share_an_actor_that_declares_the_larger_memory():
    from pipeline.ray_adapter import sharing

    cfg = parse_args(["--input", "x", "--output", "y", "--memory", "diarize=3000", "--memory", "segment=100"])
    assert sharing(cfg, "segment", "diarize")[0].memory_mib == 3000
