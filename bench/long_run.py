"""A long ingest run: is memory flat over the corpus, and do the totals add up?

    .venv/bin/python bench/long_run.py [--minutes 120] [--memory-every 30] [--work /tmp/bench_long_run]

Corpus: long-form "sessions" (--session-s, 2 min each by default) concatenated from the English
files of ../shared/speech, cycled until there are at least --minutes of audio. Each session is
scaled by its own gain (1 - 0.001 n), so every session is a distinct file (a distinct
source_id): the ingest must process them all, none is deduplicated.

Runs `python pipeline/ingest.py` on it (local Ray, default resources) and, every --memory-every
seconds, reads the memory of its process tree: the driver (the ingest process itself), each
stage actor (found by the pool's class name in its process title, ``ray::MapWorker(MapBatches(
TranscribeActor))``), all Ray worker processes (every ``ray::`` title: the stage actors, Ray
Data's helper actors, Ray's agents; sum) and the rest of Ray (raylet, GCS, ...). RSS counts a
page shared by several processes (torch's libraries, the object store's shared memory) once per
process; PSS splits it between them, so the PSS total is what the run holds in RAM. A process's
own heap is its RssAnon (private anonymous memory): the figure a leak makes grow. An actor's
PSS also holds the object-store pages it wrote until the next stage reads them, which grows
while a later stage is the bottleneck and falls again.

Prints the memory table at 10/25/50/75/100 % of the sources done, and the heap's growth:
the least-squares slope against sources done, from 10 % on (start-up and model loading come
before), over the samples where that process is alive (Ray Data ends a stage's actors once the
stage has seen every source, long before the end when a later stage is the bottleneck). Then
the totals check from the manifests: sources in = ok + rejected + failed + skipped.
Every sample goes to WORK/memory.csv, the ingest's output to WORK/ingest.log.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
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
MIB = 2**20
PROGRESS = re.compile(r"\[ingest\] (\d+)/(\d+) sources")
# the stage actors, by the class of their pool (pipeline/ray_adapter.py)
ACTORS = {"decode": "DecodeActor", "segment_diarize": "SegmentDiarizeActor", "transcribe": "TranscribeActor",
          "assemble": "AssembleActor"}


def build_corpus(out: Path, minutes: float, session_s: float) -> tuple[int, float]:
    """Writes WORK/corpus/session_NNNN.flac (16 kHz mono PCM_16); returns (files, seconds of audio)."""
    rows = list(csv.DictReader(open(SPEECH / "MANIFEST.tsv", encoding="utf-8"), delimiter="\t"))
    files = [r["path"] for r in rows if r["language"] == "en" and r["notes"][:5] in ("cat=A", "cat=B")
             and not r["path"].endswith(".raw")]
    cache: dict[str, np.ndarray] = {}

    def load(p: str) -> np.ndarray:
        if p not in cache:
            x, sr = sf.read(SPEECH / p, dtype="float32", always_2d=True)
            cache[p] = soxr.resample(x.mean(1), sr, 16_000).astype(np.float32)
        return cache[p]

    out.mkdir(parents=True, exist_ok=True)
    gap = np.zeros(8000, np.float32)  # 0.5 s between files
    total, session, n, i = 0.0, [], 0, 0
    while total < minutes * 60:
        session += [load(files[i % len(files)]), gap]
        i += 1
        if sum(len(s) for s in session) >= session_s * 16_000:
            # the gain makes each session's bytes (its source_id) distinct even where the cycle of
            # files repeats: 60 sessions span 1.0 .. 0.94, inaudible, no clipping
            audio = np.clip(np.concatenate(session) * (1.0 - 0.001 * (n % 500)), -1, 1)
            sf.write(out / f"session_{n:04d}.flac", audio, 16_000, subtype="PCM_16")
            total += len(audio) / 16_000
            session, n = [], n + 1
    return n, total


class Sampler:
    """Memory of the ingest's process tree every ``every`` s, with the sources done so far."""

    FIELDS = ("t", "done", "driver_rss", "driver_anon", *(f"{a}_{m}" for a in ACTORS for m in ("anon", "pss", "rss")),
              "workers_rss_sum", "workers", "ray_rss", "pss_total")

    def __init__(self, pid: int, every: float):
        self.proc, self.every, self.done = psutil.Process(pid), every, 0
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self.t0 = time.time()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def sample(self) -> dict | None:
        try:
            children = self.proc.children(recursive=True)
            driver = self.proc.memory_info().rss
        except psutil.Error:
            return None
        out = {"t": round(time.time() - self.t0, 1), "done": self.done, "driver_rss": driver,
               "driver_anon": rss_anon(self.proc.pid), **{f"{a}_{m}": None for a in ACTORS for m in ("anon", "pss", "rss")}}
        workers, others, pss = [], [], 0
        for c in children:
            try:
                title = " ".join(c.cmdline())
                rss = c.memory_info().rss
                # PSS walks the page tables (~30 ms per torch-sized process): fine every 30 s
                p = c.memory_full_info().pss
            except psutil.Error:
                continue  # a worker that exited between the listing and the read
            pss += p
            (workers if title.startswith("ray::") else others).append(rss)
            for a, cls in ACTORS.items():
                if f"MapBatches({cls})" in title:  # one actor per pool by default; more: the largest
                    out[f"{a}_rss"] = max(out[f"{a}_rss"] or 0, rss)
                    out[f"{a}_pss"] = max(out[f"{a}_pss"] or 0, p)
                    out[f"{a}_anon"] = max(out[f"{a}_anon"] or 0, rss_anon(c.pid) or 0)
        try:
            pss += self.proc.memory_full_info().pss
        except psutil.Error:
            pass
        return {**out, "workers_rss_sum": sum(workers), "workers": len(workers), "ray_rss": sum(others),
                "pss_total": pss}

    def _run(self):
        # lowest priority: the sampler must not take CPU from the run it measures
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        while not self._stop.wait(self.every):
            s = self.sample()
            if s:
                self.samples.append(s)

    def stop(self) -> list[dict]:
        self._stop.set()
        self.t.join()
        return self.samples


def milestones(samples: list[dict], total: int) -> list[tuple[str, dict]]:
    """The first sample at or past 10/25/50/75 % of the sources, and the last one (100 %)."""
    out = []
    for pct in (10, 25, 50, 75):
        s = next((s for s in samples if s["done"] >= pct / 100 * total), None)
        if s:
            out.append((f"{pct}%", s))
    if samples:
        out.append((f"{100 * samples[-1]['done'] / max(total, 1):.0f}% (last)", samples[-1]))
    return out


def slope(samples: list[dict], key: str, total: int) -> float | None:
    """Least-squares slope of ``key`` in MiB per 100 sources, over the samples from 10 % on where
    it was measured (its process alive)."""
    pts = [(s["done"], s[key] / MIB) for s in samples if s["done"] >= 0.1 * total and s[key] is not None]
    if len({x for x, _ in pts}) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0] * 100)


def rss_anon(pid: int) -> int | None:
    """Private anonymous memory of a process (its heap: /proc/PID/status RssAnon), bytes. Unlike
    RSS and PSS it leaves out shared memory, so the object store's pages that an actor wrote and
    that wait for a slower stage (they count in its PSS until the next stage has read them) do
    not look like a leak."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def mib(v) -> str:
    return "-" if v is None else f"{v / MIB:.0f}"


def totals(out: Path, n_in: int) -> dict:
    """Sources in vs the outcomes, from the manifests (sources table) and the run's own stats."""
    from manifests.store import read_table

    status = read_table(out, "sources", ["status"]).column("status").to_pylist()
    runs = read_table(out, "runs", ["stats"]).column("stats").to_pylist()
    stats = json.loads([s for s in runs if s][-1])
    counts = {k: status.count(k) for k in ("ok", "rejected", "failed")}
    counts["skipped"] = stats["sources"].get("skipped", 0)
    return {"sources_in": n_in, **counts, "sum": sum(counts.values()), "adds_up": sum(counts.values()) == n_in,
            "run_stats_sources": stats["sources"], "hours_in": stats["hours_in"], "hours_kept": stats["hours_kept"],
            "segments_kept": stats["segments_kept"], "wall_seconds": stats["wall_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=120.0, help="audio in the corpus (default %(default)s)")
    ap.add_argument("--session-s", type=float, default=120.0, help="length of one source file, s")
    ap.add_argument("--memory-every", type=float, default=30.0, help="s between memory samples")
    ap.add_argument("--work", default="/tmp/bench_long_run")
    ap.add_argument("--pipeline-args", default="", help="extra ingest options")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    n_files, audio_s = build_corpus(work / "corpus", args.minutes, args.session_s)
    print(f"corpus: {n_files} files, {audio_s / 3600:.2f} h of audio; {os.cpu_count()} CPUs", flush=True)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "pipeline/ingest.py", "--input", str(work / "corpus"), "--output", str(work / "out"),
           "--no-report", *shlex.split(args.pipeline_args)]
    t0 = time.time()
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(p.pid, args.memory_every)
    with open(work / "ingest.log", "w") as log:
        for line in p.stdout:
            log.write(line)
            log.flush()
            if m := PROGRESS.search(line):
                sampler.done = int(m.group(1))
    rc = p.wait()
    samples = sampler.stop()
    wall = time.time() - t0
    # the run proper: from the first Ray worker up to the last sample with workers alive (after
    # it, Ray is shutting down and the table would show its teardown, not the run)
    live = [i for i, s in enumerate(samples) if s["workers"]]
    run_samples = samples[live[0]: live[-1] + 1] if live else samples
    with open(work / "memory.csv", "w", newline="") as f:
        w = csv.DictWriter(f, Sampler.FIELDS)
        w.writeheader()
        w.writerows(samples)
    if rc != 0:
        sys.exit(f"ingest failed ({rc}); see {work / 'ingest.log'}")

    print(f"ingest: {wall:.0f} s wall ({audio_s / wall:.1f}x real time), {len(samples)} memory samples "
          f"every {args.memory_every:.0f} s", flush=True)
    print("\nMiB; driver and stage actors: private heap, RssAnon (PSS or RSS); '-' once Ray Data has ended the "
          "stage's actors")
    print("| sources done | t (s) | driver | " + " | ".join(ACTORS) + " | Ray workers RSS sum | rest of Ray RSS "
          "| PSS total |")
    print("|---" * (6 + len(ACTORS)) + "|")
    for label, s in milestones(run_samples, n_files):
        actors = " | ".join(f"{mib(s[f'{a}_anon'])} ({mib(s[f'{a}_pss'])})" for a in ACTORS)
        print(f"| {s['done']}/{n_files} ({label}) | {s['t']:.0f} | {mib(s['driver_anon'])} ({mib(s['driver_rss'])}) | {actors} "
              f"| {mib(s['workers_rss_sum'])} | {mib(s['ray_rss'])} | {mib(s['pss_total'])} |")
    keys = ("driver_anon", *(f"{a}_anon" for a in ACTORS), "pss_total")
    slopes = {k: slope(run_samples, k, n_files) for k in keys}
    print("\ngrowth from 10 % on, MiB per 100 sources (least squares over the samples where the process is alive): "
          + ", ".join(f"{k} {v:+.1f}" if v is not None else f"{k} n/a" for k, v in slopes.items()))
    print("(the PSS total falls when Ray Data ends the actors of stages that are done; a leak shows as a "
          "positive slope of the driver or of an actor)")
    t = totals(work / "out", n_files)
    print(f"\ntotals: sources in {t['sources_in']} = ok {t['ok']} + rejected {t['rejected']} + failed {t['failed']} "
          f"+ skipped {t['skipped']} = {t['sum']}: {'adds up' if t['adds_up'] else 'DOES NOT ADD UP'}")
    print(f"run stats: {t['run_stats_sources']}, {t['hours_in']:.2f} h in, {t['hours_kept']:.2f} h kept, "
          f"{t['segments_kept']} segments kept")
    print(json.dumps({"audio_hours": audio_s / 3600, "wall_s": wall, "totals": t, "slopes_mib_per_100_sources": slopes}))
    if not t["adds_up"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
