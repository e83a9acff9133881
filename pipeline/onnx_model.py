"""A PyTorch model run by onnxruntime on CPU, exported in memory when a stage starts.

segmentation-3.0 (PyanNet: SincNet convolutions and a 4-layer bidirectional LSTM) runs 1.7x
faster under onnxruntime than under PyTorch on one core, with the same output (bench/ingest.py
corpus, 21.4 min, 10 sources: 12.3 s of CPU against 20.6 s; the speech regions and the hard local
speakers identical on all 10): the segment stage's CPU is what the ingest spends over the
settings before the issue-11 diarizer on a 2-core machine. The export takes ~0.5 s per process,
so no file is written or cached. onnxruntime comes with faster-whisper; the export needs
``onnx``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
import torch


def onnx_forward(model: torch.nn.Module, example: torch.Tensor, threads: int,
                 max_batch: int = 4) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model``'s forward (its class's, one input tensor -> one output tensor) as an
    onnxruntime session on CPU with ``threads`` intra-op threads. ``example`` [B, ...] fixes
    the input's rank; its first and last axes (batch, samples) may vary. Raises what the export
    raises (``ImportError`` without ``onnx``, ``torch.onnx`` errors for an operator it cannot
    export): the caller decides to keep PyTorch."""
    import onnxruntime as ort

    class Forward(torch.nn.Module):
        # the class's own forward: the instance's may already be replaced by the caller
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return type(self.inner).forward(self.inner, x)

    buf = io.BytesIO()
    last = example.dim() - 1
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy TorchScript exporter's deprecation notice, tracer warnings
        torch.onnx.export(Forward(model).eval(), (example,), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", last: "samples"}, "y": {0: "batch", 1: "frames"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])

    def forward(x: torch.Tensor) -> torch.Tensor:
        # a few items per run: onnxruntime's arena keeps the largest run's buffers for the
        # process's life (+0.8 GB RSS for segmentation-3.0 at pyannote's 32 windows), more than
        # the stage's memory budget (pipeline/config.py) holds; without the arena the same
        # buffers are allocated anew each run, 1.25x instead of 1.7x
        x = x.detach().cpu().numpy().astype("float32", copy=False)
        parts = [session.run(None, {"x": x[i:i + max_batch]})[0] for i in range(0, len(x), max_batch)]
        return torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts))

    return forward
