"""Train the codec: python codec/train.py --shards OUT/shards/audio --config tiny --output CKPT [--steps N] [--resume]

Multi-GPU: torchrun --nproc_per_node 8 codec/train.py ... (DDP). See docs/codec.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from codec.config import CodecConfig
from codec.trainer import CodecTrainer, TrainRunConfig
from manifests.config_cli import config_from_args, config_parser


def parse_overrides(items: list[str]) -> dict:
    """--set key=value (value parsed as JSON when it can be: numbers, lists, booleans)."""
    out = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"--set {it!r}: expected key=value, e.g. --set lr=1e-4")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def build_parser() -> argparse.ArgumentParser:
    """TrainRunConfig's fields as flags, and the model's: a preset or config.json, with overrides."""
    p = config_parser(TrainRunConfig, description=__doc__)
    p.add_argument("--config", default="tiny", help="preset: tiny | voxtral, or a config.json path")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a CodecConfig field"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    run = config_from_args(TrainRunConfig, a, p)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = parse_overrides(a.set)
        if a.config.endswith(".json"):
            d = json.loads(Path(a.config).read_text())
            cfg = CodecConfig.from_dict({**d.get("config", d), **overrides})
        else:
            cfg = CodecConfig.from_name(a.config, **overrides)
    except (ValueError, TypeError, KeyError, OSError) as e:
        p.error(f"--config {a.config} / --set: {e}")  # exits (status 2)
    CodecTrainer(cfg, run).fit()
    # leave the process group before exit (torchrun): gloo's threads torn down at interpreter exit
    # can abort a rank after its work is done
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
