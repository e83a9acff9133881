"""Train the TTS model on token shards.

    python model/train.py --tokens OUT/shards/tokens/CODEC_ID --config tiny --output RUN_DIR [--steps N] [--resume]
    torchrun --nproc-per-node G model/train.py ... [--parallel ddp|fsdp]
    RAY_AUTH_MODE=disabled ray job submit --working-dir . -- python model/train.py --ray --ray-workers G [--ray-gpu] ...

See docs/model.md for every option, the logs and resuming.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass, field
from typing import Literal

from manifests.config_cli import cli, config_from_args, config_parser
from model.config import ConfigError, DataConfig, ModelConfig, TrainConfig


def parse_value(raw: str, current):
    if isinstance(current, bool):
        return raw.lower() in ("1", "true", "yes")
    if isinstance(current, tuple):
        return tuple(type(current[0])(x) for x in raw.split(","))
    return type(current)(raw) if current is not None else raw


def apply_overrides(obj, overrides: list[str], prefix: str) -> dict:
    """``--set model.dim=256 train.lr=1e-3 data.seq_len=2048`` -> kwargs for ``obj``'s dataclass."""
    out = {}
    names = {f.name for f in dataclasses.fields(obj)}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: use SECTION.FIELD=VALUE, e.g. model.dim=256")
        key, value = item.split("=", 1)
        section, _, field = key.partition(".")
        if section != prefix:
            continue
        if field not in names:
            raise ConfigError(
                f"--set {key}: {type(obj).__name__} has no field {field!r}; fields: {sorted(names)}"
            )
        out[field] = parse_value(value, getattr(obj, field))
    return out


@dataclass
class TrainCommand:
    """The options of this command, one flag per field (manifests.config_cli). A value left at
    None keeps the preset's (``ModelConfig.named`` / ``DataConfig`` / ``TrainConfig`` defaults);
    ``--set SECTION.FIELD=VALUE`` reaches every other config field."""

    tokens: str = field(metadata=cli("token shard directory <out>/shards/tokens/<codec_id>"))
    output: str = field(metadata=cli("run directory (config.json, log.jsonl, checkpoints/)"))
    config: Literal["tiny", "1b", "3b"] = field(default="tiny", metadata=cli("model size preset"))
    steps: int | None = field(default=None, metadata=cli("optimiser steps in total (default 1000)"))
    resume: bool = field(default=False, metadata=cli("continue from the newest checkpoint in --output"))
    eval_tokens: str = field(default="", metadata=cli(
        "held-out token shard directory (default: last --eval-shards of --tokens)"))
    eval_shards: int | None = field(default=None, metadata=cli("shards of --tokens held out for eval (default 1)"))
    batch_size: int | None = field(default=None, metadata=cli("packed rows per micro-batch per rank"))
    seq_len: int | None = field(default=None, metadata=cli("packed row length (positions)"))
    grad_accum: int | None = field(default=None, metadata=cli("micro-batches per optimiser step"))
    lr: float | None = None
    warmup_steps: int | None = None
    precision: Literal["auto", "bf16", "fp32"] | None = None
    compile: bool = field(default=False, metadata=cli("torch.compile each transformer block"))
    parallel: Literal["ddp", "fsdp"] | None = field(default=None, metadata=cli(
        "data parallelism when world size > 1"))
    num_workers: int | None = field(default=None, metadata=cli("DataLoader workers per rank"))
    log_every: int | None = None
    eval_every: int | None = None
    ckpt_every: int | None = None
    seed: int | None = None
    peak_tflops: float | None = field(default=None, metadata=cli("per-device peak for MFU (default: from GPU name)"))
    init_from: str = field(default="", metadata=cli(
        "local Hugging Face Llama/Mistral checkpoint dir for the backbone (+ its tokenizer)"))
    warm_start: str = field(default="", metadata=cli(
        "start from this run's/checkpoint's weights (new optimiser, data from the start)"))
    device: str = field(default="auto", metadata=cli("auto (GPU if present), cpu, cuda:0 ..."))
    overrides: list[str] = field(default_factory=list, metadata=cli(
        "any config field: model.*, train.*, data.*", flag="--set", nargs="*", metavar="SECTION.FIELD=VALUE"))
    ray: bool = field(default=False, metadata=cli("run through Ray Train (TorchTrainer)"))
    ray_workers: int = field(default=1, metadata=cli("Ray Train workers (data-parallel ranks)"))
    ray_gpu: bool = field(default=False, metadata=cli("one GPU per Ray worker"))
    ray_address: str | None = field(default=None, metadata=cli(
        "Ray cluster address (default: the job's cluster or a local one)"))

    def __post_init__(self):
        if self.ray_workers < 1:
            raise ConfigError(f"--ray-workers must be >= 1, got {self.ray_workers}")
        if not self.ray and (self.ray_gpu or self.ray_address or self.ray_workers != 1):
            raise ConfigError("--ray-workers, --ray-gpu and --ray-address need --ray (or use torchrun without them)")


def build_parser() -> argparse.ArgumentParser:
    return config_parser(TrainCommand, description=__doc__)


def specs_from_args(args: TrainCommand | argparse.Namespace):
    """The parsed options -> the trainer's ``RunSpec``; raises ConfigError on a bad value."""
    from model.trainer import RunSpec

    mcfg = ModelConfig.named(args.config)
    tokenizer = "bytes"
    if args.init_from:
        from model.hf_init import model_config_from_hf

        mcfg = model_config_from_hf(args.init_from, base=mcfg)
        tokenizer = args.init_from
    model_kw = apply_overrides(mcfg, args.overrides, "model")
    if (
        ("dim" in model_kw or "n_heads" in model_kw)
        and "head_dim" not in model_kw
        and mcfg.head_dim == mcfg.dim // mcfg.n_heads
    ):
        model_kw["head_dim"] = 0  # it was derived from dim / n_heads: derive it again
    mcfg = dataclasses.replace(mcfg, **model_kw)
    data = DataConfig()
    data_kw = {"seq_len": mcfg.max_seq_len}
    for arg, name in (
        ("batch_size", "batch_size"),
        ("seq_len", "seq_len"),
        ("num_workers", "num_workers"),
        ("eval_shards", "eval_shards"),
        ("seed", "seed"),
    ):
        if getattr(args, arg) is not None:
            data_kw[name] = getattr(args, arg)
    data = dataclasses.replace(data, **data_kw)
    data = dataclasses.replace(data, **apply_overrides(data, args.overrides, "data"))
    train_kw = {}
    for arg in (
        "steps",
        "grad_accum",
        "lr",
        "warmup_steps",
        "precision",
        "parallel",
        "log_every",
        "eval_every",
        "ckpt_every",
        "seed",
        "peak_tflops",
    ):
        if getattr(args, arg) is not None:
            train_kw[arg] = getattr(args, arg)
    if args.compile:
        train_kw["compile"] = True
    train = TrainConfig(data=data, **train_kw)
    train = dataclasses.replace(train, **apply_overrides(train, args.overrides, "train"))
    return RunSpec(
        tokens=args.tokens,
        output=args.output,
        model=mcfg,
        train=train,
        resume=args.resume,
        eval_tokens=args.eval_tokens,
        tokenizer=tokenizer,
        init_from=args.init_from,
        warm_start=args.warm_start,
        device=args.device,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = config_from_args(TrainCommand, parser.parse_args(argv), parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        spec = specs_from_args(args)
    except ConfigError as e:
        parser.error(str(e))
    if args.ray:
        from model.ray_launch import launch_with_ray

        result = launch_with_ray(spec, args.ray_workers, args.ray_gpu, args.ray_address)
        print(json.dumps(result))
        return 0
    from model.trainer import run_training

    run_training(spec)
    # torchrun: leave the process group before exit; without this, gloo's threads were torn down
    # at interpreter exit and a rank could abort ("terminate called without an active exception")
    # after its work was done and checkpointed. (Ray Train owns its group: it never reaches here.)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
