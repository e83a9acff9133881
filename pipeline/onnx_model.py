"""A PyTorch model run by onnxruntime on CPU, exported in memory when a stage starts.

segmentation-3.0 (PyanNet: SincNet convolutions and a 4-layer bidirectional LSTM) takes 1.6x
less CPU under onnxruntime than under PyTorch on one core, with the same output (the segment
stage on bench/ingest.py's corpus, 21.4 min in 10 sources: 10.4-11.8 s against 16.8-19.3 s; the
speech regions and the hard local speakers identical). CAM++ (the diarizer's speaker encoder)
takes the diarize stage from 22.7 s to 18.0 s on the same corpus against frozen TorchScript,
with the same turns. On 2 cores these stages compete with transcription for the CPU. The
exports take ~0.5 s and ~2.8 s per process, so nothing is written or cached. onnxruntime comes
with faster-whisper; the export needs ``onnx``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
import torch


def onnx_forward(model: torch.nn.Module, example: torch.Tensor, threads: int, max_batch: int = 4,
                 tolerance: float = 1e-3, time_axis: int = -1,
                 output_axes: dict[int, str] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model``'s forward (its class's; one input, one output) as an onnxruntime session on CPU
    with ``threads`` intra-op threads: the returned function maps a float32 tensor shaped like
    ``example`` (on any device) to a CPU float32 tensor, running at most ``max_batch`` items at
    a time. ``example`` fixes the input's rank; its batch (axis 0) and ``time_axis`` may vary:
    ``[B, C, samples]`` -> ``[B, frames, classes]`` for a segmentation model (the default
    ``output_axes``, ``{0: "batch", 1: "frames"}``), ``[B, frames, 80]`` -> ``[B, 192]`` for a
    speaker encoder (``time_axis=1, output_axes={0: "batch"}``). Raises what the export raises
    (``ImportError`` without ``onnx``, ``torch.onnx`` errors for an operator it cannot export),
    and ValueError when the session's output on a batch of another size and length than
    ``example``'s differs from PyTorch's by more than ``tolerance`` (shapes frozen into the
    graph): the caller keeps PyTorch then."""
    import onnxruntime as ort

    class Forward(torch.nn.Module):
        # the class's own forward: the instance's may already be replaced by the caller
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return type(self.inner).forward(self.inner, x)

    buf = io.BytesIO()
    if not -example.dim() <= time_axis < example.dim() or time_axis % example.dim() == 0:
        raise ValueError(f"time_axis {time_axis}: an axis of the {example.dim()}-d input other than 0, the batch")
    time_axis %= example.dim()
    output_axes = {0: "batch", 1: "frames"} if output_axes is None else output_axes
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy TorchScript exporter's deprecation notice, tracer warnings
        torch.onnx.export(Forward(model).eval(), (example,), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", time_axis: "time"}, "y": output_axes})
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    # the stage runs many small batches and shares its cores with others: no busy-waiting
    # between them (onnxruntime's threads spin by default when there are several)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])

    def forward(x: torch.Tensor) -> torch.Tensor:
        # a few items per run: onnxruntime's arena keeps the largest run's buffers for the
        # process's life (+0.8 GB RSS for segmentation-3.0 at pyannote's 32 windows), more than
        # the stage's memory budget (pipeline/config.py) holds; without the arena the same
        # buffers are allocated anew each run, 1.25x instead of 1.7x
        x = x.detach().cpu().numpy().astype("float32", copy=False)
        parts = [session.run(None, {"x": x[i:i + max_batch]})[0] for i in range(0, len(x), max_batch)]
        return torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts))

    # another batch size and another length than the export's: a shape frozen into the graph shows
    shape = [example.shape[0] + 1, *example.shape[1:]]
    shape[time_axis] = max(1, example.shape[time_axis] * 3 // 4)
    check = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        want = type(model).forward(model, check)
    got = forward(check)
    if got.shape != want.shape:  # broadcasting would hide it
        raise ValueError(f"the exported model's output is shaped {tuple(got.shape)}, PyTorch's {tuple(want.shape)}")
    diff = float((got - want).abs().max())
    if not diff <= tolerance:  # NaN too
        raise ValueError(f"the exported model's output differs from PyTorch's by {diff:.2g} (> {tolerance:g})")
    return forward


def onnx_forward_or_none(what: str, model: torch.nn.Module, example: torch.Tensor, threads: int,
                         **kwargs) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """:func:`onnx_forward`, or None when the model cannot run under onnxruntime: a model the
    exporter cannot take (``ImportError`` without ``onnx``, ``torch.onnx``'s errors) or whose
    export does not give PyTorch's output. Then a warning says why, naming the model as
    ``what``, and the caller keeps PyTorch."""
    import logging

    try:
        return onnx_forward(model, example, threads, **kwargs)
    except Exception as e:  # whatever the export raises: the model runs as it is
        logging.getLogger(__name__).warning("%s runs under PyTorch (onnx export failed: %s: %s)",
                                            what, type(e).__name__, e)
        return None
