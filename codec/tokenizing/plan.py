"""Which audio shards a tokenize run does: lock the (output, codec) tree, clean up after a killed
run, list the committed audio shards, skip those already tokenized with this codec (resume)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from codec.tokenizing import TokenizeConfigError

log = logging.getLogger(__name__)


def lock_codec_tree(out: str, codec_id: str):
    """An exclusive lock per (output, codec): a second job would delete the first one's
    written-but-not-yet-committed tar at start-up. The OS drops it when the process dies.
    Returns the open lock (``.close()`` releases it)."""
    from manifests.locks import JobLocked, exclusive_lock

    try:
        return exclusive_lock(Path(out) / "shards" / "tokens" / f".{codec_id}.lock",
                              f"tokenize job with codec {codec_id} on {out}",
                              "wait for it to finish, or give this one another --input")
    except JobLocked as e:
        raise TokenizeConfigError(str(e)) from e


def committed_audio_shards(out: str) -> list[tuple[str, str]]:
    """(shard, absolute tar path) of every committed audio shard, by shard name."""
    from manifests.store import read_table

    t = read_table(out, "shards", columns=["shard", "path"])
    seen: dict[str, str] = {}
    for s, p in zip(t["shard"].to_pylist(), t["path"].to_pylist()):
        path = Path(p)
        if not path.is_absolute():
            path = Path(out) / path
        seen[str(s)] = str(path)
    return sorted(seen.items())


@dataclass
class ShardPlan:
    """The audio shards of a run: ``todo`` as ``(shard, tar path)``, and what was found on disk."""

    todo: list[tuple[str, str]] = field(default_factory=list)
    total: int = 0  # committed audio shards selected (all, or --shards)
    skipped: int = 0  # of those, already committed for this codec
    removed: list[Path] = field(default_factory=list)  # token tars of a killed run, deleted


def plan_shards(out: str, codec_id: str, only: list[str] | None = None) -> ShardPlan:
    """Clean up what a killed run left for ``codec_id``, then list the shards still to do.

    Call it holding :func:`lock_codec_tree`'s lock: the clean-up deletes uncommitted tars.
    ``only``: just these shard names (``--shards``); each must be a committed audio shard.
    """
    from manifests.tokens import clean_uncommitted, committed_shards

    removed = clean_uncommitted(out, codec_id)
    for p in removed:
        log.warning("removed %s: written by a killed run but never committed; redoing that shard", p)
    shards = committed_audio_shards(out)
    if only is not None:
        wanted = set(only)
        missing = wanted - {s for s, _ in shards}
        if missing:
            raise TokenizeConfigError(f"--shards: {sorted(missing)} are not committed audio shards of {out}")
        shards = [x for x in shards if x[0] in wanted]
    if not shards:
        log.warning("no committed audio shard in %s/manifests/shards: run pipeline/ingest.py first", out)
    done = committed_shards(out, codec_id)
    todo = [x for x in shards if x[0] not in done]
    return ShardPlan(todo=todo, total=len(shards), skipped=len(shards) - len(todo), removed=removed)
