"""Throughput of the tokenize job against a naive loop, in the same run.

    python bench/tokenize_job.py                       # CPU, tiny codec, ~5 min of real speech
    python bench/tokenize_job.py --device cuda --engine local --minutes 20 --codec CKPT

Naive loop: every utterance of the shards, one at a time: FLAC decode, then
``codec.encode(wav[1, 1, N])`` (``torch.inference_mode``; bf16 autocast on CUDA like the
job), nothing written. Job: ``tokenize/run.py``'s ``run()`` on the same shards (reading,
bucketing, encoding, writing token shards and manifests), timed from the start of its
pipeline (actor start and model load included) to its last commit.

Prints both throughputs in seconds of audio per second and their ratio, plus the
encoder-only figure of the job (audio / time inside the encoder), which is what the
job reaches on a corpus large enough to hide start-up.

The corpus: ``--input OUT`` (an ingest output), or by default utterances cut from
``../shared/speech`` (resampled to 24 kHz with soxr, 1..20 s pieces) written as audio
shards in the ingest's format. The file is not named ``tokenize.py``: run as a script,
its folder comes first on sys.path and a ``tokenize.py`` there shadows the standard
library's (``import torch`` -> ``inspect`` -> ``tokenize`` breaks).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import io
import json
import logging
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SPEECH = Path(os.environ.get("VOXFORGE_SPEECH", REPO.parent / "shared" / "speech"))


def load_run():
    spec = importlib.util.spec_from_file_location("tokenize_run", REPO / "tokenize" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["tokenize_run"] = mod
    spec.loader.exec_module(mod)
    return mod


def make_corpus(out: Path, minutes: float, shard_samples: int, seed: int = 0) -> float:
    """Audio shards (ingest format) of real speech cut into 1..20 s utterances. Returns seconds."""
    import soundfile as sf
    import soxr

    from manifests.store import write_part

    with open(SPEECH / "MANIFEST.tsv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if not r["path"].endswith(".raw")]
    rng = np.random.default_rng(seed)
    rng.shuffle(rows)
    (out / "shards" / "audio").mkdir(parents=True, exist_ok=True)
    shard_rows, pending, total, cache = [], [], 0.0, {}

    def flush() -> None:  # one shard of the pending utterances (FLAC in a tar, as the ingest writes)
        name = f"{len(shard_rows):06d}"
        path = out / "shards" / "audio" / f"{name}.tar"
        with tarfile.open(path, "w") as tar:
            for key, pcm, meta in pending:
                buf = io.BytesIO()
                sf.write(buf, np.clip(pcm, -1, 1), 24000, format="FLAC", subtype="PCM_16")
                for n, data in ((f"{key}.flac", buf.getvalue()), (f"{key}.json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(n)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shard_rows.append({"shard": name, "path": f"shards/audio/{name}.tar", "n_samples": len(pending),
                           "bytes": path.stat().st_size})
        pending.clear()

    # More minutes than ../shared/speech holds (38) cycle over it again, cut at other lengths,
    # so that a corpus can be long enough for the job's start-up to stop mattering.
    rnd = 0
    while total < minutes * 60:
        before = total
        for r in rows:
            if total >= minutes * 60:
                break
            if r["path"] not in cache:
                try:
                    x, sr = sf.read(SPEECH / r["path"], dtype="float32", always_2d=True)
                except Exception:
                    cache[r["path"]] = None
                    continue
                sid = hashlib.sha256((SPEECH / r["path"]).read_bytes()).hexdigest()[:16]
                cache[r["path"]] = (soxr.resample(x.mean(axis=1), sr, 24000), sid)
            if cache[r["path"]] is None:
                continue
            x, sid = cache[r["path"]]
            pos, i = 0, 0
            while pos < len(x) - 24000 and total < minutes * 60:
                n = int(rng.uniform(1.0, 20.0) * 24000)  # ingest utterances are 1..30 s
                piece = x[pos:pos + n]
                pos += n
                key = f"{sid}_{i:05d}" if rnd == 0 else f"{sid}_r{rnd}_{i:05d}"
                i += 1
                pending.append((key, piece, {"key": key, "source_id": sid, "source_path": r["path"],
                                             "start": (pos - n) / 24000, "duration": len(piece) / 24000,
                                             "sample_rate": 24000, "speaker": f"{sid}:S0",
                                             "language": r["language"], "text": "", "words": []}))
                total += len(piece) / 24000
                if len(pending) == shard_samples:
                    flush()
        if total == before:  # nothing readable, or every file too short to cut: another round would spin
            raise SystemExit(f"no readable audio of 1 s or more under {SPEECH}")
        rnd += 1
    if pending:
        flush()
    write_part(out, "shards", "bench", shard_rows)
    return total


def scratch_view(src: Path, dst: Path) -> Path:
    """An ingest output the job can write to without touching ``src``: its ``shards`` table
    (paths made absolute) over the same audio tars. Tokenizing ``src`` itself would leave token
    shards there, and a second benchmark run would find them done and time nothing."""
    from manifests.store import read_table, write_part

    rows = read_table(src, "shards").to_pylist()
    if not rows:
        raise SystemExit(f"--input {src}: no committed audio shards (manifests/shards is empty)")
    for r in rows:
        r["path"] = str(Path(r["path"]) if Path(r["path"]).is_absolute() else (src / r["path"]).resolve())
    (dst / "manifests").mkdir(parents=True)
    write_part(dst, "shards", "bench", rows)
    return dst


def naive_loop(out: Path, codec, device: str, precision: str) -> tuple[float, float, int]:
    """(audio seconds, wall seconds, utterances): one utterance at a time through codec.encode."""
    import contextlib

    import soundfile as sf
    import torch

    from manifests.store import read_table

    paths = [Path(p) if Path(p).is_absolute() else out / p for p in read_table(out, "shards")["path"].to_pylist()]
    dev = torch.device(device)
    ac = (torch.autocast(device_type=dev.type, dtype=torch.bfloat16) if precision == "bf16"
          else contextlib.nullcontext())
    audio, n = 0.0, 0
    t0 = time.perf_counter()
    for p in sorted(paths):
        with tarfile.open(p) as tar:
            for m in tar:
                if not m.name.endswith(".flac"):
                    continue
                pcm, _ = sf.read(io.BytesIO(tar.extractfile(m).read()), dtype="float32")
                wav = torch.from_numpy(pcm)[None, None].to(dev)
                with torch.inference_mode(), ac:
                    sem, aco = codec.encode(wav)
                sem.cpu(), aco.cpu()  # the tokens must reach the host, as in the job
                audio += len(pcm) / 24000
                n += 1
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return audio, time.perf_counter() - t0, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=None, help="an ingest output to use (default: make one from ../shared/speech)")
    ap.add_argument("--minutes", type=float, default=5.0,
                    help="audio to generate when no --input (default 5); past 38 min the speech is cut again")
    ap.add_argument("--shard-samples", type=int, default=16, help="utterances per generated shard")
    ap.add_argument("--codec", default=None, help="codec checkpoint (default: a random-init --codec-config, seed 0)")
    ap.add_argument("--codec-config", default="tiny", help="preset for the default codec: tiny | voxtral (300M)")
    ap.add_argument("--make-corpus", default=None, metavar="DIR",
                    help="only write the generated corpus (and the default codec) to DIR and exit")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--engine", choices=["ray", "local"], default="ray")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, naive loop and each CPU encoder (default 1)")
    ap.add_argument("--naive-threads", type=int, default=None,
                    help="torch threads of the naive loop (default: --threads); 0 = torch's default")
    ap.add_argument("--num-actors", type=int, default=None, help="job encoder actors (Ray engine)")
    ap.add_argument("--cpus-per-actor", type=float, default=1.0, help="Ray CPUs per encoder actor")
    ap.add_argument("--read-cpus", type=float, default=1.0, help="Ray CPUs per reader task")
    ap.add_argument("--batch-seconds", type=float, default=60.0)
    ap.add_argument("--batches-per-call", type=int, default=None)
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import shutil

    import torch

    tmp = Path(tempfile.mkdtemp(prefix="bench_tokenize_"))
    try:
        return _bench(args, tmp, torch)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # corpus, codec and token outputs of this run


def _bench(args, tmp: Path, torch) -> int:
    from codec import Codec, CodecConfig

    default_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    if args.codec is None:
        torch.manual_seed(0)
        where = Path(args.make_corpus) if args.make_corpus else tmp
        args.codec = str(Codec(CodecConfig.from_name(args.codec_config)).save(where / "codec"))
    if args.make_corpus:
        dst = Path(args.make_corpus)
        secs = make_corpus(dst / "out", args.minutes, args.shard_samples)
        print(f"corpus: {secs:.1f} s of real speech at {dst / 'out'}; codec at {args.codec}")
        return 0
    if args.input is None:
        out = tmp / "out"
        t = time.perf_counter()
        secs = make_corpus(out, args.minutes, args.shard_samples)
        print(f"corpus: {secs:.1f} s of real speech in {len(list((out / 'shards/audio').glob('*.tar')))} shards "
              f"(made in {time.perf_counter() - t:.1f} s)")
    else:
        out = scratch_view(Path(args.input), tmp / "view")
    precision = args.precision if args.precision != "auto" else ("bf16" if args.device == "cuda" else "fp32")

    nt = args.threads if args.naive_threads is None else args.naive_threads
    torch.set_num_threads(nt or default_threads)
    codec = Codec.load(args.codec).to(args.device).eval()
    naive_loop(out, codec, args.device, precision) if args.device == "cuda" else None  # CUDA warm-up
    audio, wall, n = naive_loop(out, codec, args.device, precision)
    naive = audio / wall
    print(f"naive loop: {n} utterances, {audio:.1f} s audio in {wall:.2f} s = {naive:.1f} s/s "
          f"({args.device}, {precision}, {torch.get_num_threads()} thread(s))")
    del codec
    torch.set_num_threads(args.threads)

    run = load_run()
    cfg = run.TokenizeConfig(input=str(out), codec=args.codec, batch_seconds=args.batch_seconds, device=args.device,
                             precision=args.precision, threads=args.threads if args.device == "cpu" else None,
                             engine=args.engine, num_actors=args.num_actors, batches_per_call=args.batches_per_call,
                             cpus_per_actor=args.cpus_per_actor, read_cpus=args.read_cpus)
    st = run.run(cfg)
    if not st["samples"]:
        print("ERROR: the job tokenized nothing (see its log above)", file=sys.stderr)
        return 1
    job = st["audio_seconds_per_second"]
    # The machine may be shared: time the naive loop again after the job and keep its best,
    # so that a slow moment does not flatter the job.
    torch.set_num_threads(nt or default_threads)
    codec = Codec.load(args.codec).to(args.device).eval()
    audio2, wall2, _ = naive_loop(out, codec, args.device, precision)
    del codec
    print(f"naive loop again after the job: {audio2 / wall2:.1f} s/s; ratios below use the best of the two")
    naive = max(naive, audio2 / wall2)
    enc = st["audio_seconds"] / st["encode_seconds"] if st["encode_seconds"] else 0.0
    actors = cfg.resolved.get("num_actors", 1)
    print(run.format_summary(st))
    print(f"job ({args.engine}, {actors} encoder(s), {cfg.resolved.get('device')}): "
          f"{st['audio_seconds']:.1f} s audio in {st['wall_seconds']:.2f} s = {job:.1f} s/s "
          f"(with Ray start: {st['audio_seconds'] / st['total_seconds']:.1f} s/s)")
    steady = st.get("steady_audio_seconds_per_second") or 0.0
    print(f"job after its first batch: {steady:.1f} s/s; encoder alone: {enc:.1f} s/s per encoder; "
          f"padding {st['padding_ratio']:.3f}x")
    print(f"RATIO job / naive: {job / naive:.2f}x end to end (start-up included); "
          f"{steady / naive:.2f}x after the first batch; encoder alone x encoders: {enc * actors / naive:.2f}x")
    if st["samples"] != n:
        print(f"WARNING: the job tokenized {st['samples']} utterances, the naive loop {n}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
