"""Streaming token shards (DESIGN.md §6) into packed training batches.

Order of operations for one consumer (a data-parallel rank x a DataLoader worker), per epoch:

1. the shard list is shuffled with ``(seed, epoch)`` -- the same order on every rank;
2. shards are dealt round-robin to consumers (``shard i -> consumer i % n_consumers``), so no two
   consumers read the same sample; with fewer shards than consumers every consumer reads every
   shard and keeps samples ``j % n_consumers == consumer`` instead (still no duplicates);
3. samples pass a shuffle buffer seeded by ``(seed, epoch, consumer)``;
4. each sample gets a voice prompt (``PromptPicker``) and becomes a ``TTSSequence``;
5. sequences are packed into fixed-length rows (``model.packing.Packer``).

Everything is a deterministic function of (seed, rank, worker), which is what makes exact resume
possible (``model.loader``). Training streams are infinite (epoch after epoch); eval is one pass.
"""

from __future__ import annotations

import json
import random
from collections import OrderedDict, deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset import tariterators

from manifests.shards import FRAME_RATE, TokenSample, TokenShardError, decode_token_sample
from model.config import DataConfig
from model.packing import Packer
from model.sequence import Prompt, SequenceBuilder, self_prefix_split
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


def read_shard(shard: Path) -> Iterator[TokenSample]:
    """Samples of one shard in stored order."""
    try:
        for raw in tariterators.tarfile_samples([{"url": str(shard)}]):
            yield parse_sample(shard, raw)
    except TokenShardError:
        raise
    except Exception as e:
        raise TokenShardError(f"{shard}: unreadable tar ({type(e).__name__}: {e})") from e


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


class PackedTokenStream(IterableDataset):
    """Packed batches for one data-parallel rank; DataLoader workers split it further.

    ``infinite=True`` loops over epochs (training); ``False`` makes one pass (eval).
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

    def _worker(self) -> tuple[int, int]:
        """(role, number of workers). The DataLoader asks worker 0 first, but after skipping
        ``skip_batches`` the next batch belongs to worker ``skip_batches % nw``: rotate the roles."""
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (self.worker_override or (0, 1))
        return (wid + self.skip_batches) % nw, nw

    def _consumer(self) -> tuple[int, int, int]:
        wid, nw = self._worker()
        return self.rank * nw + wid, self.world_size * nw, wid

    def samples(self, epoch: int) -> Iterator[TokenSample]:
        """This consumer's samples of one epoch, after shard split and shuffle buffer."""
        consumer, n_consumers, _ = self._consumer()
        order = list(self.shards)
        if self.shuffle:
            random.Random(f"{self.cfg.seed}:shards:{epoch}").shuffle(order)
        if len(order) >= n_consumers:
            mine, keep = order[consumer::n_consumers], None
        else:
            mine, keep = order, consumer  # sample-level split: j % n_consumers == consumer

        def stream() -> Iterator[TokenSample]:
            j = 0
            for shard in mine:
                for s in read_shard(shard):
                    if keep is None or j % n_consumers == keep:
                        yield s
                    j += 1

        if not self.shuffle or self.cfg.shuffle_buffer <= 1:
            yield from stream()
            return
        rng = random.Random(f"{self.cfg.seed}:buffer:{epoch}:{consumer}")
        buf: list[TokenSample] = []
        for s in stream():
            buf.append(s)
            if len(buf) >= self.cfg.shuffle_buffer:
                yield buf.pop(rng.randrange(len(buf)))
        rng.shuffle(buf)
        yield from buf

    def sequences(self) -> Iterator:
        consumer, _, _ = self._consumer()
        builder = SequenceBuilder(self.tokenizer, self.cfg)
        # The prompt cache lives across epochs: a speaker seen in epoch 0 has "others" in epoch 1.
        picker = PromptPicker(self.cfg, random.Random(f"{self.cfg.seed}:prompt:{consumer}"))
        epoch = 0
        while True:
            n = 0
            for s in self.samples(epoch):
                prompt, text, start = picker.pick(s)
                n += 1
                yield builder.build(s, prompt, text, start)
            if n == 0:
                # This consumer got no sample at all: an infinite loop would spin forever.
                raise TokenShardError(
                    f"data consumer {consumer} got no samples from {len(self.shards)} shard(s); "
                    "use fewer workers/ranks or more shards"
                )
            epoch += 1
            if not self.infinite:
                return

    # Batches of this rank already consumed (resume): each worker skips its share without collating.
    skip_batches: int = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        builder_pad = SequenceBuilder(self.tokenizer, self.cfg).sp.pad
        packer = Packer(self.cfg.seq_len, self.cfg.batch_size, builder_pad, self.cfg.pack_buffer)
        wid, nw = self._worker()
        # The DataLoader takes batch i from worker i % nw (in order), so worker w made these many.
        skip = self.skip_batches // nw + (1 if wid < self.skip_batches % nw else 0)
        yield from packer.pack(self.sequences(), drop_last=False, skip=skip)
