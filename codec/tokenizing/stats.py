"""Counters of a tokenize run and the rates derived from them (throughput, padding, busy time)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class Stats:
    """Counters of one tokenize run (the ``stats`` of its ``runs`` row, via :meth:`finish`)."""

    shards_total: int = 0
    shards_skipped: int = 0  # already committed for this codec_id
    shards_done: int = 0
    shards_failed: int = 0
    uncommitted_removed: int = 0
    samples: int = 0
    samples_failed: int = 0
    failed_by_reason: dict = field(default_factory=dict)
    audio_seconds: float = 0.0
    frames: int = 0
    padded_seconds: float = 0.0
    encode_seconds: float = 0.0  # summed over actors
    token_bytes: int = 0
    wall_seconds: float = 0.0  # pipeline: from dataset start to last commit
    # Encoder-side clock (time.time() when each batch was encoded): the span from the first batch
    # any encoder finished to the last, and the audio of the batches after that first one, give
    # the rate once actors are up. Driver-side arrival times cannot: Ray Data hands outputs over
    # in bursts, and shards are encoded in parallel.
    first_encode_end: float | None = None
    last_encode_end: float | None = None
    first_batch_audio_seconds: float = 0.0
    encoded_audio_seconds: float = 0.0
    total_seconds: float = 0.0  # the whole command, Ray start and model loads included
    started_at: float = 0.0  # time.time() at the pipeline's start

    def record_batch(self, encode_end: float, audio_seconds: float) -> None:
        """One encoded batch (in the order the driver receives them, which is not encode order)."""
        self.encoded_audio_seconds += audio_seconds
        if self.first_encode_end is None or encode_end < self.first_encode_end:
            self.first_encode_end, self.first_batch_audio_seconds = encode_end, audio_seconds
        self.last_encode_end = max(self.last_encode_end or 0.0, encode_end)

    def record_commit(self, commit, shard, sample_rate: int) -> None:
        """One committed shard: ``commit`` a ``manifests.tokens.ShardCommit``, ``shard`` the
        ``manifests.tokens.CompleteShard`` it was made from. Failed samples are counted by reason
        (the text before the first colon of their error)."""
        self.shards_done += 1
        self.samples += commit.n_ok
        self.samples_failed += commit.n_failed
        for f in shard.failures:
            reason = f["error"].split(":")[0]
            self.failed_by_reason[reason] = self.failed_by_reason.get(reason, 0) + 1
        self.audio_seconds += commit.audio_seconds
        self.frames += commit.n_frames
        self.token_bytes += commit.bytes
        self.padded_seconds += shard.padded_samples / sample_rate
        self.encode_seconds += shard.encode_seconds

    def finish(self, rr: dict) -> dict:
        """The counters plus derived rates, as a JSON-able dict; ``rr`` the resolved resources."""
        d = dataclasses.asdict(self)
        wall = max(self.wall_seconds, 1e-9)
        d["audio_seconds_per_second"] = self.audio_seconds / wall if self.wall_seconds else 0.0
        n_gpus = rr.get("num_actors", 0) * rr.get("gpus_per_actor", 0) if rr.get("device") == "cuda" else 0
        d["gpus"] = n_gpus
        d["audio_seconds_per_second_per_gpu"] = d["audio_seconds_per_second"] / n_gpus if n_gpus else None
        d["padding_ratio"] = self.padded_seconds / self.audio_seconds if self.audio_seconds else None
        span = (self.last_encode_end or 0.0) - (self.first_encode_end or 0.0)
        d["first_batch_seconds"] = (self.first_encode_end - self.started_at) if self.first_encode_end else None
        # Only meaningful over a span long enough to measure.
        d["steady_audio_seconds_per_second"] = (
            (self.encoded_audio_seconds - self.first_batch_audio_seconds) / span if span >= 1.0 else None
        )
        actors = rr.get("num_actors", 0)
        d["encoder_busy_fraction"] = self.encode_seconds / (wall * actors) if actors and self.wall_seconds else None
        return d
