"""Encoder (24 kHz waveform -> 12.5 Hz latent) and its mirror, the Decoder."""

from __future__ import annotations

import torch
from torch import nn

from codec.blocks import CodecBlock, Downsample, RMSNorm, Upsample
from codec.config import CodecConfig


def _stage(cfg: CodecConfig, i: int) -> nn.Sequential:
    return nn.Sequential(
        *[
            CodecBlock(
                cfg.dims[i],
                cfg.head_dim,
                cfg.attn_window,
                cfg.conv_kernel,
                cfg.mlp_ratio,
                cfg.layer_scale_init,
            )
            for _ in range(cfg.depths[i])
        ]
    )


class Encoder(nn.Module):
    """wav [B, 1, N] (N a multiple of samples_per_frame) -> latent [B, T, latent_dim], T = N / 1920.

    240-sample patches (100 Hz) -> stage 0 blocks -> (downsample x2 -> blocks) x 3 -> 12.5 Hz -> linear
    to 292 dims. Frame t depends on samples [0, (t + 1) * 1920) only: zero look-ahead.
    """

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch = nn.Linear(cfg.patch_size, cfg.dims[0])
        self.stages = nn.ModuleList([_stage(cfg, i) for i in range(len(cfg.dims))])
        self.downs = nn.ModuleList(
            [Downsample(cfg.dims[i], cfg.dims[i + 1], s) for i, s in enumerate(cfg.strides)]
        )
        self.norm = RMSNorm(cfg.dims[-1])
        self.out = nn.Linear(cfg.dims[-1], cfg.latent_dim)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        b, _, n = wav.shape
        x = self.patch(wav.reshape(b, n // self.cfg.patch_size, self.cfg.patch_size))
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.downs):
                x = self.downs[i](x)
        return self.out(self.norm(x))


class Decoder(nn.Module):
    """latent [B, T, latent_dim] -> wav [B, 1, T * 1920]; mirrors the Encoder, also causal."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dims = cfg.dims[::-1]
        strides = cfg.strides[::-1]
        self.inp = nn.Linear(cfg.latent_dim, dims[0])
        rev = CodecConfig(**{**cfg.to_dict(), "dims": dims, "strides": strides, "depths": cfg.depths[::-1]})
        self.stages = nn.ModuleList([_stage(rev, i) for i in range(len(dims))])
        self.ups = nn.ModuleList([Upsample(dims[i], dims[i + 1], s) for i, s in enumerate(strides)])
        self.norm = RMSNorm(dims[-1])
        self.unpatch = nn.Linear(dims[-1], cfg.patch_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.inp(z)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.ups):
                x = self.ups[i](x)
        y = self.unpatch(self.norm(x))  # [B, T * 8, 240]
        return y.reshape(y.shape[0], 1, -1)
