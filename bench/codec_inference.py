"""Codec speed: encode and decode throughput (seconds of audio per second) per config, device and batch.

    python bench/codec_inference.py                                   # tiny + voxtral on CPU (and GPU if present)
    python bench/codec_inference.py --configs tiny --batch-sizes 1 8 --seconds 10 --device cpu --threads 2
    python bench/codec_inference.py --codec CKPT_DIR                  # a trained checkpoint instead of presets

Weights are random (speed does not depend on them). Each figure is the best of --repeats timed runs
after one warm-up run. GPU runs use bf16 autocast and torch.inference_mode, as tokenize/ does.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from codec import Codec, CodecConfig


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(codec: Codec, batch: int, seconds: float, repeats: int) -> tuple[float, float]:
    """(encode, decode) seconds of audio per second of wall time for one batch shape."""
    device = codec.device
    wav = torch.randn(batch, 1, int(seconds * codec.sample_rate), device=device) * 0.1
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    audio = batch * seconds
    with torch.inference_mode(), amp:
        sem, ac = codec.encode(wav)  # warm-up (kernels, allocator)
        codec.decode(sem, ac)
        _sync(device)
        enc, dec = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            sem, ac = codec.encode(wav)
            _sync(device)
            enc.append(time.perf_counter() - t)
            t = time.perf_counter()
            codec.decode(sem, ac)
            _sync(device)
            dec.append(time.perf_counter() - t)
    return audio / min(enc), audio / min(dec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "voxtral"])
    p.add_argument("--codec", help="benchmark this checkpoint directory instead of --configs")
    p.add_argument(
        "--device", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda if present)"
    )
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default: CPU 1 4, GPU 1 8 32")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each item (default 10 s)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--cpu-max-batch-voxtral", type=int, default=1, help="skip bigger voxtral CPU batches (slow)"
    )
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    devices = a.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(
        f"torch {torch.__version__}, {a.threads} CPU thread(s), item {a.seconds:.1f} s, best of {a.repeats}"
    )
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    else:
        print("GPU: none present (CPU figures only)")
    print("| config | params | device | batch | encode (audio s/s) | decode (audio s/s) | encode RTF |")
    print("|---|---|---|---|---|---|---|")
    targets = [("ckpt", a.codec)] if a.codec else [(c, None) for c in a.configs]
    for name, path in targets:
        for dev in devices:
            device = torch.device(dev)
            torch.manual_seed(0)
            codec = (
                Codec.load(path, device=device)
                if path
                else Codec(CodecConfig.from_name(name)).to(device).eval()
            )
            label = codec.config.name
            n = sum(p.numel() for p in codec.parameters()) / 1e6
            sizes = a.batch_sizes or ([1, 4] if dev == "cpu" else [1, 8, 32])
            for b in sizes:
                if dev == "cpu" and label == "voxtral" and b > a.cpu_max_batch_voxtral:
                    continue
                enc, dec = bench_one(codec, b, a.seconds, a.repeats)
                print(
                    f"| {label} | {n:.1f}M | {dev} | {b} | {enc:.1f} | {dec:.1f} | {1 / enc:.4f} |",
                    flush=True,
                )
            del codec
            if dev == "cuda":
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
