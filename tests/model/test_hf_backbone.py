"""Backbone initialisation from a local Hugging Face Llama checkpoint (made here, offline)."""

from __future__ import annotations

import pytest
import torch

from model.config import ModelConfig
from model.hf_init import load_hf_backbone, model_config_from_hf
from model.text_tokenizer import load_tokenizer
from model.tts import TTSModel


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    d = tmp_path_factory.mktemp("hf_llama")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=256,
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(d, safe_serialization=True)
    # A small BPE tokenizer trained here on real transcripts (no hub).
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel()
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(
        ["he was not an ill disposed young man", "he might even have been made amiable himself"] * 5, trainer
    )
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(d)
    return d


def test_backbone_matches_the_hf_model(hf_dir):
    import transformers

    mcfg = model_config_from_hf(hf_dir, base=ModelConfig.tiny())
    assert (mcfg.dim, mcfg.n_layers, mcfg.n_heads, mcfg.n_kv_heads, mcfg.ffn_dim, mcfg.text_vocab_size) == (
        64,
        2,
        4,
        2,
        128,
        320,
    )
    model = TTSModel(mcfg).eval()
    filled = load_hf_backbone(model, hf_dir)
    assert "backbone.layers.1.attention.wk.weight" in filled and "text_embeddings.weight" in filled
    hf = transformers.LlamaForCausalLM.from_pretrained(hf_dir, local_files_only=True).eval()
    ids = torch.tensor([[5, 17, 250, 3, 99, 42, 7, 300]])
    with torch.no_grad():
        want = hf.model(input_ids=ids).last_hidden_state
        x = model.text_embeddings(ids)
        got = model.backbone(x, torch.arange(ids.shape[1])[None])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_pretrained_tokenizer_is_used_and_specials_follow_its_rows(hf_dir):
    tok = load_tokenizer(str(hf_dir))
    assert tok.vocab_size == 320  # the embedding table's rows (config.json), not just the 300 BPE ids
    ids = tok.encode("he was not an ill disposed young man")
    assert ids and max(ids) < 300 and len(ids) < len("he was not an ill disposed young man")
    assert tok.decode(ids).strip() == "he was not an ill disposed young man"


def test_training_from_an_hf_backbone(hf_dir, token_dir, tmp_path):
    from model.train import build_parser, specs_from_args
    from model.trainer import run_training

    args = build_parser().parse_args(
        [
            "--tokens",
            str(token_dir),
            "--output",
            str(tmp_path / "run"),
            "--init-from",
            str(hf_dir),
            "--steps",
            "2",
            "--seq-len",
            "512",
            "--batch-size",
            "1",
            "--log-every",
            "1",
            "--device",
            "cpu",
        ]
    )
    spec = specs_from_args(args)
    assert spec.tokenizer == str(hf_dir) and spec.model.dim == 64
    history = run_training(spec)
    train = [r for r in history if r["kind"] == "train"]
    assert len(train) == 2 and all(r["loss"] == r["loss"] for r in train)
