"""Streaming token shards (DESIGN.md §6) into packed training batches.

Order of operations for one consumer (a data-parallel rank x a DataLoader worker), per epoch:

1. the shard list is shuffled with ``(seed, epoch)`` -- the same order on every rank;
2. shards are dealt round-robin to consumers (``shard i -> consumer i % n_consumers``), so no two
   consumers read the same sample; with fewer shards than consumers every consumer reads every
   shard and keeps samples ``j % n_consumers == consumer`` instead (still no duplicates);
3. samples pass a shuffle buffer seeded by ``(seed, epoch, consumer)``;
4. each sample gets a voice prompt (``PromptPicker``) and becomes a ``TTSSequence``;
5. sequences are packed into fixed-length rows (``model.packing.Packer``).

Everything is a deterministic function of (seed, rank, worker). Its position -- epoch, shard and
sample offset in it, shuffle buffer, prompt cache, packer rows and their RNGs -- is explicit state
(``_Consumer``) that a checkpoint saves and a resume restores by opening one shard and passing over
the samples already read in it (``model.loader``): resume cost does not grow with the step.
Training streams are infinite (epoch after epoch); eval is one pass.
"""

from __future__ import annotations

import json
import random
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info
from webdataset import tariterators

from manifests.shards import FRAME_RATE, TokenSample, TokenShardError, decode_token_sample
from model.config import DataConfig
from model.packing import Packer
from model.sequence import Prompt, SequenceBuilder, TTSSequence, self_prefix_split
from model.text_tokenizer import TextTokenizer


def list_shards(directory: str | Path) -> list[Path]:
    """``<out>/shards/tokens/<codec_id>/NNNNNN.tar`` files, sorted. Raises if there are none."""
    d = Path(directory)
    if not d.is_dir():
        raise TokenShardError(f"token directory {d} does not exist (expected <out>/shards/tokens/<codec_id>)")
    shards = sorted(p for p in d.glob("*.tar") if not p.name.startswith("."))
    if not shards:
        raise TokenShardError(f"no *.tar token shards in {d}")
    return shards


def shard_codec_id(shard: Path) -> str | None:
    """The ``codec_id`` in the JSON of the shard's first sample (DESIGN §6), or None if absent."""
    import tarfile

    try:
        with tarfile.open(shard, mode="r|") as tar:  # streaming: stops at the first JSON member
            for m in tar:
                if m.isfile() and m.name.endswith(".json"):
                    return json.loads(tar.extractfile(m).read()).get("codec_id")
    except Exception as e:  # noqa: BLE001 - any read error names the shard
        raise TokenShardError(f"{shard}: unreadable tar ({type(e).__name__}: {e})") from e
    return None


def codec_id_of(shards: list[Path]) -> str:
    """The one codec the token shards were made with, from each shard's first sample's JSON, not
    from the folder's name (shards may be copied or renamed). Raises if the shards mix codecs.
    Shards without a ``codec_id`` (written before it was recorded) fall back to their folder's name."""
    ids: dict[str, Path] = {}
    for shard in shards:
        cid = shard_codec_id(shard) or Path(shard).resolve().parent.name
        ids.setdefault(cid, shard)
    if len(ids) > 1:
        raise TokenShardError(
            "token shards of different codecs must not mix: "
            + ", ".join(f"{cid} ({shard})" for cid, shard in ids.items())
        )
    return next(iter(ids))


def split_train_eval(shards: list[Path], eval_shards: int) -> tuple[list[Path], list[Path]]:
    """Hold out the last ``eval_shards`` shards, keeping at least one for training."""
    n = min(eval_shards, len(shards) - 1)
    return (shards[: len(shards) - n], shards[len(shards) - n :]) if n > 0 else (shards, [])


def parse_sample(shard: Path, raw: dict) -> TokenSample:
    """A WebDataset sample dict (``__key__``, ``tokens.npz``, ``json``) -> TokenSample with int64 codes.

    Decoding and the DESIGN §6 checks are ``manifests.shards.decode_token_sample``'s; the model
    widens the stored int16 / uint8 codes to int64 (embedding indices) and keys the sample by its
    JSON's ``key`` when present."""
    s = decode_token_sample(str(shard), raw.get("__key__", "?"), raw.get("tokens.npz"), raw.get("json"))
    return TokenSample(key=str(s.meta.get("key", s.key)), semantic=s.semantic.astype(np.int64),
                       acoustic=s.acoustic.astype(np.int64), meta=s.meta)


def _raw_samples(shard: Path, skip: int = 0) -> Iterator[dict]:
    """Undecoded samples (``{"__key__", "json", "tokens.npz"}`` bytes) of one shard in stored order,
    the first ``skip`` passed over without decoding (resume seeks inside the shard this way)."""
    try:
        for i, raw in enumerate(tariterators.tarfile_samples([{"url": str(shard)}])):
            if i >= skip:
                yield raw
    except Exception as e:
        raise TokenShardError(f"{shard}: unreadable tar ({type(e).__name__}: {e})") from e


def decode_sample(shard: Path, raw: dict) -> TokenSample:
    """The one place a stored sample becomes a ``TokenSample`` (everything else moves raw bytes)."""
    return parse_sample(shard, raw)


def read_shard(shard: Path) -> Iterator[TokenSample]:
    """Samples of one shard in stored order."""
    for raw in _raw_samples(shard):
        yield decode_sample(shard, raw)


class PromptPicker:
    """Chooses each sample's voice prompt from recently seen segments of the same speaker.

    Remembers the last ``cache`` segments per speaker (a bounded stream-side cache, so nothing is
    indexed in advance); a prompt is a random 3-25 s crop of another segment. A speaker seen for the
    first time gets a prefix of its own segment (cut at a word boundary; the target is the rest).
    """

    def __init__(self, cfg: DataConfig, rng: random.Random):
        self.cfg, self.rng = cfg, rng
        # LRU over speakers, each with its last few segments stored compactly (int16 / uint8, at most
        # prompt_max_s long): at worst 2048 x 4 x 312 frames x 38 bytes = 100 MB per consumer.
        self.seen: OrderedDict[str, deque[TokenSample]] = OrderedDict()
        self.counts = {"other": 0, "self": 0, "none": 0}

    def _remember(self, sample: TokenSample) -> None:
        cfg = self.cfg
        keep = int(round(cfg.prompt_max_s * FRAME_RATE))
        compact = TokenSample(
            sample.key,
            sample.semantic[:keep].astype(np.int16),
            sample.acoustic[:keep].astype(np.uint8),
            {"speaker": sample.speaker, "start": sample.start},
        )
        q = self.seen.pop(sample.speaker, None) or deque(maxlen=max(cfg.speaker_cache, 1))
        q.append(compact)
        self.seen[sample.speaker] = q
        while len(self.seen) > cfg.max_speakers:
            self.seen.popitem(last=False)

    def pick(self, sample: TokenSample) -> tuple[Prompt, str | None, int]:
        """-> (prompt, text override or None, first target frame)."""
        cfg, rng = self.cfg, self.rng
        others = [s for s in self.seen.get(sample.speaker, ()) if s.key != sample.key]
        self._remember(sample)
        if rng.random() < cfg.p_no_prompt:
            self.counts["none"] += 1
            return Prompt.none(sample.acoustic.shape[1]), None, 0
        if others:
            other = rng.choice(others)
            lo, hi = int(round(cfg.prompt_min_s * FRAME_RATE)), int(round(cfg.prompt_max_s * FRAME_RATE))
            n = min(other.n_frames, rng.randint(lo, hi))
            off = rng.randint(0, other.n_frames - n)
            self.counts["other"] += 1
            sem, ac = (
                other.semantic[off : off + n].astype(np.int64),
                other.acoustic[off : off + n].astype(np.int64),
            )
            return Prompt(sem, ac, "other"), None, 0
        split = self_prefix_split(sample, cfg)
        if split is None:
            self.counts["none"] += 1
            return Prompt.none(sample.acoustic.shape[1]), None, 0
        cut, text = split
        self.counts["self"] += 1
        return Prompt(sample.semantic[:cut], sample.acoustic[:cut], "self"), text, cut


@dataclass(frozen=True)
class SnapshotPlan:
    """When a consumer attaches its saved state to a batch: before every checkpoint.

    A checkpoint after ``N`` consumed batches (``N`` a multiple of ``every``, or ``final``) needs, for
    each consumer, its state right after the last batch it made below ``N``. With ``nw`` DataLoader
    workers handing out batches round-robin, that is the batch ``i`` with ``i < N <= i + nw``. Saving
    only there (not after every batch) keeps the shuffle buffer and prompt cache off the worker queue.
    """

    every: int  # batches between checkpoints (ckpt_every x grad_accum)
    final: int | None = None  # batches at the last step, if not a multiple of ``every``

    def due(self, i: int, nw: int) -> bool:
        """Whether batch ``i`` (0-based, of this rank) is its consumer's last before a checkpoint."""
        after = (i // self.every + 1) * self.every
        return after <= i + nw or (self.final is not None and i < self.final <= i + nw)


@dataclass
class DataSnapshot:
    """A consumer's state after batch ``index``, riding on that batch from the worker to the loader.

    A dataclass, not a dict: the DataLoader's ``default_convert`` passes it through untouched.
    ``meta`` is JSON-able; ``arrays`` are numpy (the shuffle buffer, prompt cache and packer rows).
    """

    index: int
    role: int
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]


_SEQ_ARRAYS = ("text", "semantic", "acoustic", "is_audio", "sem_target", "ac_target", "ac_valid", "weight")


def _rng_get(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_set(rng: random.Random, st: list) -> None:
    rng.setstate((st[0], tuple(st[1]), st[2]))


class _Consumer:
    """The stream of one consumer (a rank x a DataLoader worker role) as explicit state.

    Steps 1-5 of the module docstring, written as a state machine instead of nested generators so
    that its position can be saved between two batches (``state``) and restored (``restore``): the
    current shard and the sample offset in it, the shuffle buffer and its RNG, the prompt cache and
    its RNG, and the packer's open rows. Restoring opens one shard and passes over ``offset`` raw
    samples without decoding them: resume cost does not grow with the step.
    """

    def __init__(self, stream: PackedTokenStream, consumer: int, n_consumers: int):
        cfg = stream.cfg
        self.stream, self.cfg, self.consumer, self.n_consumers = stream, cfg, consumer, n_consumers
        self.builder = SequenceBuilder(stream.tokenizer, cfg)
        # The prompt cache lives across epochs: a speaker seen in epoch 0 has "others" in epoch 1.
        self.picker = PromptPicker(cfg, random.Random(f"{cfg.seed}:prompt:{consumer}"))
        self.packer = Packer(cfg.seq_len, cfg.batch_size, self.builder.sp.pad, cfg.pack_buffer)
        self.emitted = 0  # batches made by this consumer (skipped ones included)
        self.done = False  # a one-pass stream has run out
        self.decoded = 0  # samples decoded by this object: what a resume costs
        self._new_epoch(0)

    def _new_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.shard_pos = 0  # index into this epoch's shards of this consumer
        self.offset = 0  # samples of that shard already read (all of them, also other consumers')
        self.j = 0  # samples read this epoch: the sample-level split keeps j % n_consumers == consumer
        self.n_epoch = 0  # samples this consumer used this epoch
        self.buffer: list[TokenSample] = []
        self.draining = False  # the epoch's shards are read; the buffer is being emptied
        self.buf_rng = random.Random(f"{self.cfg.seed}:buffer:{epoch}:{self.consumer}")
        self._reader: Iterator[dict] | None = None
        order = list(self.stream.shards)
        if self.stream.shuffle:
            random.Random(f"{self.cfg.seed}:shards:{epoch}").shuffle(order)
        # shards dealt round-robin; with fewer shards than consumers, split by sample instead
        if len(order) >= self.n_consumers:
            self.mine, self.keep = order[self.consumer :: self.n_consumers], None
        else:
            self.mine, self.keep = order, self.consumer

    def _next_read(self) -> TokenSample | None:
        """The next sample of this consumer's shards in stored order; None at the end of the epoch."""
        while self.shard_pos < len(self.mine):
            shard = self.mine[self.shard_pos]
            if self._reader is None:
                self._reader = _raw_samples(shard, skip=self.offset)
            for raw in self._reader:
                self.offset += 1
                j, self.j = self.j, self.j + 1
                if self.keep is None or j % self.n_consumers == self.keep:
                    self.decoded += 1
                    return decode_sample(shard, raw)
            self._reader, self.shard_pos, self.offset = None, self.shard_pos + 1, 0
        return None

    def next_sample(self) -> TokenSample | None:
        """The next sample after the shuffle buffer; None at the end of the epoch."""
        if not self.stream.shuffle or self.cfg.shuffle_buffer <= 1:
            return self._next_read()
        while not self.draining:
            s = self._next_read()
            if s is None:
                self.buf_rng.shuffle(self.buffer)
                self.draining = True
                break
            self.buffer.append(s)
            if len(self.buffer) >= self.cfg.shuffle_buffer:
                return self.buffer.pop(self.buf_rng.randrange(len(self.buffer)))
        return self.buffer.pop(0) if self.buffer else None

    def _next_sequence(self) -> TTSSequence | None:
        """The next training sequence; None when a one-pass stream ends."""
        while True:
            s = self.next_sample()
            if s is not None:
                self.n_epoch += 1
                prompt, text, start = self.picker.pick(s)
                return self.builder.build(s, prompt, text, start)
            if self.n_epoch == 0:
                # This consumer got no sample at all: an infinite loop would spin forever.
                raise TokenShardError(
                    f"data consumer {self.consumer} got no samples from {len(self.stream.shards)} "
                    "shard(s); use fewer workers/ranks or more shards"
                )
            if not self.stream.infinite:
                return None
            self._new_epoch(self.epoch + 1)

    def next_rows(self) -> list[list[TTSSequence]] | None:
        """The rows of the next batch (the last one may be short); None when the stream ends."""
        while True:
            rows = self.packer.take(partial=self.done)
            if rows is not None or self.done:
                break
            seq = self._next_sequence()
            if seq is None:
                self.packer.finish()
                self.done = True
            else:
                self.packer.add(seq)
        if rows is not None:
            self.emitted += 1
        return rows

    # ---- saving and restoring the position ----
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able position, arrays). Sizes: shuffle buffer + prompt cache + packer rows."""
        arrays: dict[str, np.ndarray] = {}

        def sample(name: str, s: TokenSample) -> dict[str, Any]:
            arrays[f"{name}.semantic"], arrays[f"{name}.acoustic"] = s.semantic, s.acoustic
            return {"key": s.key, "meta": s.meta}  # the sample's JSON (speaker, text, words, start...)

        def seq(name: str, q: TTSSequence) -> dict[str, Any]:
            for f in _SEQ_ARRAYS:
                arrays[f"{name}.{f}"] = getattr(q, f)
            return {"key": q.key, "truncated": q.truncated}

        pk = self.packer
        meta = {
            "consumer": self.consumer,
            "n_consumers": self.n_consumers,
            "epoch": self.epoch,
            "shard": str(self.mine[self.shard_pos]) if self.shard_pos < len(self.mine) else None,
            "shard_pos": self.shard_pos,
            "offset": self.offset,
            "j": self.j,
            "n_epoch": self.n_epoch,
            "emitted": self.emitted,
            "done": self.done,
            "draining": self.draining,
            "buffer_rng": _rng_get(self.buf_rng),
            "buffer": [sample(f"buf.{i}", s) for i, s in enumerate(self.buffer)],
            "picker": {
                "rng": _rng_get(self.picker.rng),
                "counts": dict(self.picker.counts),
                "seen": [
                    [spk, [sample(f"seen.{a}.{b}", s) for b, s in enumerate(q)]]
                    for a, (spk, q) in enumerate(self.picker.seen.items())
                ],
            },
            "packer": {
                "used": list(pk.used),
                "open": [
                    [seq(f"open.{r}.{k}", q) for k, q in enumerate(row)] for r, row in enumerate(pk.open_rows)
                ],
                "ready": [
                    [seq(f"ready.{r}.{k}", q) for k, q in enumerate(row)] for r, row in enumerate(pk.ready)
                ],
            },
        }
        return meta, arrays

    def restore(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        if (meta["consumer"], meta["n_consumers"]) != (self.consumer, self.n_consumers):
            raise TokenShardError(
                f"saved data position is consumer {meta['consumer']} of {meta['n_consumers']}, this is "
                f"{self.consumer} of {self.n_consumers}: resume with the same ranks and loader workers"
            )
        self._new_epoch(int(meta["epoch"]))
        self.shard_pos, self.offset, self.j = int(meta["shard_pos"]), int(meta["offset"]), int(meta["j"])
        here = str(self.mine[self.shard_pos]) if self.shard_pos < len(self.mine) else None
        if here != meta["shard"]:
            raise TokenShardError(
                f"saved data position is in shard {meta['shard']}, but this run's shard list puts {here} "
                "there: resume with the same --tokens shards (or start a new run)"
            )
        self.n_epoch, self.emitted = int(meta["n_epoch"]), int(meta["emitted"])
        self.done, self.draining = bool(meta["done"]), bool(meta["draining"])
        _rng_set(self.buf_rng, meta["buffer_rng"])

        def sample(name: str, m: dict[str, Any]) -> TokenSample:
            return TokenSample(m["key"], np.asarray(arrays[f"{name}.semantic"]),
                               np.asarray(arrays[f"{name}.acoustic"]), dict(m["meta"]))

        def seq(name: str, m: dict[str, Any]) -> TTSSequence:
            parts = {f: np.asarray(arrays[f"{name}.{f}"]) for f in _SEQ_ARRAYS}
            return TTSSequence(key=m["key"], truncated=m["truncated"], **parts)

        self.buffer = [sample(f"buf.{i}", m) for i, m in enumerate(meta["buffer"])]
        pm = meta["picker"]
        _rng_set(self.picker.rng, pm["rng"])
        self.picker.counts = dict(pm["counts"])
        self.picker.seen = OrderedDict(
            (
                spk,
                deque(
                    (sample(f"seen.{a}.{b}", m) for b, m in enumerate(q)),
                    maxlen=max(self.cfg.speaker_cache, 1),
                ),
            )
            for a, (spk, q) in enumerate(pm["seen"])
        )
        pk = meta["packer"]
        self.packer.used = [int(u) for u in pk["used"]]
        self.packer.open_rows = [
            [seq(f"open.{r}.{k}", m) for k, m in enumerate(row)] for r, row in enumerate(pk["open"])
        ]
        self.packer.ready = [
            [seq(f"ready.{r}.{k}", m) for k, m in enumerate(row)] for r, row in enumerate(pk["ready"])
        ]


class PackedTokenStream(IterableDataset):
    """Packed batches for one data-parallel rank; DataLoader workers split it further.

    ``infinite=True`` loops over epochs (training); ``False`` makes one pass (eval).
    Resume (``model.loader``) sets ``start_batch`` and either ``resume_states`` (each worker role's
    saved position: cost independent of the step) or nothing (replay: form and drop
    ``start_batch`` batches, for positions saved without a snapshot).
    """

    def __init__(
        self,
        shards: list[Path],
        tokenizer: TextTokenizer,
        cfg: DataConfig,
        rank: int = 0,
        world_size: int = 1,
        infinite: bool = True,
        shuffle: bool = True,
    ):
        super().__init__()
        if not shards:
            raise TokenShardError("PackedTokenStream needs at least one shard")
        self.shards, self.tokenizer, self.cfg = list(shards), tokenizer, cfg
        self.rank, self.world_size, self.infinite, self.shuffle = rank, world_size, infinite, shuffle

    # (worker id, number of workers) when iterated outside a DataLoader worker, e.g. in tests.
    worker_override: tuple[int, int] | None = None
    # Index (of this rank's batches) of the first batch the next iteration yields (resume).
    start_batch: int = 0
    # Saved positions by worker role: {role: (meta, arrays)}; a role absent had made no batch yet.
    resume_states: dict[int, tuple[dict[str, Any], dict[str, np.ndarray]]] | None = None
    # Which batches carry their consumer's state (None: none do, e.g. eval).
    plan: SnapshotPlan | None = None

    def _worker(self) -> tuple[int, int]:
        """(role, number of workers). The DataLoader asks worker 0 first, but after ``start_batch``
        batches the next batch belongs to role ``start_batch % nw``: rotate the roles."""
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (self.worker_override or (0, 1))
        return (wid + self.start_batch) % nw, nw

    def _consumer(self) -> _Consumer:
        role, nw = self._worker()
        return _Consumer(self, self.rank * nw + role, self.world_size * nw)

    def samples(self, epoch: int) -> Iterator[TokenSample]:
        """This consumer's samples of one epoch, after shard split and shuffle buffer."""
        c = self._consumer()
        c._new_epoch(epoch)
        while (s := c.next_sample()) is not None:
            yield s

    def __iter__(self) -> Iterator[dict[str, Any]]:
        role, nw = self._worker()
        c = self._consumer()
        self.last_consumer = c  # in-process iteration (num_workers=0): its counters are readable
        if self.resume_states is not None:
            if role in self.resume_states:
                c.restore(*self.resume_states[role])
        else:
            # Replay: role r made the batches r, r + nw, ... below start_batch; form them again.
            for _ in range(self.start_batch // nw + (1 if role < self.start_batch % nw else 0)):
                if c.next_rows() is None:
                    break
        while (rows := c.next_rows()) is not None:
            batch: dict[str, Any] = c.packer.collate(rows)
            index = (c.emitted - 1) * nw + role
            if self.plan is not None and self.plan.due(index, nw):
                batch["_data_state"] = DataSnapshot(index, role, *c.state())
            yield batch
