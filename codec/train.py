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


def parse_overrides(items: list[str]) -> dict:
    """--set key=value (value parsed as JSON when it can be: numbers, lists, booleans)."""
    out = {}
    for it in items:
        if "=" not in it:
            raise SystemExit(f"--set {it!r}: expected key=value, e.g. --set lr=1e-4")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Train the 12.5 Hz VQ+FSQ speech codec on audio shards or audio files."
    )
    p.add_argument(
        "--shards", required=True, help="folder of WebDataset audio shards (*.tar) or of audio files"
    )
    p.add_argument("--config", default="tiny", help="preset: tiny | voxtral, or a config.json path")
    p.add_argument("--output", required=True, help="checkpoint directory (created)")
    p.add_argument("--steps", type=int, default=1000, help="train until this global step (default 1000)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--keep", type=int, default=2, help="step checkpoints to keep (default 2)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a CodecConfig field"
    )
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = parse_overrides(a.set)
    if a.config.endswith(".json"):
        d = json.loads(Path(a.config).read_text())
        cfg = CodecConfig.from_dict({**d.get("config", d), **overrides})
    else:
        cfg = CodecConfig.from_name(a.config, **overrides)
    run = TrainRunConfig(
        shards=a.shards,
        output=a.output,
        steps=a.steps,
        log_every=a.log_every,
        save_every=a.save_every,
        keep=a.keep,
        resume=a.resume,
        device=a.device,
        threads=a.threads,
    )
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
