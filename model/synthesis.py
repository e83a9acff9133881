"""Synthesizer: text (+ voice prompt frames) -> audio frames -> 24 kHz waveform.

Autoregressive loop with a KV cache: the backbone's hidden state h gives the semantic token
(temperature, top-k, top-p sampling over 8192 codes + end-of-audio) and, through the flow head, the
36 acoustic values (Euler integration from noise, classifier-free guidance), which are snapped to
the 21 FSQ levels and fed back as the next frame's input. Stops at end-of-audio or ``max_frames``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from manifests import checkpoint
from manifests.checkpoint import CheckpointIncompatible, CheckpointMissing
from model.config import ModelConfig
from model.sequence import Specials
from model.text_tokenizer import TextTokenizer, load_tokenizer
from model.tts import TTSModel, float_to_levels


@dataclass
class SamplingConfig:
    temperature: float = 0.8
    top_k: int = 0  # 0 = off
    top_p: float = 0.95  # 1.0 = off
    flow_steps: int = 8
    cfg_scale: float = 1.2
    max_frames: int = 375  # 30 s at 12.5 Hz
    min_frames: int = 0  # end-of-audio is masked before this many frames
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("SamplingConfig: need temperature >= 0, 0 < top_p <= 1, top_k >= 0")
        if self.flow_steps < 1 or self.max_frames < 1:
            raise ValueError("SamplingConfig: flow_steps and max_frames must be >= 1")


def sample_logits(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator) -> torch.Tensor:
    """logits [1, V] -> token [1]. temperature 0 = greedy."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    logits = logits / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(logits, min(cfg.top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop tokens once the mass *before* them already exceeds top_p (always keep the first).
        drop = probs.cumsum(-1) - probs > cfg.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory (-> its newest checkpoint) or a checkpoint directory."""
    p = Path(path)
    if (p / "state.json").exists():
        return p
    ckpt = checkpoint.latest(p)
    if ckpt is None:
        raise CheckpointMissing(
            f"{p} is neither a checkpoint (state.json) nor a run directory with checkpoints/step_*: "
            "pass a model/train.py --output directory or one of its checkpoints/step_NNNNNNN"
        )
    return ckpt


class Synthesizer:
    def __init__(self, model: TTSModel, tokenizer: TextTokenizer, codec_id: str = ""):
        self.model, self.tokenizer, self.codec_id = model.eval(), tokenizer, codec_id
        self.sp = Specials(tokenizer.vocab_size)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> Synthesizer:
        ckpt = resolve_checkpoint(path)
        state = checkpoint.read_meta(ckpt)
        model = TTSModel(ModelConfig.from_dict(state["model_config"]))
        missing, unexpected = model.load_state_dict(checkpoint.read_tensors(ckpt, "model"), strict=False)
        if missing or unexpected:
            raise CheckpointIncompatible(
                f"{ckpt}: weights do not fit (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        return cls(
            model.to(device), load_tokenizer(state.get("tokenizer", "bytes")), state.get("codec_id", "")
        )

    @torch.no_grad()
    def generate(
        self,
        text: str,
        prompt_semantic: torch.Tensor | None = None,
        prompt_acoustic: torch.Tensor | None = None,
        cfg: SamplingConfig | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """-> semantic [T] long, acoustic [T, 36] long (FSQ levels), stopped_at_eoa.

        prompt_semantic [P], prompt_acoustic [P, 36]: frames of the voice to imitate (may be None).
        """
        cfg = cfg or SamplingConfig()
        m, sp = self.model, self.sp
        dev = next(m.parameters()).device
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        ad = m.cfg.acoustic_dim
        if prompt_semantic is None:
            prompt_semantic, prompt_acoustic = (
                torch.zeros(0, dtype=torch.long),
                torch.zeros(0, ad, dtype=torch.long),
            )
        ids = self.tokenizer.encode(text)
        P, N = len(prompt_semantic), len(ids)
        L = 4 + P + N
        txt = torch.zeros(L, dtype=torch.long)
        sem = torch.zeros(L, dtype=torch.long)
        ac = torch.zeros(L, ad, dtype=torch.long)
        is_audio = torch.zeros(L, dtype=torch.bool)
        txt[0], txt[1] = sp.bos, sp.prompt
        sem[2 : 2 + P], ac[2 : 2 + P], is_audio[2 : 2 + P] = (
            prompt_semantic.long(),
            prompt_acoustic.long(),
            True,
        )
        txt[2 + P] = sp.text
        txt[3 + P : 3 + P + N] = torch.tensor(ids, dtype=torch.long)
        txt[3 + P + N] = sp.audio
        h, cache = m.prefill(txt[None].to(dev), sem[None].to(dev), ac[None].to(dev), is_audio[None].to(dev))
        out_sem, out_ac = [], []
        stopped = False
        for i in range(cfg.max_frames):
            logits = m.semantic_logits(h).cpu()
            if i < cfg.min_frames:
                logits[:, m.eoa] = float("-inf")
            s = sample_logits(logits, cfg, gen)
            if int(s) == m.eoa:
                stopped = True
                break
            noise_gen = torch.Generator(device=dev).manual_seed(cfg.seed * 100_003 + i)
            x = m.flow_head.sample(
                h.float() if dev.type == "cpu" else h, cfg.flow_steps, cfg.cfg_scale, noise_gen
            )
            a = float_to_levels(x, m.cfg.acoustic_levels)
            out_sem.append(s)
            out_ac.append(a.cpu())
            h = m.step(s.to(dev), a, cache)
        if not out_sem:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, ad, dtype=torch.long), stopped
        return torch.cat(out_sem), torch.cat(out_ac), stopped
