"""Ingest a raw speech corpus into clean single-speaker utterances.

    python pipeline/ingest.py --input /data/corpus --output OUT
    ray job submit --working-dir . -- python pipeline/ingest.py --input s3://bucket/corpus --output /shared/OUT

Writes OUT/shards/audio/NNNNNN.tar (WebDataset: <key>.flac 24 kHz mono + <key>.json) and
OUT/manifests/{sources,segments,shards,runs}/*.parquet. Rerunning the same command
resumes: committed sources are skipped, an interrupted part is rolled back and redone.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pipeline.config import ConfigError, IngestConfig, StageResources, _default_resources

STAGES = tuple(_default_resources())


def _stage_values(items: list[str], flag: str, cast) -> dict:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ConfigError(f"{flag} takes STAGE=VALUE (stages: {', '.join(STAGES)}), got {it!r}")
        k, v = it.split("=", 1)
        if k not in STAGES:
            raise ConfigError(f"{flag}: unknown stage {k!r}; stages: {', '.join(STAGES)}")
        out[k] = cast(v)
    return out


def parse_args(argv=None) -> IngestConfig:
    d = IngestConfig(inputs=["x"], output="x")  # defaults, for the help texts
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("input/output")
    g.add_argument("--input", action="append", required=True, metavar="PATH_OR_URI",
                   help="directory (recursive), glob, .txt/.parquet list of files, or fsspec URI; repeatable")
    g.add_argument("--output", required=True, help="output directory (shards/ and manifests/)")
    g.add_argument("--limit", type=int, default=None, help="process at most N new sources")
    g.add_argument("--no-report", dest="report", action="store_false",
                   help="do not rebuild OUT/report.html at the end (python -m manifests report OUT does)")
    g = ap.add_argument_group("segmentation")
    g.add_argument("--vad", choices=["pyannote", "silero"], default=d.vad)
    g.add_argument("--vad-model", default=None, help="pyannote segmentation checkpoint (default: whisperx's bundled model)")
    g.add_argument("--vad-onset", type=float, default=d.vad_onset)
    g.add_argument("--vad-offset", type=float, default=d.vad_offset)
    g.add_argument("--segmentation-step", type=float, default=d.segmentation_step,
                   help="step between 5 s segmentation windows, as a fraction of the window (default %(default)s)")
    g.add_argument("--min-duration", type=float, default=d.min_duration, help="s (default %(default)s)")
    g.add_argument("--max-duration", type=float, default=d.max_duration, help="s, <= 30 (default %(default)s)")
    g.add_argument("--max-pause", type=float, default=d.max_pause, help="pause (s) that ends an utterance")
    g.add_argument("--edge-pad", type=float, default=d.edge_pad, help="s of context around the words")
    g = ap.add_argument_group("transcription")
    g.add_argument("--asr-model", default=d.asr_model, help="faster-whisper name or path (default: tiny.en, bundled)")
    g.add_argument("--asr-compute-type", default=d.asr_compute_type)
    g.add_argument("--asr-device", default=d.asr_device, choices=["auto", "cpu", "cuda"])
    g.add_argument("--asr-batch-size", type=int, default=d.asr_batch_size)
    g.add_argument("--asr-beam-size", type=int, default=d.asr_beam_size)
    g.add_argument("--asr-mode", choices=["batched", "sequential"], default=d.asr_mode,
                   help="batched (WhisperX's batched pipeline) or sequential (timestamp tokens, more "
                        "accurate on long-form speech, no batching) (default %(default)s)")
    g.add_argument("--asr-window", type=float, default=d.asr_window,
                   help="s of speech packed into one Whisper window, <= 30 (default %(default)s)")
    g.add_argument("--asr-max-gap", type=float, default=d.asr_max_gap,
                   help="pack VAD regions only across pauses shorter than this (s; default: any pause)")
    g.add_argument("--asr-sources-per-call", type=int, default=None,
                   help="sources whose windows share Whisper batches (default: --asr-batch-size on GPU, 1 on CPU)")
    g.add_argument("--language", default=None, help="force a language (default: detect per source)")
    g.add_argument("--align-model", default=None, help="whisperx alignment model (needs a hub or local copy)")
    g = ap.add_argument_group("diarization")
    g.add_argument("--diarization", default=d.diarization,
                   help="offline | none | a pyannote pipeline name or path (default %(default)s)")
    g.add_argument("--num-speakers", type=int, default=None, help="speakers per source, when known")
    g.add_argument("--min-speakers", type=int, default=None, help="at least this many speakers per source")
    g.add_argument("--max-speakers", type=int, default=None,
                   help="at most this many speakers per source (default: 10 searched)")
    g.add_argument("--clustering", choices=["silhouette", "threshold"], default=d.clustering,
                   help="offline diarizer: choose the speaker count per source by silhouette, or cut at "
                        "--cluster-threshold (default %(default)s)")
    g.add_argument("--min-silhouette", type=float, default=d.min_silhouette,
                   help="below this best silhouette a source has one speaker (default %(default)s)")
    g.add_argument("--cluster-threshold", type=float, default=d.cluster_threshold,
                   help="cosine distance, with --clustering threshold (default %(default)s)")
    g.add_argument("--min-speaker-purity", type=float, default=d.min_speaker_purity,
                   help="drop a segment as mixed_speakers below this share of its own speaker's "
                        "diarized speech (default %(default)s)")
    g.add_argument("--keep-overlap", action="store_true", help="keep segments with overlapped speech")
    g.add_argument("--overlap-threshold", type=float, default=d.overlap_threshold,
                   help="second-speaker activation of the segmentation model that marks overlapped "
                        "speech (default %(default)s)")
    g = ap.add_argument_group("filters")
    for name in ("min_avg_logprob", "max_no_speech_prob", "max_compression_ratio", "min_speech_rate",
                 "max_speech_rate", "max_clipping_ratio", "min_snr_db", "min_source_duration", "silence_dbfs"):
        g.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name),
                       help="default %(default)s")
    g = ap.add_argument_group("shards")
    g.add_argument("--shard-max-bytes", type=int, default=d.shard_max_bytes)
    g.add_argument("--shard-max-samples", type=int, default=d.shard_max_samples)
    g = ap.add_argument_group("cluster and resources")
    g.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    g.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"], help="pyannote models' device")
    g.add_argument("--cpus", action="append", metavar="STAGE=N", help=f"CPUs per task/actor; stages: {', '.join(STAGES)}")
    g.add_argument("--gpus", action="append", metavar="STAGE=N", help="GPUs per actor (e.g. transcribe=1)")
    g.add_argument("--concurrency", action="append", metavar="STAGE=N", help="actors / parallel tasks of a stage")
    g.add_argument("--threads", action="append", metavar="STAGE=N", help="model threads of a stage")
    a = ap.parse_args(argv)

    res = {k: StageResources(**vars(v)) for k, v in _default_resources().items()}
    for flag, attr, cast in (("--cpus", "num_cpus", float), ("--gpus", "num_gpus", float),
                             ("--concurrency", "concurrency", int), ("--threads", "threads", int)):
        for k, v in _stage_values(getattr(a, flag[2:]), flag, cast).items():
            setattr(res[k], attr, v)
    kw = {k: v for k, v in vars(a).items() if k not in ("input", "cpus", "gpus", "concurrency", "threads", "address")}
    return IngestConfig(inputs=a.input, ray_address=a.address, resources=res, **kw)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        cfg = parse_args(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from manifests.locks import JobLocked
    from pipeline.discover import InputError
    from pipeline.job import format_summary, run_ingest

    try:
        stats = run_ingest(cfg)
    except (InputError, JobLocked) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(stats), flush=True)
    print(_report_line(cfg), flush=True)
    return 0


def _report_line(cfg: IngestConfig) -> str:
    """The summary's last line: where the report is (rebuilt now from all the manifests)."""
    if not cfg.report:
        return f"report: not rebuilt (--no-report); build it with: python -m manifests report {cfg.output}"
    from manifests.report import after_job

    return after_job(cfg.output)


if __name__ == "__main__":
    sys.exit(main())
