"""Long-form ASR: speed and WER of the ways VAD regions can be grouped into Whisper windows.

    .venv/bin/python bench/asr_windows.py [--session-seconds 120] [--policies gap2,pack30,pack20,pack15,seq20]

The English files of ../shared/speech that have a text ground truth transcribing all their
speech are laid end to end
(0.5 s apart) into sessions of about --session-seconds; each session's reference is the
concatenation of its files' transcripts. Every session gets the pipeline's VAD once, then each
window policy is transcribed with the pipeline's Transcriber (batched faster-whisper, word
timestamps; ``seq20``: its sequential mode), and the whole session also goes through
faster-whisper directly (sequential 30 s windows, conditioned on the previous text), which is
the issue's reference point.
Prints, per policy: windows, seconds of audio per second, WER (normalised text).
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from pipeline.evaluation import has_full_transcript, read_reference_text, wer
from pipeline.segment import Segmenter, merge_for_asr
from pipeline.transcribe import Transcriber

REPO = Path(__file__).resolve().parents[1]

SPEECH = Path(os.environ.get("VOXFORGE_SPEECH", REPO.parent / "shared" / "speech"))


def sessions(session_s: float) -> list[tuple[np.ndarray, str]]:
    rows = list(csv.DictReader(open(SPEECH / "MANIFEST.tsv", encoding="utf-8"), delimiter="\t"))
    rows = [r for r in rows if has_full_transcript(r)]
    gap = np.zeros(8000, np.float32)
    out, audio, text = [], [], []
    for r in rows:
        x, sr = sf.read(SPEECH / r["path"], dtype="float32", always_2d=True)
        audio += [soxr.resample(x.mean(1), sr, 16_000).astype(np.float32), gap]
        text.append(read_reference_text(SPEECH / r["ground_truth_path"]))
        if sum(len(a) for a in audio) >= session_s * 16_000:
            out.append((np.concatenate(audio), " ".join(text)))
            audio, text = [], []
    if audio:
        out.append((np.concatenate(audio), " ".join(text)))
    return out


POLICIES = {
    "gap2": lambda sp: merge_for_asr(sp, max_chunk=30.0, max_gap=2.0),
    "pack30": lambda sp: merge_for_asr(sp, max_chunk=30.0, max_gap=None),
    "pack20": lambda sp: merge_for_asr(sp, max_chunk=20.0, max_gap=None),  # the default
    "pack15": lambda sp: merge_for_asr(sp, max_chunk=15.0, max_gap=None),
    # the same 20 s windows decoded one at a time with timestamp tokens (--asr-mode sequential)
    "seq20": lambda sp: merge_for_asr(sp, max_chunk=20.0, max_gap=None),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--session-seconds", type=float, default=120.0)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--no-direct", action="store_true")
    args = ap.parse_args()
    data = sessions(args.session_seconds)
    total = sum(len(a) for a, _ in data) / 16_000
    refs = [t for _, t in data]
    print(f"{len(data)} sessions, {total / 60:.1f} min, {os.cpu_count()} CPUs")
    seg = Segmenter(threads=2)
    speech = [seg(a).speech for a, _ in data]
    tr = Transcriber(threads=2)
    tr.transcribe_many([(data[0][0][: 16_000 * 5], [(0.0, 5.0)])])  # warm-up
    print(f"{'policy':<8} {'windows':>7} {'x real time':>11} {'WER':>7}")
    for name in args.policies.split(","):
        tr.mode = "sequential" if name.startswith("seq") else "batched"
        windows = [POLICIES[name](sp) for sp in speech]
        t = time.perf_counter()
        out = tr.transcribe_many([(a, w) for (a, _), w in zip(data, windows)])
        dt = time.perf_counter() - t
        hyps = [" ".join(s["text"] for s in o.segments) for o in out]
        print(f"{name:<8} {sum(map(len, windows)):>7} {total / dt:>11.1f} {wer(refs, hyps):>7.4f}", flush=True)
    if not args.no_direct:
        t = time.perf_counter()
        hyps = []
        for a, _ in data:
            segs, _ = tr.whisper.transcribe(a, language="en", beam_size=5)
            hyps.append(" ".join(s.text for s in segs))
        dt = time.perf_counter() - t
        print(f"{'direct':<8} {'-':>7} {total / dt:>11.1f} {wer(refs, hyps):>7.4f}")


if __name__ == "__main__":
    main()
