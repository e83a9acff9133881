import json
import math

import pytest
import torch

from codec import Codec, CodecConfig, CodecConfigError


def test_presets_and_contract_numbers():
    for name in ("tiny", "voxtral"):
        cfg = CodecConfig.from_name(name)
        assert cfg.name == name
        assert cfg.sample_rate == 24_000 and cfg.samples_per_frame == 1920 and cfg.frame_rate == 12.5
        assert cfg.latent_dim == 292 and cfg.semantic_dim == 256 and cfg.acoustic_dim == 36
        assert cfg.semantic_codebook_size == 8192 and cfg.acoustic_levels == 21


def test_voxtral_bitrate_is_2140_bps():
    cfg = CodecConfig.voxtral()
    expected = 12.5 * (13 + 36 * math.log2(21))
    assert cfg.bitrate == pytest.approx(expected)
    assert 2130 < cfg.bitrate < 2150


def test_voxtral_parameter_count_within_20_percent_of_300m():
    with torch.device("meta"):  # no memory, no init cost
        m = Codec(CodecConfig.voxtral())
    n = sum(p.numel() for p in m.parameters()) + m.vq.codebook.numel()
    assert 240e6 <= n <= 360e6, n


def test_tiny_is_a_few_million_parameters():
    m = Codec(CodecConfig.tiny())
    n = sum(p.numel() for p in m.parameters()) + m.vq.codebook.numel()
    assert 1e6 <= n <= 10e6, n


def test_json_round_trip():
    cfg = CodecConfig.voxtral(lr=1e-4)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert CodecConfig.from_dict(d) == cfg


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"sample_rate": 16000}, "24000"),
        ({"strides": (2, 2)}, "len(dims)"),
        ({"patch_size": 200}, "12.5 Hz"),
        ({"acoustic_levels": 20}, "token spec"),
        ({"semantic_codebook_size": 4096}, "leave it at its default"),
        ({"p_fsq": 0.9, "p_fsq_dither": 0.25}, "p_fsq + p_fsq_dither"),
        ({"dims": (64, 128, 192, 250)}, "head_dim"),
    ],
)
def test_validation_says_how_to_fix(bad, words):
    with pytest.raises(
        CodecConfigError, match=words.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")
    ):
        CodecConfig.tiny(**bad)


def test_unknown_name_and_fields():
    with pytest.raises(CodecConfigError, match="tiny"):
        CodecConfig.from_name("huge")
    with pytest.raises(CodecConfigError, match="unknown CodecConfig fields"):
        CodecConfig.from_dict({**CodecConfig.tiny().to_dict(), "nope": 1})
