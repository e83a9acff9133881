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

import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from codec.tokenizing import TokenizeConfigError
from codec.tokenizing.commit import commit_shard, fault_hook
from codec.tokenizing.plan import lock_codec_tree, plan_shards
from codec.tokenizing.resources import local_resources, resolve_resources
from codec.tokenizing.stats import Stats
from manifests.config_cli import cli, config_from_args, config_parser
from manifests.run_record import RunRecord, retry_settings_error, start_ray

log = logging.getLogger("tokenize.run")


@dataclass
class TokenizeConfig:
    """Resolved configuration of one tokenize run (logged, and stored in its ``runs`` row).

    Units: seconds of audio for ``batch_seconds``; Ray resource units for cpus/gpus.
    """

    input: str = field(metadata=cli("ingest output directory (shards/audio, manifests/)"))
    codec: str = field(metadata=cli("codec checkpoint directory (Codec.save)"))
    batch_seconds: float = field(default=120.0, metadata=cli("padded seconds of audio per encoder batch"))
    max_batch_items: int = field(default=256, metadata=cli("utterances per encoder batch at most"))
    max_padding: float = field(default=0.25, metadata=cli(
        "largest fraction of an utterance that padding may add in a batch"))
    # default 4 on cuda (copies overlap compute inside a call), 1 on cpu (nothing to overlap; a
    # batch goes out as soon as it is read)
    batches_per_call: int | None = field(default=None, metadata=cli(
        "encoder batches handed to an actor per call (default 4 on cuda, 1 on cpu)"))
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata=cli(
        "auto: cuda if the Ray cluster has GPUs"))
    precision: Literal["auto", "bf16", "fp32"] = field(default="auto", metadata=cli(
        "auto: bf16 autocast on cuda, fp32 on cpu"))
    num_actors: int | None = field(default=None, metadata=cli(
        "encoder actors (default: GPUs / gpus-per-actor; on CPU, the cluster's CPUs less one reader's per 9 "
        "CPUs, divided by --cpus-per-actor, as many as its memory holds)"))
    gpus_per_actor: float | None = field(default=None, metadata=cli(
        "GPUs per encoder actor (default 1 on cuda; fractions share a GPU)"))
    cpus_per_actor: float = field(default=1.0, metadata=cli("CPUs reserved per encoder actor"))
    threads: int | None = field(default=None, metadata=cli("torch threads per CPU actor (default: cpus-per-actor)"))
    read_cpus: float = field(default=1.0, metadata=cli("CPUs reserved per shard reader task (FLAC decoding)"))
    shards: list[str] | None = field(default=None, metadata=cli(
        "only these audio shards (names like 000003; default: all committed ones)"))
    ray_address: str | None = field(default=None, metadata=cli(
        "Ray address (default: $RAY_ADDRESS, else a local Ray)", flag="--address", metavar="ADDRESS"))
    object_store_mb: int | None = field(default=1024, metadata=cli("object store of a local Ray, MiB"))
    progress_bars: bool = field(default=False, metadata=cli("show Ray Data's progress bars"))
    engine: Literal["ray", "local"] = field(default="ray", metadata=cli(
        "ray: the Ray Data job; local: one process, no Ray (a reader thread + one encoder)"))
    report: bool = field(default=True, metadata=cli(
        "rebuild OUT/report.html when the run ends (python -m manifests report OUT does it later)"))
    # faults (docs/tokenize.md "Resume and faults"): Ray restarts an encoder actor whose process
    # died (a crash, an OOM kill, a lost node; -1: always) and resubmits its batches up to
    # max_task_retries times; a batch still without a result is dropped (up to max_errored_blocks,
    # -1: any number, 0: end the run) and its shard is not committed (exit status 1; a rerun redoes it)
    max_task_retries: int = field(default=3, metadata=cli(
        "resubmit a batch whose encoder actor died this many times"))
    max_restarts: int = field(default=-1, metadata=cli(
        "restarts of an encoder actor whose process died; -1: always"))
    max_errored_blocks: int = field(default=-1, metadata=cli(
        "batches still without a result after the retries that may be dropped (their shards are not "
        "committed); -1: any number, 0: end the run"))
    # filled by the job: codec_id, run_id, actors, device...
    resolved: dict = field(default_factory=dict, metadata=cli(skip=True))

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
        if (msg := retry_settings_error(self.max_restarts, self.max_task_retries, self.max_errored_blocks)):
            raise TokenizeConfigError(msg)
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
    lock = lock_codec_tree(out, info.codec_id)  # dropped by the OS if this process is killed
    try:  # the lock goes with the run, also when it fails (a second run() here must not find it held)
        run_record = RunRecord(out, "tokenize", cfg, packages=("soxr",), extra_versions={"codec_id": info.codec_id})

        # Plan: clean up after a killed run, skip the shards this codec already committed.
        plan = plan_shards(out, info.codec_id, cfg.shards)
        stats = Stats(shards_total=plan.total, shards_skipped=plan.skipped, uncommitted_removed=len(plan.removed))
        cfg.resolved.update(codec_id=info.codec_id, run_id=run_record.run_id, frame_rate=info.frame_rate,
                            sample_rate=info.sample_rate, samples_per_frame=info.samples_per_frame)
        log.info("run %s: codec %s; %d committed audio shards, %d already tokenized, %d to do",
                 run_record.run_id, info.codec_id, plan.total, plan.skipped, len(plan.todo))
        rr: dict = {}
        with run_record:  # the runs row: written now, and again with the summary (or the error) at the end
            if plan.todo:
                if cfg.engine == "ray":
                    # VOXFORGE_ENCODE_FAULT*: the encoder's test hook, passed on to a cluster's workers
                    start_ray(cfg.ray_address, object_store_mb=cfg.object_store_mb, hook_prefix="VOXFORGE_ENCODE_FAULT")
                    rr = resolve_resources(cfg)
                else:
                    rr = local_resources(cfg)
                cfg.resolved.update(rr)
                run_record.set_config(cfg)

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
                        commit_shard(out, info, shard, run_record.run_id, stats, fault, len(plan.todo))
                stats.wall_seconds = time.time() - stats.started_at
                if assembler.open_shards:  # batches lost after Ray's retries (max_errored_blocks): say so loudly
                    stats.shards_failed += len(assembler.open_shards)
                    log.error("shards with missing batches, not committed (a rerun redoes them): %s",
                              assembler.open_shards)
            stats.total_seconds = time.time() - t_start
            result = stats.finish(rr)
            run_record.set_config(cfg)
            run_record.summary = result
    finally:
        lock.close()
    return result


# --------------------------------------------------------------------------------------
# Summary and command line


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


def build_parser():
    """TokenizeConfig's fields as flags (their help and defaults live in the dataclass)."""
    return config_parser(TokenizeConfig, prog="python tokenize/run.py", description=__doc__)


def parse_args(argv: list[str] | None = None) -> TokenizeConfig:
    """argv -> the validated TokenizeConfig; a bad value exits with status 2 and the message."""
    ap = build_parser()
    return config_from_args(TokenizeConfig, ap.parse_args(argv), ap)


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
