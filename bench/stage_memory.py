"""Peak RSS of each ingest actor on real speech: the figures behind the stages' declared memory.

    .venv/bin/python bench/stage_memory.py FILE [FILE ...]

Starts one Ray actor per actor pool of the ingest (decode; segment + diarize; transcribe;
assemble), each built exactly as ``pipeline.ray_adapter`` builds it (default config), passes
every FILE through the four in order, and prints each actor's RSS after its models loaded, its
peak RSS (the kernel's high-water mark, ``ru_maxrss``: no sampling gap) and its peak PSS
(sampled every 0.5 s). RSS counts the pages shared with other processes (torch's libraries,
the object store's shared memory, which Ray budgets on its own) in full in every process; PSS
splits them between the processes that map them, so the PSS of all actors adds up to what they
hold: PSS is what a stage should declare.
Peaks grow with the length of a source (its audio arrays, segmentation scores), so pass the
longest sources you expect; pipeline/config.py says which lengths the defaults were measured on.
"""

from __future__ import annotations

import argparse
import os
import resource
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import psutil
    import ray

    from pipeline.config import IngestConfig
    from pipeline.ray_adapter import RayStage, init_ray, pack, sharing, unpack
    from pipeline.stages import Assemble, Diarize, HashAndDecode, Segment, Transcribe

    @ray.remote(num_cpus=0)
    class Probe:
        def __init__(self, stage_classes, *a):
            self.stage = RayStage(stage_classes, *a)
            self.loaded = psutil.Process().memory_info().rss

        def __call__(self, batch):
            return self.stage(batch)

        def pid(self) -> int:
            return os.getpid()

        def memory(self) -> tuple[int, int]:
            return self.loaded, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    cfg = IngestConfig(inputs=["x"], output="/tmp/unused")
    init_ray(None)
    actors = {
        "decode": Probe.remote((HashAndDecode,), cfg, frozenset()),
        "segment+diarize": Probe.remote((Segment, Diarize), sharing(cfg, "segment", "diarize")[1]),
        "transcribe": Probe.remote((Transcribe,), cfg),
        "assemble": Probe.remote((Assemble,), cfg),
    }
    import threading

    pids = {name: ray.get(a.pid.remote()) for name, a in actors.items()}
    pss_peak = dict.fromkeys(actors, 0)
    stop = threading.Event()

    def sample():
        while not stop.wait(0.5):
            for name, pid in pids.items():
                try:
                    pss_peak[name] = max(pss_peak[name], psutil.Process(pid).memory_full_info().pss)
                except psutil.Error:
                    pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for f in args.files:
        batch = pack([{"path": os.path.abspath(f), "status": "ok", "error": None}])
        for a in actors.values():
            batch = ray.get(a.__call__.remote(batch))
        row = unpack(batch)[0]
        print(f"{f}: {row['status']} {row.get('duration') or 0:.0f} s {row.get('error') or ''}", flush=True)
    stop.set()
    sampler.join()
    print("| actor | RSS after load | peak RSS | peak PSS |\n|---|---|---|---|")
    for name, a in actors.items():
        loaded, peak = ray.get(a.memory.remote())
        print(f"| {name} | {loaded / 2**20:.0f} MiB | {peak / 2**20:.0f} MiB | {pss_peak[name] / 2**20:.0f} MiB |")
    ray.shutdown()


if __name__ == "__main__":
    main()
