"""Initialise the backbone from a local Hugging Face Llama/Mistral checkpoint (no hub access).

The directory needs ``config.json`` and ``model.safetensors`` (or ``model.safetensors.index.json``
with its shards), and a tokenizer (``tokenizer.json`` ...) that then replaces the byte tokenizer.
Weights map one to one (``model.layers.{i}.self_attn.q_proj`` -> ``backbone.layers.{i}.attention.wq``
...); RoPE uses the same ``rotate_half`` convention, so no permutation is needed. The text
embedding rows come from ``embed_tokens``; the TTS special tokens, the audio embeddings and both
heads start from random init. ``lm_head`` is not used (the TTS model predicts no text).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors import safe_open

from model.config import ConfigError, ModelConfig

log = logging.getLogger("model.hf_init")

SUPPORTED = ("llama", "mistral", "ministral", "qwen2")


def _hf_config(path: str | Path) -> dict:
    f = Path(path) / "config.json"
    if not f.exists():
        raise ConfigError(f"{path}: no config.json; --init-from needs a local Hugging Face model directory")
    cfg = json.loads(f.read_text())
    if "text_config" in cfg:  # multimodal wrappers (e.g. Mistral3) keep the decoder here
        cfg = {
            **cfg["text_config"],
            "model_type": cfg["text_config"].get("model_type", cfg.get("model_type")),
        }
    if cfg.get("model_type") not in SUPPORTED:
        raise ConfigError(
            f"{f}: model_type {cfg.get('model_type')!r} is not a Llama-style decoder ({SUPPORTED})"
        )
    return cfg


def model_config_from_hf(path: str | Path, base: ModelConfig) -> ModelConfig:
    """Backbone shapes from the HF config; head shapes and other fields from ``base``."""
    c = _hf_config(path)
    if c.get("rope_scaling"):
        log.warning(
            "%s: rope_scaling %s is ignored (plain RoPE theta=%s is used)",
            path,
            c["rope_scaling"],
            c.get("rope_theta"),
        )
    if c.get("attention_bias") or c.get("model_type") == "qwen2":
        raise ConfigError(f"{path}: attention biases are not supported by this backbone (Llama/Mistral only)")
    n_heads = int(c["num_attention_heads"])
    cfg = base.to_dict()
    cfg.update(
        name=f"hf:{Path(path).name}",
        dim=int(c["hidden_size"]),
        n_layers=int(c["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(c.get("num_key_value_heads") or n_heads),
        head_dim=int(c.get("head_dim") or c["hidden_size"] // n_heads),
        ffn_dim=int(c["intermediate_size"]),
        norm_eps=float(c.get("rms_norm_eps", 1e-5)),
        rope_theta=float(c.get("rope_theta", 10_000.0)),
        text_vocab_size=int(c["vocab_size"]),
    )
    return ModelConfig.from_dict(cfg)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.exists()
        else ["model.safetensors"]
    )
    out = {}
    for name in files:
        f = path / name
        if not f.exists():
            raise ConfigError(f"{f} is missing (the backbone is loaded from safetensors only; no pickles)")
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                if k.startswith("model.") or k.startswith("language_model.model."):
                    out[k.removeprefix("language_model.")] = st.get_tensor(k)
    return out


_MAP = [
    (r"model\.layers\.(\d+)\.self_attn\.q_proj\.weight", "backbone.layers.{}.attention.wq.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.k_proj\.weight", "backbone.layers.{}.attention.wk.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.v_proj\.weight", "backbone.layers.{}.attention.wv.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.weight", "backbone.layers.{}.attention.wo.weight"),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj\.weight", "backbone.layers.{}.feed_forward.w1.weight"),
    (r"model\.layers\.(\d+)\.mlp\.up_proj\.weight", "backbone.layers.{}.feed_forward.w3.weight"),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.weight", "backbone.layers.{}.feed_forward.w2.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", "backbone.layers.{}.attention_norm.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", "backbone.layers.{}.ffn_norm.weight"),
    (r"model\.norm\.weight", "backbone.norm.weight"),
]


@torch.no_grad()
def load_hf_backbone(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Copy the HF decoder's weights into ``model`` (a TTSModel); returns the names it filled."""
    path = Path(path)
    hf = _read_weights(path)
    params = dict(model.named_parameters())
    filled = []
    for key, t in hf.items():
        if key == "model.embed_tokens.weight":
            dst = params["text_embeddings.weight"]
            if t.shape[0] > dst.shape[0] - 5 or t.shape[1] != dst.shape[1]:
                raise ConfigError(
                    f"{path}: embed_tokens {tuple(t.shape)} does not fit text embeddings {tuple(dst.shape)}"
                )
            dst[: t.shape[0]].copy_(t.to(dst.dtype))
            filled.append("text_embeddings.weight")
            continue
        for pattern, target in _MAP:
            m = re.fullmatch(pattern, key)
            if m:
                name = target.format(*m.groups())
                if name not in params:
                    raise ConfigError(
                        f"{path}: {key} has no place in this model ({name}); is the config right?"
                    )
                if params[name].shape != t.shape:
                    raise ConfigError(f"{path}: {key} {tuple(t.shape)} != {name} {tuple(params[name].shape)}")
                params[name].copy_(t.to(params[name].dtype))
                filled.append(name)
                break
    missing = sorted(n for n in params if n.startswith("backbone.") and n not in filled)
    if missing:
        raise ConfigError(f"{path}: the checkpoint lacks {len(missing)} backbone weights, e.g. {missing[:3]}")
    log.info("initialised %d backbone tensors and the text embeddings from %s", len(filled), path)
    return filled
