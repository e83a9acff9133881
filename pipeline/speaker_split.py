"""Second pass of the offline diarizer: a diarized speaker whose speech holds two voices is split.

The clustering sees one embedding per (10 s window, local speaker), and segmentation-3.0 tracks
two similar voices as one local speaker within a window (AMI ``dev00``'s two male voices, which
trade turns 0.2-0.4 s apart), so their speech arrives at the clustering already mixed, and no cut
can part it. This pass embeds each diarized speaker's own speech (its exclusive turns) again in
short pieces (<= ``piece`` s), and splits the speaker in two where its pieces fall into two groups
(average-linkage agglomeration, then 2-means) whose centroids lie at least ``distance`` apart
(cosine) and each hold at least ``min_speech`` seconds; each part is tried again, up to
``max_depth`` splits deep. A long speaker is embedded every other piece first; once every piece
has its part, a part left with less than ``min_speech`` folds into the nearest other part (the
split had counted each embedded piece for its neighbours too: AMI dev00+dev01 laid end to end
gave two voices five labels, two of them of 1.8 and 3.3 s). Pieces too short to embed take the
part of the nearest embedded piece in time; a new part whose centroid lies closer than ``distance`` to another speaker that the
clustering found joins that speaker instead (segmentation-3.0 had filed some of a known voice's
speech under a neighbour's local speaker). A speaker's turns are relabelled between its pieces, in
the gaps where the part changes.

Measured with bench/diarization.py (README, "Diarization"): chosen on the tune split, tune-long
and the simulated conversations of seeds 1-3; a voice heard for less than ``min_speech`` never becomes a
speaker of its own here (too little for a TTS voice prompt anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SpeakerSplit:
    """distance: cosine distance between the two parts' centroids (unit-normalised, weighted by
    seconds) at or above which a speaker is split; min_speech: seconds each part must hold;
    piece: the longest piece embedded, seconds (an exclusive turn is cut into equal pieces no
    longer than this); min_piece: the shortest piece embedded, seconds; max_depth: how many
    times a part may be split again; sample_above: a speaker with more embeddable pieces than this
    is first embedded every other piece (each counting for the seconds of its neighbours), and
    its other pieces only where it splits."""

    distance: float = 0.25
    min_speech: float = 4.0
    piece: float = 2.0
    min_piece: float = 0.8
    max_depth: int = 3
    sample_above: int = 16

    def __post_init__(self):
        if not 0.0 < self.distance < 2.0:
            raise ValueError(f"speaker split distance must be in (0, 2) (cosine distance), got {self.distance}")
        if self.min_speech <= 0 or self.piece <= 0 or not 0 < self.min_piece <= self.piece:
            raise ValueError(f"speaker split: min_speech ({self.min_speech}) and piece ({self.piece}) must be > 0 "
                             f"and 0 < min_piece ({self.min_piece}) <= piece")

    def pieces(self, exclusive: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
        """Each exclusive turn cut into equal pieces of at most ``piece`` seconds, in time order."""
        out = []
        for s, e, label in sorted(exclusive):
            n = max(1, int(np.ceil((e - s) / self.piece - 1e-9)))
            out += [(s + (e - s) * k / n, s + (e - s) * (k + 1) / n, label) for k in range(n)]
        return out

    def __call__(self, audio16: np.ndarray, turns: list[tuple[float, float, str]],
                 exclusive: list[tuple[float, float, str]], embed, max_speakers: int | None = None,
                 sample_rate: int = 16_000):
        """-> (turns, exclusive) with split speakers relabelled (a new part is
        ``<label>+<depth><pieces>``, or the found speaker it joined); unchanged where no speaker
        splits. audio16: [N] at ``sample_rate``; embed: a speaker encoder,
        ``embed(waveforms [B, 1, N]) -> [B, D]`` (NaN where too short); max_speakers: no split
        beyond this many speakers in all."""
        import torch

        pieces = self.pieces(exclusive)
        speech: dict[str, float] = {label: 0.0 for _, _, label in turns}  # every speaker counts for max_speakers
        for s, e, label in pieces:
            speech[label] = speech.get(label, 0.0) + e - s
        # only a speaker with speech enough for two parts can split: the rest is not embedded
        candidates = {label for label, t in speech.items() if t >= 2 * self.min_speech}
        if not candidates or (max_speakers is not None and len(speech) >= max_speakers):
            return turns, exclusive
        vectors: dict[int, np.ndarray] = {}

        def embed_pieces(idx):
            for i in idx:
                s, e, _ = pieces[i]
                wav = np.ascontiguousarray(audio16[int(s * sample_rate):int(e * sample_rate)], dtype=np.float32)
                v = np.asarray(embed(torch.from_numpy(wav)[None, None]))[0]
                if np.isfinite(v).all() and np.linalg.norm(v) > 0:
                    vectors[i] = v / np.linalg.norm(v)

        new = [label for _, _, label in pieces]
        n_speakers = len(speech)
        for label in sorted(candidates):
            mine = [i for i, (s, e, lab) in enumerate(pieces) if lab == label]
            embeddable = [i for i in mine if pieces[i][1] - pieces[i][0] >= self.min_piece]
            # a long speaker is first embedded every other piece, each counting for its neighbours
            # too (half the cost where nothing splits, the usual case); the rest only if it splits
            embed_pieces(embeddable[::2] if len(embeddable) > self.sample_above else embeddable)
            idx = [i for i in embeddable if i in vectors]
            if len(idx) < 2:
                continue
            weight = dict.fromkeys(idx, 0.0)
            for i in mine:
                weight[_nearest(idx, pieces, i)] += pieces[i][1] - pieces[i][0]
            budget = None if max_speakers is None else max_speakers - n_speakers
            parts = self._split(idx, weight, vectors, label, 0, [budget])
            names = sorted(set(parts.values()))
            if len(names) < 2:
                continue
            n_speakers += len(names) - 1
            rest = [i for i in embeddable if i not in parts]
            embed_pieces(rest)
            centroids = np.stack([_centroid([vectors[i] for i in idx if parts[i] == n],
                                            [weight[i] for i in idx if parts[i] == n]) for n in names])
            for i in rest:  # the pieces left out above: the part whose centroid is nearest
                if i in vectors:
                    parts[i] = names[int(np.argmax(centroids @ vectors[i]))]
            embedded = [j for j in parts if j in vectors]
            for i in mine:  # too short to embed: the part of the nearest piece in time
                if i not in parts:
                    parts[i] = parts[_nearest(embedded, pieces, i)]
            parts = self._fold_small(parts, mine, pieces, vectors, label)
            n_speakers -= len(names) - len(set(parts.values()))
            for i, part in parts.items():
                new[i] = part
        new = self._merge(new, pieces, vectors)
        if new == [label for _, _, label in pieces]:
            return turns, exclusive
        relabelled = [(s, e, label) for (s, e, _), label in zip(pieces, new)]
        # a part that joined a found speaker may overlap that speaker's own turns: one turn there
        return _merge_adjacent(_relabel(turns, pieces, new)), _merge_adjacent(relabelled)

    def _fold_small(self, parts: dict[int, str], mine: list[int], pieces, vectors, label: str) -> dict[int, str]:
        """Piece -> part of one split speaker (``label``), with each part that holds less than
        ``min_speech`` seconds once every piece has its part (the split measured the sampled pieces
        only) folded into the part whose centroid is nearest, smallest first. Every part holds an
        embedded piece (the split made it from them). The speaker keeps its label: where its own
        part is the one folded, the part it joins takes the label."""
        while True:
            seconds: dict[str, float] = {}
            for i in mine:
                seconds[parts[i]] = seconds.get(parts[i], 0.0) + pieces[i][1] - pieces[i][0]
            small = min(seconds, key=seconds.get)
            if len(seconds) < 2 or seconds[small] >= self.min_speech:
                return parts
            embedded = {p: [i for i in mine if parts[i] == p and i in vectors] for p in seconds}
            centroid = {p: _centroid([vectors[i] for i in idx], [pieces[i][1] - pieces[i][0] for i in idx])
                        for p, idx in embedded.items()}
            into = max((p for p in centroid if p != small), key=lambda p: float(centroid[p] @ centroid[small]))
            name = label if label in (small, into) else into
            parts = {i: name if p in (small, into) else p for i, p in parts.items()}

    def _merge(self, new: list[str], pieces, vectors) -> list[str]:
        """Each new part whose centroid lies closer than ``distance`` to a speaker the clustering
        found (what is left of it after the split; only speakers with pieces embedded, i.e. with
        2 * min_speech of speech) joins that speaker: the part was a voice that already had a label
        of its own, not a new one. Only new parts move: a split speaker keeps its label on its
        larger part even where that part is another found speaker's voice."""
        found = {label for _, _, label in pieces}
        members: dict[str, list[int]] = {}
        for i, part in enumerate(new):
            if i in vectors:
                members.setdefault(part, []).append(i)
        centroid = {part: _centroid([vectors[i] for i in idx], [pieces[i][1] - pieces[i][0] for i in idx])
                    for part, idx in members.items()}
        known = [label for label in centroid if label in found]
        rename = {}
        for part in centroid:
            if part in found or not known:
                continue
            nearest = max(known, key=lambda label: float(centroid[part] @ centroid[label]))
            if 1.0 - float(centroid[part] @ centroid[nearest]) < self.distance:
                rename[part] = nearest
        return [rename.get(part, part) for part in new]

    def _split(self, idx, weight, vectors, label, depth, budget) -> dict[int, str]:
        """Piece index -> part label for the embedded pieces ``idx`` of one speaker (or part);
        ``weight``: the seconds each one counts for."""
        seconds = np.array([weight[i] for i in idx])
        if (depth >= self.max_depth or len(idx) < 2 or seconds.sum() < 2 * self.min_speech
                or (budget[0] is not None and budget[0] <= 0)):
            return {i: label for i in idx}
        X = np.stack([vectors[i] for i in idx])
        group = two_groups(X, seconds)
        if group is None:
            return {i: label for i in idx}
        held = [seconds[group == k].sum() for k in (0, 1)]
        centroids = [_centroid(X[group == k], seconds[group == k]) for k in (0, 1)]
        if min(held) < self.min_speech or 1.0 - float(centroids[0] @ centroids[1]) < self.distance:
            return {i: label for i in idx}
        if budget[0] is not None:
            budget[0] -= 1
        main = 0 if held[0] >= held[1] else 1  # the larger part keeps the label
        out = {}
        for k in (0, 1):
            sub = [i for i, g in zip(idx, group) if g == k]
            name = label if k == main else f"{label}+{depth}{len(sub)}"
            out.update(self._split(sub, weight, vectors, name, depth + 1, budget))
        return out


def _nearest(idx: list[int], pieces, i: int) -> int:
    """The piece of ``idx`` whose middle is nearest in time to piece ``i``'s."""
    mid = (pieces[i][0] + pieces[i][1]) / 2
    return min(idx, key=lambda j: abs((pieces[j][0] + pieces[j][1]) / 2 - mid))


def _centroid(vectors, seconds) -> np.ndarray:
    """The unit-normalised mean of unit vectors [n, D], weighted by ``seconds`` [n]."""
    v = np.average(np.asarray(vectors), axis=0, weights=seconds)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def two_groups(X: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
    """X [n, D] unit vectors -> group of each row (0/1): average-linkage agglomeration (cosine) cut
    at two clusters, then weighted 2-means (``weights`` [n], seconds) until no row moves; None
    where it gives one group."""
    from scipy.cluster.hierarchy import fcluster, linkage

    group = fcluster(linkage(X, method="average", metric="cosine"), 2, criterion="maxclust") - 1
    for _ in range(20):
        if len(set(group.tolist())) < 2:
            return None
        centroids = np.stack([_centroid(X[group == k], weights[group == k]) for k in (0, 1)])
        moved = np.argmax(X @ centroids.T, axis=1)
        if (moved == group).all():
            break
        group = moved
    return group if len(set(group.tolist())) == 2 else None


def _relabel(turns, pieces, new) -> list[tuple[float, float, str]]:
    """Each turn of a split speaker cut where its part changes: at the middle of the gap between
    two consecutive pieces of that speaker with different parts."""
    by: dict[str, list[tuple[float, float, str]]] = {}
    for (s, e, label), part in zip(pieces, new):
        by.setdefault(label, []).append((s, e, part))
    out = []
    for s, e, label in turns:
        own = by.get(label, [])
        if len({p for _, _, p in own}) < 2:
            out.append((s, e, own[0][2] if own else label))
            continue
        cuts = [((a[1] + b[0]) / 2, b[2]) for a, b in zip(own, own[1:]) if a[2] != b[2]]
        points = [s] + [c for c, _ in cuts if s < c < e] + [e]
        for a, b in zip(points, points[1:]):
            mid, part = (a + b) / 2, own[0][2]
            for c, p in cuts:
                if mid >= c:
                    part = p
            out.append((a, b, part))
    return sorted(out)


def _merge_adjacent(turns) -> list[tuple[float, float, str]]:
    """Turns of one label that touch or overlap joined into one turn."""
    last: dict[str, int] = {}
    out: list[tuple[float, float, str]] = []
    for s, e, label in sorted(turns):
        k = last.get(label)
        if k is not None and s <= out[k][1] + 1e-6:
            out[k] = (out[k][0], max(out[k][1], e), label)
        else:
            last[label] = len(out)
            out.append((s, e, label))
    return sorted(out)
