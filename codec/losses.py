"""Reconstruction losses and distances: multi-scale mel L1, STFT distance, ASR distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn


class MultiScaleMelLoss(nn.Module):
    """Mean over scales of L1 between log-mel spectrograms of x and y ([B, 1, N] each, 24 kHz)."""

    def __init__(self, sample_rate: int, fft_sizes: tuple[int, ...], n_mels: tuple[int, ...]) -> None:
        super().__init__()
        self.mels = nn.ModuleList(
            [
                torchaudio.transforms.MelSpectrogram(
                    sample_rate=sample_rate, n_fft=n, hop_length=n // 4, n_mels=m, power=1.0, center=True
                )
                for n, m in zip(fft_sizes, n_mels)
            ]
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.float().squeeze(1), y.float().squeeze(1)
        total = 0.0
        for mel in self.mels:
            total = (
                total + (torch.log(mel(x).clamp(min=1e-5)) - torch.log(mel(y).clamp(min=1e-5))).abs().mean()
            )
        return total / len(self.mels)


def mel_distance(x: torch.Tensor, y: torch.Tensor, sample_rate: int = 24_000) -> float:
    """Eval mel distance: L1 of log10 80-bin mel (n_fft 1024, hop 256) between two [N] signals."""
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=1024, hop_length=256, n_mels=80, power=1.0
    )
    a = torch.log10(mel(x.float()).clamp(min=1e-5))
    b = torch.log10(mel(y.float()).clamp(min=1e-5))
    return float((a - b).abs().mean())


def stft_distance(x: torch.Tensor, y: torch.Tensor, fft_sizes: tuple[int, ...] = (512, 1024, 2048)) -> float:
    """Multi-resolution STFT distance between two [N] signals: spectral convergence + log-magnitude L1."""
    total = 0.0
    for n in fft_sizes:
        w = torch.hann_window(n)
        a = torch.stft(x.float(), n, n // 4, window=w, return_complex=True).abs()
        b = torch.stft(y.float(), n, n // 4, window=w, return_complex=True).abs()
        sc = torch.linalg.norm(a - b) / torch.linalg.norm(a).clamp(min=1e-8)
        mag = (torch.log(a.clamp(min=1e-5)) - torch.log(b.clamp(min=1e-5))).abs().mean()
        total += float(sc + mag)
    return total / len(fft_sizes)


def distill_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity between predicted and teacher states, over valid frames.

    pred, target [B, T, D]; mask [B, T] (1 where the teacher state exists).
    """
    cos = F.cosine_similarity(pred.float(), target.float(), dim=-1)
    m = mask.float()
    return ((1 - cos) * m).sum() / m.sum().clamp(min=1)
