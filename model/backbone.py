"""The backbone: a Llama-style causal decoder (RMSNorm, RoPE, GQA, SwiGLU, SDPA).

It sees embeddings, never ids (``model.tts`` builds them from text tokens and audio frames), and
returns hidden states. Parameter names follow Meta's Llama layout (``layers.{i}.attention.wq`` ...);
``model.hf_init`` maps a Hugging Face Llama/Mistral checkpoint onto them. RoPE uses the
``rotate_half`` convention of Hugging Face so those weights load without permutation.

Packed rows: ``positions`` restart at 0 for every document and the attention mask is block-diagonal
and causal, so a document's outputs do not depend on its neighbours in the row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from model.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 (bf16 mean of squares loses precision), return in the input dtype.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).type_as(x)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [B, L] (int) -> cos, sin [B, 1, L, head_dim] in fp32."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    )
    freqs = positions.float()[..., None] * inv_freq  # [B, L, head_dim/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos()[:, None], emb.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, L, Dh]; rotate pairs (i, i + Dh/2) as Hugging Face Llama does."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos + rotated * sin).type_as(x)


@dataclass
class KVCache:
    """Keys/values of every layer for incremental decoding: lists of [B, H_kv, T, Dh]."""

    keys: list[torch.Tensor | None] = field(default_factory=list)
    values: list[torch.Tensor | None] = field(default_factory=list)

    @classmethod
    def empty(cls, n_layers: int) -> KVCache:
        return cls([None] * n_layers, [None] * n_layers)

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else int(self.keys[0].shape[2])


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | BlockMask | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        b, length, _ = x.shape
        q = self.wq(x).view(b, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            if cache.keys[layer] is not None:
                k = torch.cat([cache.keys[layer], k], dim=2)
                v = torch.cat([cache.values[layer], v], dim=2)
            cache.keys[layer], cache.values[layer] = k, v
        if isinstance(mask, BlockMask):
            out = _flex_attention(q.device)(q, k, v, block_mask=mask, enable_gqa=True)
        elif mask is None:
            # Causal without a mask tensor lets SDPA pick the flash kernel. With a cache and one new
            # query the query attends to everything, which is_causal would get wrong.
            causal = cache is None or length > 1
            if cache is not None and length > 1 and k.shape[2] != length:
                raise ValueError("KV-cached prefill with a non-empty cache needs an explicit mask")
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        else:
            # With a mask, SDPA's fused kernels do not all take enable_gqa; repeating the KV heads
            # keeps it on the memory-efficient kernel instead of the O(L^2)-memory math fallback.
            rep = self.n_heads // self.n_kv_heads
            if rep > 1:
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(b, length, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg.dim, cfg.ffn_dim)

    def forward(self, x, cos, sin, mask, cache=None, layer=0):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, cache, layer)
        return x + self.feed_forward(self.ffn_norm(x))


_FLEX_COMPILED = None


def _flex_attention(device: torch.device):
    """FlexAttention, compiled on CUDA (the fused kernel); eager elsewhere (correct, slow)."""
    global _FLEX_COMPILED
    if device.type != "cuda":
        return flex_attention
    if _FLEX_COMPILED is None:
        _FLEX_COMPILED = torch.compile(flex_attention, dynamic=False)
    return _FLEX_COMPILED


def packed_block_mask(doc_ids: torch.Tensor) -> BlockMask:
    """doc_ids [B, L] -> FlexAttention BlockMask of the same block-diagonal causal pattern."""
    b, length = doc_ids.shape

    def mask_mod(bi, h, qi, ki):
        return (doc_ids[bi, qi] == doc_ids[bi, ki]) & (qi >= ki)

    return create_block_mask(mask_mod, b, None, length, length, device=doc_ids.device)


def packed_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """doc_ids [B, L] (-1 = padding) -> bool mask [B, 1, L, L], True where query i may attend key j.

    Block-diagonal (same document) and causal. Padding positions form their own "document", so
    every row has at least one allowed key (itself) and SDPA never produces NaN.
    """
    length = doc_ids.shape[1]
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=doc_ids.device).tril()
    return (same & causal)[:, None]


class Backbone(nn.Module):
    """Decoder stack: embeddings [B, L, D] -> hidden states [B, L, D] (after the final RMSNorm)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        doc_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """x [B, L, D]; positions [B, L] (restart per document); doc_ids [B, L] for packed rows or None
        (one causal document per row). With ``cache``, x holds only the new positions."""
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        if doc_ids is None:
            mask = None
        elif self.cfg.attention == "flex" and cache is None and (x.is_cuda or not torch.is_grad_enabled()):
            # FlexAttention has no CPU backward: CPU training falls back to the (equal) dense mask.
            mask = packed_block_mask(doc_ids)
        else:
            mask = packed_causal_mask(doc_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, cache, i)
        return self.norm(x)
