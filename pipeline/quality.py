"""Quality measures of an utterance and the filter that keeps or drops it.

Every drop has a reason (first failing rule, in the order below); nothing is removed
without a ``segments`` row saying why.
"""

from __future__ import annotations

import numpy as np

FRAME = 400  # 25 ms at 16 kHz
DROP_REASONS = ("no_text", "overlap", "mixed_speakers", "too_short", "too_long", "no_speech", "low_asr_confidence",
                "repetitive_text", "speech_rate", "clipping", "low_snr")


def frame_power(audio16: np.ndarray) -> np.ndarray:
    """Mean power of consecutive 25 ms frames of ``audio16`` (16 kHz)."""
    n = len(audio16) // FRAME
    if n == 0:
        return np.array([float(np.mean(audio16.astype(np.float64) ** 2)) if len(audio16) else 0.0])
    x = audio16[: n * FRAME].astype(np.float64).reshape(n, FRAME)
    return (x * x).mean(axis=1)


def noise_floor(power: np.ndarray) -> float:
    """Noise power of a source: the 10th percentile of its frame powers (pauses exist in speech)."""
    return float(max(np.percentile(power, 10), 1e-10))


def measure(audio16: np.ndarray, start: float, end: float, noise: float, n_chars: int) -> dict:
    """snr_db (speech frames vs the source's noise floor, capped at 100), clipping_ratio
    (samples at full scale), speech_rate_cps (characters per second)."""
    seg = audio16[int(start * 16_000): int(end * 16_000)]
    p = frame_power(seg)
    speech_power = float(np.percentile(p, 90)) if len(p) else 0.0
    snr = 10 * np.log10(max(speech_power, 1e-12) / noise)
    clip = float(np.mean(np.abs(seg) >= 0.999)) if len(seg) else 0.0
    dur = max(end - start, 1e-6)
    return {"snr_db": float(min(snr, 100.0)), "clipping_ratio": clip, "speech_rate_cps": n_chars / dur}


def drop_reason(seg: dict, cfg) -> str | None:
    """``seg`` has text, duration, asr{...}, quality{...}, overlap; ``cfg`` an IngestConfig."""
    q, a = seg["quality"], seg["asr"]
    if not seg["text"].strip():
        # a word-less row of a voice heard under another's (utterances.overlapped_turns)
        return "overlap" if seg["overlap"] else "no_text"
    if seg["overlap"] and not cfg.keep_overlap:
        return "overlap"
    if q.get("speaker_purity") is not None and q["speaker_purity"] < cfg.min_speaker_purity:
        return "mixed_speakers"
    if seg["duration"] < cfg.min_duration:
        return "too_short"
    if seg["duration"] > cfg.max_duration + 1e-6:
        return "too_long"
    if a["no_speech_prob"] is not None and a["no_speech_prob"] > cfg.max_no_speech_prob:
        return "no_speech"
    if a["avg_logprob"] is not None and a["avg_logprob"] < cfg.min_avg_logprob:
        return "low_asr_confidence"
    if a["compression_ratio"] is not None and a["compression_ratio"] > cfg.max_compression_ratio:
        return "repetitive_text"
    if not cfg.min_speech_rate <= q["speech_rate_cps"] <= cfg.max_speech_rate:
        return "speech_rate"
    if q["clipping_ratio"] > cfg.max_clipping_ratio:
        return "clipping"
    if q["snr_db"] < cfg.min_snr_db:
        return "low_snr"
    return None
