"""Table schemas of the manifests (DESIGN.md §5), defined once.

Every table lives under ``<out>/manifests/<table>/*.parquet`` and carries a
``schema_version`` column so that readers can tell layouts apart.
Times are seconds (float64) relative to the source file; durations in seconds.
"""

from __future__ import annotations

import pyarrow as pa

# 2: quality.speaker_purity (the share of a segment's diarized speech that is its own speaker's)
SCHEMA_VERSION = 2

WORD = pa.struct(
    [
        ("word", pa.string()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("score", pa.float64()),
        ("speaker", pa.string()),
    ]
)

ASR = pa.struct(
    [
        ("model", pa.string()),
        ("avg_logprob", pa.float64()),
        ("no_speech_prob", pa.float64()),
        ("compression_ratio", pa.float64()),
    ]
)

QUALITY = pa.struct(
    [
        ("snr_db", pa.float64()),
        ("clipping_ratio", pa.float64()),
        ("speech_rate_cps", pa.float64()),
        ("overlap_ratio", pa.float64()),
        ("speaker_purity", pa.float64()),
    ]
)

SOURCES = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("source_id", pa.string()),
        ("path", pa.string()),
        ("bytes", pa.int64()),
        ("duration", pa.float64()),
        ("sample_rate", pa.int64()),
        ("channels", pa.int64()),
        ("codec", pa.string()),
        ("status", pa.string()),  # ok | rejected | failed
        ("error", pa.string()),
        ("language", pa.string()),
        ("language_prob", pa.float64()),
        ("n_segments", pa.int64()),
        ("n_kept", pa.int64()),
        ("kept_duration", pa.float64()),
        ("run_id", pa.string()),
    ]
)

SEGMENTS = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("key", pa.string()),
        ("source_id", pa.string()),
        ("source_path", pa.string()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("duration", pa.float64()),
        ("sample_rate", pa.int64()),
        ("speaker", pa.string()),
        ("language", pa.string()),
        ("language_prob", pa.float64()),
        ("text", pa.string()),
        ("words", pa.list_(WORD)),
        ("asr", ASR),
        ("quality", QUALITY),
        ("pipeline_version", pa.string()),
        ("kept", pa.bool_()),
        ("drop_reason", pa.string()),
        ("shard", pa.string()),
        ("run_id", pa.string()),
    ]
)

SHARDS = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("shard", pa.string()),
        ("path", pa.string()),
        ("n_samples", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("total_duration", pa.float64()),
        ("run_id", pa.string()),
    ]
)

TOKENS = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("key", pa.string()),
        ("codec_id", pa.string()),
        ("shard", pa.string()),
        ("n_frames", pa.int64()),
        ("duration", pa.float64()),
        ("status", pa.string()),  # ok | failed
        ("error", pa.string()),
        ("run_id", pa.string()),
    ]
)

RUNS = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("run_id", pa.string()),
        ("job", pa.string()),  # ingest | tokenize
        ("started", pa.timestamp("us", tz="UTC")),
        ("finished", pa.timestamp("us", tz="UTC")),
        ("config", pa.string()),  # JSON
        ("versions", pa.string()),  # JSON
        ("stats", pa.string()),  # JSON
    ]
)

TABLES: dict[str, pa.Schema] = {
    "sources": SOURCES,
    "segments": SEGMENTS,
    "shards": SHARDS,
    "tokens": TOKENS,
    "runs": RUNS,
}
