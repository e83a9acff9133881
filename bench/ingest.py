"""End-to-end ingest throughput vs a straightforward sequential script, same models, same run.

    .venv/bin/python bench/ingest.py [--minutes 12] [--work /tmp/bench_ingest] [--pipeline-args "..."]

Corpus: long-form "sessions" (~2 min each) concatenated from the English and AMI files of
../shared/speech, written as 16 kHz FLAC, at least --minutes in all.
Pipeline: `python pipeline/ingest.py` (local Ray, default resources), wall clock from
process start to exit (Ray start and model loading included).
Baseline: one process, for each file: load (whisperx.load_audio), whisperx transcribe
(FasterWhisperPipeline, its pyannote VAD, batch 8), diarize (the same offline pyannote
pipeline, its own segmentation pass), assign words to speakers; next file.
Prints seconds of audio per wall-clock second for both, their ratio, and peak memory
(PSS summed over the process tree, sampled every second).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf
import soxr

REPO = Path(__file__).resolve().parents[1]
SPEECH = Path(os.environ.get("VOXFORGE_SPEECH", REPO.parent / "shared" / "speech"))


def build_corpus(out: Path, minutes: float, session_s: float = 120.0) -> float:
    rows = list(csv.DictReader(open(SPEECH / "MANIFEST.tsv", encoding="utf-8"), delimiter="\t"))
    files = [r["path"] for r in rows if r["language"] == "en" and r["notes"][:5] in ("cat=A", "cat=B")
             and not r["path"].endswith(".raw")]
    out.mkdir(parents=True, exist_ok=True)
    total, session, n, i = 0.0, [], 0, 0
    gap = np.zeros(8000, np.float32)  # 0.5 s between files
    while total < minutes * 60:
        x, sr = sf.read(SPEECH / files[i % len(files)], dtype="float32", always_2d=True)
        session += [soxr.resample(x.mean(1), sr, 16_000).astype(np.float32), gap]
        i += 1
        if sum(len(s) for s in session) >= session_s * 16_000:
            audio = np.concatenate(session)
            sf.write(out / f"session_{n:03d}.flac", audio, 16_000, subtype="PCM_16")
            total += len(audio) / 16_000
            session, n = [], n + 1
    return total


class PeakRSS:
    """Peak of the summed PSS (proportional set size: shared pages split between the processes
    that map them, so torch's libraries are not counted once per Ray worker) of a process and
    its descendants."""

    def __init__(self, pid: int):
        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        # Reading a process's PSS walks its page tables: ~30 ms of kernel time per torch-sized
        # process. Sampling a dozen Ray processes every 0.5 s took ~half a core from the job being
        # measured (and more from the pipeline than from the one-process baseline), so: once a
        # second, at the lowest priority (Linux nice values are per thread).
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                rss = sum(p.memory_full_info().pss for p in procs if p.is_running())
                self.peak = max(self.peak, rss)
            except psutil.Error:
                pass
            time.sleep(1.0)

    def stop(self) -> int:
        self._stop.set()
        self.t.join()
        return self.peak


BASELINE = r'''
import glob, json, sys, time, os
import numpy as np, torch
torch.set_num_threads(2)
t0 = time.time()
import whisperx
from whisperx.diarize import assign_word_speakers
import pandas as pd
from pipeline.diarize import Diarizer
from pipeline.transcribe import resolve_asr_model
asr = whisperx.load_model(resolve_asr_model("tiny.en"), "cpu", compute_type="int8", language="en",
                          threads=2, vad_method="pyannote")
diar = Diarizer()
seconds = 0.0
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.flac"))):
    audio = whisperx.load_audio(f)
    seconds += len(audio) / 16000
    result = asr.transcribe(audio, batch_size=8)
    d = diar(audio)
    df = pd.DataFrame([{"start": s, "end": e, "speaker": spk} for s, e, spk in d.turns])
    result = assign_word_speakers(df, result)
print(json.dumps({"seconds": seconds, "wall": time.time() - t0}))
'''


def run(cmd: list[str], env: dict) -> tuple[float, int, str]:
    t = time.time()
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mon = PeakRSS(p.pid)
    out, err = p.communicate()
    wall = time.time() - t
    peak = mon.stop()
    if p.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{err[-3000:]}")
    return wall, peak, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=12.0)
    ap.add_argument("--work", default="/tmp/bench_ingest")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--pipeline-args", default="", help='extra ingest options, e.g. "--asr-mode sequential"')
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    corpus = work / "corpus"
    audio_s = build_corpus(corpus, args.minutes)
    print(f"corpus: {len(list(corpus.glob('*.flac')))} files, {audio_s / 60:.1f} min of audio, {os.cpu_count()} CPUs")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}

    wall, peak, out = run([sys.executable, "pipeline/ingest.py", "--input", str(corpus), "--output",
                           str(work / "out"), *shlex.split(args.pipeline_args)], env)
    pipe = audio_s / wall
    print(f"pipeline: {wall:.1f} s wall, {pipe:.1f} s audio/s ({pipe:.1f}x real time), peak PSS {peak / 2**30:.2f} GiB")
    print("  " + "\n  ".join(line for line in out.splitlines() if line.startswith(("hours", "segments", "wall", "stage"))))
    if args.skip_baseline:
        return
    wall_b, peak_b, out_b = run([sys.executable, "-c", BASELINE, str(corpus)], env)  # cwd=REPO: `-c` puts it first on sys.path
    base = audio_s / wall_b
    print(f"baseline (sequential whisperx + pyannote): {wall_b:.1f} s wall, {base:.1f} s audio/s, "
          f"peak PSS {peak_b / 2**30:.2f} GiB")
    print(f"ratio pipeline / baseline: {pipe / base:.2f}x")
    print(json.dumps({"audio_seconds": audio_s, "pipeline_sps": pipe, "baseline_sps": base,
                      "ratio": pipe / base, "pipeline_peak_pss_gib": peak / 2**30,
                      "baseline_peak_pss_gib": peak_b / 2**30}))


if __name__ == "__main__":
    main()
