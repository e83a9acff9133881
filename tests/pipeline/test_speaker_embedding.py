"""The offline speaker encoders on real speech."""

from __future__ import annotations

import numpy as np
import torch


def test_campplus_optimised_for_cpu_embeds_like_the_eager_model_at_every_length(speech_dir):
    """CAM++ is traced once at one length (400 frames) and frozen; the trace must stay exact for
    the masked speech of any (window, local speaker), 0.4-10 s, and give NaN below min_speech."""
    from pipeline.decode import Decoder
    from pipeline.speaker_embedding import CamPlusPlusEmbedding

    audio = Decoder()(str(speech_dir / "mfa/tests/data/wav/acoustic_corpus.wav")).audio16  # one voice
    window = torch.from_numpy(np.ascontiguousarray(audio[:160_000]))  # 10 s
    seconds = [0.2, 0.45, 1.0, 2.3, 4.0, 7.7, 10.0]
    frames = 589  # segmentation-3.0's frames per 10 s window
    masks = torch.stack([torch.arange(frames) < round(frames * s / 10) for s in seconds]).float()
    waveforms = window.expand(len(seconds), 1, -1)
    optimised, eager = CamPlusPlusEmbedding(), CamPlusPlusEmbedding(optimize=False)
    assert isinstance(optimised.model, torch.jit.ScriptModule) and not isinstance(eager.model, torch.jit.ScriptModule)
    with torch.inference_mode():
        a, b = optimised(waveforms, masks), eager(waveforms, masks)
    assert np.isnan(a[0]).all() and np.isnan(b[0]).all()  # 0.2 s < min_speech
    np.testing.assert_allclose(a[1:], b[1:], atol=1e-4)
    cos = (a[1:] * a[-1]).sum(1) / np.linalg.norm(a[1:], axis=1) / np.linalg.norm(a[-1])
    assert cos[-2] > 0.8  # the same voice, 7.7 s against 10 s: real embeddings, not noise
