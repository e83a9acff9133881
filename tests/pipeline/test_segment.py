"""The segment stage: ASR windowing of VAD regions (pipeline.segment.merge_for_asr), the segmentation
model's runtime."""

import numpy as np
import pytest

from pipeline.config import ConfigError, IngestConfig
from pipeline.segment import merge_for_asr

SPEECH = [(0.0, 4.0), (7.0, 12.0), (12.5, 19.0), (25.0, 31.0), (40.0, 85.0), (86.0, 88.0)]


def test_packing_fills_windows_across_pauses_and_never_exceeds_the_window():
    windows = merge_for_asr(SPEECH, max_chunk=20.0)
    assert all(e - s <= 20.0 + 1e-9 for s, e in windows)
    # every second of speech lies in exactly one window
    for s, e in SPEECH:
        covered = sum(max(0.0, min(e, we) - max(s, ws)) for ws, we in windows)
        assert covered == pytest.approx(e - s)
    # three regions across 3 s and 0.5 s pauses share a window; the 45 s region is cut into
    # three equal parts, and the last part takes the short region after it
    assert windows == [(0.0, 19.0), (25.0, 31.0), (40.0, 55.0), (55.0, 70.0), (70.0, 88.0)]


def test_max_gap_keeps_long_pauses_out_of_a_window():
    packed = merge_for_asr(SPEECH, max_chunk=30.0)
    by_pause = merge_for_asr(SPEECH, max_chunk=30.0, max_gap=2.0)
    assert packed[:2] == [(0.0, 19.0), (25.0, 31.0)]  # (0, 31) would exceed 30 s
    assert by_pause[:2] == [(0.0, 4.0), (7.0, 19.0)]  # the 3 s pause splits


def test_window_config_is_validated():
    with pytest.raises(ConfigError, match="asr_window"):
        IngestConfig(inputs=["x"], output="o", asr_window=45.0)
    with pytest.raises(ConfigError, match="asr_max_gap"):
        IngestConfig(inputs=["x"], output="o", asr_max_gap=-1.0)


def _ami_clip():
    from pipeline.decode import Decoder
    from tests.conftest import DIARIZATION

    return Decoder()(str(DIARIZATION / "ami-en2002b-137-152.wav")).audio16


@pytest.mark.parametrize("model", ["segmentation-3.0", "whisperx"])
def test_onnx_runtime_gives_what_pytorch_gives(model):
    """The default runtime on CPU (onnxruntime, the model exported in memory) must not change
    what the segment stage hands on: the speech regions, the local speakers, the overlap."""
    from pipeline.segment import Segmenter

    audio = _ami_clip()
    onnx, torch_ = Segmenter(model_path=model, device="cpu"), Segmenter(model_path=model, device="cpu", runtime="torch")
    assert (onnx.runtime, torch_.runtime) == ("onnx", "torch")
    a, b = onnx(audio), torch_(audio)
    assert a.speech and a.speech == b.speech
    assert a.scores.shape == b.scores.shape
    # segmentation-3.0's local speakers are hard 0/1 (powerset argmax); the 2022 model's soft
    if model == "segmentation-3.0":
        # an argmax over log-probabilities equal to ~3e-5: all frames agree here (allow a tie's
        # flip on a CPU whose kernels round otherwise)
        assert (a.scores != b.scores).mean() < 1e-3
        assert np.abs(a.overlap - b.overlap).max() < 1e-4
    else:  # floats summed in another order: 2e-4 at most on this clip
        assert np.abs(a.scores - b.scores).max() < 1e-3


def test_onnx_forward_matches_the_model_at_any_batch_and_length():
    """pyannote's Inference runs batches of up to 32 windows and pads the last; the session
    runs four at a time: every batch size and a shorter input give PyTorch's output."""
    import torch

    from pipeline.onnx_model import onnx_forward
    from pipeline.segment import load_segmentation_model

    model = load_segmentation_model(None).eval()
    forward = onnx_forward(model, torch.zeros(2, 1, 160_000), threads=1)
    gen = torch.Generator().manual_seed(1)
    for batch, samples in [(1, 160_000), (5, 160_000), (9, 160_000), (3, 80_000)]:
        x = torch.randn(batch, 1, samples, generator=gen) * 0.1
        with torch.no_grad():
            want = type(model).forward(model, x)
        got = forward(x)
        assert got.shape == want.shape and got.dtype == torch.float32
        assert (got - want).abs().max() < 1e-3


def test_an_export_that_does_not_match_pytorch_is_refused():
    import torch

    from pipeline.onnx_model import onnx_forward

    class FrozenBatch(torch.nn.Module):
        # its output depends on the batch size as a constant the tracer freezes into the graph
        def forward(self, x):
            return x[:, :, :4].transpose(1, 2) * float(x.shape[0]) + 1.0

    with pytest.raises(ValueError, match="differs from PyTorch"):
        onnx_forward(FrozenBatch(), torch.zeros(2, 1, 16), threads=1)


def test_an_export_frozen_to_one_length_is_refused():
    import torch

    from pipeline.onnx_model import onnx_forward

    class FrozenLength(torch.nn.Module):
        # the length read as a Python number (a pooling's divisor, say): traced as a constant
        def forward(self, x):
            return x.sum(1) * 0 + float(x.shape[1])

    # checked at the export's length only, it would pass: the check also runs a shorter input
    with pytest.raises(ValueError, match="differs from PyTorch"):
        onnx_forward(FrozenLength(), torch.zeros(2, 400, 3), threads=1, time_axis=1, output_axes={0: "batch"})


def test_a_model_the_exporter_cannot_take_runs_under_pytorch_with_a_warning(monkeypatch, caplog):
    import pipeline.onnx_model
    from pipeline.segment import Segmenter

    def no_onnx(*args, **kwargs):
        raise ImportError("No module named 'onnx'")

    monkeypatch.setattr(pipeline.onnx_model, "onnx_forward", no_onnx)
    seg = Segmenter(device="cpu")
    assert seg.runtime == "torch"
    assert "runs under PyTorch" in caplog.text and "No module named 'onnx'" in caplog.text
    assert seg(_ami_clip()).speech  # and it still segments


def test_segmentation_runtime_is_validated():
    with pytest.raises(ConfigError, match="segmentation_runtime"):
        IngestConfig(inputs=["x"], output="o", segmentation_runtime="tensorrt")
    with pytest.raises(ConfigError, match="speaker_encoder_runtime"):
        IngestConfig(inputs=["x"], output="o", speaker_encoder_runtime="tensorrt")
