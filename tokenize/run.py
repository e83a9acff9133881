"""Tokenize job: audio shards -> 12.5 Hz semantic/acoustic token shards (DESIGN.md §6).

    python tokenize/run.py --input OUT --codec CKPT_DIR [--batch-seconds S] [--device cpu|cuda]
    ray job submit --working-dir . -- python tokenize/run.py --input /shared/OUT --codec /shared/ckpt

Reads the committed audio shards of an ingest output (``OUT/manifests/shards``), encodes
them with the codec in an actor pool (one codec per GPU, or CPU actors) and writes
``OUT/shards/tokens/<codec_id>/NNNNNN.tar`` + ``OUT/manifests/tokens/<codec_id>-NNNNNN.parquet``
(one token shard per audio shard, same sample order), plus a ``runs`` row.
Rerunning the same command resumes: committed shards are skipped, a tar left without its
manifest part by a killed run is deleted and redone. See docs/tokenize.md.

This folder is not a package (no ``__init__.py``: a package named ``tokenize`` would
shadow the standard library). The reusable parts are ``codec/batching.py`` (reading,
bucketing, encoding) and ``manifests/tokens.py`` (token shards, commit protocol); this
script is the thin Ray Data wiring and the driver loop that commits shards.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    # Run as a file, only tokenize/ is on sys.path: make codec/ and manifests/ importable
    # from a plain checkout (e.g. `ray job submit --working-dir .` without pip install).
    sys.path.insert(1, str(REPO))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import UTC, datetime  # noqa: E402

log = logging.getLogger("tokenize.run")

FAULT_ENV = "VOXFORGE_TOKENIZE_FAULT"  # test hook: "after_tar:N" / "after_commit:N" -> SIGKILL self


class TokenizeConfigError(ValueError):
    """An invalid option; the message says how to fix it."""


@dataclass
class TokenizeConfig:
    """Resolved configuration of one tokenize run (logged, and stored in its ``runs`` row).

    Units: seconds of audio for ``batch_seconds``; Ray resource units for cpus/gpus.
    """

    input: str  # ingest output directory (holds shards/audio and manifests/)
    codec: str  # codec checkpoint directory (Codec.save)
    batch_seconds: float = 120.0  # padded audio per encoder batch
    max_batch_items: int = 256  # utterances per encoder batch at most
    max_padding: float = 0.25  # fraction of an utterance that padding may add, at most
    batches_per_call: int | None = None  # encoder batches per actor call; default 4 on cuda (copies
    # overlap compute inside a call), 1 on cpu (nothing to overlap; a batch goes out as soon as read)
    device: str = "auto"  # auto (cuda if the cluster has GPUs) | cpu | cuda
    precision: str = "auto"  # auto (bf16 on cuda, fp32 on cpu) | bf16 | fp32
    num_actors: int | None = None  # encoder actors; default: GPUs / gpus_per_actor, or on CPU
    # the cluster's CPUs less the readers' (default_cpu_actors)
    gpus_per_actor: float | None = None  # default 1 on cuda (fractions share a GPU)
    cpus_per_actor: float = 1.0
    threads: int | None = None  # torch threads per CPU actor; default: cpus_per_actor
    read_cpus: float = 1.0  # CPUs reserved per shard reader task (FLAC decoding)
    shards: list[str] | None = None  # only these shard names (default: all committed audio shards)
    ray_address: str | None = None  # default: $RAY_ADDRESS, else a local Ray
    object_store_mb: int | None = 1024  # local Ray only
    progress_bars: bool = False
    engine: str = "ray"  # ray (the job) | local (one process: a reader thread + one encoder; no Ray)
    report: bool = True  # rebuild OUT/report.html when the run ends (manifests.report; a few seconds)
    # faults (docs/tokenize.md "Resume and faults"): Ray restarts an encoder actor whose process
    # died (a crash, an OOM kill, a lost node; -1: always) and resubmits its batches up to
    # max_task_retries times; a batch still without a result is dropped (up to max_errored_blocks,
    # -1: any number, 0: end the run) and its shard is not committed (exit status 1; a rerun redoes it)
    max_restarts: int = -1
    max_task_retries: int = 3
    max_errored_blocks: int = -1
    resolved: dict = field(default_factory=dict)  # filled by the job: codec_id, actors, device...

    def __post_init__(self):
        if not (Path(self.input) / "manifests").is_dir():
            raise TokenizeConfigError(
                f"--input {self.input}: no manifests/ directory; point it at an ingest output "
                f"(python pipeline/ingest.py --input RAW --output OUT)"
            )
        if not Path(self.codec).is_dir():
            raise TokenizeConfigError(f"--codec {self.codec}: not a directory; give a checkpoint written by Codec.save()")
        if not self.batch_seconds > 0:
            raise TokenizeConfigError(f"--batch-seconds must be > 0, got {self.batch_seconds}")
        if not 0 <= self.max_padding < 1:
            raise TokenizeConfigError(f"--max-padding must be in [0, 1), got {self.max_padding}")
        if self.max_batch_items < 1 or (self.batches_per_call is not None and self.batches_per_call < 1):
            raise TokenizeConfigError("--max-batch-items and --batches-per-call must be >= 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise TokenizeConfigError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise TokenizeConfigError(f"--precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.num_actors is not None and self.num_actors < 1:
            raise TokenizeConfigError(f"--num-actors must be >= 1, got {self.num_actors}")
        if self.gpus_per_actor is not None and not (0 <= self.gpus_per_actor):
            raise TokenizeConfigError(f"--gpus-per-actor must be >= 0, got {self.gpus_per_actor}")
        if self.device == "cpu" and self.gpus_per_actor:
            raise TokenizeConfigError("--device cpu with --gpus-per-actor > 0: drop one of the two")
        if self.cpus_per_actor <= 0 or self.read_cpus <= 0:
            raise TokenizeConfigError("--cpus-per-actor and --read-cpus must be > 0")
        if self.threads is not None and self.threads < 1:
            raise TokenizeConfigError(f"--threads must be >= 1, got {self.threads}")
        if self.engine not in ("ray", "local"):
            raise TokenizeConfigError(f"--engine must be ray or local, got {self.engine!r}")
        if self.engine == "local" and (self.num_actors or 1) > 1:
            raise TokenizeConfigError("--engine local runs one encoder: drop --num-actors or use --engine ray")
        if self.max_restarts < -1 or self.max_errored_blocks < -1:
            raise TokenizeConfigError(f"--max-restarts and --max-errored-blocks are counts >= 0, or -1 for no "
                                      f"limit; got {self.max_restarts}, {self.max_errored_blocks}")
        if self.max_task_retries < 0:
            raise TokenizeConfigError(f"--max-task-retries must be >= 0 (-1, retry forever, would never end a run "
                                      f"whose batch kills its actor every time), got {self.max_task_retries}")
        if self.max_restarts == 0 and self.max_task_retries > 0:
            raise TokenizeConfigError("--max-task-retries > 0 needs --max-restarts != 0 (a retry runs on the "
                                      "restarted actor)")
        if self.ray_address is None:
            self.ray_address = os.environ.get("RAY_ADDRESS") or None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


# --------------------------------------------------------------------------------------
# Ray


def init_ray(cfg: TokenizeConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    if cfg.ray_address:
        log.info("connecting to Ray at %s", cfg.ray_address)
        # the encoder's test hook reaches a cluster's workers only this way (they are started by
        # the cluster's raylets, not from this process's environment)
        hooks = {k: v for k, v in os.environ.items() if k.startswith("VOXFORGE_ENCODE_FAULT")}
        ray.init(address=cfg.ray_address, log_to_driver=True, **({"runtime_env": {"env_vars": hooks}} if hooks else {}))
        return
    # Local Ray: workers inherit the environment, so the repo root on PYTHONPATH makes
    # codec/ and manifests/ importable there too without a pip install.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    kw = {}
    if cfg.object_store_mb:
        kw["object_store_memory"] = int(cfg.object_store_mb) * 1024 * 1024
    log.info("starting a local Ray (no RAY_ADDRESS given)")
    ray.init(include_dashboard=False, **kw)


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


def resolve_resources(cfg: TokenizeConfig) -> dict:
    """Device, actors and per-actor resources from the options and the cluster."""
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


def build_dataset(cfg: TokenizeConfig, todo: list[tuple[str, str]], info, rr: dict):
    """The Ray Data pipeline: shard list -> read+bucket (tasks) -> encode (actor pool)."""
    import ray

    from codec.batching import BatchingConfig, EncoderConfig, EncodeStage, read_stage

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = False  # the driver puts batches back in order
    ctx.enable_progress_bars = cfg.progress_bars
    ctx.max_errored_blocks = cfg.max_errored_blocks  # a dropped batch leaves its shard uncommitted
    bcfg = BatchingConfig(batch_seconds=cfg.batch_seconds, max_items=cfg.max_batch_items, max_padding=cfg.max_padding,
                          sample_rate=info.sample_rate, samples_per_frame=info.samples_per_frame)
    ecfg = EncoderConfig(codec_dir=str(Path(cfg.codec).resolve()), device=rr["device"], precision=cfg.precision,
                         threads=rr["threads"] if rr["device"] == "cpu" else None)
    items = [{"shard": s, "path": p} for s, p in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # One task per shard; a generator, so the shard's batches stream out as they are decoded.
    # A reader process holds a few decoded batches (int16) on top of its imports (Ray, pyarrow,
    # soundfile: no torch, see codec/__init__.py). Reserving that memory also makes its remote
    # args differ from the encoder's, so Ray Data does not fuse the reader into the encoder
    # actors (decoding there would stall the GPU).
    read_memory = int(4 * cfg.batch_seconds * info.sample_rate * 2 + READER_BASE_MIB * 2**20)
    ds = ds.map_batches(read_stage, fn_kwargs={"config": bcfg}, batch_size=1, batch_format="pyarrow",
                        num_cpus=cfg.read_cpus, memory=read_memory)
    ds = ds.map_batches(
        EncodeStage,
        fn_constructor_kwargs={"config": ecfg, "expected_codec_id": info.codec_id},
        batch_size=rr["batches_per_call"],
        batch_format="pyarrow",
        num_gpus=rr["gpus_per_actor"] if rr["device"] == "cuda" else 0,
        num_cpus=cfg.cpus_per_actor,
        compute=ray.data.ActorPoolStrategy(size=rr["num_actors"]),
        # Ray core's actor fault tolerance (Ray Data's default, -1/-1, retries forever); extra
        # **ray_remote_args, deprecated in Ray 2.60 (see pipeline/ray_adapter.py)
        max_restarts=cfg.max_restarts,
        max_task_retries=cfg.max_task_retries,
    )
    return ds


def ray_token_batches(cfg: TokenizeConfig, todo, info, rr: dict):
    """TokenBatches from the Ray Data pipeline, in completion order."""
    from codec.batching import TokenBatch

    ds = build_dataset(cfg, todo, info, rr)
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
        for row in table.to_pylist():
            yield TokenBatch.from_row(row)


def local_resources(cfg: TokenizeConfig) -> dict:
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


def local_token_batches(cfg: TokenizeConfig, todo, info, rr: dict):
    """The same stages without Ray: one reader thread feeds one encoder in this process
    (a machine without Ray, a quick CPU run, the GPU benchmark)."""
    import queue
    import threading

    from codec.batching import (
        AudioBatch,
        AudioShardReader,
        BatchingConfig,
        EncoderConfig,
        ShardReadError,
        TokenEncoder,
    )

    bcfg = BatchingConfig(batch_seconds=cfg.batch_seconds, max_items=cfg.max_batch_items, max_padding=cfg.max_padding,
                          sample_rate=info.sample_rate, samples_per_frame=info.samples_per_frame)
    enc = TokenEncoder(EncoderConfig(codec_dir=str(Path(cfg.codec).resolve()), device=rr["device"],
                                     precision=cfg.precision, threads=rr["threads"] if rr["device"] == "cpu" else None))
    if enc.codec_id != info.codec_id:
        raise TokenizeConfigError(f"codec loads as {enc.codec_id}, expected {info.codec_id}")
    q: queue.Queue = queue.Queue(maxsize=2 * rr["batches_per_call"])
    stop = threading.Event()
    done = object()

    def produce():
        reader = AudioShardReader(bcfg)
        try:
            for shard, path in todo:
                try:
                    for b in reader.batches(path, shard):
                        while not stop.is_set():
                            try:
                                q.put(b, timeout=0.5)
                                break
                            except queue.Full:
                                continue
                        if stop.is_set():
                            return
                except ShardReadError as e:
                    q.put(AudioBatch(shard=shard, batch_index=0, n_batches=1, shard_error=str(e)))
        except BaseException as e:  # surfaced in the consumer
            q.put(e)
        finally:
            q.put(done)

    t = threading.Thread(target=produce, name="shard-reader", daemon=True)
    t.start()
    try:
        buf = []
        while True:
            item = q.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            buf.append(item)
            if len(buf) >= rr["batches_per_call"]:
                yield from enc(buf)
                buf = []
        if buf:
            yield from enc(buf)
    finally:
        stop.set()


# --------------------------------------------------------------------------------------
# Driver


def _fault_hook():
    """Test hook: ``VOXFORGE_TOKENIZE_FAULT=after_tar:N`` SIGKILLs this process right after
    the N-th token tar is written and before its manifest part (the worst moment);
    ``after_commit:N`` right after the N-th commit."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return lambda point: None
    point_name, _, n = spec.partition(":")
    count = {"n": 0}
    limit = int(n or 1)

    def hit(point: str):
        if point == point_name:
            count["n"] += 1
            if count["n"] >= limit:
                log.warning("%s=%s: killing this process (SIGKILL) at %s", FAULT_ENV, spec, point)
                logging.shutdown()
                os.kill(os.getpid(), signal.SIGKILL)

    return hit


def _lock_codec_tree(out: str, codec_id: str):
    """An exclusive lock per (output, codec): a second job would delete the first one's
    written-but-not-yet-committed tar at start-up. The OS drops it when the process dies."""
    from manifests.locks import JobLocked, exclusive_lock

    try:
        return exclusive_lock(Path(out) / "shards" / "tokens" / f".{codec_id}.lock",
                              f"tokenize job with codec {codec_id} on {out}",
                              "wait for it to finish, or give this one another --input")
    except JobLocked as e:
        raise TokenizeConfigError(str(e)) from e


def committed_audio_shards(out: str) -> list[tuple[str, str]]:
    """(shard, absolute tar path) of every committed audio shard, by shard name."""
    from manifests.store import read_table

    t = read_table(out, "shards", columns=["shard", "path"])
    seen: dict[str, str] = {}
    for s, p in zip(t["shard"].to_pylist(), t["path"].to_pylist()):
        path = Path(p)
        if not path.is_absolute():
            path = Path(out) / path
        seen[str(s)] = str(path)
    return sorted(seen.items())


def versions(codec_id: str) -> dict:
    import importlib.metadata as md

    v = {"python": platform.python_version(), "codec_id": codec_id}
    for pkg in ("torch", "ray", "numpy", "pyarrow", "soundfile"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            v[pkg] = None
    try:
        v["git"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                  timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        v["git"] = None
    return v


@dataclass
class Stats:
    shards_total: int = 0
    shards_skipped: int = 0  # already committed for this codec_id
    shards_done: int = 0
    shards_failed: int = 0
    uncommitted_removed: int = 0
    samples: int = 0
    samples_failed: int = 0
    failed_by_reason: dict = field(default_factory=dict)
    audio_seconds: float = 0.0
    frames: int = 0
    padded_seconds: float = 0.0
    encode_seconds: float = 0.0  # summed over actors
    token_bytes: int = 0
    wall_seconds: float = 0.0  # pipeline: from dataset start to last commit
    # Encoder-side clock (time.time() when each batch was encoded): the span from the first batch
    # any encoder finished to the last, and the audio of the batches after that first one, give
    # the rate once actors are up. Driver-side arrival times cannot: Ray Data hands outputs over
    # in bursts, and shards are encoded in parallel.
    first_encode_end: float | None = None
    last_encode_end: float | None = None
    first_batch_audio_seconds: float = 0.0
    encoded_audio_seconds: float = 0.0
    total_seconds: float = 0.0  # the whole command, Ray start and model loads included
    started_at: float = 0.0  # time.time() at the pipeline's start

    def record_batch(self, encode_end: float, audio_seconds: float) -> None:
        """One encoded batch (in the order the driver receives them, which is not encode order)."""
        self.encoded_audio_seconds += audio_seconds
        if self.first_encode_end is None or encode_end < self.first_encode_end:
            self.first_encode_end, self.first_batch_audio_seconds = encode_end, audio_seconds
        self.last_encode_end = max(self.last_encode_end or 0.0, encode_end)

    def finish(self, rr: dict) -> dict:
        d = dataclasses.asdict(self)
        wall = max(self.wall_seconds, 1e-9)
        d["audio_seconds_per_second"] = self.audio_seconds / wall if self.wall_seconds else 0.0
        n_gpus = rr.get("num_actors", 0) * rr.get("gpus_per_actor", 0) if rr.get("device") == "cuda" else 0
        d["gpus"] = n_gpus
        d["audio_seconds_per_second_per_gpu"] = d["audio_seconds_per_second"] / n_gpus if n_gpus else None
        d["padding_ratio"] = self.padded_seconds / self.audio_seconds if self.audio_seconds else None
        span = (self.last_encode_end or 0.0) - (self.first_encode_end or 0.0)
        d["first_batch_seconds"] = (self.first_encode_end - self.started_at) if self.first_encode_end else None
        # Only meaningful over a span long enough to measure.
        d["steady_audio_seconds_per_second"] = (
            (self.encoded_audio_seconds - self.first_batch_audio_seconds) / span if span >= 1.0 else None
        )
        actors = rr.get("num_actors", 0)
        d["encoder_busy_fraction"] = self.encode_seconds / (wall * actors) if actors and self.wall_seconds else None
        return d


def format_summary(s: dict) -> str:
    lines = [
        "== tokenize summary ==",
        f"shards: {s['shards_done']} done, {s['shards_skipped']} already done, {s['shards_failed']} failed "
        f"(of {s['shards_total']}); uncommitted tars redone: {s['uncommitted_removed']}",
        f"samples: {s['samples']} tokenized, {s['samples_failed']} failed {s['failed_by_reason'] or ''}",
        f"audio: {s['audio_seconds']:.1f} s   frames: {s['frames']}   token bytes: {s['token_bytes']}",
        f"wall: {s['wall_seconds']:.2f} s pipeline ({s['total_seconds']:.1f} s with start-up)   "
        f"throughput: {s['audio_seconds_per_second']:.1f} s of audio per s"
        + (f" ({s['audio_seconds_per_second_per_gpu']:.1f} per GPU, {s['gpus']:g} GPUs)" if s["gpus"] else " (CPU)"),
    ]
    if s.get("steady_audio_seconds_per_second"):
        lines.append(f"after the first batch (start-up excluded): {s['steady_audio_seconds_per_second']:.1f} s of audio "
                     f"per s; first batch encoded after {s['first_batch_seconds']:.1f} s")
    if s["padding_ratio"] is not None:
        lines.append(f"padding: {s['padding_ratio']:.3f}x real audio   encoder busy: "
                     f"{(s['encoder_busy_fraction'] or 0) * 100:.0f}% of actor time")
    return "\n".join(lines)


def run(cfg: TokenizeConfig) -> dict:
    """Run the job; returns the stats (also in the ``runs`` row)."""
    from codec.batching import codec_info
    from manifests.store import write_part
    from manifests.tokens import ShardAssembler, clean_uncommitted, commit_token_shard, committed_shards

    t_start = time.time()
    started = datetime.now(UTC)
    info = codec_info(cfg.codec)
    run_id = started.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    out = cfg.input
    stats = Stats()
    lock = _lock_codec_tree(out, info.codec_id)  # held until this process exits (even if killed)
    removed = clean_uncommitted(out, info.codec_id)
    stats.uncommitted_removed = len(removed)
    for p in removed:
        log.warning("removed %s: written by a killed run but never committed; redoing that shard", p)
    shards = committed_audio_shards(out)
    if cfg.shards is not None:
        wanted = set(cfg.shards)
        missing = wanted - {s for s, _ in shards}
        if missing:
            raise TokenizeConfigError(f"--shards: {sorted(missing)} are not committed audio shards of {out}")
        shards = [x for x in shards if x[0] in wanted]
    done = committed_shards(out, info.codec_id)
    todo = [x for x in shards if x[0] not in done]
    stats.shards_total, stats.shards_skipped = len(shards), len(shards) - len(todo)
    cfg.resolved.update(codec_id=info.codec_id, run_id=run_id, frame_rate=info.frame_rate,
                        sample_rate=info.sample_rate, samples_per_frame=info.samples_per_frame)
    log.info("run %s: codec %s; %d committed audio shards, %d already tokenized, %d to do",
             run_id, info.codec_id, len(shards), stats.shards_skipped, len(todo))
    if not shards:
        log.warning("no committed audio shard in %s/manifests/shards: run pipeline/ingest.py first", out)
    run_row = {"run_id": run_id, "job": "tokenize", "started": started, "finished": None,
               "config": cfg.to_json(), "versions": json.dumps(versions(info.codec_id)), "stats": None}
    rr: dict = {}
    if todo:
        if cfg.engine == "ray":
            init_ray(cfg)
            rr = resolve_resources(cfg)
        else:
            rr = local_resources(cfg)
        cfg.resolved.update(rr)
        run_row["config"] = cfg.to_json()
        log.info("config: %s", cfg.to_json())
        write_part(out, "runs", f"tokenize-{run_id}", [run_row])
        fault = _fault_hook()
        assembler = ShardAssembler()
        source = (ray_token_batches if cfg.engine == "ray" else local_token_batches)(cfg, todo, info, rr)
        t0 = stats.started_at = time.time()
        for batch in source:  # a shard is committed when its last batch arrives
            if batch.encode_end:
                stats.record_batch(batch.encode_end, sum(batch.n_samples) / info.sample_rate)
            shard = assembler.add(batch)
            if shard is None:
                continue
            if shard.shard_error:
                stats.shards_failed += 1
                log.error("shard %s not tokenized: %s", shard.shard, shard.shard_error)
                continue
            c = commit_token_shard(out, info.codec_id, shard.shard, shard.samples, shard.failures,
                                   frame_rate=info.frame_rate, sample_rate=info.sample_rate,
                                   n_samples=shard.n_samples, run_id=run_id,
                                   between=lambda: fault("after_tar"))
            stats.shards_done += 1
            stats.samples += c.n_ok
            stats.samples_failed += c.n_failed
            for f in shard.failures:
                reason = f["error"].split(":")[0]
                stats.failed_by_reason[reason] = stats.failed_by_reason.get(reason, 0) + 1
                log.warning("shard %s: sample %s failed: %s", shard.shard, f["key"], f["error"])
            stats.audio_seconds += c.audio_seconds
            stats.frames += c.n_frames
            stats.token_bytes += c.bytes
            stats.padded_seconds += shard.padded_samples / info.sample_rate
            stats.encode_seconds += shard.encode_seconds
            el = time.time() - t0
            log.info("shard %s committed [%d/%d]: %d samples (%d failed), %.1f s audio, %d frames | %.1f s/s",
                     c.shard, stats.shards_done + stats.shards_failed, len(todo), c.n_ok, c.n_failed,
                     c.audio_seconds, c.n_frames, stats.audio_seconds / max(el, 1e-9))
            fault("after_commit")
        stats.wall_seconds = time.time() - t0
        if assembler.open_shards:  # cannot happen unless the pipeline lost batches: say so loudly
            stats.shards_failed += len(assembler.open_shards)
            log.error("shards with missing batches, not committed: %s", assembler.open_shards)
    stats.total_seconds = time.time() - t_start
    result = stats.finish(rr)
    run_row.update(finished=datetime.now(UTC), stats=json.dumps(result), config=cfg.to_json())
    write_part(out, "runs", f"tokenize-{run_id}", [run_row])
    lock.close()
    return result


def parse_args(argv: list[str] | None = None) -> TokenizeConfig:
    ap = argparse.ArgumentParser(prog="python tokenize/run.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    d = TokenizeConfig.__dataclass_fields__
    ap.add_argument("--input", required=True, help="ingest output directory (shards/audio, manifests/)")
    ap.add_argument("--codec", required=True, help="codec checkpoint directory (Codec.save)")
    ap.add_argument("--batch-seconds", type=float, default=d["batch_seconds"].default,
                    help="padded seconds of audio per encoder batch (default %(default)s)")
    ap.add_argument("--max-batch-items", type=int, default=d["max_batch_items"].default,
                    help="utterances per encoder batch at most (default %(default)s)")
    ap.add_argument("--max-padding", type=float, default=d["max_padding"].default,
                    help="largest fraction of an utterance that padding may add in a batch (default %(default)s)")
    ap.add_argument("--batches-per-call", type=int, default=None,
                    help="encoder batches handed to an actor per call (default 4 on cuda, 1 on cpu)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto: cuda if the Ray cluster has GPUs (default)")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="auto: bf16 autocast on cuda, fp32 on cpu")
    ap.add_argument("--num-actors", type=int, default=None, help="encoder actors (default: GPUs / gpus-per-actor; on CPU, the cluster's CPUs "
                    "less one reader's per 9 CPUs, divided by --cpus-per-actor, as many as its memory holds)")
    ap.add_argument("--gpus-per-actor", type=float, default=None, help="GPUs per encoder actor (default 1 on cuda)")
    ap.add_argument("--cpus-per-actor", type=float, default=d["cpus_per_actor"].default,
                    help="CPUs reserved per encoder actor (default %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per CPU actor (default: cpus-per-actor)")
    ap.add_argument("--read-cpus", type=float, default=d["read_cpus"].default,
                    help="CPUs reserved per shard reader task (default %(default)s)")
    ap.add_argument("--shards", nargs="+", default=None, help="only these audio shards (names like 000003)")
    ap.add_argument("--address", dest="ray_address", default=None, help="Ray address (default: $RAY_ADDRESS, else local)")
    ap.add_argument("--object-store-mb", type=int, default=d["object_store_mb"].default,
                    help="object store of a local Ray, MiB (default %(default)s)")
    ap.add_argument("--progress-bars", action="store_true", help="show Ray Data's progress bars")
    ap.add_argument("--max-task-retries", type=int, default=d["max_task_retries"].default,
                    help="resubmit a batch whose encoder actor died this many times (default %(default)s)")
    ap.add_argument("--max-restarts", type=int, default=d["max_restarts"].default,
                    help="restarts of an encoder actor whose process died; -1: always (default %(default)s)")
    ap.add_argument("--max-errored-blocks", type=int, default=d["max_errored_blocks"].default,
                    help="batches still without a result after the retries that may be dropped (their shards "
                         "are not committed); -1: any number, 0: end the run (default %(default)s)")
    ap.add_argument("--engine", choices=["ray", "local"], default="ray",
                    help="ray: the Ray Data job (default); local: one process, no Ray (one encoder)")
    ap.add_argument("--no-report", dest="report", action="store_false",
                    help="do not rebuild OUT/report.html at the end (python -m manifests report OUT does)")
    a = vars(ap.parse_args(argv))
    try:
        return TokenizeConfig(**a)
    except TokenizeConfigError as e:
        ap.error(str(e))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_args(argv)
    try:
        stats = run(cfg)
    except TokenizeConfigError as e:
        log.error("%s", e)
        return 2
    print(format_summary(stats), flush=True)
    if cfg.report:
        from manifests.report import after_job

        print(after_job(cfg.input), flush=True)
    else:
        print(f"report: not rebuilt (--no-report); build it with: python -m manifests report {cfg.input}", flush=True)
    return 1 if stats["shards_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
