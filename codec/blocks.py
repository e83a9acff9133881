"""Causal building blocks of the codec's encoder and decoder.

Everything here is causal along time: output step t depends on input steps <= t only. That is what
lets the encoder promise that padding at the end never changes earlier frames, and lets the decoder
stream. Tensors are [B, T, C] (time-major, like a transformer) unless a docstring says otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMS normalisation over the last dimension with a learned gain."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32: bf16 sums of squares lose too much precision on long channels.
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class LayerScale(nn.Module):
    """Per-channel residual gain, initialised small so deep stacks start close to identity."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype)


class CausalDepthwiseConv(nn.Module):
    """Depthwise conv over time, left-padded by kernel-1 so it never looks ahead. [B, T, C] -> [B, T, C]."""

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(dim, dim, kernel, groups=dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pad(x.transpose(1, 2), (self.kernel - 1, 0))
        y = self.conv(y).transpose(1, 2)
        return self.proj(F.gelu(y))


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi head slopes 2^(-8 i / H), i = 1..H (Press et al. 2022). [H]."""
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / n_heads) for i in range(n_heads)])


class SlidingWindowAttention(nn.Module):
    """Causal self-attention over the last `window` steps, with ALiBi position bias and QK-norm.

    Computed blockwise: queries in blocks of `window` attend to their own block and the previous
    one, so memory is O(T * window), not O(T^2), and 30 s inputs stay cheap. [B, T, C] -> [B, T, C].

    Two kernels compute the same thing. On CUDA, ``F.scaled_dot_product_attention`` (fused, never
    stores the scores). Elsewhere, plain matmuls with a broadcast [H, 1, W, 2W] bias: on CPU, SDPA with
    a float mask takes its unfused path and adds masking checks and a full [H * nb, W, 2W] mask, which
    made it 2x slower than the matmuls (bench/codec_inference.py). ``use_sdpa`` forces one (tests compare them).
    """

    def __init__(self, dim: int, head_dim: int, window: int) -> None:
        super().__init__()
        self.n_heads = dim // head_dim
        self.head_dim = head_dim
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim)
        self.k_norm = RMSNorm(head_dim)
        self.register_buffer("slopes", alibi_slopes(self.n_heads), persistent=False)
        self.use_sdpa: bool | None = None  # None: SDPA on CUDA, matmuls elsewhere

    def _window_bias(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Additive bias [H, 1, W, 2W] of one block: ALiBi inside the window, -inf outside it."""
        w = self.window
        i = torch.arange(w, device=device)[:, None]
        j = torch.arange(2 * w, device=device)[None, :]
        dist = (i + w - j).float()  # query position minus key position
        allowed = (dist >= 0) & (dist < w)
        bias = -self.slopes.to(device)[:, None, None] * dist  # [H, W, 2W]
        return bias.masked_fill(~allowed, float("-inf"))[:, None].to(dtype)

    def _bias(self, n_blocks: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The full mask [H * n_blocks, W, 2W] for SDPA: the window bias, and -inf before t=0."""
        w = self.window
        bias = self._window_bias(device, torch.float32).repeat(1, n_blocks, 1, 1)  # [H, nb, W, 2W]
        # In the first block the "previous block" is zero padding before the signal starts.
        bias[:, 0, :, :w] = float("-inf")
        return bias.reshape(self.n_heads * n_blocks, w, 2 * w).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        h, d, w = self.n_heads, self.head_dim, self.window
        q, k, v = self.qkv(x).view(b, t, 3, h, d).unbind(2)
        q, k = self.q_norm(q), self.k_norm(k)
        nb = math.ceil(t / w)
        pad = nb * w - t
        use_sdpa = x.is_cuda if self.use_sdpa is None else self.use_sdpa
        if use_sdpa:
            y = self._attend_sdpa(q, k, v, nb, pad)
        else:
            y = self._attend_matmul(q, k, v, nb, pad)
        y = y.reshape(b, h, nb * w, d)[:, :, :t].transpose(1, 2).reshape(b, t, c)
        return self.out(y)

    def _attend_matmul(self, q, k, v, nb: int, pad: int) -> torch.Tensor:
        """q, k, v [B, T, H, D] -> [B, H, nb, W, D]."""
        b, _, h, d = q.shape
        w = self.window
        # Scale q, not the scores: q has D = 32 values per step, the scores 2W = 64.
        qb = F.pad(q * d**-0.5, (0, 0, 0, 0, 0, pad)).view(b, nb, w, h, d).permute(0, 3, 1, 2, 4)

        def windows(z: torch.Tensor) -> torch.Tensor:  # [B, T, H, D] -> [B, H, nb, 2W, D], no concat
            z = F.pad(z, (0, 0, 0, 0, w, pad))  # one block of zeros before t=0
            return z.unfold(1, 2 * w, w).permute(0, 2, 1, 4, 3)

        s = torch.matmul(qb, windows(k).transpose(-1, -2))  # [B, H, nb, W, 2W]
        s.add_(self._window_bias(s.device, s.dtype))
        s[:, :, 0, :, :w] = float("-inf")  # block 0's "previous block" is padding before the signal
        return torch.matmul(s.softmax(-1), windows(v))

    def _attend_sdpa(self, q, k, v, nb: int, pad: int) -> torch.Tensor:
        """q, k, v [B, T, H, D] -> [B, H, nb, W, D] with one fused kernel."""
        b, _, h, d = q.shape
        w = self.window

        def blocks(z: torch.Tensor) -> torch.Tensor:  # [B, T, H, D] -> [B, H, nb, W, D]
            z = F.pad(z, (0, 0, 0, 0, 0, pad))
            return z.view(b, nb, w, h, d).permute(0, 3, 1, 2, 4)

        qb, kb, vb = blocks(q), blocks(k), blocks(v)
        prev = lambda z: F.pad(z, (0, 0, 0, 0, 1, 0))[:, :, :-1]  # noqa: E731 - shift blocks by one
        kb = torch.cat([prev(kb), kb], dim=3)  # [B, H, nb, 2W, D]
        vb = torch.cat([prev(vb), vb], dim=3)
        y = F.scaled_dot_product_attention(
            qb.reshape(b, h * nb, w, d),
            kb.reshape(b, h * nb, 2 * w, d),
            vb.reshape(b, h * nb, 2 * w, d),
            attn_mask=self._bias(nb, q.device, qb.dtype),
        )
        return y.view(b, h, nb, w, d)


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class CodecBlock(nn.Module):
    """One pre-norm residual block: causal conv, sliding-window attention, MLP, each layer-scaled."""

    def __init__(self, dim: int, head_dim: int, window: int, kernel: int, mlp_ratio: float, ls_init: float):
        super().__init__()
        self.norm1, self.conv, self.ls1 = (
            RMSNorm(dim),
            CausalDepthwiseConv(dim, kernel),
            LayerScale(dim, ls_init),
        )
        self.norm2, self.attn = RMSNorm(dim), SlidingWindowAttention(dim, head_dim, window)
        self.ls2 = LayerScale(dim, ls_init)
        self.norm3, self.mlp, self.ls3 = RMSNorm(dim), MLP(dim, mlp_ratio), LayerScale(dim, ls_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.conv(self.norm1(x)))
        x = x + self.ls2(self.attn(self.norm2(x)))
        return x + self.ls3(self.mlp(self.norm3(x)))


class Downsample(nn.Module):
    """Merge `stride` consecutive steps into one (a conv with kernel = stride): [B, T, Ci] -> [B, T/s, Co].

    Kernel = stride means an output step sees exactly the input steps it covers: no look-ahead.
    """

    def __init__(self, dim_in: int, dim_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.proj = nn.Linear(dim_in * stride, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        return self.proj(x.reshape(b, t // self.stride, c * self.stride))


class Upsample(nn.Module):
    """Split each step into `stride` steps (a transposed conv with kernel = stride): [B, T, Ci] -> [B, T*s, Co]."""

    def __init__(self, dim_in: int, dim_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.dim_out = dim_out
        self.proj = nn.Linear(dim_in, dim_out * stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return self.proj(x).reshape(b, t * self.stride, self.dim_out)
