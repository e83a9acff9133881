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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", required=True, help="token shard directory <out>/shards/tokens/<codec_id>")
    p.add_argument("--output", required=True, help="run directory (config.json, log.jsonl, checkpoints/)")
    p.add_argument("--config", default="tiny", choices=["tiny", "1b", "3b"], help="model size preset")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps in total (default 1000)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    p.add_argument(
        "--eval-tokens",
        default="",
        help="held-out token shard directory (default: last --eval-shards of --tokens)",
    )
    p.add_argument(
        "--eval-shards", type=int, default=None, help="shards of --tokens held out for eval (default 1)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="packed rows per micro-batch per rank")
    p.add_argument("--seq-len", type=int, default=None, help="packed row length (positions)")
    p.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimiser step")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile each transformer block")
    p.add_argument(
        "--parallel", choices=["ddp", "fsdp"], default=None, help="data parallelism when world size > 1"
    )
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers per rank")
    p.add_argument("--log-every", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--ckpt-every", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="per-device peak for MFU (default: from GPU name)"
    )
    p.add_argument(
        "--init-from",
        default="",
        help="local Hugging Face Llama/Mistral checkpoint dir for the backbone (+ its tokenizer)",
    )
    p.add_argument(
        "--warm-start",
        default="",
        help="start from this run's/checkpoint's weights (new optimiser, data from the start)",
    )
    p.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda:0 ...")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="any config field: model.*, train.*, data.*",
    )
    p.add_argument("--ray", action="store_true", help="run through Ray Train (TorchTrainer)")
    p.add_argument("--ray-workers", type=int, default=1, help="Ray Train workers (data-parallel ranks)")
    p.add_argument("--ray-gpu", action="store_true", help="one GPU per Ray worker")
    p.add_argument(
        "--ray-address", default=None, help="Ray cluster address (default: the job's cluster or a local one)"
    )
    return p


def specs_from_args(args: argparse.Namespace):
    from model.trainer import RunSpec

    mcfg = ModelConfig.named(args.config)
    tokenizer = "bytes"
    if args.init_from:
        from model.hf_init import model_config_from_hf

        mcfg = model_config_from_hf(args.init_from, base=mcfg)
        tokenizer = args.init_from
    model_kw = apply_overrides(mcfg, args.set, "model")
    if (
        ("dim" in model_kw or "n_heads" in model_kw)
        and "head_dim" not in model_kw
        and mcfg.head_dim == mcfg.dim // mcfg.n_heads
    ):
        model_kw["head_dim"] = 0  # it was derived from dim / n_heads: derive it again
    mcfg = dataclasses.replace(mcfg, **model_kw)
    data = DataConfig()
    data_kw = {"seq_len": mcfg.max_seq_len}
    for arg, field in (
        ("batch_size", "batch_size"),
        ("seq_len", "seq_len"),
        ("num_workers", "num_workers"),
        ("eval_shards", "eval_shards"),
        ("seed", "seed"),
    ):
        if getattr(args, arg) is not None:
            data_kw[field] = getattr(args, arg)
    data = dataclasses.replace(data, **data_kw)
    data = dataclasses.replace(data, **apply_overrides(data, args.set, "data"))
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
    train = dataclasses.replace(train, **apply_overrides(train, args.set, "train"))
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
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    spec = specs_from_args(args)
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
