"""Resemblyzer's bundled speaker encoder as a pyannote embedding model (offline default).

pyannote's ``SpeakerDiarization`` calls ``embedding(waveforms [B, 1, N], masks [B, F])``
and expects ``[B, D]`` numpy embeddings (NaN where too little speech is active), plus the
attributes ``sample_rate``, ``dimension``, ``metric`` and ``min_num_samples``.
Features follow resemblyzer (40 mel bands, 25 ms windows, 10 ms hop, 1.6 s partials,
volume normalised to -30 dBFS), computed with torchaudio in batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class ResemblyzerEmbedding:
    sample_rate = 16_000
    dimension = 256
    metric = "cosine"
    partial_frames = 160  # 1.6 s, what the encoder was trained on
    target_dbfs = -30.0

    def __init__(self, device: torch.device | str = "cpu", min_speech: float = 0.4):
        import warnings

        import torchaudio

        with warnings.catch_warnings():
            # resemblyzer imports webrtcvad, whose first line imports setuptools' pkg_resources,
            # which warns that it is deprecated (UserWarning) in every process that loads the
            # diarizer. Third-party code we cannot change, and nothing a user can act on; only
            # that one warning, only during this import.
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            from resemblyzer import VoiceEncoder

        self.device = torch.device(device)
        self.encoder = VoiceEncoder(device=self.device, verbose=False).eval()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=16_000, n_fft=400, hop_length=160, n_mels=40, power=2.0,
            norm="slaney", mel_scale="slaney", center=True, pad_mode="constant",
        ).to(self.device)
        self.min_num_samples = int(min_speech * self.sample_rate)

    def to(self, device):  # pyannote moves models around; we stay where we were put
        return self

    @torch.inference_mode()
    def __call__(self, waveforms: torch.Tensor, masks: torch.Tensor | None = None) -> np.ndarray:
        """waveforms: [B, 1, N] float at 16 kHz; masks: [B, F] (F frames spread over N) -> [B, 256]."""
        B, _, N = waveforms.shape
        out = np.full((B, self.dimension), np.nan, dtype=np.float32)
        partials, owners, singles = [], [], []
        for b in range(B):
            wav = waveforms[b, 0]
            if masks is not None:
                m = masks[b].float()
                # nearest-neighbour upsampling of the frame mask to samples
                idx = torch.clamp((torch.arange(N) * m.shape[0]) // N, max=m.shape[0] - 1)
                wav = wav[m[idx] > 0.5]
            if wav.numel() < self.min_num_samples:
                continue
            rms = wav.pow(2).mean().sqrt().clamp_min(1e-6)
            wav = wav * (10 ** (self.target_dbfs / 20) / rms)
            mel = self.mel(wav.to(self.device)).T  # [frames, 40]
            n = mel.shape[0]
            if n < self.partial_frames:
                singles.append((b, mel))
                continue
            step = self.partial_frames // 2
            starts = list(range(0, n - self.partial_frames + 1, step))
            if starts[-1] + self.partial_frames < n:
                starts.append(n - self.partial_frames)
            for s in starts:
                partials.append(mel[s: s + self.partial_frames])
                owners.append(b)
        if partials:
            emb = self.encoder(torch.stack(partials))  # [P, 256], unit norm
            owners_t = torch.tensor(owners, device=emb.device)
            for b in set(owners):
                e = emb[owners_t == b].mean(0)
                out[b] = F.normalize(e, dim=0).cpu().numpy()
        for b, mel in singles:
            out[b] = self.encoder(mel[None])[0].cpu().numpy()
        return out
