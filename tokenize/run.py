"""Tokenize job: audio shards -> 12.5 Hz semantic/acoustic token shards (DESIGN.md §6).

    python tokenize/run.py --input OUT --codec CKPT_DIR [--batch-seconds S] [--device cpu|cuda]
    ray job submit --working-dir . -- python tokenize/run.py --input /shared/OUT --codec /shared/ckpt

Reads the committed audio shards of an ingest output (``OUT/manifests/shards``), encodes
them with the codec in an actor pool (one codec per GPU, or CPU actors) and writes
``OUT/shards/tokens/<codec_id>/NNNNNN.tar`` + ``OUT/manifests/tokens/<codec_id>-NNNNNN.parquet``
(one token shard per audio shard, same sample order), plus a ``runs`` row.
Rerunning the same command resumes: committed shards are skipped, a tar left without its
manifest part by a killed run is deleted and redone. See docs/tokenize.md.

:func:`run` is the job, top to bottom: plan the shards -> read -> batch -> encode -> commit.
This folder is not a package (no ``__init__.py``: a package named ``tokenize`` would
shadow the standard library), and Ray workers can only import code from packages, so the
job's parts live in ``codec/tokenizing/`` (bucketing, engines, resources, plan, commit,
stats), the codec inference in ``codec/token_encoder.py``, the shard formats in
``manifests/shards.py`` and the token shard commit protocol in ``manifests/tokens.py``.
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
import os  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import UTC, datetime  # noqa: E402

from codec.tokenizing import TokenizeConfigError  # noqa: E402
from codec.tokenizing.commit import commit_shard, fault_hook  # noqa: E402
from codec.tokenizing.plan import lock_codec_tree, plan_shards  # noqa: E402
from codec.tokenizing.resources import local_resources, resolve_resources  # noqa: E402
from codec.tokenizing.stats import Stats  # noqa: E402

log = logging.getLogger("tokenize.run")


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
        if self.ray_address is None:
            self.ray_address = os.environ.get("RAY_ADDRESS") or None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


# --------------------------------------------------------------------------------------
# The job


def run(cfg: TokenizeConfig) -> dict:
    """Run the job; returns the stats (also in the ``runs`` row)."""
    from codec.speech_codec import codec_info
    from codec.tokenizing.engines import token_batches
    from manifests.tokens import ShardAssembler

    t_start = time.time()
    out = cfg.input
    info = codec_info(cfg.codec)
    record = RunRecord(cfg, info.codec_id)
    lock = lock_codec_tree(out, info.codec_id)  # held until this process exits (even if killed)

    # Plan: clean up after a killed run, skip the shards this codec already committed.
    plan = plan_shards(out, info.codec_id, cfg.shards)
    stats = Stats(shards_total=plan.total, shards_skipped=plan.skipped, uncommitted_removed=len(plan.removed))
    cfg.resolved.update(codec_id=info.codec_id, run_id=record.run_id, frame_rate=info.frame_rate,
                        sample_rate=info.sample_rate, samples_per_frame=info.samples_per_frame)
    log.info("run %s: codec %s; %d committed audio shards, %d already tokenized, %d to do",
             record.run_id, info.codec_id, plan.total, plan.skipped, len(plan.todo))
    rr: dict = {}
    if plan.todo:
        if cfg.engine == "ray":
            init_ray(cfg)
            rr = resolve_resources(cfg)
        else:
            rr = local_resources(cfg)
        cfg.resolved.update(rr)
        log.info("config: %s", cfg.to_json())
        record.write(cfg)

        # Read -> batch -> encode: TokenBatches in completion order, from any reader and encoder.
        batches = token_batches(cfg, plan.todo, info, rr)
        # Commit: a shard is put back in order and committed when its last batch arrives.
        assembler = ShardAssembler()
        fault = fault_hook()
        stats.started_at = time.time()
        for batch in batches:
            if batch.encode_end:
                stats.record_batch(batch.encode_end, sum(batch.n_samples) / info.sample_rate)
            shard = assembler.add(batch)
            if shard is not None:
                commit_shard(out, info, shard, record.run_id, stats, fault, len(plan.todo))
        stats.wall_seconds = time.time() - stats.started_at
        if assembler.open_shards:  # cannot happen unless the pipeline lost batches: say so loudly
            stats.shards_failed += len(assembler.open_shards)
            log.error("shards with missing batches, not committed: %s", assembler.open_shards)

    stats.total_seconds = time.time() - t_start
    result = stats.finish(rr)
    record.write(cfg, result)
    lock.close()
    return result


# --------------------------------------------------------------------------------------
# Run record, Ray start-up, summary and command line. Kept together on purpose: issue 13's
# shared run-record component and dataclass-driven CLI builder replace this section.


class RunRecord:
    """The job's ``runs`` row (DESIGN §5): written when work starts, rewritten with the stats at the end."""

    def __init__(self, cfg: TokenizeConfig, codec_id: str):
        started = datetime.now(UTC)
        self.run_id = started.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.out = cfg.input
        self.row = {"run_id": self.run_id, "job": "tokenize", "started": started, "finished": None,
                    "config": cfg.to_json(), "versions": json.dumps(versions(codec_id)), "stats": None}

    def write(self, cfg: TokenizeConfig, stats: dict | None = None) -> None:
        """Write the row (same part name each time: the last write wins); with ``stats``, as finished."""
        from manifests.store import write_part

        self.row["config"] = cfg.to_json()
        if stats is not None:
            self.row.update(finished=datetime.now(UTC), stats=json.dumps(stats))
        write_part(self.out, "runs", f"tokenize-{self.run_id}", [self.row])


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


def init_ray(cfg: TokenizeConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    if cfg.ray_address:
        log.info("connecting to Ray at %s", cfg.ray_address)
        ray.init(address=cfg.ray_address, log_to_driver=True)
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
