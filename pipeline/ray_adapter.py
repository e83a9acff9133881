"""The thin layer that maps the plain stages over a Ray Dataset.

Rows travel between stages as one pickled column (``row``): a source's state holds numpy
audio, nested transcripts and speaker turns that Arrow has no business re-typing.
"""

from __future__ import annotations

import pickle

import numpy as np

from pipeline.stages import batch_of, rows_of


def pack(rows: list[dict]) -> dict[str, np.ndarray]:
    return {"row": np.array([pickle.dumps(r, protocol=5) for r in rows], dtype=object)}


def unpack(batch: dict) -> list[dict]:
    return [pickle.loads(b) for b in batch["row"]]


class RayStage:
    """Ray Data callable class: builds the stage once per actor, maps packed batches."""

    def __init__(self, stage_cls, *args):
        self.stage = stage_cls(*args)

    def __call__(self, batch: dict) -> dict:
        return pack(rows_of(self.stage(batch_of(unpack(batch)))))


def build_dataset(paths: list[str], cfg, done: frozenset[str]):
    """paths -> a lazy Ray Dataset of assembled sources (one row each)."""
    import ray
    from ray.data import ActorPoolStrategy

    from pipeline.stages import Assemble, Diarize, HashAndDecode, Segment, Transcribe

    res = cfg.resources
    items = [{"row": pickle.dumps({"path": p, "status": "ok", "error": None}, protocol=5)} for p in paths]
    # one block per source (up to a cap) so that sources spread over tasks and actors
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 20_000)))

    def task(stage_cls, name, *args, batch_size=1):
        r = res[name]
        return dict(fn=RayStage, fn_constructor_args=(stage_cls, *args), batch_size=batch_size, num_cpus=r.num_cpus,
                    num_gpus=r.num_gpus or None, compute=ActorPoolStrategy(size=r.concurrency),
                    zero_copy_batch=True)

    ds = ds.map_batches(**task(HashAndDecode, "decode", cfg, done))
    ds = ds.map_batches(**task(Segment, "segment", cfg))
    # several sources per call: short files share Whisper batches (see Transcriber.transcribe_many)
    ds = ds.map_batches(**task(Transcribe, "transcribe", cfg, batch_size=cfg.asr_batch_size))
    ds = ds.map_batches(**task(Diarize, "diarize", cfg))
    ds = ds.map_batches(**task(Assemble, "assemble", cfg))
    return ds


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to a cluster (``address`` or RAY_ADDRESS, as ``ray job submit`` sets) or start a local Ray."""
    import os

    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        pp = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {"PYTHONPATH": pp, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}})
