"""One training sequence: voice prompt, text, target audio frames, end-of-audio (DESIGN.md §8).

Layout of the positions (inputs), with the text tokenizer's ids in ``[0, V)`` and specials after:

    BOS  PROMPT  p_0 .. p_{P-1}  TEXT  w_0 .. w_{N-1}  AUDIO  a_0 .. a_{T-1}

Targets: the hidden state at ``AUDIO`` predicts frame a_0, the one at a_k predicts a_{k+1}, and the
one at a_{T-1} predicts end-of-audio (semantic class 8192, no acoustic target). Nothing else carries a
loss. A frame input is the sum of its semantic embedding and its 36 acoustic-level embeddings.

Silent frames (outside every word of the JSON's word timestamps, with a margin) get a reduced loss
weight: they are many and easy, and would otherwise dominate what the model learns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from manifests.shards import ACOUSTIC_DIM, FRAME_RATE, SEMANTIC_CODEBOOK_SIZE, TokenSample
from model.config import DataConfig
from model.text_tokenizer import TextTokenizer

EOA = SEMANTIC_CODEBOOK_SIZE  # end-of-audio: semantic output class 8192
IGNORE = -100  # cross-entropy ignore_index


class Specials:
    """Ids of the special text-side tokens, appended after a tokenizer of ``vocab`` ids."""

    COUNT = 5

    def __init__(self, vocab: int):
        self.bos, self.prompt, self.text, self.audio, self.pad = range(vocab, vocab + self.COUNT)


@dataclass
class Prompt:
    """Voice prompt frames: semantic [P], acoustic [P, 36]; ``source`` is "other", "self" or "none"."""

    semantic: np.ndarray
    acoustic: np.ndarray
    source: str

    @staticmethod
    def none(acoustic_dim: int = ACOUSTIC_DIM) -> Prompt:
        return Prompt(np.zeros(0, np.int64), np.zeros((0, acoustic_dim), np.int64), "none")


@dataclass
class TTSSequence:
    """Inputs and targets of one sequence, all length L (numpy, ready to pack).

    text [L] int64 (text/special id; 0 at audio positions), semantic [L], acoustic [L, 36] (0 at text
    positions), is_audio [L] bool, sem_target [L] (IGNORE / 0..8191 / EOA), ac_target [L, 36],
    ac_valid [L] bool (a real frame is predicted here), weight [L] float32 (0 where no loss).
    """

    key: str
    text: np.ndarray
    semantic: np.ndarray
    acoustic: np.ndarray
    is_audio: np.ndarray
    sem_target: np.ndarray
    ac_target: np.ndarray
    ac_valid: np.ndarray
    weight: np.ndarray
    truncated: bool = False

    def __len__(self) -> int:
        return int(self.text.shape[0])


def speech_mask(sample: TokenSample, margin_s: float) -> np.ndarray | None:
    """[T] bool, True for frames whose centre lies inside a word (+- margin). None if there are no words."""
    words = [w for w in sample.words if w.get("start") is not None and w.get("end") is not None]
    if not words:
        return None
    centres = (np.arange(sample.n_frames) + 0.5) / FRAME_RATE
    mask = np.zeros(sample.n_frames, dtype=bool)
    for w in words:
        s, e = float(w["start"]) - sample.start - margin_s, float(w["end"]) - sample.start + margin_s
        mask |= (centres >= s) & (centres <= e)
    return mask


def self_prefix_split(sample: TokenSample, cfg: DataConfig) -> tuple[int, str] | None:
    """Where to cut a segment into (prompt prefix, target) at a word boundary.

    Returns (cut frame, text of the words after the cut), or None when the segment has no word
    timestamps or too few words to split (then the sequence is trained without a prompt).
    """
    words = [w for w in sample.words if w.get("start") is not None and w.get("end") is not None]
    if len(words) < 2:
        return None
    duration = sample.n_frames / FRAME_RATE
    # Aim for prompt_min_s, but leave at least two thirds of a short segment as the target.
    want = min(cfg.prompt_min_s, duration / 3)
    best = None
    for i in range(len(words) - 1):
        gap = (float(words[i]["end"]) + float(words[i + 1]["start"])) / 2 - sample.start
        if best is None or abs(gap - want) < abs(best[0] - want):
            best = (gap, i + 1)
    cut_s, first_word = best
    cut = int(round(cut_s * FRAME_RATE))
    if cut <= 0 or cut >= sample.n_frames:
        return None
    # Prefer the transcript's own spelling when it has one token per timed word (the usual case:
    # the text is the words joined); otherwise fall back to the timed words themselves.
    text_tokens = sample.text.split()
    if len(text_tokens) == len(words):
        return cut, " ".join(text_tokens[first_word:])
    return cut, " ".join(str(w["word"]).strip() for w in words[first_word:])


class SequenceBuilder:
    """TokenSample (+ prompt) -> TTSSequence that fits ``cfg.seq_len`` positions."""

    def __init__(self, tokenizer: TextTokenizer, cfg: DataConfig):
        self.tok = tokenizer
        self.cfg = cfg
        self.sp = Specials(tokenizer.vocab_size)

    def build(
        self, sample: TokenSample, prompt: Prompt, text: str | None = None, target_from: int = 0
    ) -> TTSSequence:
        """``text``/``target_from`` override the transcript and first target frame (self-prefix prompts)."""
        cfg = self.cfg
        text_ids = self.tok.encode(sample.text if text is None else text)
        sem_t, ac_t = sample.semantic[target_from:], sample.acoustic[target_from:]
        mask = speech_mask(sample, cfg.silence_margin_s)
        frame_w = np.ones(len(sem_t), np.float32)
        if mask is not None:
            frame_w = np.where(mask[target_from:], 1.0, cfg.silence_weight).astype(np.float32)

        p_sem, p_ac = prompt.semantic, prompt.acoustic
        fixed = 4  # BOS PROMPT TEXT AUDIO
        truncated = False
        budget = cfg.seq_len - fixed
        if len(text_ids) > budget - 1:  # pathological transcript: keep room for one frame
            text_ids, truncated = text_ids[: budget - 1], True
        over = len(p_sem) + len(text_ids) + len(sem_t) - budget
        if over > 0:
            # Shorten the prompt first (down to prompt_min_s), then drop it, then cut the target.
            min_p = int(round(cfg.prompt_min_s * FRAME_RATE))
            keep_p = max(len(p_sem) - over, min(min_p, len(p_sem)))
            p_sem, p_ac = p_sem[:keep_p], p_ac[:keep_p]
            over = len(p_sem) + len(text_ids) + len(sem_t) - budget
            if over > 0 and len(p_sem):
                p_sem, p_ac = p_sem[:0], p_ac[:0]
                over = len(text_ids) + len(sem_t) - budget
            if over > 0:
                truncated = True
        n_in = min(len(sem_t), budget - len(p_sem) - len(text_ids))  # target frames used as inputs

        sp = self.sp
        P, N = len(p_sem), len(text_ids)
        L = fixed + P + N + n_in
        text_arr = np.zeros(L, np.int64)
        sem = np.zeros(L, np.int64)
        ac = np.zeros((L, sample.acoustic.shape[1]), np.int64)
        is_audio = np.zeros(L, bool)
        text_arr[0], text_arr[1] = sp.bos, sp.prompt
        sem[2 : 2 + P], ac[2 : 2 + P], is_audio[2 : 2 + P] = p_sem, p_ac, True
        text_arr[2 + P] = sp.text
        text_arr[3 + P : 3 + P + N] = text_ids
        a0 = 3 + P + N  # AUDIO token
        text_arr[a0] = sp.audio
        sem[a0 + 1 :], ac[a0 + 1 :], is_audio[a0 + 1 :] = sem_t[:n_in], ac_t[:n_in], True

        sem_target = np.full(L, IGNORE, np.int64)
        ac_target = np.zeros_like(ac)
        ac_valid = np.zeros(L, bool)
        weight = np.zeros(L, np.float32)
        # Position a0 + k predicts target frame k, for k = 0 .. n_in (frame n_in may lie beyond the row
        # when truncated: it is still a valid target); without truncation the last predicts EOA.
        n_pred = min(n_in + 1, len(sem_t))
        idx = a0 + np.arange(n_pred)
        sem_target[idx], ac_target[idx], ac_valid[idx], weight[idx] = (
            sem_t[:n_pred],
            ac_t[:n_pred],
            True,
            frame_w[:n_pred],
        )
        if n_in == len(sem_t):
            sem_target[a0 + n_in], weight[a0 + n_in] = EOA, 1.0
        return TTSSequence(
            sample.key, text_arr, sem, ac, is_audio, sem_target, ac_target, ac_valid, weight, truncated
        )
