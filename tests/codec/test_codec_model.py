"""Shapes, rates, causality, batching and persistence of the Codec (randomly initialised tiny model)."""

import hashlib
import math

import pytest
import torch

from codec import Codec, CodecCheckpointError, CodecConfig


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    m = Codec(CodecConfig.tiny())
    # A random model's layer scales (0.01) make every block nearly the identity; larger scales make the
    # causality and batching checks meaningful (the attention and convs really mix time steps).
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(".scale"):
                p.fill_(1.0)
    return m.eval()


@pytest.mark.parametrize("n", [1, 1919, 1920, 1921, 2400, 12345, 24_000 * 30 + 7])
def test_shapes_and_ranges(codec, n):
    wav = torch.randn(2, 1, n) * 0.1
    with torch.inference_mode():
        sem, ac = codec.encode(wav)
        out = codec.decode(sem, ac)
    t = math.ceil(n / 1920)
    assert codec.n_frames(n) == t
    assert sem.shape == (2, t) and sem.dtype == torch.long
    assert ac.shape == (2, t, 36) and ac.dtype == torch.long
    assert 0 <= int(sem.min()) and int(sem.max()) < 8192
    assert 0 <= int(ac.min()) and int(ac.max()) <= 20
    assert out.shape == (2, 1, t * 1920) and out.is_floating_point()


@pytest.mark.parametrize("seconds", [0.1, 0.5, 1.0, 3.7, 10.0])
def test_frame_rate(codec, seconds):
    n = int(seconds * 24_000)
    with torch.inference_mode():
        sem, _ = codec.encode(torch.zeros(1, 1, n))
    assert sem.shape[1] == math.ceil(seconds * codec.frame_rate - 1e-9)
    assert codec.sample_rate == 24_000 and codec.frame_rate == 12.5 and codec.samples_per_frame == 1920


def test_empty_input(codec):
    sem, ac = codec.encode(torch.zeros(3, 1, 0))
    assert sem.shape == (3, 0) and ac.shape == (3, 0, 36)
    assert codec.decode(sem, ac).shape == (3, 1, 0)


def test_bad_inputs_are_rejected(codec):
    with pytest.raises(ValueError, match=r"wav\[B, 1, N\]"):
        codec.encode(torch.zeros(2, 24000))
    with pytest.raises(ValueError, match="acoustic"):
        codec.decode(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, 35, dtype=torch.long))


def test_encoder_is_causal_with_zero_lookahead(codec):
    """Changing samples from (t+1)*1920 on never changes frames 0..t; it does change frame t+1."""
    torch.manual_seed(1)
    wav = torch.randn(1, 1, 1920 * 40) * 0.1
    with torch.no_grad():
        z = codec.encode_latent(wav)
        for t in (0, 7, 20, 38):
            w2 = wav.clone()
            w2[..., (t + 1) * 1920 :] = torch.randn_like(w2[..., (t + 1) * 1920 :])
            z2 = codec.encode_latent(w2)
            assert torch.allclose(z[:, : t + 1], z2[:, : t + 1], atol=1e-5), t
            assert (z[:, t + 1] - z2[:, t + 1]).abs().max() > 1e-3  # the test can see a change
        # One sample inside frame t changes frame t (no delay either).
        w3 = wav.clone()
        w3[..., 10 * 1920 + 1919] += 0.5
        z3 = codec.encode_latent(w3)
        assert torch.equal(z[:, :10], z3[:, :10]) or torch.allclose(z[:, :10], z3[:, :10], atol=1e-5)
        assert (z[:, 10] - z3[:, 10]).abs().max() > 1e-4


def test_decoder_is_causal(codec):
    torch.manual_seed(2)
    sem = torch.randint(0, 8192, (1, 12))
    ac = torch.randint(0, 21, (1, 12, 36))
    with torch.no_grad():
        y = codec.decode(sem, ac)
        ac2 = ac.clone()
        ac2[:, 6:] = torch.randint(0, 21, ac2[:, 6:].shape)
        y2 = codec.decode(sem, ac2)
    assert torch.allclose(y[..., : 6 * 1920], y2[..., : 6 * 1920], atol=1e-5)
    assert not torch.allclose(y[..., 6 * 1920 :], y2[..., 6 * 1920 :])


def test_batch_of_different_lengths_matches_items_alone(codec, utterances):
    items = [torch.from_numpy(u[: int(24_000 * s)]) for u, s in zip(utterances, (0.7, 1.9, 1.234))]
    lengths = torch.tensor([len(x) for x in items])
    batch = torch.full((len(items), 1, int(lengths.max())), 0.3)  # junk padding: lengths must hide it
    for i, x in enumerate(items):
        batch[i, 0, : len(x)] = x
    with torch.inference_mode():
        zb = codec.encode_latent(batch, lengths)
        sem_b, ac_b = codec.encode(batch, lengths)
        for i, x in enumerate(items):
            t = codec.n_frames(len(x))
            z1 = codec.encode_latent(x[None, None])
            sem1, ac1 = codec.encode(x[None, None])
            assert torch.allclose(zb[i, :t], z1[0], atol=1e-4)
            # Indices may flip only where a value sits on a rounding boundary (float noise).
            assert (sem_b[i, :t] == sem1[0]).float().mean() >= 0.9
            assert (ac_b[i, :t] == ac1[0]).float().mean() >= 0.99


def test_save_load_identical_and_codec_id(codec, tmp_path, utterances):
    wav = torch.from_numpy(utterances[0][:30000])[None, None]
    before_id = codec.codec_id
    codec.save(tmp_path / "ck")
    assert codec.codec_id == before_id  # unsaved id == hash of the bytes save() writes
    sha = hashlib.sha256((tmp_path / "ck" / "model.safetensors").read_bytes()).hexdigest()
    assert before_id == f"tiny-{sha[:12]}"
    loaded = Codec.load(tmp_path / "ck")
    assert loaded.codec_id == before_id and loaded.config == codec.config
    with torch.inference_mode():
        s1, a1 = codec.encode(wav)
        s2, a2 = loaded.encode(wav)
        assert torch.equal(s1, s2) and torch.equal(a1, a2)
        assert torch.equal(codec.decode(s1, a1), loaded.decode(s2, a2))


def test_codec_id_changes_with_weights(tmp_path):
    a = Codec(CodecConfig.tiny())
    b = Codec(CodecConfig.tiny())
    assert a.codec_id != b.codec_id
    assert a.codec_id.startswith("tiny-") and len(a.codec_id) == len("tiny-") + 12


def test_load_errors_name_the_file(tmp_path, codec):
    with pytest.raises(CodecCheckpointError, match="config.json"):
        Codec.load(tmp_path)
    codec.save(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text("{not json")
    with pytest.raises(CodecCheckpointError, match="config.json"):
        Codec.load(tmp_path / "ck")


def test_acoustic_float_round_trip(codec):
    idx = torch.arange(21)
    x = codec.acoustic_to_float(idx)
    assert x[0] == -1 and x[10] == 0 and x[20] == 1
    assert torch.equal(codec.acoustic_from_float(x), idx)
    assert torch.equal(codec.acoustic_from_float(torch.tensor([-5.0, 5.0])), torch.tensor([0, 20]))


def test_bf16_autocast_encode_runs(codec):
    # On CPU this checks the dtype plumbing of the GPU path (the GPU run is in bench/codec_inference.py).
    wav = torch.randn(2, 1, 5000) * 0.1
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        sem, ac = codec.encode(wav)
        y = codec.decode(sem, ac)
    assert sem.shape == (2, 3) and ac.shape == (2, 3, 36) and y.shape == (2, 1, 5760)
