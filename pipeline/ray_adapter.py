"""The thin layer that maps the plain stages over a Ray Dataset.

Rows travel between stages as one pickled column (``row``): a source's state holds numpy
audio, nested transcripts and speaker turns that Arrow has no business re-typing.
"""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np

from pipeline.config import StageResources
from pipeline.stages import batch_of, rows_of


def pack(rows: list[dict]) -> dict[str, np.ndarray]:
    return {"row": np.array([pickle.dumps(r, protocol=5) for r in rows], dtype=object)}


def unpack(batch: dict) -> list[dict]:
    return [pickle.loads(b) for b in batch["row"]]


class RayStage:
    """Ray Data callable class: builds its stages once per actor and maps packed batches
    through them in order (one stage, or a chain that shares an actor)."""

    def __init__(self, stage_classes: tuple, *args):
        self.stages = [cls(*args) for cls in stage_classes]

    def __call__(self, batch: dict) -> dict:
        b = batch_of(unpack(batch))
        for stage in self.stages:
            b = stage(b)
        return pack(rows_of(b))


def merged(*rs: StageResources) -> StageResources:
    """Resources of an actor that runs several stages: the largest of each setting."""
    return StageResources(num_cpus=max(r.num_cpus for r in rs), num_gpus=max(r.num_gpus for r in rs),
                          concurrency=max(r.concurrency for r in rs), threads=max(r.threads for r in rs))


def sharing(cfg, *stages: str):
    """(resources, config) for one actor that runs ``stages``: the larger of each setting, seen by
    every one of them. Each stage reading its own would not do: torch's thread count is per
    process, so the actor would keep whichever stage was built last."""
    shared = merged(*(cfg.resources[s] for s in stages))
    return shared, dataclasses.replace(cfg, resources={**cfg.resources, **dict.fromkeys(stages, shared)})


def build_dataset(paths: list[str], cfg, done: frozenset[str]):
    """paths -> a lazy Ray Dataset of assembled sources (one row each)."""
    import ray
    from ray.data import ActorPoolStrategy

    from pipeline.stages import Assemble, Diarize, HashAndDecode, Segment, Transcribe

    res = cfg.resources
    items = [{"row": pickle.dumps({"path": p, "status": "ok", "error": None}, protocol=5)} for p in paths]
    # one block per source (up to a cap) so that sources spread over tasks and actors
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 20_000)))

    def task(stage_classes, r: StageResources, *args, batch_size=1):
        return dict(fn=RayStage, fn_constructor_args=(stage_classes, *args), batch_size=batch_size,
                    num_cpus=r.num_cpus, num_gpus=r.num_gpus or None, compute=ActorPoolStrategy(size=r.concurrency),
                    zero_copy_batch=True)

    ds = ds.map_batches(**task((HashAndDecode,), res["decode"], cfg, done))
    # Segment and diarize share one actor: both need pyannote, whose import alone costs ~10 s of
    # CPU per process (lightning, torchmetrics), and the diarizer reuses the segmentation scores.
    ds = ds.map_batches(**task((Segment, Diarize), *sharing(cfg, "segment", "diarize")))
    # on a GPU several sources per call: short files share Whisper batches (Transcriber.transcribe_many)
    ds = ds.map_batches(**task((Transcribe,), res["transcribe"], cfg, batch_size=cfg.transcribe_batch))
    ds = ds.map_batches(**task((Assemble,), res["assemble"], cfg))
    return ds


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to a cluster (``address`` or RAY_ADDRESS, as ``ray job submit`` sets) or start a local
    Ray (manifests.run_record.start_ray) whose workers see the driver's HF_HUB_OFFLINE."""
    import os

    from manifests.run_record import start_ray

    start_ray(address, num_cpus=num_cpus or os.cpu_count(),
              env_vars={"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")})
