"""A resumable loader of packed batches for one data-parallel rank.

The stream (``model.token_stream``) is a deterministic function of (seed, rank, worker) and the
DataLoader hands out worker batches round-robin in a fixed order. Before each checkpoint every
worker attaches its consumer's state (current shard, offset in it, shuffle buffer, prompt cache,
packer rows, RNGs) to its last batch (``SnapshotPlan``); the loader keeps the latest one per worker
role. ``state_dict()`` / ``state_arrays()`` save them; ``load_state_dict()`` hands them back to fresh
workers, which open one shard each and continue: exactly the batches an uninterrupted run would see,
at a cost independent of how far the run got. A position saved without snapshots (not at a planned
checkpoint) falls back to replay: the consumed batches are formed again and dropped.
It also keeps running counts for the logs (padding fraction, truncated sequences).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from model.token_stream import DataSnapshot, PackedTokenStream, SnapshotPlan

log = logging.getLogger("model.loader")


class ResumableLoader:
    def __init__(self, stream: PackedTokenStream, num_workers: int = 0):
        self.stream, self.num_workers = stream, num_workers
        self.consumed = 0  # batches handed to the trainer since the start of training
        self.positions = 0
        self.real_positions = 0
        self.truncated = 0
        self.snapshots: dict[int, DataSnapshot] = {}  # worker role -> its latest saved state
        self._it: Iterator[dict[str, Any]] | None = None

    def plan_snapshots(self, every: int, final: int | None = None) -> None:
        """Checkpoints will be taken after every ``every`` consumed batches (and at ``final``)."""
        self.stream.plan = SnapshotPlan(every, final)

    def _make_iter(self) -> Iterator[dict[str, Any]]:
        # batch_size=None: the stream already yields whole batches.
        dl = DataLoader(
            self.stream,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,
            prefetch_factor=4 if self.num_workers else None,
            # Workers start from a clean forkserver, not a fork of this process: a fork of a
            # process whose thread pools (OpenMP, Ray, gRPC) are mid-flight can crash in the child
            # (a worker died of SIGSEGV in the full test suite, once in several runs).
            multiprocessing_context="forkserver" if self.num_workers else None,
            # Its own generator: creating an iterator must not draw from the global torch RNG, or a
            # resumed run (which creates it after restoring the RNG) would diverge from an unbroken one.
            generator=torch.Generator().manual_seed(self.stream.cfg.seed),
        )
        return iter(dl)

    def __iter__(self) -> ResumableLoader:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._it is None:
            self._it = self._make_iter()
        batch = next(self._it)
        snap = batch.pop("_data_state", None)
        if snap is not None:
            self.snapshots[snap.role] = snap
        self.consumed += 1
        self.positions += batch["doc_ids"].numel()
        self.real_positions += int(batch["n_tokens"])
        self.truncated += int(batch["n_truncated"])
        return batch

    def close(self) -> None:
        """Stop the DataLoader workers now, not at interpreter exit (where the forkserver's
        resource tracker reports their queues' semaphores as leaked). Called when training ends."""
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)  # multi-process iterators only
        if shutdown is not None:
            shutdown()

    @property
    def padding_fraction(self) -> float:
        """Share of packed positions that are padding, over everything consumed so far."""
        return 1.0 - self.real_positions / self.positions if self.positions else 0.0

    def _current(self) -> list[DataSnapshot | None] | None:
        """Per worker role, the state after its last consumed batch (None: it made none yet); None
        if some role's snapshot is not of that batch (a save outside the snapshot plan)."""
        nw = max(self.num_workers, 1)
        out: list[DataSnapshot | None] = []
        for role in range(nw):
            if self.consumed <= role:
                out.append(None)
                continue
            last = role + ((self.consumed - 1 - role) // nw) * nw
            snap = self.snapshots.get(role)
            if snap is None or snap.index != last:
                return None
            out.append(snap)
        return out

    def state_dict(self) -> dict[str, Any]:
        """JSON-able position; its arrays are ``state_arrays()``."""
        state: dict[str, Any] = {
            "consumed": self.consumed,
            "positions": self.positions,
            "real_positions": self.real_positions,
            "truncated": self.truncated,
            "rank": self.stream.rank,
            "world_size": self.stream.world_size,
            "num_workers": self.num_workers,
            "seed": self.stream.cfg.seed,
        }
        cur = self._current()
        if cur is None:
            log.warning(
                "data position at batch %d has no stream snapshot (saved outside the checkpoint plan): "
                "a resume from it replays the consumed batches",
                self.consumed,
            )
        else:
            state["workers"] = [None if s is None else {"index": s.index, **s.meta} for s in cur]
        return state

    def state_arrays(self) -> dict[str, torch.Tensor]:
        """Arrays of the saved stream states, named ``w<role>.<name>`` (safetensors-ready)."""
        cur = self._current() or []
        return {
            f"w{s.role}.{k}": torch.from_numpy(np.ascontiguousarray(a))
            for s in cur
            if s is not None
            for k, a in s.arrays.items()
        }

    def load_state_dict(self, state: dict[str, Any], arrays: dict[str, torch.Tensor] | None = None) -> None:
        """Continue from a saved position: from the workers' snapshots if present, else by replay."""
        mine = {
            "world_size": self.stream.world_size,
            "num_workers": self.num_workers,
            "seed": self.stream.cfg.seed,
        }
        for k, v in mine.items():
            if state.get(k, v) != v:
                raise ValueError(
                    f"data position was saved with {k}={state[k]} but this run has {k}={v}: exact resume "
                    "needs the same world size, loader workers and data seed (or start a new run)"
                )
        self.consumed = int(state["consumed"])
        self.positions = int(state.get("positions", 0))
        self.real_positions = int(state.get("real_positions", 0))
        self.truncated = int(state.get("truncated", 0))
        self.stream.start_batch = self.consumed
        self.snapshots = {}
        if "workers" in state:
            arrays = arrays or {}
            resume: dict[int, tuple[dict[str, Any], dict[str, np.ndarray]]] = {}
            for role, w in enumerate(state["workers"]):
                if w is None:
                    continue
                pre = f"w{role}."
                mine_arrays = {k[len(pre) :]: v.numpy() for k, v in arrays.items() if k.startswith(pre)}
                meta = {k: v for k, v in w.items() if k != "index"}
                resume[role] = (meta, mine_arrays)
                # a checkpoint before this role's next batch must still find its state
                self.snapshots[role] = DataSnapshot(int(w["index"]), role, meta, mine_arrays)
            self.stream.resume_states = resume
        else:
            self.stream.resume_states = None  # replay: the workers form and drop the consumed batches
        self._it = self._make_iter()
