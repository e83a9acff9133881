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

from manifests.config_cli import HelpFormatter, add_config_arguments, config_from_args
from pipeline.config import CLI_GROUPS, ConfigError, IngestConfig, StageResources, _default_resources

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


def build_parser() -> argparse.ArgumentParser:
    """IngestConfig's fields as flags (pipeline/config.py holds their help and defaults), and the
    per-stage resource flags, which fill ``IngestConfig.resources``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    g = add_config_arguments(ap, IngestConfig, groups=CLI_GROUPS)["cluster"]
    g.add_argument("--cpus", action="append", metavar="STAGE=N", help=f"CPUs per task/actor; stages: {', '.join(STAGES)}")
    g.add_argument("--gpus", action="append", metavar="STAGE=N", help="GPUs per actor (e.g. transcribe=1)")
    g.add_argument("--concurrency", action="append", metavar="STAGE=N", help="actors / parallel tasks of a stage")
    g.add_argument("--threads", action="append", metavar="STAGE=N", help="model threads of a stage")
    g.add_argument("--memory", action="append", metavar="STAGE=MiB",
                   help="RAM one actor of a stage declares to Ray (default: its measured peak, pipeline/config.py); "
                        "Ray starts no more actors than the node's memory holds; 0: none declared")
    return ap


def parse_args(argv=None) -> IngestConfig:
    """argv -> the validated IngestConfig; a bad value exits with status 2 and the message."""
    ap = build_parser()
    a = ap.parse_args(argv)
    try:
        res = {k: StageResources(**vars(v)) for k, v in _default_resources().items()}
        for flag, attr, cast in (("--cpus", "num_cpus", float), ("--gpus", "num_gpus", float),
                                 ("--concurrency", "concurrency", int), ("--threads", "threads", int),
                                 ("--memory", "memory_mib", float)):
            for k, v in _stage_values(getattr(a, flag[2:]), flag, cast).items():
                setattr(res[k], attr, v)
    except (ConfigError, ValueError) as e:
        ap.error(str(e))
    return config_from_args(IngestConfig, a, ap, extra={"resources": res})


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = parse_args(argv)
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
