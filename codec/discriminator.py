"""Multi-resolution STFT discriminator (8 FFT sizes), used for L1 feature matching.

Each sub-discriminator looks at the complex STFT (real and imaginary parts as 2 channels) of one
resolution through a small 2D conv stack (after EnCodec's MS-STFT discriminator). The generator is
trained only to match the discriminator's intermediate features of real audio (no adversarial
logit term), as in the Voxtral codec paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class STFTDiscriminator(nn.Module):
    """wav [B, 1, N] -> (logits [B, 1, T', F'], features: list of [B, C, T', F'])."""

    def __init__(self, n_fft: int, channels: int, n_layers: int = 3) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop = max(1, n_fft // 4)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        # Every conv strides 2 along time and frequency: each layer costs a quarter of the one before,
        # which keeps 8 resolutions affordable on a CPU (EnCodec strides frequency only).
        convs = [nn.Conv2d(2, channels, (3, 9), stride=(2, 2), padding=(1, 4))]
        for _ in range(n_layers):
            convs.append(nn.Conv2d(channels, channels, (3, 9), stride=(2, 2), padding=(1, 4)))
        convs.append(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1)))
        self.convs = nn.ModuleList(convs)
        self.post = nn.Conv2d(channels, 1, (3, 3), padding=(1, 1))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = wav.float().squeeze(1)
        spec = torch.stft(x, self.n_fft, self.hop, window=self.window, return_complex=True, center=True)
        z = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # [B, 2, T, F]
        feats = []
        for conv in self.convs:
            z = F.leaky_relu(conv(z), 0.2)
            feats.append(z)
        return self.post(z), feats


class MultiResolutionSTFTDiscriminator(nn.Module):
    """One STFTDiscriminator per FFT size. forward(wav) -> list of (logits, features) per resolution."""

    def __init__(self, fft_sizes: tuple[int, ...], channels: int) -> None:
        super().__init__()
        self.discs = nn.ModuleList([STFTDiscriminator(n, channels) for n in fft_sizes])

    def forward(self, wav: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        return [d(wav) for d in self.discs]


def hinge_discriminator_loss(real: list, fake: list) -> torch.Tensor:
    """Hinge loss of the discriminator, averaged over resolutions: relu(1 - D(x)) + relu(1 + D(G(x)))."""
    loss = sum(F.relu(1 - r[0]).mean() + F.relu(1 + f[0]).mean() for r, f in zip(real, fake))
    return loss / len(real)


def feature_matching_loss(real: list, fake: list) -> torch.Tensor:
    """Relative L1 between the discriminator features of real and decoded audio (real ones detached).

    Each layer's L1 is divided by the mean magnitude of the real features so every layer and
    resolution weighs about the same (EnCodec's normalisation).
    """
    total, n = 0.0, 0
    for (_, fr), (_, ff) in zip(real, fake):
        for a, b in zip(fr, ff):
            a = a.detach()
            total = total + (a - b).abs().mean() / (a.abs().mean() + 1e-5)
            n += 1
    return total / n
