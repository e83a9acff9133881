"""Assemble stage: words + speakers + quality -> segment records, kept audio as FLAC.

Produces, for one source, the ``segments`` rows (kept and dropped, with the reason) and
the WebDataset samples (``<key>.flac`` 24 kHz PCM16 mono + ``<key>.json``) of kept ones.
"""

from __future__ import annotations

import io
import json

import numpy as np
import soundfile as sf

from pipeline.config import PIPELINE_VERSION, IngestConfig
from pipeline.diarize import Diarization
from pipeline.quality import drop_reason, frame_power, measure, noise_floor
from pipeline.transcribe import Transcript
from pipeline.utterances import (
    assign_speakers,
    build_utterances,
    fit_words_to_speech,
    overlapped_turns,
    speaker_purity,
    untranscribed_turns,
)


def encode_flac(pcm16: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm16, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _asr_summary(words: list[dict], segments: list[dict], model: str) -> dict:
    """Whisper's confidence figures of the segments these words came from (word-weighted)."""
    idx = [w["seg"] for w in words if "seg" in w]
    if not idx:
        return {"model": model, "avg_logprob": None, "no_speech_prob": None, "compression_ratio": None}
    segs = [segments[i] for i in idx]
    return {
        "model": model,
        "avg_logprob": float(np.mean([s["avg_logprob"] for s in segs])),
        "no_speech_prob": float(np.max([s["no_speech_prob"] for s in segs])),
        "compression_ratio": float(np.max([s["compression_ratio"] for s in segs])),
    }


class Assembler:
    """``__call__(source, audio16, audio24, transcript, diarization, speech) -> (segment rows, samples)``.

    ``speech``: the VAD regions [(start, end)] seconds; word times are fitted to them first
    (:func:`pipeline.utterances.fit_words_to_speech`).

    ``source`` is a dict with source_id, path, run_id. Keys are ``<source_id>_<index:05d>`` over
    all segments of the source in time order, so a key never comes from a file name.
    """

    def __init__(self, cfg: IngestConfig):
        self.cfg = cfg

    def __call__(self, source: dict, audio16: np.ndarray, audio24: np.ndarray, transcript: Transcript,
                 diarization: Diarization | None,
                 speech: list[tuple[float, float]] | None = None) -> tuple[list[dict], list[dict]]:
        cfg = self.cfg
        total = len(audio16) / cfg.analysis_rate
        words = [{**w, "seg": i} for i, s in enumerate(transcript.segments) for w in s["words"]]
        words = fit_words_to_speech(words, speech or [])
        exclusive = diarization.exclusive if diarization is not None else []
        if exclusive:
            words = assign_speakers(words, diarization.turns, exclusive, diarization.overlap)
            labels = sorted({t[2] for t in diarization.turns})
        else:
            words = [{**w, "speaker": "SPEAKER_00", "overlap": False} for w in words]
            labels = ["SPEAKER_00"]
        utts = build_utterances(words, max_pause=cfg.max_pause, max_duration=cfg.max_duration,
                                min_duration=cfg.min_duration, edge_pad=cfg.edge_pad, total=total, turns=exclusive,
                                sentence_pause=cfg.sentence_pause if cfg.sentence_pause < cfg.max_pause else None)
        utts = utts + untranscribed_turns(exclusive, utts, max_pause=cfg.max_pause)
        if diarization is not None:
            utts += overlapped_turns(diarization.turns, utts, max_pause=cfg.max_pause)
        utts = sorted(utts, key=lambda u: (u.start, u.end))
        noise = noise_floor(frame_power(audio16))
        sid = source["source_id"]
        rows, samples = [], []
        for i, u in enumerate(utts):
            speaker = f"{sid}:S{labels.index(u.speaker)}" if u.speaker in labels else f"{sid}:S?"
            text = u.text
            quality = measure(audio16, u.start, u.end, noise, len(text))
            n_over = sum(1 for w in u.words if w.get("overlap"))
            quality["overlap_ratio"] = n_over / max(1, len(u.words))
            quality["speaker_purity"] = speaker_purity(exclusive, u.start, u.end, u.speaker) if exclusive else None
            row = {
                "key": f"{sid}_{i:05d}",
                "source_id": sid,
                "source_path": source["path"],
                "start": round(u.start, 3),
                "end": round(u.end, 3),
                "duration": round(u.end - u.start, 3),
                "sample_rate": cfg.output_rate,
                "speaker": speaker,
                "language": transcript.language,
                "language_prob": transcript.language_prob,
                "text": text,
                "words": [{"word": w["word"], "start": round(w["start"], 3), "end": round(w["end"], 3),
                           "score": round(w["score"], 4),
                           "speaker": f"{sid}:S{labels.index(w['speaker'])}" if w["speaker"] in labels else None}
                          for w in u.words],
                "asr": _asr_summary(u.words, transcript.segments, source.get("asr_model", cfg.asr_model)),
                "quality": quality,
                "pipeline_version": PIPELINE_VERSION,
                "run_id": source.get("run_id"),
            }
            reason = drop_reason({**row, "overlap": u.overlap}, cfg)
            # the audio must be exactly the manifest's [start, end) at the output rate
            a = int(round(u.start * cfg.output_rate))
            b = min(int(round(u.end * cfg.output_rate)), len(audio24))
            if reason is None and b - a <= 0:
                reason = "too_short"
            row["kept"] = reason is None
            row["drop_reason"] = reason
            row["shard"] = None
            rows.append(row)
            if reason is None:
                row["duration"] = round((b - a) / cfg.output_rate, 6)
                meta = {k: v for k, v in row.items() if k not in ("kept", "drop_reason", "shard", "run_id")}
                samples.append({"__key__": row["key"], "flac": encode_flac(audio24[a:b], cfg.output_rate),
                                "json": json.dumps(meta, ensure_ascii=False).encode()})
        return rows, samples
