"""Resource heuristics of the tokenize job: how many encoder actors, with which resources.

Both functions that decide take the job's ``TokenizeConfig`` (``tokenize/run.py``) and return the
resolved numbers as a dict (``device, num_actors, gpus_per_actor, cpus_per_actor, threads,
batches_per_call``), which the job logs and stores in its ``runs`` row.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from codec.tokenizing import TokenizeConfigError

log = logging.getLogger(__name__)

# One reader (FLAC decoding, ~2400 s of audio per s per CPU) keeps about 8 CPU encoders of the
# tiny codec (~300 s/s each, bench/tokenize_job.py) fed: one reader's CPUs per 9 CPUs.
CPUS_PER_READER = 9
# A reader's memory besides its batches. Ray Data warns when a task's peak passes 80 % of its
# reservation; with torch imported (before codec/__init__.py went lazy) readers peaked at ~410 MiB.
READER_BASE_MIB = 320


def default_cpu_actors(cpus: float, cpus_per_actor: float, read_cpus: float,
                       memory: float | None = None, actor_memory: float | None = None) -> int:
    """CPU encoder actors that fill a cluster of ``cpus`` logical CPUs, leaving room for readers:
    ``read_cpus`` per started group of 9 CPUs (2 CPUs -> 1, 16 -> 14, 64 -> 56). With ``memory``
    (the cluster's, bytes) and ``actor_memory`` (one actor's, bytes), no more than fit in it. At least 1."""
    readers = max(1, math.ceil(cpus / CPUS_PER_READER))
    n = int((cpus - readers * read_cpus + 1e-9) // cpus_per_actor)
    if memory and actor_memory:
        n = min(n, int(memory // actor_memory))
    return max(1, n)


def cpu_actor_memory(weights_bytes: int, batch_seconds: float) -> int:
    """Bytes one CPU encoder actor peaks at, roughly: ~512 MiB of torch and Ray, the codec's
    weights with a 25 % margin, and activations per second of batch. Measured peak RSS: 697 MiB
    for the tiny codec (31 MiB of weights) on a 120 s batch, 1.9 GiB for voxtral (1.2 GiB) on 20 s."""
    per_second = max(1.5 * 2**20, weights_bytes / 140)
    return int(512 * 2**20 + 1.25 * weights_bytes + batch_seconds * per_second)


def resolve_resources(cfg) -> dict:
    """Device, actors and per-actor resources from the options and the (started) Ray cluster."""
    import ray

    res = ray.cluster_resources()
    gpus = float(res.get("GPU", 0))
    cpus = float(res.get("CPU", 0))
    device = cfg.device
    if device == "auto":
        device = "cuda" if gpus > 0 else "cpu"
    if device == "cuda" and gpus <= 0:
        raise TokenizeConfigError("--device cuda but the Ray cluster has no GPU; use --device cpu")
    gpa = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (1.0 if device == "cuda" else 0.0)
    if device == "cuda" and gpa <= 0:
        raise TokenizeConfigError("--device cuda needs --gpus-per-actor > 0")
    if cfg.num_actors is not None:
        n = cfg.num_actors
    elif device == "cuda":
        n = max(1, int(gpus // gpa))
    else:
        from codec.speech_codec import WEIGHTS_FILE

        weights = Path(cfg.codec) / WEIGHTS_FILE
        actor_memory = cpu_actor_memory(weights.stat().st_size, cfg.batch_seconds) if weights.is_file() else None
        n = default_cpu_actors(cpus, cfg.cpus_per_actor, cfg.read_cpus, res.get("memory"), actor_memory)
        if n < default_cpu_actors(cpus, cfg.cpus_per_actor, cfg.read_cpus):
            log.info("%d CPU encoder actors: as many as %.1f GiB of cluster memory holds at ~%.1f GiB each "
                     "(--num-actors overrides)", n, res["memory"] / 2**30, actor_memory / 2**30)
    if device == "cuda" and n * gpa > gpus + 1e-9:
        log.warning("%d actors x %.2f GPU > %.0f GPUs in the cluster: some actors will wait", n, gpa, gpus)
    need = n * cfg.cpus_per_actor + cfg.read_cpus
    if need > cpus + 1e-9:
        # Ray would start the actors and then never schedule a reader: the job would hang.
        raise TokenizeConfigError(
            f"{n} encoder actors x {cfg.cpus_per_actor:g} CPU + {cfg.read_cpus:g} CPU for a reader = {need:g} CPUs, "
            f"the cluster has {cpus:g}: lower --num-actors, --cpus-per-actor or --read-cpus "
            f"(they are Ray's logical CPUs; --threads sets real threads)"
        )
    threads = cfg.threads or max(1, int(round(cfg.cpus_per_actor)))
    return {"device": device, "num_actors": n, "gpus_per_actor": gpa, "cpus_per_actor": cfg.cpus_per_actor,
            "threads": threads, "cluster_cpus": cpus, "cluster_gpus": gpus,
            "batches_per_call": cfg.batches_per_call or (4 if device == "cuda" else 1)}


def local_resources(cfg) -> dict:
    """The same for the local engine: one encoder in this process, on CUDA if torch sees one."""
    import torch

    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TokenizeConfigError("--device cuda but torch sees no CUDA device; use --device cpu")
    threads = cfg.threads or max(1, int(round(cfg.cpus_per_actor)))
    return {"device": device, "num_actors": 1, "gpus_per_actor": 1.0 if device == "cuda" else 0.0,
            "cpus_per_actor": cfg.cpus_per_actor, "threads": threads, "engine": "local",
            "batches_per_call": cfg.batches_per_call or (4 if device == "cuda" else 1)}
