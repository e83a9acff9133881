"""The codec's building blocks: the two attention kernels agree, values and gradients."""

import pytest
import torch

from codec.blocks import SlidingWindowAttention


@pytest.mark.parametrize("dim,b,t", [(64, 1, 100), (128, 3, 37), (64, 2, 32), (64, 1, 5)])
def test_matmul_attention_equals_sdpa(dim, b, t):
    """The CPU kernel (matmuls, broadcast bias) and the CUDA one (SDPA, full mask) compute the same
    windowed causal attention, including the first block (no keys before t=0) and a ragged last one."""
    torch.manual_seed(0)
    attn = SlidingWindowAttention(dim, head_dim=32, window=16)
    x = torch.randn(b, t, dim, requires_grad=True)
    out = {}
    for use_sdpa in (True, False):
        attn.use_sdpa = use_sdpa
        x.grad = None
        y = attn(x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        out[use_sdpa] = (y.detach(), x.grad.clone())
    assert torch.allclose(out[True][0], out[False][0], atol=1e-5)
    assert torch.allclose(out[True][1], out[False][1], atol=1e-5)


def test_attention_is_causal_and_windowed():
    """Step t sees steps (t - window, t] only: changing step s moves outputs s..s+window-1 and no others."""
    torch.manual_seed(0)
    w = 8
    attn = SlidingWindowAttention(64, head_dim=32, window=w).eval()
    x = torch.randn(1, 50, 64)
    x2 = x.clone()
    s = 20
    x2[0, s] += 1.0
    with torch.no_grad():
        moved = (attn(x2) - attn(x)).abs().amax(-1)[0] > 1e-6
    assert moved.nonzero().flatten().tolist() == list(range(s, s + w))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernels_agree_and_vq_search_is_fp32_under_bf16():
    """On CUDA the default kernel is SDPA: it must match the matmul kernel there too, and the VQ
    search must give the brute-force nearest codes while the rest runs under bf16 autocast."""
    from codec.vq import VectorQuantizer

    torch.manual_seed(0)
    attn = SlidingWindowAttention(128, head_dim=32, window=16).cuda()
    x = torch.randn(2, 70, 128, device="cuda")
    with torch.no_grad():
        attn.use_sdpa = None
        y_default = attn(x)
        attn.use_sdpa = False
        y_matmul = attn(x)
    assert torch.allclose(y_default, y_matmul, atol=1e-4)
    vq = VectorQuantizer(256, 8192, decay=0.99, dead_ratio=0.5, data_init=False).cuda().eval()
    z = torch.randn(2, 200, 256, device="cuda") * 256**-0.5
    exact = torch.cdist(z.reshape(-1, 256).double(), vq.codebook.double()).argmin(1).view(2, 200)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.equal(vq.encode(z), exact)
