"""ModelConfig and TrainConfig: every number of the TTS backbone, its heads, its data and its training.

Both are plain dataclasses validated in ``__post_init__`` (messages say how to fix the value) and saved
as JSON in the run directory (``config.json``), so a checkpoint always says how to rebuild its model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Contract numbers of the codec (DESIGN.md §6-7), owned by manifests.shards (the token spec); re-exported
# here for the model's modules. ModelConfig checks its copies against them.
from manifests.shards import (  # noqa: F401 - re-exported
    ACOUSTIC_DIM,
    ACOUSTIC_LEVELS,
    FRAME_RATE,
    SEMANTIC_CODEBOOK_SIZE,
    spec_mismatches,
)


class ConfigError(ValueError):
    """A config field has an invalid value; the message says which field and how to fix it."""


@dataclass
class ModelConfig:
    """Shapes of the backbone (Llama-style decoder) and of the two heads (DESIGN.md §8).

    Vocabularies: ``text_vocab_size`` rows for the text tokenizer plus ``N_TEXT_SPECIALS`` special
    tokens appended after them (see ``model.sequence``); the semantic input table has 8192 codes + 1
    end-of-audio row, the semantic output head 8192 + end-of-audio classes; the acoustic input is 36
    tables of 21 FSQ levels whose embeddings are summed with the semantic one.
    """

    name: str = "tiny"
    dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 0  # 0 = dim // n_heads
    ffn_dim: int = 256  # SwiGLU hidden width
    norm_eps: float = 1e-5
    rope_theta: float = 10_000.0
    # Packed-row attention: "sdpa" (dense boolean block-diagonal mask; runs everywhere) or "flex"
    # (FlexAttention block mask: skips cross-document blocks; compiled on CUDA; on CPU only without
    # gradients -- CPU training uses the dense mask, which gives the same numbers).
    attention: str = "sdpa"
    max_seq_len: int = 1024  # longest packed row the model is trained on (positions restart per document)
    text_vocab_size: int = (
        256  # 256 = byte-level tokenizer; a pretrained tokenizer's size when initialised from HF
    )
    tie_text_embeddings: bool = False  # unused by the TTS objective (no text loss), kept for HF loading
    # Acoustic flow-matching head: a small bidirectional transformer over 3 tokens (h, t, x_t).
    head_layers: int = 3
    head_dim_model: int = 128
    head_heads: int = 4
    head_ffn_dim: int = 256
    fm_weight: float = 1.0  # total loss = semantic CE + fm_weight * flow-matching loss
    cfg_dropout: float = 0.1  # probability of replacing h by a learned null vector in training (CFG)
    # Flow matching time sampling: t ~ sigmoid(N(0, 1)) ("logit-normal", SD3) or uniform.
    fm_time_sampling: str = "logit_normal"
    semantic_codebook_size: int = SEMANTIC_CODEBOOK_SIZE
    acoustic_dim: int = ACOUSTIC_DIM
    acoustic_levels: int = ACOUSTIC_LEVELS
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            if self.dim % self.n_heads:
                raise ConfigError(
                    f"ModelConfig({self.name}): dim={self.dim} is not divisible by n_heads={self.n_heads}; "
                    "set head_dim explicitly or pick n_heads dividing dim"
                )
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"ModelConfig({self.name}): n_heads={self.n_heads} must be a multiple of n_kv_heads="
                f"{self.n_kv_heads} (GQA shares each KV head among n_heads / n_kv_heads query heads)"
            )
        if self.head_dim % 2:
            raise ConfigError(f"ModelConfig({self.name}): head_dim={self.head_dim} must be even for RoPE")
        if self.head_dim_model % self.head_heads:
            raise ConfigError(
                f"ModelConfig({self.name}): head_dim_model={self.head_dim_model} must be divisible by "
                f"head_heads={self.head_heads}"
            )
        if not 0.0 <= self.cfg_dropout < 1.0:
            raise ConfigError(f"ModelConfig({self.name}): cfg_dropout={self.cfg_dropout} must be in [0, 1)")
        if self.attention not in ("sdpa", "flex"):
            raise ConfigError(f"ModelConfig({self.name}): attention={self.attention!r}; use 'sdpa' or 'flex'")
        if self.fm_time_sampling not in ("logit_normal", "uniform"):
            raise ConfigError(
                f"ModelConfig({self.name}): fm_time_sampling={self.fm_time_sampling!r}; use 'logit_normal' or 'uniform'"
            )
        for name in ("dim", "n_layers", "ffn_dim", "max_seq_len", "text_vocab_size", "head_layers"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ModelConfig({self.name}): {name} must be > 0, got {getattr(self, name)}")
        bad = spec_mismatches(f"ModelConfig({self.name})", semantic_codebook_size=self.semantic_codebook_size,
                              acoustic_dim=self.acoustic_dim, acoustic_levels=self.acoustic_levels)
        if bad:
            raise ConfigError(bad[0])

    @classmethod
    def tiny(cls) -> ModelConfig:
        """About 2.6 M parameters (mostly the 8193-way semantic table and head): CPU tests."""
        return cls()

    @classmethod
    def one_b(cls) -> ModelConfig:
        """Llama-3.2-1B-like backbone: 16 layers, d=2048, 32 query / 8 KV heads, SwiGLU 8192."""
        return cls(
            name="1b",
            dim=2048,
            n_layers=16,
            n_heads=32,
            n_kv_heads=8,
            ffn_dim=8192,
            rope_theta=500_000.0,
            max_seq_len=4096,
            head_dim_model=1024,
            head_heads=16,
            head_ffn_dim=4096,
        )

    @classmethod
    def three_b(cls) -> ModelConfig:
        """Ministral-3B-like backbone: 26 layers, d=3072, 32 query / 8 KV heads of 128, SwiGLU 9216."""
        return cls(
            name="3b",
            dim=3072,
            n_layers=26,
            n_heads=32,
            n_kv_heads=8,
            head_dim=128,
            ffn_dim=9216,
            rope_theta=1_000_000.0,
            max_seq_len=4096,
            head_dim_model=1024,
            head_heads=16,
            head_ffn_dim=4096,
        )

    @classmethod
    def named(cls, name: str) -> ModelConfig:
        presets = {"tiny": cls.tiny, "1b": cls.one_b, "3b": cls.three_b}
        if name not in presets:
            raise ConfigError(f"unknown model config {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"ModelConfig: unknown fields {sorted(unknown)} (written by a newer version?)")
        return cls(**d)


@dataclass
class DataConfig:
    """How token shards become packed training rows (DESIGN.md §6, §8). Durations in seconds."""

    seq_len: int = 1024  # packed row length, in positions (text tokens + audio frames + specials)
    batch_size: int = 4  # rows per micro-batch per rank
    shuffle_buffer: int = 64  # samples held for shuffling (0 = stream order)
    pack_buffer: int = 16  # sequences held for first-fit packing
    speaker_cache: int = 4  # segments remembered per speaker to draw voice prompts from
    max_speakers: int = 2048  # speakers remembered (least recently seen forgotten first)
    prompt_min_s: float = 3.0
    prompt_max_s: float = 25.0
    p_no_prompt: float = 0.05  # sequences trained without a voice prompt (so prompt-less generation works)
    silence_weight: float = 0.2  # loss weight of frames outside any word (+- silence_margin_s)
    silence_margin_s: float = 0.08
    num_workers: int = 0  # DataLoader workers per rank
    eval_shards: int = 1  # last N shards of --tokens held out for eval (0 = no eval unless --eval-tokens)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.seq_len < 16:
            raise ConfigError(
                f"DataConfig: seq_len={self.seq_len} is too short to hold a sequence (use >= 16)"
            )
        if not 0 < self.prompt_min_s <= self.prompt_max_s:
            raise ConfigError(
                f"DataConfig: need 0 < prompt_min_s ({self.prompt_min_s}) <= prompt_max_s ({self.prompt_max_s})"
            )
        if not 0.0 <= self.silence_weight <= 1.0:
            raise ConfigError(f"DataConfig: silence_weight={self.silence_weight} must be in [0, 1]")
        if not 0.0 <= self.p_no_prompt <= 1.0:
            raise ConfigError(f"DataConfig: p_no_prompt={self.p_no_prompt} must be in [0, 1]")
        if self.batch_size < 1 or self.pack_buffer < 1 or self.num_workers < 0 or self.shuffle_buffer < 0:
            raise ConfigError(
                "DataConfig: batch_size and pack_buffer must be >= 1, num_workers/shuffle_buffer >= 0"
            )


@dataclass
class TrainConfig:
    """Optimisation and run control. Steps count optimiser updates (each = grad_accum micro-batches)."""

    steps: int = 1000
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    grad_accum: int = 1
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU; or "bf16" / "fp32"
    compile: bool = False
    parallel: str = "ddp"  # ddp | fsdp (only used when world size > 1)
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 8
    ckpt_every: int = 200
    keep_checkpoints: int = 2
    seed: int = 0
    peak_tflops: float = 0.0  # per device, for MFU; 0 = guess from the device name (CPU: unknown)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        self.betas = tuple(self.betas)
        if self.steps < 1 or self.grad_accum < 1:
            raise ConfigError(
                f"TrainConfig: steps={self.steps} and grad_accum={self.grad_accum} must be >= 1"
            )
        if self.warmup_steps < 0:
            raise ConfigError(f"TrainConfig: warmup_steps={self.warmup_steps} must be >= 0")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"TrainConfig: precision={self.precision!r}; use auto, bf16 or fp32")
        if self.parallel not in ("ddp", "fsdp"):
            raise ConfigError(f"TrainConfig: parallel={self.parallel!r}; use ddp or fsdp")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"TrainConfig: min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        for name in ("log_every", "eval_every", "ckpt_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig: {name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def save_run_config(path: Path, model: ModelConfig, train: TrainConfig, extra: dict[str, Any]) -> None:
    """Write ``config.json`` (model + train + extra such as codec_id and tokenizer) atomically."""
    payload = {"model": model.to_dict(), "train": train.to_dict(), **extra}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    tmp.replace(path)
