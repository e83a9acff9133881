"""TTSModel: input embeddings + backbone + semantic head + flow-matching acoustic head (DESIGN.md §8).

Input at an audio frame: semantic embedding + the sum of 36 acoustic-level embeddings (37 in all);
at a text position: the text embedding. The semantic head is a linear layer over 8192 codes +
end-of-audio trained with cross-entropy; the acoustic head (``model.flow_head``) is trained with
conditional flow matching on the FSQ values mapped to [-1, 1]. Both losses are weighted per frame
(silent frames count less, see ``model.sequence``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.backbone import Backbone, KVCache
from model.config import ACOUSTIC_LEVELS, ModelConfig
from model.flow_head import FlowHead
from model.sequence import EOA, IGNORE, Specials


def levels_to_float(idx: torch.Tensor, levels: int = ACOUSTIC_LEVELS) -> torch.Tensor:
    """FSQ level index 0..levels-1 -> value in [-1, 1] (21 levels: idx / 10 - 1), as codec.acoustic_to_float."""
    return idx.float() * (2.0 / (levels - 1)) - 1.0


def float_to_levels(x: torch.Tensor, levels: int = ACOUSTIC_LEVELS) -> torch.Tensor:
    """Value in [-1, 1] -> nearest FSQ level index (clamped), as codec.acoustic_from_float."""
    return torch.round((x.float().clamp(-1, 1) + 1.0) * ((levels - 1) / 2.0)).long()


class TTSModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.specials = Specials(cfg.text_vocab_size)
        self.text_embeddings = nn.Embedding(cfg.text_vocab_size + Specials.COUNT, cfg.dim)
        self.semantic_embeddings = nn.Embedding(cfg.semantic_codebook_size + 1, cfg.dim)  # +1: EOA row
        # 36 tables of 21 levels stored as one [36*21, D] table; a frame's 36 rows are summed.
        self.acoustic_embeddings = nn.Embedding(cfg.acoustic_dim * cfg.acoustic_levels, cfg.dim)
        self.register_buffer(
            "acoustic_offsets", torch.arange(cfg.acoustic_dim) * cfg.acoustic_levels, persistent=False
        )
        self.backbone = Backbone(cfg)
        self.semantic_head = nn.Linear(cfg.dim, cfg.semantic_codebook_size + 1, bias=False)
        self.flow_head = FlowHead(cfg)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
        # The 37 frame embeddings are summed: scale each so the sum has the text embeddings' scale.
        with torch.no_grad():
            self.acoustic_embeddings.weight.mul_(1.0 / self.cfg.acoustic_dim**0.5)
            # Residual output projections scaled by depth (GPT-2 / Llama practice) for a stable start.
            for layer in self.backbone.layers:
                layer.attention.wo.weight.mul_(1.0 / (2 * self.cfg.n_layers) ** 0.5)
                layer.feed_forward.w2.weight.mul_(1.0 / (2 * self.cfg.n_layers) ** 0.5)
            nn.init.zeros_(self.flow_head.out.weight)
            nn.init.zeros_(self.flow_head.out.bias)

    # ---- inputs ----
    def embed(
        self, text: torch.Tensor, semantic: torch.Tensor, acoustic: torch.Tensor, is_audio: torch.Tensor
    ) -> torch.Tensor:
        """text, semantic [B, L]; acoustic [B, L, 36]; is_audio [B, L] bool -> embeddings [B, L, D]."""
        b, length = text.shape
        ac_ids = (acoustic + self.acoustic_offsets).reshape(b * length, -1)
        # embedding_bag sums the 36 rows without materialising [B, L, 36, D].
        ac = F.embedding_bag(ac_ids, self.acoustic_embeddings.weight, mode="sum").view(b, length, -1)
        audio = self.semantic_embeddings(semantic) + ac
        return torch.where(is_audio[..., None], audio, self.text_embeddings(text))

    # ---- training ----
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Packed batch (see ``model.packing``) -> {"loss", "semantic_ce", "flow", "semantic_acc", weights}."""
        x = self.embed(batch["text"], batch["semantic"], batch["acoustic"], batch["is_audio"])
        h = self.backbone(x, batch["positions"], batch["doc_ids"])
        return self.losses(h, batch)

    def losses(self, h: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sem_target, weight = batch["sem_target"], batch["weight"].float()
        sel = sem_target != IGNORE
        # Only predicting positions go through the 8193-way head (a small share of a packed row).
        logits = self.semantic_head(h[sel]).float()
        ce = F.cross_entropy(logits, sem_target[sel], reduction="none")
        w = weight[sel]
        semantic_ce = (ce * w).sum() / w.sum().clamp_min(1e-6)
        acc = (logits.argmax(-1) == sem_target[sel]).float().mean() if sel.any() else logits.new_zeros(())
        av = batch["ac_valid"]
        x1 = levels_to_float(batch["ac_target"][av], self.cfg.acoustic_levels)
        flow = self.flow_head.loss(h[av], x1, weight[av])
        loss = semantic_ce + self.cfg.fm_weight * flow
        return {
            "loss": loss,
            "semantic_ce": semantic_ce.detach(),
            "flow": flow.detach(),
            "semantic_acc": acc.detach(),
            "n_sem": sel.sum().detach(),
            "w_sem": w.sum().detach(),
            "w_flow": weight[av].sum().detach(),
        }

    # ---- generation ----
    @torch.no_grad()
    def prefill(
        self, text: torch.Tensor, semantic: torch.Tensor, acoustic: torch.Tensor, is_audio: torch.Tensor
    ) -> tuple[torch.Tensor, KVCache]:
        """One document [1, L] -> (last hidden state [1, D], filled KV cache)."""
        cache = KVCache.empty(self.cfg.n_layers)
        positions = torch.arange(text.shape[1], device=text.device)[None]
        h = self.backbone(self.embed(text, semantic, acoustic, is_audio), positions, None, cache)
        return h[:, -1], cache

    @torch.no_grad()
    def step(self, semantic: torch.Tensor, acoustic: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Feed one frame (semantic [1], acoustic [1, 36]) -> next hidden state [1, D]."""
        pos = torch.tensor([[cache.length]], device=semantic.device)
        dummy_text = torch.zeros(1, 1, dtype=torch.long, device=semantic.device)
        x = self.embed(
            dummy_text,
            semantic[:, None],
            acoustic[:, None],
            torch.ones(1, 1, dtype=torch.bool, device=semantic.device),
        )
        return self.backbone(x, pos, None, cache)[:, -1]

    def semantic_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.semantic_head(h).float()

    @property
    def eoa(self) -> int:
        return EOA

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(
                m.weight.numel()
                for m in (self.text_embeddings, self.semantic_embeddings, self.acoustic_embeddings)
            )
        return n
