"""Model FLOPs of a training step and the MFU estimate.

Training FLOPs = 3 x forward (backward costs two forwards), matmuls only (the usual MFU convention,
PaLM appendix B): 2 FLOPs per multiply-add, so 6 per parameter per token for the dense layers, plus
causal attention scores and values, 6 * H * Dh * len^2 per layer for a document of ``len`` positions
(half of the len^2 pairs, 4 * H * Dh FLOPs each, x3). The heads are counted where they run: the
semantic head on predicting positions only, the flow head on 3 tokens per target frame.
"""

from __future__ import annotations

import torch

from model.config import ModelConfig

# Dense bf16 peak per device, TFLOP/s (vendor datasheets, without sparsity).
PEAK_TFLOPS = {
    "H100": 989.0,
    "H200": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10": 125.0,
    "L4": 121.0,
}


def backbone_matmul_params(cfg: ModelConfig) -> int:
    attn = cfg.dim * cfg.head_dim * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
    ffn = 3 * cfg.dim * cfg.ffn_dim
    return cfg.n_layers * (attn + ffn)


def flow_head_matmul_params(cfg: ModelConfig) -> int:
    d = cfg.head_dim_model
    per_block = 4 * d * d + 3 * d * cfg.head_ffn_dim
    return cfg.head_layers * per_block


def step_flops(cfg: ModelConfig, batch: dict[str, torch.Tensor]) -> float:
    """Training FLOPs of one micro-batch (forward + backward)."""
    doc_ids = batch["doc_ids"]
    n_tokens = int((doc_ids >= 0).sum())
    # Sum over documents of len^2 (attention pairs x 2), padding excluded.
    sq = 0
    for row in doc_ids:
        row = row[row >= 0]
        if row.numel():
            sq += int((torch.bincount(row).double() ** 2).sum())
    n_sem = int((batch["sem_target"] != -100).sum())
    n_flow = int(batch["ac_valid"].sum())
    dense = 6.0 * backbone_matmul_params(cfg) * n_tokens
    attn = 6.0 * cfg.n_layers * cfg.n_heads * cfg.head_dim * sq
    heads = 6.0 * cfg.dim * (cfg.semantic_codebook_size + 1) * n_sem
    heads += 6.0 * (flow_head_matmul_params(cfg) * 3 + cfg.dim * cfg.head_dim_model) * n_flow
    return dense + attn + heads


def peak_tflops(device: torch.device, override: float = 0.0) -> float | None:
    """Peak bf16 TFLOP/s of one device: ``override`` if > 0, else from the CUDA device name; None on CPU."""
    if override > 0:
        return override
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_TFLOPS.items():
            if key in name:
                return value
    return None
