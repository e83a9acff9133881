"""Do an utterance's tokens depend on the batch it was encoded in? Encodes real utterances one at
a time and all in one padded batch with the tokenize job's ``TokenEncoder``, per precision, and
prints how many tokens differ.

    python bench/token_padding.py                          # CPU: fp32 and bf16, tiny codec (random init)
    python bench/token_padding.py --device cuda --codec CKPT_DIR

Needs ../shared/speech (or VOXFORGE_SPEECH).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from codec import Codec, CodecConfig
from codec.token_encoder import AudioBatch, EncoderConfig, TokenEncoder

SPEECH = Path(os.environ.get("VOXFORGE_SPEECH", Path(__file__).resolve().parents[2] / "shared" / "speech"))
FILES = ["mfa/tests/data/wav/mfa_the.flac", "mfa/tests/data/wav/mfa_putty.flac",
         "deepspeech/native_client/dotnet/DeepSpeechConsole/arctic_a0024.wav", "deepspeech/data/smoke_test/LDC93S1.wav",
         "pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav"]


def _pcm(rel: str) -> np.ndarray:
    x, sr = sf.read(SPEECH / rel, dtype="float32", always_2d=True)
    return (np.clip(soxr.resample(x.mean(1), sr, 24_000), -1, 1) * 32767).astype(np.int16)


def _batch(items: list[np.ndarray]) -> AudioBatch:
    n = len(items)
    return AudioBatch(shard="000000", batch_index=0, n_batches=1, keys=[str(i) for i in range(n)],
                      positions=list(range(n)), metas=["{}"] * n, pcm=items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--codec", default=None, help="checkpoint directory (default: tiny, random init, seed 0)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    codec = Codec.load(a.codec) if a.codec else Codec(CodecConfig.tiny()).eval()
    pcm = [_pcm(f) for f in FILES]
    print(f"{len(pcm)} utterances, {[round(len(x) / 24000, 2) for x in pcm]} s, device {a.device}")
    for prec in a.precisions:
        enc = TokenEncoder(EncoderConfig(device=a.device, precision=prec), codec=codec)
        together = enc([_batch(pcm)])[0]
        diff = {"semantic": [0, 0], "acoustic": [0, 0]}
        for i, x in enumerate(pcm):
            alone = enc([_batch([x])])[0]
            for name in diff:
                a_, t_ = getattr(alone, name)[0], getattr(together, name)[i]
                diff[name][0] += int((a_ != t_).sum())
                diff[name][1] += int(t_.size)
        print(f"{prec}: tokens that differ alone vs in the padded batch: "
              + ", ".join(f"{k} {d}/{n} ({d / n:.4%})" for k, (d, n) in diff.items()), flush=True)


if __name__ == "__main__":
    main()
