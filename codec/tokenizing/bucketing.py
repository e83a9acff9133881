"""Length bucketing of a shard's utterances into encoder batches, and the reader that makes them.

- :func:`plan_batches`: utterances of one shard are sorted by length and cut into batches whose
  *padded* size stays under a budget in seconds, so little compute is spent on padding (also
  used by the codec service for its encode requests).
- :class:`AudioShardReader`: reads an audio shard (through ``manifests.shards``) in two passes: an
  index pass (headers and JSON only, nothing decoded) to know every utterance's length, then one
  decode pass per batch, so a reader holds one batch of PCM at a time, not a whole shard.

A sample that cannot be used (missing member, unreadable FLAC, wrong rate or channels) becomes a
:class:`~codec.token_encoder.SampleFailure` carried with its batch, never an exception that stops
the shard. Units: lengths in samples at the codec rate (24 000 Hz), durations in seconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from codec.token_encoder import AudioBatch, SampleFailure
from manifests.shards import (
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    AudioMember,
    decode_audio_member,
    index_audio_shard,
    n_frames,
)


@dataclass
class BatchingConfig:
    """How utterances are grouped into encoder batches.

    ``batch_seconds`` bounds the *padded* audio of one batch (``n_items x longest``),
    which is what the encoder's memory and time scale with.
    """

    batch_seconds: float = 120.0  # s of padded audio per encoder batch
    max_items: int = 256  # utterances per batch at most (many tiny ones)
    max_padding: float = 0.25  # an item joins a batch only if padding it wastes at most this fraction
    sample_rate: int = SAMPLE_RATE  # Hz, the codec's
    samples_per_frame: int = SAMPLES_PER_FRAME  # the codec's hop: 24 kHz / 12.5 Hz

    def __post_init__(self):
        if not (self.batch_seconds > 0):
            raise ValueError(f"batch_seconds must be > 0 (seconds of padded audio per batch), got {self.batch_seconds}")
        if self.max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {self.max_items}")
        if not 0 <= self.max_padding < 1:
            raise ValueError(f"max_padding must be in [0, 1) (fraction of a padded item), got {self.max_padding}")
        if self.sample_rate <= 0 or self.samples_per_frame <= 0:
            raise ValueError(
                f"sample_rate and samples_per_frame must be > 0 (take them from the codec), "
                f"got {self.sample_rate} and {self.samples_per_frame}"
            )

    @property
    def budget_samples(self) -> int:
        return int(self.batch_seconds * self.sample_rate)


# --------------------------------------------------------------------------------------
# Length bucketing


def plan_batches(
    lengths: Sequence[int],
    budget_samples: int,
    max_items: int = 256,
    samples_per_frame: int = SAMPLES_PER_FRAME,
    max_padding: float = 0.25,
) -> list[list[int]]:
    """Group item indices into batches of similar length.

    Items are sorted by length, longest first (so an out-of-memory batch shows up at
    once, not at the end), and added to the current batch while
    ``n_items * padded_longest <= budget_samples`` and ``n_items <= max_items``;
    ``padded_longest`` is the longest item rounded up to whole frames, i.e. exactly
    the tensor the encoder sees. An item is also not added when padding it to the
    batch's length would waste more than ``max_padding`` of it (so a small shard with
    very different lengths makes a few small batches rather than one mostly-padding
    one; a large shard's sorted lengths are dense and fill batches to the budget).
    An item longer than the budget gets a batch of its own.

    Args:
        lengths: samples of each item, ``[N]``.
        budget_samples: padded samples per batch at most.

    Returns:
        Batches of indices into ``lengths``; every index appears exactly once.
    """
    if budget_samples <= 0:
        raise ValueError(f"budget_samples must be > 0, got {budget_samples}")
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_padded = 0
    for i in order:
        padded = max(1, n_frames(lengths[i], samples_per_frame)) * samples_per_frame
        if cur and (
            (len(cur) + 1) * cur_padded > budget_samples
            or len(cur) >= max_items
            or padded < (1.0 - max_padding) * cur_padded
        ):
            batches.append(cur)
            cur = []
        if not cur:
            cur_padded = padded  # sorted descending: the first item is the longest
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def padding_ratio(lengths: Sequence[int], batches: Sequence[Sequence[int]], samples_per_frame: int = SAMPLES_PER_FRAME) -> float:
    """Padded samples / real samples of a batch plan (1.0 = no padding)."""
    real = sum(int(lengths[i]) for b in batches for i in b)
    padded = sum(len(b) * max(n_frames(lengths[i], samples_per_frame) for i in b) * samples_per_frame for b in batches)
    return padded / real if real else 1.0


# --------------------------------------------------------------------------------------
# Reading audio shards into bucketed batches


class AudioShardReader:
    """Reads an audio shard tar into bucketed :class:`AudioBatch` es (see module doc)."""

    def __init__(self, config: BatchingConfig):
        self.config = config

    def index(self, path: str | os.PathLike) -> list[AudioMember]:
        """Index pass: every sample of the shard in tar order, without decoding audio."""
        return index_audio_shard(path, self.config.sample_rate)

    def batches(self, path: str | os.PathLike, shard: str) -> Iterator[AudioBatch]:
        """Bucketed batches of the shard, one decoded batch at a time.

        Every sample of the shard is in exactly one batch, as audio or as a failure.
        """
        members = self.index(path)
        cfg = self.config
        bad = [m for m in members if m.error]
        good = [m for m in members if not m.error]
        # Length unknown from the header: plan it as a budget-sized item (a batch of its own).
        lengths = [m.n_samples if m.n_samples is not None else cfg.budget_samples for m in good]
        plan = plan_batches(lengths, cfg.budget_samples, cfg.max_items, cfg.samples_per_frame, cfg.max_padding)
        n_batches = max(1, len(plan))
        if not plan:
            yield AudioBatch(shard=shard, batch_index=0, n_batches=1,
                             failures=[_failure(m, m.error) for m in bad])
            return
        with open(path, "rb") as raw:
            for bi, idx in enumerate(plan):
                batch = AudioBatch(shard=shard, batch_index=bi, n_batches=n_batches)
                if bi == 0:
                    batch.failures.extend(_failure(m, m.error) for m in bad)
                for i in idx:
                    m = good[i]
                    try:
                        pcm = decode_audio_member(raw, m, cfg.sample_rate)
                    except Exception as e:  # any decoder error is this sample's problem
                        batch.failures.append(_failure(m, f"cannot decode FLAC: {e}"))
                        continue
                    batch.keys.append(m.key)
                    batch.positions.append(m.position)
                    batch.metas.append(m.meta)
                    batch.pcm.append(pcm)
                yield batch


def _failure(m: AudioMember, error: str) -> SampleFailure:
    return SampleFailure(key=m.key, position=m.position, error=error, duration=m.duration)
