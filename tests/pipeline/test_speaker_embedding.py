"""The offline speaker encoders on real speech."""

from __future__ import annotations

import numpy as np
import torch


def test_campplus_optimised_for_cpu_embeds_like_the_eager_model_at_every_length(speech_dir):
    """CAM++ is exported once at one length (400 frames) for onnxruntime (the default), or
    traced and frozen (TorchScript); both must stay exact for the masked speech of any (window,
    local speaker), 0.4-10 s, and give NaN below min_speech."""
    from pipeline.decode import Decoder
    from pipeline.speaker_embedding import CamPlusPlusEmbedding

    audio = Decoder()(str(speech_dir / "mfa/tests/data/wav/acoustic_corpus.wav")).audio16  # one voice
    window = torch.from_numpy(np.ascontiguousarray(audio[:160_000]))  # 10 s
    seconds = [0.2, 0.45, 1.0, 2.3, 4.0, 7.7, 10.0]
    frames = 589  # segmentation-3.0's frames per 10 s window
    masks = torch.stack([torch.arange(frames) < round(frames * s / 10) for s in seconds]).float()
    waveforms = window.expand(len(seconds), 1, -1)
    onnx = CamPlusPlusEmbedding()
    optimised = CamPlusPlusEmbedding(runtime="torch")
    eager = CamPlusPlusEmbedding(runtime="torch", optimize=False)
    assert (onnx.runtime, optimised.runtime, eager.runtime) == ("onnx", "torch", "torch")
    assert not isinstance(onnx.model, torch.nn.Module)  # an onnxruntime session's forward
    assert isinstance(optimised.model, torch.jit.ScriptModule) and not isinstance(eager.model, torch.jit.ScriptModule)
    with torch.inference_mode():
        a, b, c = optimised(waveforms, masks), eager(waveforms, masks), onnx(waveforms, masks)
    assert np.isnan(a[0]).all() and np.isnan(b[0]).all() and np.isnan(c[0]).all()  # 0.2 s < min_speech
    np.testing.assert_allclose(a[1:], b[1:], atol=1e-4)
    np.testing.assert_allclose(c[1:], b[1:], atol=1e-4)
    cos = (a[1:] * a[-1]).sum(1) / np.linalg.norm(a[1:], axis=1) / np.linalg.norm(a[-1])
    assert cos[-2] > 0.8  # the same voice, 7.7 s against 10 s: real embeddings, not noise


def test_campplus_whose_export_fails_runs_under_pytorch_with_a_warning(monkeypatch, caplog):
    import pipeline.onnx_model
    from pipeline.speaker_embedding import CamPlusPlusEmbedding

    def no_onnx(*args, **kwargs):
        raise ImportError("No module named 'onnx'")

    monkeypatch.setattr(pipeline.onnx_model, "onnx_forward", no_onnx)
    enc = CamPlusPlusEmbedding()
    assert enc.runtime == "torch" and isinstance(enc.model, torch.jit.ScriptModule)
    assert "CAM++ runs under PyTorch" in caplog.text and "No module named 'onnx'" in caplog.text
    waveforms = torch.randn(1, 1, 16_000, generator=torch.Generator().manual_seed(0)) * 0.1
    assert np.isfinite(enc(waveforms)).all()  # and it still embeds


def test_the_diarizer_runs_its_encoder_under_the_configured_runtime():
    from pipeline.diarize import Diarizer

    assert Diarizer(device="cpu").pipeline._embedding.runtime == "onnx"
    assert Diarizer(device="cpu", speaker_encoder_runtime="torch").pipeline._embedding.runtime == "torch"
