"""Generate speech from text with a trained checkpoint and a codec.

    python model/generate.py --checkpoint RUN_DIR --codec CKPT_DIR --text "..." [--prompt voice.wav] --output out.wav

Writes a 24 kHz mono 16-bit wav, and prints a JSON line (frames, seconds, stopped_at_eoa, paths).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from manifests.config_cli import cli, config_from_args, config_parser
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


def synthesize(args: GenerateConfig | argparse.Namespace) -> dict:
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


@dataclass(kw_only=True)  # kw_only: required --output comes after optional flags, as in --help
class GenerateConfig:
    """The options of this command, one flag per field (manifests.config_cli). Seconds are of
    24 kHz output audio; they become frames at the codec's frame rate (12.5 Hz)."""

    checkpoint: str = field(metadata=cli("run directory (newest checkpoint) or checkpoints/step_N"))
    codec: str = field(metadata=cli("codec checkpoint directory (Codec.load)"))
    text: str = field(metadata=cli("the text to speak"))
    prompt: str = field(default="", metadata=cli(
        "voice prompt audio (any rate/channels; 3-25 s is what training saw)"))
    prompt_max_seconds: float = field(default=25.0, metadata=cli("use at most this much of the prompt"))
    output: str = field(metadata=cli("output .wav (24 kHz mono PCM16)"))
    temperature: float = 0.8
    top_k: int = field(default=0, metadata=cli("0 = off"))
    top_p: float = field(default=0.95, metadata=cli("1.0 = off"))
    flow_steps: int = field(default=8, metadata=cli("Euler steps of the acoustic flow"))
    cfg: float = field(default=1.2, metadata=cli("classifier-free guidance scale of the acoustic head"))
    max_seconds: float = field(default=30.0, metadata=cli("length bound when end-of-audio never comes"))
    min_seconds: float = field(default=0.0, metadata=cli("end-of-audio is not allowed before this"))
    seed: int = 0
    device: str = field(default="auto", metadata=cli("auto (cuda if present), cpu, cuda:N"))
    save_tokens: bool = field(default=False, metadata=cli("also write <output>.tokens.npz"))
    allow_codec_mismatch: bool = field(default=False, metadata=cli(
        "use a codec other than the one the model was trained on"))

    def __post_init__(self):
        if not self.max_seconds > 0 or not 0 <= self.min_seconds <= self.max_seconds:
            raise ValueError(f"need 0 <= --min-seconds <= --max-seconds and --max-seconds > 0, got "
                             f"{self.min_seconds}, {self.max_seconds}")
        if not self.prompt_max_seconds > 0:
            raise ValueError(f"--prompt-max-seconds must be > 0, got {self.prompt_max_seconds}")
        # the sampling knobs are checked where they are used (the frame counts need the codec)
        SamplingConfig(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                       flow_steps=self.flow_steps, cfg_scale=self.cfg, seed=self.seed)


def build_parser() -> argparse.ArgumentParser:
    return config_parser(GenerateConfig, description=__doc__)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    cfg = config_from_args(GenerateConfig, parser.parse_args(argv), parser)
    print(json.dumps(synthesize(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
