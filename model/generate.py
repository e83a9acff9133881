"""Generate speech from text with a trained checkpoint and a codec.

    python model/generate.py --checkpoint RUN_DIR --codec CKPT_DIR --text "..." [--prompt voice.wav] --output out.wav

Writes a 24 kHz mono 16-bit wav, and prints a JSON line (frames, seconds, stopped_at_eoa, paths).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from model.synthesis import SamplingConfig, Synthesizer


class GenerationError(RuntimeError):
    """Generation cannot proceed (codec mismatch, unreadable prompt...); the message says why."""


def load_prompt_wav(path: str | Path, sample_rate: int, max_seconds: float) -> torch.Tensor:
    """Any soundfile-readable file -> mono float [1, 1, N] at ``sample_rate`` (soxr), at most max_seconds."""
    import soundfile as sf
    import soxr

    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise GenerationError(f"cannot read voice prompt {path}: {e}") from e
    wav = wav.mean(axis=1)
    if sr != sample_rate:
        wav = soxr.resample(wav, sr, sample_rate)
    wav = wav[: int(max_seconds * sample_rate)]
    return torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None, None]


def synthesize(args: argparse.Namespace) -> dict:
    from codec import Codec

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    synth = Synthesizer.from_checkpoint(args.checkpoint, device)
    codec = Codec.load(args.codec, device=device).eval()
    if synth.codec_id and codec.codec_id != synth.codec_id and not args.allow_codec_mismatch:
        raise GenerationError(
            f"the model was trained on tokens of codec {synth.codec_id} but {args.codec} is {codec.codec_id}; "
            "use the same codec (or --allow-codec-mismatch to hear what happens)"
        )
    p_sem = p_ac = None
    if args.prompt:
        wav = load_prompt_wav(args.prompt, codec.sample_rate, args.prompt_max_seconds).to(device)
        with torch.no_grad():
            s, a = codec.encode(wav)
        p_sem, p_ac = s[0].cpu(), a[0].cpu()
    cfg = SamplingConfig(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        flow_steps=args.flow_steps,
        cfg_scale=args.cfg,
        max_frames=int(round(args.max_seconds * codec.frame_rate)),
        seed=args.seed,
        min_frames=int(round(args.min_seconds * codec.frame_rate)),
    )
    sem, ac, stopped = synth.generate(args.text, p_sem, p_ac, cfg)
    import soundfile as sf

    if len(sem):
        with torch.no_grad():
            wav = codec.decode(sem[None].to(device), ac[None].to(device))[0, 0].float().cpu().numpy()
    else:
        wav = np.zeros(0, np.float32)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(out), np.clip(wav, -1, 1), codec.sample_rate, subtype="PCM_16")
    if args.save_tokens:
        np.savez(
            out.with_suffix(".tokens.npz"),
            semantic=sem.numpy().astype(np.int16),
            acoustic=ac.numpy().astype(np.uint8),
        )
    return {
        "output": str(out),
        "frames": int(len(sem)),
        "seconds": len(wav) / codec.sample_rate,
        "samples": int(len(wav)),
        "stopped_at_eoa": stopped,
        "prompt_frames": 0 if p_sem is None else int(len(p_sem)),
        "codec_id": codec.codec_id,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint", required=True, help="run directory (newest checkpoint) or checkpoints/step_N"
    )
    p.add_argument("--codec", required=True, help="codec checkpoint directory (Codec.load)")
    p.add_argument("--text", required=True)
    p.add_argument(
        "--prompt", default="", help="voice prompt audio (any rate/channels; 3-25 s is what training saw)"
    )
    p.add_argument("--prompt-max-seconds", type=float, default=25.0)
    p.add_argument("--output", required=True, help="output .wav (24 kHz mono PCM16)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--flow-steps", type=int, default=8, help="Euler steps of the acoustic flow")
    p.add_argument(
        "--cfg", type=float, default=1.2, help="classifier-free guidance scale of the acoustic head"
    )
    p.add_argument(
        "--max-seconds", type=float, default=30.0, help="length bound when end-of-audio never comes"
    )
    p.add_argument("--min-seconds", type=float, default=0.0, help="end-of-audio is not allowed before this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--save-tokens", action="store_true", help="also write <output>.tokens.npz")
    p.add_argument("--allow-codec-mismatch", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(synthesize(build_parser().parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
