"""Training throughput of the TTS model: tokens/s and an MFU estimate.

    python bench/train.py --config tiny                      # CPU
    python bench/train.py --config 1b --device cuda          # GPU, bf16 autocast
    python bench/train.py --config 1b --device cuda --attention flex --compile
    python bench/train.py --config tiny --tokens OUT/shards/tokens/CODEC_ID   # packed real token shards

Batches are packed rows like training's. Without --tokens they are made of random tokens with
realistic lengths (prompt 3-25 s, target 2-20 s at 12.5 Hz, ~15 text bytes per second of target),
which costs the model exactly what real data does. Timing starts after --warmup steps. MFU =
achieved model FLOP/s (``model.flops``: matmuls, fwd+bwd) / peak: the GPU's datasheet bf16 peak, or
on CPU the FLOP/s of a large fp32 matmul measured here (there is no datasheet number for a shared
VM's cores), so CPU "MFU" reads as "share of what this CPU's matmul reaches".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import random
import sys
import time

import numpy as np
import torch

from manifests.shards import TokenSample
from model.config import DataConfig, ModelConfig
from model.flops import peak_tflops, step_flops
from model.packing import Packer
from model.sequence import Prompt, SequenceBuilder
from model.text_tokenizer import ByteTokenizer
from model.tts import TTSModel


def synthetic_batches(cfg: DataConfig, n: int, seed: int = 0):
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    builder = SequenceBuilder(ByteTokenizer(), cfg)

    def seqs():
        i = 0
        while True:
            t = int(rng.uniform(2, 20) * 12.5)
            p = int(rng.uniform(3, 25) * 12.5)
            text = "".join(rng.choice("abcdefghij klmnop qrstuv wxyz") for _ in range(int(t / 12.5 * 15)))
            s = TokenSample(
                f"k{i}", nrng.integers(0, 8192, t), nrng.integers(0, 21, (t, 36)), {"speaker": "s", "text": text}
            )
            prompt = Prompt(nrng.integers(0, 8192, p), nrng.integers(0, 21, (p, 36)), "other")
            i += 1
            yield builder.build(s, prompt)

    it = Packer(cfg.seq_len, cfg.batch_size, builder.sp.pad, cfg.pack_buffer).pack(seqs())
    return [next(it) for _ in range(n)]


def real_batches(tokens: str, cfg: DataConfig, n: int):
    from model.token_stream import PackedTokenStream, list_shards

    it = iter(PackedTokenStream(list_shards(tokens), ByteTokenizer(), cfg))
    return [next(it) for _ in range(n)]


def cpu_matmul_tflops(size: int = 1024, reps: int = 5, trials: int = 5) -> float:
    """Best of ``trials`` timings of ``reps`` fp32 matmuls (best-of: the machine is shared)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = 0.0
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * size**3 * reps / (time.perf_counter() - t) / 1e12)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", choices=["tiny", "1b", "3b"])
    p.add_argument("--device", default="auto")
    p.add_argument("--seq-len", type=int, default=None, help="default: the config's max_seq_len")
    p.add_argument("--batch-size", type=int, default=None, help="default 4 (tiny) / 2 (1b, 3b)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument(
        "--attention", choices=["sdpa", "flex"], default="sdpa", help="packed-row attention kernel"
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("--tokens", default="", help="use real packed token shards instead of synthetic rows")
    p.add_argument("--peak-tflops", type=float, default=0.0)
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    mcfg = dataclasses.replace(ModelConfig.named(args.config), attention=args.attention)
    bs = args.batch_size or (4 if args.config == "tiny" else 2)
    dcfg = DataConfig(seq_len=args.seq_len or mcfg.max_seq_len, batch_size=bs)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and dev.type == "cuda")
    torch.manual_seed(0)
    model = TTSModel(mcfg).to(dev)
    if args.compile:
        for layer in model.backbone.layers:
            layer.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")
    n = args.warmup + args.steps
    batches = real_batches(args.tokens, dcfg, n) if args.tokens else synthetic_batches(dcfg, n)
    ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step(batch):
        with ctx():
            out = model({k: v.to(dev, non_blocking=True) for k, v in batch.items()})
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out

    for b in batches[: args.warmup]:
        step(b)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tokens = flops = 0.0
    t = time.perf_counter()
    for b in batches[args.warmup :]:
        out = step(b)
        tokens += int(b["n_tokens"])
        flops += step_flops(mcfg, b)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    peak = peak_tflops(dev, args.peak_tflops)
    peak_src = "datasheet bf16" if peak and not args.peak_tflops else "given"
    if peak is None:
        peak, peak_src = cpu_matmul_tflops(), "measured fp32 matmul 1024^3 on this CPU"
    achieved = flops / dt / 1e12
    result = {
        "config": args.config,
        "params_M": round(model.num_params() / 1e6, 2),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "precision": "bf16" if bf16 else "fp32",
        "compile": args.compile,
        "attention": args.attention,
        "seq_len": dcfg.seq_len,
        "batch_size": bs,
        "data": "real" if args.tokens else "synthetic",
        "steps": args.steps,
        "step_s": round(dt / args.steps, 4),
        "tokens_per_s": round(tokens / dt, 1),
        "achieved_tflops": round(achieved, 4),
        "peak_tflops": round(peak, 4),
        "peak_source": peak_src,
        "mfu": round(achieved / peak, 4),
        "last_loss": round(float(out["loss"].detach()), 4),
        "padding": round(1 - tokens / (len(batches[args.warmup :]) * bs * dcfg.seq_len), 4),
    }
    if dev.type == "cuda":
        result["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
