"""The thin layer that maps the plain stages over a Ray Dataset.

Rows travel between stages as one pickled column (``row``): a source's state holds numpy
audio, nested transcripts and speaker turns that Arrow has no business re-typing.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle

import numpy as np

from pipeline.config import StageResources
from pipeline.stages import batch_of, rows_of

log = logging.getLogger("ingest")


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


# One class per actor pool, so that Ray names each pool after what it runs ("MapBatches(Transcribe
# Actor)", in its progress, warnings and process titles: ray::MapWorker(...)) instead of four
# pools of "RayStage".
class DecodeActor(RayStage):
    pass


class SegmentDiarizeActor(RayStage):
    pass


class TranscribeActor(RayStage):
    pass


class AssembleActor(RayStage):
    pass


def merged(*rs: StageResources) -> StageResources:
    """Resources of an actor that runs several stages: the largest of each setting (memory too:
    the defaults of segment and diarize are each measured on the shared actor, see
    pipeline.config)."""
    return StageResources(num_cpus=max(r.num_cpus for r in rs), num_gpus=max(r.num_gpus for r in rs),
                          concurrency=max(r.concurrency for r in rs), threads=max(r.threads for r in rs),
                          memory_mib=max(r.memory_mib for r in rs))


def sharing(cfg, *stages: str):
    """(resources, config) for one actor that runs ``stages``: the larger of each setting, seen by
    every one of them. Each stage reading its own would not do: torch's thread count is per
    process, so the actor would keep whichever stage was built last."""
    shared = merged(*(cfg.resources[s] for s in stages))
    return shared, dataclasses.replace(cfg, resources={**cfg.resources, **dict.fromkeys(stages, shared)})


def plan_pools(pools: dict[str, StageResources], memory_bytes: float | None) -> dict[str, StageResources]:
    """Each pool's resources with ``concurrency`` cut so that the memory its actors declare fits
    in ``memory_bytes`` (Ray's ``memory`` resource available to this job, summed over the nodes;
    None: unknown, nothing cut).

    The pool whose actors declare the most memory gives up an actor first, down to one each.
    Ray's scheduler would never place more than a node's memory resource either, but it would
    leave the surplus actors pending without a word; cut here, the run says why (a warning per
    reduced pool). When not even one actor per pool fits (Ray sizes its memory resource from the
    memory free when it starts, so a busy machine can have less than one actor of each stage
    needs), each pool runs one actor whose declaration is scaled down to its share of what
    there is, with a warning that an out-of-memory kill is possible: refusing to start, or
    actors pending forever, would help nobody."""
    out = dict(pools)
    if memory_bytes is None:
        return out
    need = {k: r.memory_mib * 2**20 for k, r in pools.items()}
    size = {k: r.concurrency for k, r in pools.items()}
    if sum(need.values()) > memory_bytes:
        scale = memory_bytes / sum(need.values())
        log.warning("Ray has %.0f MiB of memory for this job, less than one actor per stage declares (%s): one "
                    "actor each, declared at %.0f%%; an out-of-memory kill is possible. Use a node with more free "
                    "memory, or lower the declarations (--memory STAGE=MiB)", memory_bytes / 2**20,
                    ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in need.items()), 100 * scale)
        return {k: dataclasses.replace(r, concurrency=1, memory_mib=r.memory_mib * scale) for k, r in pools.items()}
    while sum(need[k] * n for k, n in size.items()) > memory_bytes:
        k = max((k for k in size if size[k] > 1), key=lambda k: need[k])
        size[k] -= 1
    for k, n in size.items():
        if n < pools[k].concurrency:
            log.warning("%s: %d actor(s) instead of the %d asked for: Ray has %.0f MiB of memory for this job and "
                        "each actor declares %.0f MiB (%s)", k, n, pools[k].concurrency, memory_bytes / 2**20,
                        pools[k].memory_mib, " ".join(f"--memory {s}=MiB" for s in k.split("+")))
            out[k] = dataclasses.replace(pools[k], concurrency=n)
    return out


def build_dataset(paths: list[str], cfg, done: frozenset[str], isolate: bool = False):
    """paths -> a lazy Ray Dataset of assembled sources (one row each). ``isolate``: one source
    per call and one call in flight per actor, so that an actor's death takes only the batch of
    the source that caused it (Ray Data sends an actor several tasks at once; its death fails
    them all, and each death counts against every one's max_task_retries)."""
    import ray
    from ray.data import ActorPoolStrategy

    from manifests.run_record import actor_retry_args_allowed
    from pipeline.stages import Assemble, Diarize, HashAndDecode, Segment, Transcribe

    quiet_ray_data()
    res = cfg.resources
    # a batch that has no result after max_task_retries (its actor died every time) is dropped
    # here instead of failing the run; the driver records its sources as failed (actor_died)
    ray.data.DataContext.get_current().max_errored_blocks = cfg.max_errored_blocks
    seg_res, seg_cfg = sharing(cfg, "segment", "diarize")
    pools = {"decode": res["decode"], "segment+diarize": seg_res, "transcribe": res["transcribe"],
             "assemble": res["assemble"]}
    pools = plan_pools(pools, ray.available_resources().get("memory"))
    items = [{"row": pickle.dumps({"path": p, "status": "ok", "error": None}, protocol=5)} for p in paths]
    # one block per source (up to a cap) so that sources spread over tasks and actors
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 20_000)))

    def task(actor_cls, pool: str, stage_classes, *args, batch_size=1):
        r = pools[pool]
        strategy = ActorPoolStrategy(size=r.concurrency, max_tasks_in_flight_per_actor=1 if isolate else None)
        return dict(fn=actor_cls, fn_constructor_args=(stage_classes, *args), batch_size=1 if isolate else batch_size,
                    num_cpus=r.num_cpus, num_gpus=r.num_gpus or None, compute=strategy,
                    zero_copy_batch=True, **({"memory": r.memory_mib * 2**20} if r.memory_mib else {}),
                    # Ray core's actor fault tolerance (Ray Data's own default is -1/-1: restart and
                    # retry forever, which never ends a run that has a source killing its actor).
                    # Ray 2.60 takes these only as extra **ray_remote_args, which warn as deprecated
                    # (to be removed in 2.64, with no named parameter for them yet): revisit on upgrade.
                    max_restarts=cfg.max_restarts, max_task_retries=cfg.max_task_retries)

    with actor_retry_args_allowed():
        ds = ds.map_batches(**task(DecodeActor, "decode", (HashAndDecode,), cfg, done))
        # Segment and diarize share one actor: both need pyannote, whose import alone costs ~10 s of
        # CPU per process (lightning, torchmetrics), and the diarizer reuses the segmentation scores.
        ds = ds.map_batches(**task(SegmentDiarizeActor, "segment+diarize", (Segment, Diarize), seg_cfg))
        # on a GPU several sources per call: short files share Whisper batches (Transcriber.transcribe_many)
        ds = ds.map_batches(**task(TranscribeActor, "transcribe", (Transcribe,), cfg,
                                   batch_size=cfg.transcribe_batch))
        ds = ds.map_batches(**task(AssembleActor, "assemble", (Assemble,), cfg))
    return ds


def quiet_ray_data() -> None:
    """Ray Data's console output off, ours on: without this a run prints a progress block of
    ~12 lines every 10 s (stdout is not a terminal, so Ray Data logs its progress bars) plus the
    execution plan, between our own progress lines. Its warnings and errors still show; its
    full log stays in the session's logs/ray-data directory."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # ... which then says, as a WARNING, that progress bars are off (and how to turn them on)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to a cluster (``address`` or RAY_ADDRESS, as ``ray job submit`` sets) or start a local
    Ray (manifests.run_record.start_ray) whose workers see the driver's HF_HUB_OFFLINE."""
    import os

    from manifests.run_record import start_ray

    # VOXFORGE_STAGE_FAULT*: the test fault hooks (pipeline.stages._stage_fault) on a cluster's workers
    start_ray(address, num_cpus=num_cpus or os.cpu_count(),
              env_vars={"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}, hook_prefix="VOXFORGE_STAGE_FAULT")
