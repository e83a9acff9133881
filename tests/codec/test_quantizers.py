import torch

from codec.fsq import FSQ
from codec.vq import VectorQuantizer


def test_fsq_round_trip_and_error_bound():
    fsq = FSQ(36, 21)
    idx = torch.randint(0, 21, (4, 10, 36))
    assert torch.equal(fsq.from_float(fsq.to_float(idx)), idx)
    z = torch.randn(4, 10, 36) * 3
    q = fsq(z)  # inference: quantize all
    x = torch.tanh(z)
    assert (q - x).abs().max() <= 0.05 + 1e-6  # half a step of 0.1
    assert torch.allclose(fsq.to_float(fsq.encode(z)), q, atol=1e-6)
    # Straight-through: the gradient reaches z as if there was no rounding.
    z.requires_grad_(True)
    fsq(z).sum().backward()
    assert torch.allclose(z.grad, 1 - torch.tanh(z.detach()) ** 2, atol=1e-5)


def test_fsq_training_modes():
    fsq = FSQ(36, 21)
    z = torch.randn(3, 50, 36)
    mode = torch.tensor([FSQ.QUANTIZE, FSQ.DITHER, FSQ.NONE])
    out = fsq(z, mode)
    x = torch.tanh(z)
    on_grid = lambda v: torch.allclose(v * 10, torch.round(v * 10), atol=1e-5)  # noqa: E731
    assert on_grid(out[0])
    assert not on_grid(out[1]) and (out[1] - x[1]).abs().max() <= 0.05 + 1e-6
    assert torch.equal(out[2], x[2])


def test_vq_round_trip_and_bypass():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 64, decay=0.99, dead_ratio=0.5, data_init=False).eval()
    idx = torch.randint(0, 64, (2, 30))
    assert torch.equal(vq.encode(vq.decode(idx)), idx)
    z = torch.randn(2, 30, 16)
    out = vq(z, use_vq=torch.tensor([True, False]))
    assert torch.allclose(out["out"][0], vq.decode(vq.encode(z[0])), atol=1e-6)
    assert torch.equal(out["out"][1], z[1])


def test_vq_ema_learns_clusters_and_restarts_dead_codes():
    """Data from 8 tight clusters: EMA + restarts end with every cluster owning a code near its centre."""
    torch.manual_seed(0)
    centres = torch.randn(8, 16) * 5
    vq = VectorQuantizer(16, 32, decay=0.9, dead_ratio=0.5, data_init=True).train()
    for _ in range(200):
        lab = torch.randint(0, 8, (4, 64))
        z = centres[lab] + 0.05 * torch.randn(4, 64, 16)
        vq(z)
    codes = vq.encode(centres)
    assert torch.allclose(vq.decode(codes), centres, atol=0.2)
    assert len(set(codes.tolist())) == 8
    usage = VectorQuantizer.usage(vq.encode(centres[torch.randint(0, 8, (4000,))]), 32)
    assert 7.0 < usage["perplexity"] <= 8.01 and usage["used_frac"] == 8 / 32


def test_vq_restart_replaces_dead_codes_with_latents():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 16, decay=0.5, dead_ratio=0.5, data_init=False).train()
    vq.codebook.fill_(100.0)  # far away from the data: nobody uses these
    vq.embed_sum.copy_(vq.codebook)
    vq.cluster_size.fill_(1e-3)
    z = torch.randn(1, 40, 4)
    vq(z)
    # Every dead code now sits on one of the batch's vectors.
    d = torch.cdist(vq.codebook, z[0]).min(1).values
    assert (d < 1e-4).float().mean() > 0.5


def _nearest_bruteforce(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Nearest code by explicit distances [N, K], float64: the definition encode() must match."""
    flat = z.reshape(-1, codebook.shape[1]).double()
    return torch.cdist(flat, codebook.double()).argmin(1).view(z.shape[:-1])


def test_vq_encode_is_the_nearest_code_and_its_norm_cache_follows_the_codebook():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 256, decay=0.99, dead_ratio=0.5, data_init=False).eval()
    z = torch.randn(3, 40, 16) * 0.3
    assert torch.equal(vq.encode(z), _nearest_bruteforce(z, vq.codebook))
    # The cached |c|^2 must not outlive the codebook: a new codebook (load_state_dict, EMA step)
    # changes the answer, and encode() must give the new nearest codes, not the old ones.
    new_state = {**vq.state_dict(), "codebook": torch.randn(256, 16) * 0.3}
    vq.load_state_dict(new_state)
    assert torch.equal(vq.encode(z), _nearest_bruteforce(z, vq.codebook))
    vq.codebook.mul_(-1.0)  # in-place, same storage: only the version counter tells
    assert torch.equal(vq.encode(z), _nearest_bruteforce(z, vq.codebook))


def test_vq_search_stays_fp32_under_bf16_autocast():
    """Under autocast the matmul would run in bf16, where near-equal distances to the codes tie."""
    torch.manual_seed(0)
    vq = VectorQuantizer(256, 8192, decay=0.99, dead_ratio=0.5, data_init=False).eval()
    z = torch.randn(2, 200, 256) * 256**-0.5
    exact = _nearest_bruteforce(z, vq.codebook)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = vq.encode(z)
        # What a bf16 search gives, to show the test can tell the two apart.
        bf16 = (vq.codebook.pow(2).sum(1) - 2 * z.reshape(-1, 256) @ vq.codebook.t()).argmin(1).view(2, 200)
    assert torch.equal(got, exact)
    assert not torch.equal(bf16, exact)
