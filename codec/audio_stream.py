"""AudioCropStream: an endless, resumable stream of random training crops from audio shards or files.

Sources: a directory of WebDataset audio shards (``*.tar`` with ``<key>.flac`` + ``<key>.json``,
DESIGN.md §4; members found by ``manifests.shards.scan_flac_members``), or any directory of audio files soundfile can read (wav, flac, ogg/opus...; any
rate and channel count: mixed to mono and resampled to 24 kHz with soxr).

Order: shards (or files) shuffled per epoch, items pass through a shuffle buffer, one random crop per
item visit. The buffer holds *references* (shard, byte offset, size), not audio, so the whole stream
position fits in a small JSON object (``state_dict()``) and a resumed run yields exactly the crops an
uninterrupted run would have yielded. Every random choice comes from a seeded generator in the state.

Multi-GPU: rank r of w reads shards r, r+w, ... (in its own shuffled order each epoch) (or, with fewer shards than
ranks, items r, r+w, ... of the stream).
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import tarfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from manifests.shards import SAMPLE_RATE, SAMPLES_PER_FRAME, scan_flac_members

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aiff", ".aif")


class AudioSourceError(RuntimeError):
    """The training audio location is missing, empty, or unreadable."""


@dataclass
class Crop:
    """One training example: audio [S] float32 at 24 kHz (zero-padded past `length`), and where it came from."""

    audio: np.ndarray
    length: int  # real samples in audio (the rest is zero padding)
    start_frame: int  # crop start in 80 ms frames from the utterance start
    key: str
    teacher: np.ndarray | None = None  # [S / 1920, D] teacher states of the crop's frames
    teacher_mask: np.ndarray | None = None  # [S / 1920] 1 where a teacher state exists


def list_containers(path: str | Path) -> tuple[str, list[Path]]:
    """('tar', sorted shard paths) or ('files', sorted audio paths) under path."""
    p = Path(path)
    if not p.exists():
        raise AudioSourceError(
            f"{p}: no such file or directory (expected a folder of *.tar shards or audio files)"
        )
    if p.is_file():
        return ("tar", [p]) if p.suffix == ".tar" else ("files", [p])
    tars = sorted(p.glob("*.tar"))
    if tars:
        return "tar", tars
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise AudioSourceError(f"{p}: no *.tar shards and no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return "files", files


def read_audio_bytes(data: bytes, sample_rate: int, name: str) -> np.ndarray:
    """Decode audio bytes to mono float32 at sample_rate."""
    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != sample_rate:
        x = soxr.resample(x, sr, sample_rate).astype(np.float32)
    return x


class AudioCropStream:
    """Iterator of Crop. See the module docstring; ``state_dict``/``load_state_dict`` for resume."""

    def __init__(
        self,
        path: str | Path,
        crop_samples: int,
        samples_per_frame: int = SAMPLES_PER_FRAME,
        sample_rate: int = SAMPLE_RATE,
        shuffle_buffer: int = 64,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        teacher: Callable[[np.ndarray], np.ndarray] | None = None,
        teacher_cache: int = 2048,
    ) -> None:
        self.kind, self.containers = list_containers(path)
        self.root = str(path)
        self.crop_samples = crop_samples
        self.spf = samples_per_frame
        self.sample_rate = sample_rate
        self.buffer_size = max(1, shuffle_buffer)
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.teacher = teacher
        self._teacher_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._teacher_cache_size = teacher_cache
        # ---- position (everything in state_dict) ----
        self.epoch = 0
        self.cursor = 0  # index into this rank's container order of the epoch
        self.offset = 0  # byte offset of the next tar header inside the current container
        self.item_counter = 0  # items read from containers so far (for item-level rank split)
        self.yielded = 0
        self.buffer: list[list] = []  # [container index, data offset, size, key]
        self.rng = random.Random(seed)

    # ---- resume ----
    def state_dict(self) -> dict:
        return {
            "root": self.root,
            "n_containers": len(self.containers),
            "epoch": self.epoch,
            "cursor": self.cursor,
            "offset": self.offset,
            "item_counter": self.item_counter,
            "yielded": self.yielded,
            "buffer": [list(b) for b in self.buffer],
            "rng": _rng_to_json(self.rng.getstate()),
        }

    def load_state_dict(self, s: dict) -> None:
        if s["n_containers"] != len(self.containers):
            raise AudioSourceError(
                f"{self.root}: the checkpoint's data position is for {s['n_containers']} shards/files but "
                f"{len(self.containers)} are here now; resume on the same data (or start a new run)"
            )
        self.epoch, self.cursor, self.offset = s["epoch"], s["cursor"], s["offset"]
        self.item_counter, self.yielded = s["item_counter"], s["yielded"]
        self.buffer = [list(b) for b in s["buffer"]]
        self.rng.setstate(_rng_from_json(s["rng"]))

    # ---- reading ----
    def _order(self) -> list[int]:
        # A fixed partition of the shards across ranks (disjoint in every epoch), shuffled per epoch.
        order = list(range(len(self.containers)))
        if len(order) >= self.world_size:
            order = order[self.rank :: self.world_size]
        random.Random(f"{self.seed}-order-{self.epoch}-{self.rank}").shuffle(order)
        return order

    def _refs(self, ci: int) -> Iterator[tuple[list, int]]:
        """(ref, next offset) for each item of container ci from self.offset on."""
        path = self.containers[ci]
        if self.kind == "files":
            if self.offset == 0:
                yield [ci, 0, -1, path.stem], 1
            return
        with open(path, "rb") as f:
            try:
                for key, off, size, nxt in scan_flac_members(f, self.offset):
                    yield [ci, off, size, key], nxt
            except tarfile.ReadError as e:
                log.warning(
                    "%s: unreadable tar after offset %d (%s); skipping the rest of it", path, self.offset, e
                )

    def _item_mine(self) -> bool:
        if len(self.containers) >= self.world_size:
            return True
        return self.item_counter % self.world_size == self.rank

    def _load(self, ref: list) -> np.ndarray | None:
        ci, off, size, key = ref
        path = self.containers[ci]
        try:
            if size < 0:
                data = path.read_bytes()
            else:
                with open(path, "rb") as f:
                    f.seek(off)
                    data = f.read(size)
            return read_audio_bytes(data, self.sample_rate, f"{path}:{key}")
        except Exception as e:  # noqa: BLE001 - one bad item must not stop training
            log.warning("%s: cannot decode item %s (%s: %s); skipped", path, key, type(e).__name__, e)
            return None

    def _teacher_states(self, ref: list, audio: np.ndarray) -> np.ndarray:
        k = f"{ref[0]}:{ref[1]}"
        if k in self._teacher_cache:
            self._teacher_cache.move_to_end(k)
            return self._teacher_cache[k]
        states = self.teacher(audio)
        self._teacher_cache[k] = states
        if len(self._teacher_cache) > self._teacher_cache_size:
            self._teacher_cache.popitem(last=False)
        return states

    def _crop(self, ref: list, audio: np.ndarray) -> Crop:
        # The crop's randomness depends only on (seed, how many crops came before): resumable.
        h = hashlib.sha256(f"{self.seed}-crop-{self.yielded}".encode()).digest()
        n_frames_item = -(-len(audio) // self.spf)
        crop_frames = self.crop_samples // self.spf
        max_start = max(0, n_frames_item - crop_frames)
        start = int.from_bytes(h[:8], "little") % (max_start + 1)
        seg = audio[start * self.spf : start * self.spf + self.crop_samples]
        out = np.zeros(self.crop_samples, np.float32)
        out[: len(seg)] = seg
        crop = Crop(audio=out, length=len(seg), start_frame=start, key=ref[3])
        if self.teacher is not None:
            states = self._teacher_states(ref, audio)[start : start + crop_frames]
            t = np.zeros((crop_frames, states.shape[1]), np.float32)
            t[: len(states)] = states
            mask = np.zeros(crop_frames, np.float32)
            mask[: len(states)] = 1.0
            crop.teacher, crop.teacher_mask = t, mask
        return crop

    def _next_ref(self) -> list:
        """Fill the shuffle buffer from the containers and pop one random reference."""
        n_empty_epochs = 0
        while len(self.buffer) < self.buffer_size:
            order = self._order()
            if self.cursor >= len(order):
                self.epoch, self.cursor, self.offset = self.epoch + 1, 0, 0
                n_empty_epochs += 1
                if n_empty_epochs > 2 and not self.buffer:
                    raise AudioSourceError(f"{self.root}: no readable audio items for rank {self.rank}")
                if self.buffer and n_empty_epochs > 1:
                    break  # fewer items than the buffer: pop from what we have
                continue
            got = False
            for ref, nxt in self._refs(order[self.cursor]):
                mine = self._item_mine()
                self.item_counter += 1
                self.offset = nxt
                if mine:
                    self.buffer.append(ref)
                    got = True
                    break
            if not got:
                self.cursor, self.offset = self.cursor + 1, 0
        return self.buffer.pop(self.rng.randrange(len(self.buffer)))

    def __iter__(self) -> Iterator[Crop]:
        return self

    def __next__(self) -> Crop:
        for _ in range(1000):
            ref = self._next_ref()
            audio = self._load(ref)
            if audio is None or len(audio) == 0:
                continue
            crop = self._crop(ref, audio)
            self.yielded += 1
            return crop
        raise AudioSourceError(f"{self.root}: 1000 unreadable items in a row")


def _rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_from_json(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
