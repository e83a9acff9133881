"""Semantic VQ: one 8192 x 256 codebook, trained by EMA, data-initialised, with dead-code restarts.

Why this recipe: a big codebook trained by gradients collapses to a few codes. EMA k-means updates
(van den Oord 2017, SoundStream/Moshi) move every used code to the mean of its vectors; codes that
nobody uses are restarted on random current latents, so usage stays spread over the whole book.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x)
    return x


def _broadcast(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(x, 0)
    return x


class VectorQuantizer(nn.Module):
    """z [B, T, dim] -> nearest codebook vectors. The codebook is a buffer (saved, not optimised).

    Buffers: ``codebook`` [K, D], ``cluster_size`` [K] (EMA count of vectors per step), ``embed_sum``
    [K, D] (EMA sum of the vectors), ``initialized`` (0/1).
    """

    def __init__(self, dim: int, size: int, decay: float, dead_ratio: float, data_init: bool) -> None:
        super().__init__()
        self.dim, self.size, self.decay = dim, size, decay
        self.dead_ratio = dead_ratio
        self.data_init = data_init
        self.register_buffer("codebook", torch.randn(size, dim) * dim**-0.5)
        self.register_buffer("cluster_size", torch.ones(size))
        self.register_buffer("embed_sum", self.codebook.clone())
        self.register_buffer("initialized", torch.tensor(0.0 if data_init else 1.0))
        self._norms_cache: tuple | None = None  # (codebook storage, version, device), |c|^2

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """[..., D] -> code indices [...] (int64): argmin of the squared L2 distance.

        argmin_k |z - c_k|^2 = argmin_k (|c_k|^2 - 2 z.c_k): |z|^2 is the same for every k, so it is
        left out, and the rest is one fused matmul (addmm). The search always runs in fp32, autocast
        or not: in bf16 the distances to 8192 codes tie and flip the nearest code.
        """
        flat = z.reshape(-1, self.dim).float()
        with torch.autocast(device_type=flat.device.type, enabled=False):
            cb = self.codebook.float()
            d = torch.addmm(self._codebook_norms(cb), flat, cb.t(), alpha=-2.0)
        return d.argmin(1).view(z.shape[:-1])

    def _codebook_norms(self, cb: torch.Tensor) -> torch.Tensor:
        """|c_k|^2 [K], cached until the codebook changes (training, load_state_dict, .to()): in
        inference it is the same for every call, and computing it costs a pass over the codebook."""
        key = (self.codebook.data_ptr(), self.codebook._version, cb.device)
        if self._norms_cache is None or self._norms_cache[0] != key:
            self._norms_cache = (key, cb.pow(2).sum(1))
        return self._norms_cache[1]

    def decode(self, idx: torch.Tensor) -> torch.Tensor:
        """Code indices [...] -> vectors [..., D] (float32)."""
        return F.embedding(idx.long(), self.codebook.float())

    @torch.no_grad()
    def _init_from(self, flat: torch.Tensor) -> None:
        # Data init: codes start on random latents (with replacement: a batch is smaller than 8192).
        pick = torch.randint(0, flat.shape[0], (self.size,), device=flat.device)
        cb = flat[pick] + 1e-3 * flat.std() * torch.randn(self.size, self.dim, device=flat.device)
        cb = _broadcast(cb)
        usage = flat.shape[0] / self.size
        self.codebook.copy_(cb)
        self.cluster_size.fill_(usage)
        self.embed_sum.copy_(cb * usage)
        self.initialized.fill_(1.0)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        counts = torch.bincount(idx, minlength=self.size).float()
        sums = torch.zeros_like(self.embed_sum).index_add_(0, idx, flat)
        _all_reduce(counts)
        _all_reduce(sums)
        n_vectors = counts.sum()
        self.cluster_size.lerp_(counts, 1 - self.decay)
        self.embed_sum.lerp_(sums, 1 - self.decay)
        # Laplace smoothing keeps empty clusters from dividing by zero.
        n = self.cluster_size.sum()
        size = (self.cluster_size + 1e-5) / (n + self.size * 1e-5) * n
        self.codebook.copy_(self.embed_sum / size[:, None])
        # Dead codes: used far less than a uniform share of the vectors -> restart on random latents.
        uniform = n_vectors / self.size
        dead = self.cluster_size < self.dead_ratio * uniform
        n_dead = int(dead.sum())
        if n_dead:
            pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
            new = _broadcast(flat[pick].contiguous())
            self.codebook[dead] = new
            self.cluster_size[dead] = uniform
            self.embed_sum[dead] = new * uniform

    def forward(self, z: torch.Tensor, use_vq: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """z [B, T, D] -> dict(out [B, T, D], codes [B, T], commit (scalar MSE)).

        use_vq [B] bool: items whose latent is quantized (straight-through); the others bypass VQ
        (training). None = quantize all. The EMA update uses every item: the codebook should track
        the latent distribution whether or not this step's decoder saw the quantized version.
        """
        flat = z.reshape(-1, self.dim).float()
        if self.training and not bool(self.initialized):
            self._init_from(flat.detach())
        codes = self.encode(z)
        q = self.decode(codes).to(z.dtype)
        if self.training:
            self._ema_update(flat.detach(), codes.reshape(-1))
        commit = F.mse_loss(z.float(), q.detach().float())
        q_st = z + (q - z).detach()
        if use_vq is not None:
            q_st = torch.where(use_vq.view(-1, 1, 1), q_st, z)
        return {"out": q_st, "codes": codes, "commit": commit}

    @staticmethod
    def usage(codes: torch.Tensor, size: int) -> dict[str, float]:
        """Perplexity (exp entropy) and fraction of codes used by a set of code indices."""
        counts = torch.bincount(codes.reshape(-1).long(), minlength=size).float()
        p = counts / counts.sum().clamp(min=1)
        ent = -(p[p > 0] * p[p > 0].log()).sum()
        return {"perplexity": float(ent.exp()), "used_frac": float((counts > 0).float().mean())}
