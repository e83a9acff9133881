"""Throughput and latency of the codec service: N concurrent clients against one sequential client.

    python bench/serve.py                                   # CPU, tiny codec (random init), 1 replica
    python bench/serve.py --codec CKPT --device cuda --clients 32 --seconds 30     # a GPU replica

Starts the service (``codec/serve.py``) on loopback with one replica, then, in the same run:

1. sequential: one client sends real utterances one after the other (the baseline);
2. concurrent: ``--clients`` clients, each sending its next request when the last one is
   answered (closed loop): the peak throughput;
3. half load: requests arrive at half the peak rate of (2) (``--arrivals uniform`` or
   ``poisson``), each on its own thread: the latency a service sees when it is not saturated.

Every phase is bounded by ``--seconds`` and ``--max-requests``. Requests are ``POST /encode`` of
real speech files from ``../shared/speech`` (English read speech, ``--min-seconds`` ..
``--max-seconds``, default 2..12 s, in their own formats and rates: the service decodes and
resamples them). Latency grows with an utterance's length, so the sequential phase's p99/p50
is the spread that lengths (and the machine) give without queueing. Prints requests/s, audio-seconds/s and
p50/p95/p99 latency per phase, the concurrent / sequential ratio, and p99 / p50 at half load;
``--json`` adds one JSON line. Targets (issue 14, 2 CPU cores, tiny): ratio >= 1.5, p99 < 2 x p50
at half load. On a GPU the audio-seconds/s of (2) is the figure per GPU (one replica, one GPU).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SPEECH = Path(os.environ.get("VOXFORGE_SPEECH", REPO.parent / "shared" / "speech"))


def pick_utterances(n: int, min_s: float = 2.0, max_s: float = 12.0, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` English read-speech files (category A) of ``min_s..max_s`` seconds: ``(path, bytes)``."""
    with open(SPEECH / "MANIFEST.tsv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t")
                if r["notes"].startswith("cat=A") and min_s <= float(r["duration_s"]) <= max_s
                and not r["path"].endswith(".raw")]
    random.Random(seed).shuffle(rows)
    return [(r["path"], (SPEECH / r["path"]).read_bytes()) for r in rows[:n]]


def percentiles(lat: list[float]) -> dict:
    if not lat:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    a = np.asarray(lat)
    return {f"p{q}": float(np.percentile(a, q)) for q in (50, 95, 99)}


class Phase:
    """Collects the answers of one phase (thread-safe)."""

    def __init__(self, name: str):
        self.name = name
        self.lat: list[float] = []
        self.audio = 0.0
        self.errors = 0
        self.lock = threading.Lock()
        self.t0 = self.t1 = 0.0

    def add(self, latency: float, audio_s: float | None) -> None:
        with self.lock:
            if audio_s is None:
                self.errors += 1
            else:
                self.lat.append(latency)
                self.audio += audio_s

    def summary(self) -> dict:
        wall = max(self.t1 - self.t0, 1e-9)
        return {"phase": self.name, "requests": len(self.lat), "errors": self.errors, "wall_s": wall,
                "req_per_s": len(self.lat) / wall, "audio_s_per_s": self.audio / wall, **percentiles(self.lat)}


def one_request(client, data: bytes) -> tuple[float, float | None]:
    t = time.perf_counter()
    status, headers, _ = client.request("POST", "/encode", data,
                                        {"Content-Type": "application/octet-stream", "Accept": "application/x-npz"})
    lat = time.perf_counter() - t
    if status != 200:
        return lat, None
    dur = {k.lower(): v for k, v in headers.items()}.get("x-duration")
    return lat, float(dur)


def closed_loop(client, utts, clients: int, seconds: float, max_requests: int, name: str) -> Phase:
    """``clients`` threads, each sending its next request when its last is answered."""
    ph = Phase(name)
    counter = iter(range(max_requests))
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker(k: int):
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            ph.add(*one_request(client, utts[(i + k) % len(utts)][1]))

    ph.t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    ph.t1 = time.perf_counter()
    return ph


def open_loop(client, utts, rate: float, seconds: float, max_requests: int, arrivals: str, seed: int = 0) -> Phase:
    """Requests start at ``rate`` per second (uniform spacing or Poisson), whatever the answers."""
    ph = Phase(f"half load ({arrivals})")
    rng = random.Random(seed)
    n = min(max_requests, max(1, int(rate * seconds)))
    times, t = [], 0.0
    for _ in range(n):
        times.append(t)
        t += rng.expovariate(rate) if arrivals == "poisson" else 1.0 / rate
    ph.t0 = time.perf_counter()
    with ThreadPoolExecutor(max(8, int(rate * 10))) as pool:
        futs = []
        for i, at in enumerate(times):
            delay = ph.t0 + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futs.append(pool.submit(one_request, client, utts[i % len(utts)][1]))
        for f in futs:
            ph.add(*f.result())
    ph.t1 = time.perf_counter()
    return ph


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--codec", help="codec checkpoint (default: a random-init tiny codec, same compute as a trained one)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients of phase 2")
    p.add_argument("--seconds", type=float, default=20.0, help="time bound of each phase")
    p.add_argument("--max-requests", type=int, default=400, help="request bound of each phase")
    p.add_argument("--utterances", type=int, default=24, help="distinct real files sent (round robin)")
    p.add_argument("--min-seconds", type=float, default=2.0, help="shortest utterance picked")
    p.add_argument("--max-seconds", type=float, default=12.0, help="longest utterance picked")
    p.add_argument("--arrivals", default="uniform", choices=["uniform", "poisson"], help="half-load arrivals")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the replica (CPU)")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="Ray CPUs reserved by the replica")
    p.add_argument("--max-batch-requests", type=int, default=16)
    p.add_argument("--batch-wait", type=float, default=0.01)
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    a = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray
    from ray import serve

    from codec.client import CodecClient
    from codec.serve import start
    from codec.service import ServiceConfig

    tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
    codec_dir = a.codec
    if codec_dir is None:
        import torch

        from codec import Codec, CodecConfig

        torch.manual_seed(0)
        codec_dir = str(Codec(CodecConfig.tiny()).save(Path(tmp.name) / "tiny"))
    utts = pick_utterances(a.utterances, a.min_seconds, a.max_seconds)
    with socket.socket() as s:  # a free loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ServiceConfig(codec_dir=codec_dir, device=a.device, threads=a.threads, max_batch_requests=a.max_batch_requests,
                        batch_wait_s=a.batch_wait, request_timeout_s=120)
    t0 = time.perf_counter()
    (url,) = start([cfg], host="127.0.0.1", port=port, num_cpus=a.replica_cpus)
    client = CodecClient(url, timeout=180)
    load0 = os.getloadavg()[0]
    print(f"[bench] service up in {time.perf_counter() - t0:.1f} s at {url}; {len(utts)} utterances, "
          f"{sum(len(b) for _, b in utts) / 1e6:.1f} MB; cpus={os.cpu_count()} device={a.device}", flush=True)
    try:
        # warm-up: first calls pay oneDNN/allocator start-up (STACK.md)
        closed_loop(client, utts, min(4, a.clients), 10.0, 8, "warm-up")
        seq = closed_loop(client, utts, 1, a.seconds, a.max_requests, "sequential (1 client)")
        conc = closed_loop(client, utts, a.clients, a.seconds, a.max_requests, f"concurrent ({a.clients} clients)")
        half = open_loop(client, utts, conc.summary()["req_per_s"] / 2, a.seconds, a.max_requests, a.arrivals)
        health = client.health()
    finally:
        serve.shutdown()
        ray.shutdown()
        tmp.cleanup()
    rows = [ph.summary() for ph in (seq, conc, half)]
    print(f"[bench] 1-min load average: {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
          f"({os.cpu_count()} CPUs; other processes' load skews every figure)")
    print(f"{'phase':<28} {'requests':>8} {'err':>4} {'req/s':>7} {'audio s/s':>10} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7}")
    for r in rows:
        print(f"{r['phase']:<28} {r['requests']:>8} {r['errors']:>4} {r['req_per_s']:>7.2f} {r['audio_s_per_s']:>10.1f} "
              f"{r['p50']:>7.3f} {r['p95']:>7.3f} {r['p99']:>7.3f}")
    ratio = rows[1]["audio_s_per_s"] / max(rows[0]["audio_s_per_s"], 1e-9)
    tail = rows[2]["p99"] / max(rows[2]["p50"], 1e-9)
    print(f"concurrent / sequential throughput: {ratio:.2f}x (target >= 1.5x)")
    print(f"half load p99 / p50: {tail:.2f} (target < 2); sequential p99 / p50: "
          f"{rows[0]['p99'] / max(rows[0]['p50'], 1e-9):.2f} (lengths and machine noise, no queueing)")
    print(f"batches: {health['encode_batches']} for {health['served']} requests, largest {health['largest_batch']}")
    if a.device != "cpu":
        print(f"per GPU (1 replica): {rows[1]['audio_s_per_s']:.1f} s of audio per s")
    if a.json:
        print(json.dumps({"phases": rows, "ratio": ratio, "half_load_p99_over_p50": tail, "health": health,
                          "device": a.device, "clients": a.clients}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
