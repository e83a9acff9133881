"""Packing sequences into fixed-length rows without attention crossing documents.

Each row of a batch holds several whole sequences one after another; ``doc_ids`` numbers them
(-1 = padding) and ``positions`` restart at 0 for each, so the block-diagonal causal mask of
``model.backbone.packed_causal_mask`` keeps documents independent. First-fit over a small buffer
of sequences keeps the padding fraction low without reordering the stream much.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from model.sequence import IGNORE, TTSSequence

BATCH_KEYS = (
    "text",
    "semantic",
    "acoustic",
    "is_audio",
    "positions",
    "doc_ids",
    "sem_target",
    "ac_target",
    "ac_valid",
    "weight",
)


def collate_rows(rows: list[list[TTSSequence]], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of sequences -> batch dict of tensors [B, seq_len] (acoustic/ac_target [B, seq_len, 36]).

    Also carries ``n_tokens`` (non-padding positions) and ``n_frames`` (audio input positions).
    """
    b = len(rows)
    ad = rows[0][0].acoustic.shape[1]
    out = {
        "text": np.full((b, seq_len), pad_id, np.int64),
        "semantic": np.zeros((b, seq_len), np.int64),
        "acoustic": np.zeros((b, seq_len, ad), np.int64),
        "is_audio": np.zeros((b, seq_len), bool),
        "positions": np.zeros((b, seq_len), np.int64),
        "doc_ids": np.full((b, seq_len), -1, np.int64),
        "sem_target": np.full((b, seq_len), IGNORE, np.int64),
        "ac_target": np.zeros((b, seq_len, ad), np.int64),
        "ac_valid": np.zeros((b, seq_len), bool),
        "weight": np.zeros((b, seq_len), np.float32),
    }
    for r, row in enumerate(rows):
        at = 0
        for d, seq in enumerate(row):
            n = len(seq)
            sl = slice(at, at + n)
            for k in (
                "text",
                "semantic",
                "acoustic",
                "is_audio",
                "sem_target",
                "ac_target",
                "ac_valid",
                "weight",
            ):
                out[k][r, sl] = getattr(seq, k)
            out["positions"][r, sl] = np.arange(n)
            out["doc_ids"][r, sl] = d
            at += n
        # Padding: positions keep counting so RoPE stays finite; doc -1 makes them their own block.
        out["positions"][r, at:] = np.arange(seq_len - at)
    batch = {k: torch.from_numpy(v) for k, v in out.items()}
    batch["n_tokens"] = torch.tensor(int((batch["doc_ids"] >= 0).sum()))
    batch["n_frames"] = torch.tensor(int(batch["is_audio"].sum()))
    batch["n_truncated"] = torch.tensor(sum(s.truncated for row in rows for s in row))
    return batch


class Packer:
    """Greedy first-fit packing of a sequence stream into batches of ``batch_size`` rows.

    Keeps up to ``buffer`` open rows; a sequence goes into the first open row with room, otherwise a
    new row is opened; when more than ``buffer`` rows are open, the fullest is emitted.

    The open and ready rows are plain attributes (``open_rows``, ``used``, ``ready``) so a resumable
    stream can save and restore them (``model.token_stream``): ``add`` / ``take`` / ``finish`` are the
    step-by-step form of ``pack``.
    """

    def __init__(self, seq_len: int, batch_size: int, pad_id: int, buffer: int = 16):
        self.seq_len, self.batch_size, self.pad_id, self.buffer = seq_len, batch_size, pad_id, buffer
        self.open_rows: list[list[TTSSequence]] = []
        self.used: list[int] = []  # positions used in each open row
        self.ready: list[list[TTSSequence]] = []  # closed rows, oldest first

    def add(self, seq: TTSSequence) -> None:
        """Place one sequence (first fit); close the fullest row when more than ``buffer`` are open."""
        if len(seq) > self.seq_len:
            raise ValueError(f"sequence {seq.key} has {len(seq)} positions > seq_len {self.seq_len}")
        for i, u in enumerate(self.used):
            if u + len(seq) <= self.seq_len:
                self.open_rows[i].append(seq)
                self.used[i] += len(seq)
                break
        else:
            self.open_rows.append([seq])
            self.used.append(len(seq))
        if len(self.open_rows) > self.buffer:
            i = int(np.argmax(self.used))
            self.ready.append(self.open_rows.pop(i))
            self.used.pop(i)

    def take(self, partial: bool = False) -> list[list[TTSSequence]] | None:
        """The next ``batch_size`` ready rows (fewer only if ``partial``), or None if not enough."""
        if not self.ready or (len(self.ready) < self.batch_size and not partial):
            return None
        rows, self.ready = self.ready[: self.batch_size], self.ready[self.batch_size :]
        return rows

    def finish(self) -> None:
        """End of the stream: every open row becomes ready."""
        self.ready.extend(self.open_rows)
        self.open_rows, self.used = [], []

    def collate(self, rows: list[list[TTSSequence]]) -> dict[str, torch.Tensor]:
        return collate_rows(rows, self.seq_len, self.pad_id)

    def pack(
        self, sequences: Iterable[TTSSequence], drop_last: bool = False, skip: int = 0
    ) -> Iterator[dict[str, torch.Tensor]]:
        """``skip``: the first ``skip`` batches are formed but not collated nor yielded."""
        emitted = 0
        for seq in sequences:
            self.add(seq)
            while (rows := self.take()) is not None:
                if emitted >= skip:
                    yield self.collate(rows)
                emitted += 1
        self.finish()
        while (rows := self.take(partial=not drop_last)) is not None:
            if emitted >= skip:
                yield self.collate(rows)
            emitted += 1
