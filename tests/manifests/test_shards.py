"""manifests/shards.py: the one owner of both shard formats and of the token spec."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf

from manifests.shards import (
    TOKEN_SPEC,
    TokenSample,
    TokenShardError,
    add_member,
    audio_sample_members,
    decode_audio_member,
    decode_token_sample,
    index_audio_shard,
    read_flac_members,
    read_token_shard,
    scan_flac_members,
    spec_mismatches,
    token_tar_bytes,
    tokens_npz_bytes,
)


def _flac(n: int, sr: int = 24_000, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    x = (0.1 * np.sin(np.arange(n) / 7.0)).astype(np.float32)
    sf.write(buf, np.stack([x] * channels, 1) if channels > 1 else x, sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _audio_shard(path, samples):
    """samples: [(key, flac bytes, meta dict)] written with the module's own writer pieces."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, flac, meta in samples:
            for name, data in audio_sample_members(key, flac, json.dumps(meta).encode()):
                add_member(tar, name, data)


def test_the_token_spec_is_design_s_and_both_configs_check_against_it():
    from codec import CodecConfig, CodecConfigError
    from model.config import ConfigError, ModelConfig

    assert (TOKEN_SPEC.sample_rate, TOKEN_SPEC.frame_rate, TOKEN_SPEC.samples_per_frame) == (24_000, 12.5, 1920)
    assert (TOKEN_SPEC.semantic_codebook_size, TOKEN_SPEC.acoustic_dim, TOKEN_SPEC.acoustic_levels) == (8192, 36, 21)
    assert spec_mismatches("X", acoustic_dim=36, frame_rate=12.5) == []
    c, m = CodecConfig.tiny(), ModelConfig.tiny()
    assert (c.semantic_codebook_size, c.acoustic_dim, c.acoustic_levels) == (8192, 36, 21) == (
        m.semantic_codebook_size, m.acoustic_dim, m.acoustic_levels)
    with pytest.raises(CodecConfigError, match="CodecConfig.acoustic_dim=32.*token spec.*leave it at its default"):
        CodecConfig.tiny(acoustic_dim=32)
    with pytest.raises(ConfigError, match=r"ModelConfig\(tiny\).semantic_codebook_size=1024.*token spec"):
        ModelConfig(semantic_codebook_size=1024)


def test_an_audio_shard_written_with_the_module_is_indexed_and_decoded_by_it(tmp_path):
    path = tmp_path / "000000.tar"
    _audio_shard(path, [("a_00000", _flac(4800), {"key": "a_00000", "duration": 0.2}),
                        ("b_00000", _flac(4800, sr=16_000), {"key": "b_00000", "duration": 0.3}),
                        ("c_00000", _flac(2400, channels=2), {"key": "c_00000"}),
                        ("d_00000", _flac(960), {"key": "d_00000"})])
    members = index_audio_shard(path)
    assert [(m.key, m.position, m.n_samples) for m in members] == [
        ("a_00000", 0, 4800), ("b_00000", 1, 4800), ("c_00000", 2, 2400), ("d_00000", 3, 960)]
    assert [m.error for m in members] == [None, "sample rate 16000 Hz, the codec needs 24000 Hz",
                                          "2 channels, the codec needs mono", None]
    assert members[1].duration == 0.3 and members[3].duration is None
    with open(path, "rb") as raw:
        pcm = decode_audio_member(raw, members[0])
    assert pcm.dtype == np.int16 and pcm.shape == (4800,)
    assert read_flac_members(path, ["d_00000", "zzz"]).keys() == {"d_00000"}


def test_the_flac_scan_resumes_from_any_offset_it_gave(tmp_path):
    path = tmp_path / "000000.tar"
    _audio_shard(path, [(f"k{i}_00000", _flac(1920 * (i + 1)), {}) for i in range(3)])
    with open(path, "rb") as f:
        full = list(scan_flac_members(f, 0))
        assert [k for k, *_ in full] == ["k0_00000", "k1_00000", "k2_00000"]
        rest = list(scan_flac_members(f, full[0][3]))  # resume after the first sample
    assert rest == full[1:]


def test_token_samples_round_trip_and_bad_ones_name_shard_and_key(tmp_path):
    rng = np.random.default_rng(0)
    s = TokenSample("k_00000", rng.integers(0, 8192, 5).astype(np.int16),
                    rng.integers(0, 21, (5, 36)).astype(np.uint8),
                    {"speaker": "x:S0", "text": "hi", "start": 1.5, "frame_rate": 12.5})
    path = tmp_path / "000000.tar"
    path.write_bytes(token_tar_bytes([s]))
    assert token_tar_bytes([s]) == path.read_bytes()  # deterministic bytes
    (back,) = read_token_shard(path)
    assert back.key == s.key and back.meta == s.meta and (back.speaker, back.text, back.start) == ("x:S0", "hi", 1.5)
    np.testing.assert_array_equal(back.semantic, s.semantic)
    np.testing.assert_array_equal(back.acoustic, s.acoustic)
    npz = io.BytesIO()
    np.savez(npz, semantic=s.semantic.astype(np.int64), acoustic=s.acoustic)
    with pytest.raises(TokenShardError, match="000000.tar: k: semantic must be int16"):
        decode_token_sample(str(path), "k", npz.getvalue(), b"{}")
    with pytest.raises(TokenShardError, match="frame_rate 25"):
        decode_token_sample("s", "k", tokens_npz_bytes(s.semantic, s.acoustic), json.dumps({"frame_rate": 25}))
    with pytest.raises(TokenShardError, match="lacks its .tokens.npz"):
        decode_token_sample("s", "k", None, b"{}")
