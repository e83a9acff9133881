"""The acoustic head: a small bidirectional transformer predicting the flow-matching velocity.

For each audio frame it reads three tokens, (h, t, x_t): the backbone hidden state h [D], the flow
time t in [0, 1] and the noisy acoustic vector x_t [36] (FSQ levels mapped to [-1, 1]), and predicts
the velocity v = x_1 - x_0 of the straight path x_t = (1 - t) x_0 + t x_1 from noise x_0 to the data
x_1 (conditional flow matching, rectified-flow parameterisation).

Classifier-free guidance: in training h is replaced by a learned null vector with probability
``cfg_dropout``; at inference v = v_uncond + cfg * (v_cond - v_uncond).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.backbone import FeedForward, RMSNorm
from model.config import ModelConfig


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t [N] in [0, 1] -> sinusoidal features [N, dim] (t scaled by 1000 as in diffusion models)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs
    return torch.cat([args.cos(), args.sin()], dim=-1)


class _Block(nn.Module):
    """Pre-norm bidirectional attention + SwiGLU over the 3 tokens of each frame."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, eps: float):
        super().__init__()
        self.heads = heads
        self.norm1 = RMSNorm(dim, eps)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.norm2 = RMSNorm(dim, eps)
        self.ffn = FeedForward(dim, ffn_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, s, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)  # no mask: every token sees every token
        x = x + self.proj(a.transpose(1, 2).reshape(n, s, d))
        return x + self.ffn(self.norm2(x))


class FlowHead(nn.Module):
    """velocity(h [N, D], t [N], x_t [N, 36]) -> v [N, 36]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.head_dim_model
        self.cfg = cfg
        self.h_proj = nn.Linear(cfg.dim, d, bias=False)
        self.null_h = nn.Parameter(torch.zeros(cfg.dim))  # the "dropped h" of classifier-free guidance
        self.t_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.x_proj = nn.Linear(cfg.acoustic_dim, d)
        self.token_type = nn.Parameter(torch.zeros(3, d))  # which of (h, t, x_t) a token is
        self.blocks = nn.ModuleList(
            _Block(d, cfg.head_heads, cfg.head_ffn_dim, cfg.norm_eps) for _ in range(cfg.head_layers)
        )
        self.norm = RMSNorm(d, cfg.norm_eps)
        self.out = nn.Linear(d, cfg.acoustic_dim)

    def forward(
        self, h: torch.Tensor, t: torch.Tensor, x_t: torch.Tensor, drop_h: torch.Tensor | None = None
    ) -> torch.Tensor:
        """drop_h [N] bool: frames whose h is replaced by the null vector (CFG training / uncond pass)."""
        if drop_h is not None:
            h = torch.where(drop_h[:, None], self.null_h.to(h.dtype).expand_as(h), h)
        d = self.cfg.head_dim_model
        tokens = torch.stack(
            [self.h_proj(h), self.t_mlp(timestep_embedding(t, d).to(h.dtype)), self.x_proj(x_t.to(h.dtype))],
            dim=1,
        ) + self.token_type.to(h.dtype)
        for block in self.blocks:
            tokens = block(tokens)
        return self.out(self.norm(tokens[:, 2]))

    def loss(self, h: torch.Tensor, x1: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Weighted conditional flow-matching loss. h [N, D], x1 [N, 36] in [-1, 1], weight [N] -> scalar.

        Returned as sum(weight * mse) / sum(weight), mse averaged over the 36 dims.
        """
        n = x1.shape[0]
        x1 = x1.float()
        x0 = torch.randn_like(x1)
        if self.cfg.fm_time_sampling == "logit_normal":
            t = torch.sigmoid(torch.randn(n, device=x1.device))
        else:
            t = torch.rand(n, device=x1.device)
        x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
        drop = torch.rand(n, device=x1.device) < self.cfg.cfg_dropout if self.training else None
        v = self.forward(h, t, x_t, drop).float()
        mse = (v - (x1 - x0)).pow(2).mean(-1)
        return (mse * weight).sum() / weight.sum().clamp_min(1e-6)

    @torch.no_grad()
    def sample(
        self,
        h: torch.Tensor,
        steps: int = 8,
        cfg_scale: float = 1.2,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Euler integration from noise at t=0 to data at t=1. h [N, D] -> x1 [N, 36] (unquantised)."""
        n = h.shape[0]
        x = torch.randn(n, self.cfg.acoustic_dim, device=h.device, generator=generator, dtype=torch.float32)
        dt = 1.0 / steps
        for i in range(steps):
            t = torch.full((n,), i * dt, device=h.device)
            if cfg_scale == 1.0:
                v = self.forward(h, t, x).float()
            else:
                # One batched call for both branches: [cond; uncond].
                drop = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]).to(
                    h.device
                )
                v2 = self.forward(torch.cat([h, h]), torch.cat([t, t]), torch.cat([x, x]), drop).float()
                v_c, v_u = v2[:n], v2[n:]
                v = v_u + cfg_scale * (v_c - v_u)
            x = x + dt * v
        return x
