"""FSQ: finite scalar quantization of the 36 acoustic dims to 21 levels each (Mentzer et al. 2023)."""

from __future__ import annotations

import torch
from torch import nn


class FSQ(nn.Module):
    """Bounds each dim with tanh to [-1, 1] and rounds it to one of `levels` evenly spaced values.

    Level index k in 0..L-1 <-> value 2k/(L-1) - 1 (L odd, so 0.0 is a level). Training modes per
    item (paper): quantize (straight-through), dither (uniform noise of one step width), or none.
    """

    QUANTIZE, DITHER, NONE = 0, 1, 2

    def __init__(self, dim: int, levels: int) -> None:
        super().__init__()
        self.dim = dim
        self.levels = levels
        self.half = (levels - 1) / 2  # 10 for 21 levels

    def to_float(self, idx: torch.Tensor) -> torch.Tensor:
        """Level indices (any int shape) -> values in [-1, 1] (float32)."""
        return idx.float() / self.half - 1.0

    def from_float(self, x: torch.Tensor) -> torch.Tensor:
        """Values (any float shape; clamped to [-1, 1]) -> nearest level indices (int64)."""
        return torch.round((x.float().clamp(-1.0, 1.0) + 1.0) * self.half).long()

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z.float())

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Unbounded latent [..., dim] -> level indices [..., dim] in 0..L-1."""
        return self.from_float(self.bound(z))

    def forward(self, z: torch.Tensor, mode: torch.Tensor | None = None) -> torch.Tensor:
        """z [B, T, dim] -> bounded, (partly) quantized values [B, T, dim] with straight-through grads.

        mode [B] in {QUANTIZE, DITHER, NONE}; None = quantize all (inference).
        """
        x = self.bound(z)
        q = x + (torch.round(x * self.half) / self.half - x).detach()
        if mode is None:
            return q
        noise = (torch.rand_like(x) * 2 - 1) / self.half / 2  # +-half a step: the rounding error's range
        m = mode.view(-1, *([1] * (x.dim() - 1)))
        return torch.where(m == self.QUANTIZE, q, torch.where(m == self.DITHER, x + noise, x))
