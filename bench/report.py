"""Time ``python -m manifests report`` on a synthetic output of many segments; print the seconds and page size.

    python bench/report.py                       # 100k segments, 100 parts, tokens for 10 shards
    python bench/report.py --segments 1000000 --keep

The manifests are synthetic rows (written with the real schemas and writer helpers); the audio
shards hold one tiny real FLAC per kept segment (the report reads only the sampled ones, but it
has to find them in 1000-sample tars); dropped segments point at one real WAV, so their clips are
cut from a file as they are in a real output.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import soundfile as sf

from manifests.report import ReportConfig, build_report
from manifests.shards import TokenSample
from manifests.store import write_part
from manifests.tokens import commit_token_shard
from pipeline.config import IngestConfig
from pipeline.quality import DROP_REASONS


def make_output(out: Path, n_segments: int, n_parts: int, token_shards: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    wav = out / "source.wav"
    t = np.arange(24_000 * 40) / 24_000
    sf.write(wav, (0.2 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2).astype(np.float32), 24_000)
    buf = io.BytesIO()
    sf.write(buf, (0.1 * np.sin(2 * np.pi * 330 * t[:2400])).astype(np.float32), 24_000, format="FLAC", subtype="PCM_16")
    flac = buf.getvalue()  # 0.1 s: the shards' size is not what is measured
    cfg = IngestConfig(inputs=["/data/corpus"], output=str(out))
    now = datetime.now(UTC)
    write_part(out, "runs", "ingest-bench", [{"run_id": "bench", "job": "ingest", "config": cfg.to_json(),
                                               "started": now, "finished": now,
                                               "versions": "{}", "stats": "{}"}])
    per_part = n_segments // n_parts
    speakers_per_source = 3
    seg_per_source = 20
    langs = np.array(["en", "fr", "de", "es", "it"])
    reasons = np.array(DROP_REASONS)
    (out / "shards" / "audio").mkdir(parents=True)
    for p in range(n_parts):
        shard = f"{p:06d}"
        n = per_part
        idx = np.arange(p * per_part, p * per_part + n)
        src = idx // seg_per_source
        dur = np.clip(rng.lognormal(1.5, 0.6, n), 0.3, 32)
        kept = rng.random(n) < 0.6
        reason = np.where(kept, None, reasons[rng.integers(0, len(reasons), n)])
        # a long tail of speakers: most sources have 3, some speakers speak once
        spk = [f"{s:016x}:S{int(k)}" for s, k in zip(src, rng.zipf(2.0, n).clip(1, speakers_per_source * 4) - 1)]
        lang = langs[np.minimum(rng.geometric(0.6, n) - 1, len(langs) - 1)]
        keys = [f"{s:016x}_{i:05d}" for s, i in zip(src, idx % seg_per_source)]
        starts = (idx % seg_per_source) * 35.0 % 30
        rows = [{"key": keys[i], "source_id": f"{src[i]:016x}", "source_path": str(wav), "start": float(starts[i]),
                 "end": float(starts[i] + min(dur[i], 10)), "duration": float(dur[i]), "sample_rate": 24_000,
                 "speaker": spk[i], "language": str(lang[i]), "language_prob": float(rng.uniform(0.5, 1)),
                 "text": "a synthetic segment of the report bench " * int(1 + dur[i] // 3), "words": [],
                 "asr": {"model": "tiny.en", "avg_logprob": float(rng.normal(-0.4, 0.3)),
                         "no_speech_prob": float(rng.beta(1, 8)), "compression_ratio": float(rng.normal(1.5, 0.3))},
                 "quality": {"snr_db": float(rng.normal(25, 10)), "clipping_ratio": float(rng.exponential(1e-4)),
                             "speech_rate_cps": float(rng.normal(15, 4)), "overlap_ratio": 0.0},
                 "pipeline_version": "0.1.0", "kept": bool(kept[i]), "drop_reason": reason[i],
                 "shard": shard if kept[i] else None, "run_id": "bench"} for i in range(n)]
        tar_path = out / "shards" / "audio" / f"{shard}.tar"
        with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for r in rows:
                if r["kept"]:
                    for name, data in ((f"{r['key']}.flac", flac), (f"{r['key']}.json", b"{}")):
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
        write_part(out, "segments", shard, rows)
        write_part(out, "shards", shard, [{"shard": shard, "path": f"shards/audio/{shard}.tar", "n_samples": int(kept.sum()),
                                           "bytes": tar_path.stat().st_size, "sha256": "", "total_duration": 0.0,
                                           "run_id": "bench"}])
        sids = sorted(set(src.tolist()))
        write_part(out, "sources", shard, [{"source_id": f"{s:016x}", "path": f"/data/corpus/{s}.flac", "bytes": 1,
                                            "duration": 700.0, "sample_rate": 16_000, "channels": 1, "codec": "FLAC/PCM_16",
                                            "status": "ok" if s % 50 else "rejected",
                                            "error": None if s % 50 else f"not_audio: /data/corpus/{s}.flac: bad",
                                            "language": "en", "language_prob": 0.9, "n_segments": seg_per_source,
                                            "n_kept": 12, "kept_duration": 60.0, "run_id": "bench"} for s in sids])
        if p < token_shards:
            ks = [r["key"] for r in rows if r["kept"]]
            frames = [int(d * 12.5) + 1 for d, k in zip(dur, kept) if k]
            samples = [TokenSample(k, rng.zipf(1.3, f).clip(1, 8192).astype(np.int16) - 1,
                                   rng.integers(0, 21, (f, 36), dtype=np.uint8), {"key": k}) for k, f in zip(ks, frames)]
            commit_token_shard(out, "bench-000000000000", shard, samples, [], frame_rate=12.5, sample_rate=24_000,
                               n_samples=[f * 1920 for f in frames], run_id="bench-tok")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=100_000)
    ap.add_argument("--parts", type=int, default=100)
    ap.add_argument("--token-shards", type=int, default=10, help="parts that also get token shards")
    ap.add_argument("--dir", default=None, help="where to build the output (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the output and the page")
    a = ap.parse_args()
    root = Path(a.dir or tempfile.mkdtemp(prefix="report-bench-"))
    out = root / "out"
    try:
        t0 = time.time()
        make_output(out, a.segments, a.parts, a.token_shards)
        print(f"synthetic output: {a.segments} segments in {a.parts} parts, {time.time() - t0:.1f} s to make")
        for rep in range(2):  # the first build also pays for imports (matplotlib ~1 s)
            r = build_report(out, cfg=ReportConfig())
            print(f"build {rep + 1}: {r.seconds:.1f} s, page {r.bytes / 1e6:.2f} MB, {r.figures} figures, "
                  f"{r.clips} clips ({r.clips_left_out} left out by the cap, {r.clips_unavailable} without audio)")
            print(f"  seconds per section: {r.timings}")
        print(f"page: {r.path}" if a.keep else "")
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
