"""A resumable loader of packed batches for one data-parallel rank.

The stream (``model.token_stream``) is a deterministic function of (seed, rank, worker) and the
DataLoader hands out worker batches round-robin in a fixed order, so the position in the data is
fully described by how many batches this rank has consumed. ``state_dict()`` saves that number;
``load_state_dict()`` rebuilds the stream and fast-forwards past that many batches (reading and
packing them inside the workers, no collating, no model compute), which yields exactly the batches an uninterrupted run would see.
It also keeps running counts for the logs (padding fraction, truncated sequences).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from model.token_stream import PackedTokenStream


class ResumableLoader:
    def __init__(self, stream: PackedTokenStream, num_workers: int = 0):
        self.stream, self.num_workers = stream, num_workers
        self.consumed = 0  # batches handed to the trainer since the start of training
        self.positions = 0
        self.real_positions = 0
        self.truncated = 0
        self._it: Iterator[dict[str, torch.Tensor]] | None = None

    def _make_iter(self) -> Iterator[dict[str, torch.Tensor]]:
        # batch_size=None: the stream already yields whole batches.
        dl = DataLoader(
            self.stream,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,
            prefetch_factor=4 if self.num_workers else None,
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
        self.consumed += 1
        self.positions += batch["doc_ids"].numel()
        self.real_positions += int(batch["n_tokens"])
        self.truncated += int(batch["n_truncated"])
        return batch

    @property
    def padding_fraction(self) -> float:
        """Share of packed positions that are padding, over everything consumed so far."""
        return 1.0 - self.real_positions / self.positions if self.positions else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "consumed": self.consumed,
            "positions": self.positions,
            "real_positions": self.real_positions,
            "truncated": self.truncated,
            "rank": self.stream.rank,
            "world_size": self.stream.world_size,
            "num_workers": self.num_workers,
            "seed": self.stream.cfg.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Fast-forward a fresh stream to ``state["consumed"]`` batches."""
        for k in ("world_size", "num_workers", "seed"):
            mine = {
                "world_size": self.stream.world_size,
                "num_workers": self.num_workers,
                "seed": self.stream.cfg.seed,
            }[k]
            if state.get(k, mine) != mine:
                raise ValueError(
                    f"data position was saved with {k}={state[k]} but this run has {k}={mine}: exact resume "
                    "needs the same world size, loader workers and data seed (or start a new run)"
                )
        # The stream forms (reads, prompts, packs) the consumed batches again but skips them
        # inside the workers, without collating or sending them.
        self.stream.skip_batches = int(state["consumed"])
        self._it = self._make_iter()
        self.consumed = int(state["consumed"])
        self.positions = int(state.get("positions", 0))
        self.real_positions = int(state.get("real_positions", 0))
        self.truncated = int(state.get("truncated", 0))
