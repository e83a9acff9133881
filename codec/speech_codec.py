"""Codec: the 12.5 Hz speech tokenizer (1 semantic VQ code + 36 FSQ acoustic levels per 80 ms frame).

Public interface (other parts code against it, see docs/codec.md):

    codec = Codec.load("ckpt/")                       # safetensors + config.json, never unpickles
    sem, ac = codec.encode(wav)                       # wav [B, 1, N] float at 24 kHz
    wav2 = codec.decode(sem, ac)                      # [B, 1, T * 1920]
    codec.codec_id                                    # "tiny-1a2b3c4d5e6f" (DESIGN.md §6)

Padding: encode pads each input with zeros at the end to T = ceil(N / 1920) whole frames. The encoder
is causal with zero look-ahead: frame t depends on samples [0, (t + 1) * 1920) only, so padding (or
anything) after a frame never changes that frame.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save, save_file
from torch import nn

from codec.autoencoder import Decoder, Encoder
from codec.config import CodecConfig, CodecConfigError
from codec.fsq import FSQ
from codec.vq import VectorQuantizer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


class CodecCheckpointError(RuntimeError):
    """A codec checkpoint directory is missing a file or does not match its config."""


class Codec(nn.Module):
    """Encoder -> (VQ semantic 256 | FSQ acoustic 36) -> Decoder. See the module docstring."""

    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        if not isinstance(config, CodecConfig):
            raise TypeError(f"Codec(config) needs a CodecConfig, got {type(config).__name__}")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.vq = VectorQuantizer(
            config.semantic_dim,
            config.semantic_codebook_size,
            config.vq_ema_decay,
            config.vq_dead_threshold,
            config.vq_kmeans_init,
        )
        self.fsq = FSQ(config.acoustic_dim, config.acoustic_levels)
        # ASR distillation head: semantic stream (12.5 Hz) -> teacher width. Tiny, always present so
        # that checkpoints of one config always have the same tensors.
        self.distill_head = nn.Linear(config.semantic_dim, config.teacher_dim)
        self._weights_sha256: str | None = None  # set by load(): hash of the file we read

    # ---- numbers of the contract ----
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def samples_per_frame(self) -> int:
        return self.config.samples_per_frame

    @property
    def semantic_codebook_size(self) -> int:
        return self.config.semantic_codebook_size

    @property
    def acoustic_dim(self) -> int:
        return self.config.acoustic_dim

    @property
    def acoustic_levels(self) -> int:
        return self.config.acoustic_levels

    @property
    def bitrate(self) -> float:
        return self.config.bitrate

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def n_frames(self, n_samples: int) -> int:
        """Frames produced for n_samples of audio: ceil(n / 1920)."""
        return math.ceil(int(n_samples) / self.samples_per_frame)

    @property
    def codec_id(self) -> str:
        """'<name>-<first 12 hex of SHA-256 of model.safetensors>' (DESIGN.md §6).

        For a loaded model it is the hash of the file read; for an unsaved one the hash of the bytes
        save() would write (the same bytes: no metadata, deterministic safetensors layout).
        """
        sha = self._weights_sha256
        if sha is None or self.training:
            sha = hashlib.sha256(self._serialized()).hexdigest()
        return codec_id(self.config.name, sha)

    def _state_for_save(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}

    def _serialized(self) -> bytes:
        return save(self._state_for_save())

    # ---- persistence ----
    def save(self, directory: str | Path) -> Path:
        """Write model.safetensors + config.json into directory (created). Returns the directory."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / (WEIGHTS_FILE + ".tmp")
        save_file(self._state_for_save(), str(tmp))
        tmp.replace(d / WEIGHTS_FILE)  # a reader never sees half a file
        meta = {"format_version": FORMAT_VERSION, "config": self.config.to_dict()}
        tmpc = d / (CONFIG_FILE + ".tmp")
        tmpc.write_text(json.dumps(meta, indent=2))
        tmpc.replace(d / CONFIG_FILE)
        self._weights_sha256 = _sha256_file(d / WEIGHTS_FILE)
        return d

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> Codec:
        """Rebuild a Codec from save()'s directory. Safetensors + JSON only: nothing is unpickled."""
        config, cfg_path, w_path = _read_checkpoint_config(directory)
        model = cls(config)
        state = load_file(str(w_path), device="cpu")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CodecCheckpointError(
                f"{w_path}: weights do not match {cfg_path} (missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}); were the files copied from different checkpoints?"
            )
        model._weights_sha256 = _sha256_file(w_path)
        return model.to(device).eval()

    # ---- inference ----
    def _check_wav(self, wav: torch.Tensor) -> None:
        if not torch.is_tensor(wav) or wav.dim() != 3 or wav.shape[1] != 1 or not wav.is_floating_point():
            shape = tuple(wav.shape) if torch.is_tensor(wav) else type(wav).__name__
            raise ValueError(f"encode expects a float tensor wav[B, 1, N] of mono 24 kHz audio, got {shape}")

    def _pad(self, wav: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        n = wav.shape[-1]
        if lengths is not None:
            # Zero everything past each item's end so its last, partial frame is the same as when the
            # item is encoded alone (which pads with zeros).
            pos = torch.arange(n, device=wav.device)[None, None, :]
            wav = wav * (pos < lengths.to(wav.device).view(-1, 1, 1)).to(wav.dtype)
        total = self.n_frames(n) * self.samples_per_frame
        return F.pad(wav, (0, total - n))

    def encode_latent(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """wav [B, 1, N] -> unquantized latent [B, T, 292] (semantic first, then acoustic)."""
        self._check_wav(wav)
        return self.encoder(self._pad(wav, lengths))

    def encode(
        self, wav: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """wav [B, 1, N] float, 24 kHz -> (semantic [B, T] int64 in 0..8191, acoustic [B, T, 36] int64 in 0..20).

        T = ceil(N / 1920); the input is zero-padded at the end. With lengths [B] (samples), frames at
        or past ceil(lengths[b] / 1920) are meaningless and the caller trims them.
        """
        self._check_wav(wav)
        b, _, n = wav.shape
        if n == 0:
            e = torch.zeros(b, 0, dtype=torch.long, device=wav.device)
            return e, torch.zeros(b, 0, self.acoustic_dim, dtype=torch.long, device=wav.device)
        z = self.encode_latent(wav, lengths)
        sem, ac = z.split([self.config.semantic_dim, self.config.acoustic_dim], dim=-1)
        return self.vq.encode(sem), self.fsq.encode(ac)

    def decode(self, semantic: torch.Tensor, acoustic: torch.Tensor) -> torch.Tensor:
        """(semantic [B, T] int, acoustic [B, T, 36] int) -> wav [B, 1, T * 1920] float at 24 kHz."""
        if semantic.dim() != 2 or acoustic.dim() != 3 or acoustic.shape[:2] != semantic.shape:
            raise ValueError(
                f"decode expects semantic[B, T] and acoustic[B, T, {self.acoustic_dim}], got "
                f"{tuple(semantic.shape)} and {tuple(acoustic.shape)}"
            )
        if acoustic.shape[-1] != self.acoustic_dim:
            raise ValueError(f"acoustic has {acoustic.shape[-1]} dims, the codec has {self.acoustic_dim}")
        b, t = semantic.shape
        if t == 0:
            return torch.zeros(b, 1, 0, device=semantic.device)
        z = torch.cat([self.vq.decode(semantic), self.fsq.to_float(acoustic)], dim=-1)
        return self.decoder(z.to(self.decoder.inp.weight.dtype))

    def acoustic_to_float(self, acoustic_idx: torch.Tensor) -> torch.Tensor:
        """FSQ level indices (0..20) -> values in [-1, 1] (float32), the TTS model's continuous target."""
        return self.fsq.to_float(acoustic_idx)

    def acoustic_from_float(self, x: torch.Tensor) -> torch.Tensor:
        """Values (clamped to [-1, 1]) -> nearest FSQ level indices (int64, 0..20)."""
        return self.fsq.from_float(x)

    # ---- training ----
    def forward(self, wav: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training pass. wav [B, 1, N] (N a multiple of 1920) -> dict with

        wav [B, 1, N] reconstruction, commit (VQ commitment MSE), codes [B, T], distill [B, T, 384]
        (teacher prediction from the semantic stream; None when distill_weight is 0). In training mode each item independently
        uses VQ with p_vq and FSQ quantize / dither / none with p_fsq / p_fsq_dither / rest.
        """
        cfg = self.config
        z = self.encoder(self._pad(wav, None))
        sem, ac = z.split([cfg.semantic_dim, cfg.acoustic_dim], dim=-1)
        b = wav.shape[0]
        if self.training:
            use_vq = torch.rand(b, device=wav.device) < cfg.p_vq
            u = torch.rand(b, device=wav.device)
            mode = torch.full((b,), FSQ.NONE, device=wav.device, dtype=torch.long)
            mode[u < cfg.p_fsq + cfg.p_fsq_dither] = FSQ.DITHER
            mode[u < cfg.p_fsq] = FSQ.QUANTIZE
        else:
            use_vq, mode = None, None
        v = self.vq(sem, use_vq)
        a = self.fsq(ac, mode).to(v["out"].dtype)
        recon = self.decoder(torch.cat([v["out"], a], dim=-1))
        return {
            "wav": recon,
            "commit": v["commit"],
            "codes": v["codes"],
            # Only when distilling: an output that gets no gradient would stall DDP.
            "distill": self.distill_head(v["out"]) if cfg.distill_weight > 0 else None,
        }


def codec_id(name: str, weights_sha256: str) -> str:
    """DESIGN §6: the codec's short name + the first 12 hex chars of its weights file's SHA-256.
    The one rule, for a loaded model (``Codec.codec_id``) and a checkpoint on disk (:func:`codec_info`)."""
    return f"{name}-{weights_sha256[:12]}"


def _read_checkpoint_config(directory: str | Path) -> tuple[CodecConfig, Path, Path]:
    """(config, config path, weights path) of a ``Codec.save`` directory; raises CodecCheckpointError."""
    d = Path(directory)
    cfg_path, w_path = d / CONFIG_FILE, d / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise CodecCheckpointError(
                f"{p}: missing; a codec checkpoint holds {CONFIG_FILE} and {WEIGHTS_FILE} (written by Codec.save)"
            )
    try:
        meta = json.loads(cfg_path.read_text())
        config = CodecConfig.from_dict(meta["config"])
    except (json.JSONDecodeError, KeyError, TypeError, CodecConfigError) as e:
        raise CodecCheckpointError(f"{cfg_path}: not a valid codec config ({e})") from e
    return config, cfg_path, w_path


@dataclass(frozen=True)
class CodecInfo:
    """What a job needs to know of a checkpoint without building the model."""

    codec_id: str
    sample_rate: int
    samples_per_frame: int
    frame_rate: float


def codec_info(directory: str | Path) -> CodecInfo:
    """``codec_id`` and rates of a saved codec, read from its files (the weights are hashed, not loaded)."""
    cfg, _, w_path = _read_checkpoint_config(directory)
    return CodecInfo(codec_id=codec_id(cfg.name, _sha256_file(w_path)), sample_rate=int(cfg.sample_rate),
                     samples_per_frame=int(cfg.samples_per_frame), frame_rate=float(cfg.frame_rate))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
