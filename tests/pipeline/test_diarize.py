"""The offline diarizer on a real 4-speaker AMI meeting: speaker count, hints, encoders, clustering."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config import ConfigError, IngestConfig
from pipeline.evaluation import annotation, der, load_rttm
from pipeline.ingest import parse_args
from pipeline.speaker_clustering import choose_clusters
from tests.conftest import DIARIZATION, REPO

MEETING = DIARIZATION / "ami-es2004a-750-810"  # 60 s, 4 speakers


@pytest.fixture(scope="module")
def meeting():
    if not MEETING.with_suffix(".wav").is_file():
        pytest.skip(f"{MEETING}.wav not found (../shared/diarization)")
    from pipeline.decode import Decoder
    from pipeline.stages import Segment

    row = {"path": str(MEETING.with_suffix(".wav")), "status": "ok"}
    row["audio16"] = Decoder()(row["path"]).audio16
    Segment(IngestConfig(inputs=["x"], output="x")).process(row)
    return row, load_rttm(MEETING.with_suffix(".rttm"))[MEETING.name]


def _diarize(row: dict, argv: list[str]) -> list[tuple[float, float, str]]:
    """The segment and diarize stages as the ingest runs them with ``argv`` (the segmentation
    is redone when ``argv`` picks another segmentation model than the fixture's default)."""
    from pipeline.stages import Diarize, Segment

    cfg = parse_args(["--input", "x", "--output", "x", *argv])
    r = dict(row)
    if cfg.vad_model != IngestConfig.vad_model:
        Segment(cfg).process(r)
    Diarize(cfg).process(r)
    return r["diarization"].turns


def test_speaker_hints_change_the_result_as_documented(meeting):
    row, _ = meeting
    labels = lambda turns: {t[2] for t in turns}  # noqa: E731
    assert len(labels(_diarize(row, ["--num-speakers", "2"]))) == 2
    assert len(labels(_diarize(row, ["--max-speakers", "2"]))) <= 2
    assert len(labels(_diarize(row, ["--min-speakers", "5"]))) == 5


def test_the_offline_default_beats_the_previous_one_on_a_real_meeting(meeting):
    """ES2004a, 60 s, 4 speakers (a held-out recording of bench/diarization.py). The default
    (segmentation-3.0 + CAM++ + threshold) against the previous default (the 2022 segmentation
    model + resemblyzer + silhouette) and against resemblyzer at a fixed threshold, which merged
    this meeting's speakers."""
    row, ref = meeting
    uri = MEETING.name
    runs = {"default": [], "previous": ["--vad-model", "whisperx", "--speaker-encoder", "resemblyzer",
                                        "--clustering", "silhouette"],
            "resemblyzer-threshold": ["--vad-model", "whisperx", "--speaker-encoder", "resemblyzer",
                                      "--clustering", "threshold"]}
    turns = {name: _diarize(row, argv) for name, argv in runs.items()}
    ders = {name: der({uri: ref}, {uri: annotation(t, uri)}, collar=0.5)["der"] for name, t in turns.items()}
    counts = {name: len({x[2] for x in t}) for name, t in turns.items()}
    print(f"\nES2004a 60 s: DER {ders}, speakers {counts}")
    assert abs(counts["default"] - 4) <= 1
    assert ders["default"] < 0.15
    assert ders["default"] < ders["previous"] < ders["resemblyzer-threshold"]


def test_choose_clusters_counts_separated_groups_and_obeys_bounds():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 32))
    x = np.concatenate([c + 0.15 * rng.normal(size=(12, 32)) for c in centres])
    labels = choose_clusters(x, 1, 10, min_silhouette=0.2)
    assert len(set(labels)) == 3
    # the three groups come out whole
    assert all(len(set(labels[i * 12:(i + 1) * 12])) == 1 for i in range(3))
    blob = rng.normal(size=(30, 32)) * 0.05 + centres[0]
    assert set(choose_clusters(blob, 1, 10, min_silhouette=0.2)) == {0}
    assert len(set(choose_clusters(x, 1, 2, min_silhouette=0.2))) == 2
    assert len(set(choose_clusters(blob, 4, 10, min_silhouette=0.2))) >= 4
    assert len(set(choose_clusters(blob, 4, 4, min_silhouette=0.2))) == 4
    # past max_points a sample is clustered and the rest join its centroids: same groups
    sampled = choose_clusters(x, 1, 10, min_silhouette=0.2, max_points=20)
    assert len(set(sampled)) == 3 and all(len(set(sampled[i * 12:(i + 1) * 12])) == 1 for i in range(3))


def test_speaker_hint_options_are_validated():
    with pytest.raises(ConfigError, match="min_speakers"):
        IngestConfig(inputs=["x"], output="x", min_speakers=4, max_speakers=2)
    with pytest.raises(ConfigError, match="num_speakers"):
        IngestConfig(inputs=["x"], output="x", num_speakers=0)
    with pytest.raises(ConfigError, match="clustering"):
        IngestConfig(inputs=["x"], output="x", clustering="kmeans")


def test_a_source_with_nothing_to_cluster_is_one_speaker_without_numpy_warnings(speech_dir):
    """trn02: one speaker, too little clean speech per window to cluster (pyannote's own
    clustering averaged an empty array there: 'Mean of empty slice')."""
    import warnings

    from pipeline.decode import Decoder
    from pipeline.diarize import Diarizer
    from pipeline.segment import Segmenter

    audio = Decoder()(str(speech_dir / "pyannote-audio/tests/data/trn02.wav")).audio16
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        d = Diarizer()(audio, Segmenter()(audio))
    assert len({t[2] for t in d.turns}) == 1


def test_segmentation_3_hears_overlap_in_a_meeting_and_little_in_a_monologue(meeting, speech_dir):
    """The powerset model's probability of two voices at once (what --overlap-threshold cuts
    words on): plenty in the AMI meeting, next to none in one person reading."""
    from pipeline.decode import Decoder
    from pipeline.diarize import overlap_regions
    from pipeline.segment import Segmenter

    seg = Segmenter()
    meet = meeting[0]["segmentation"]
    mono = seg(Decoder()(str(speech_dir / "mfa/tests/data/wav/acoustic_corpus.wav")).audio16)  # 27 s, one voice
    for s in (meet, mono):
        assert s.overlap is not None and s.overlap.shape == s.scores.shape[:2]
        assert 0.0 <= s.overlap.min() and s.overlap.max() <= 1.0

    def seconds(s, threshold):
        return sum(e - b for b, e in overlap_regions(s, seg.model.receptive_field, threshold))

    assert seconds(meet, 0.1) >= seconds(meet, 0.5) > 3.0  # of 60 s
    assert seconds(mono, 0.1) < 0.1 * seconds(meet, 0.1)


def test_every_other_window_is_embedded_and_odd_windows_reuse_the_same_voice(meeting):
    """embeddings_every_other_chunk on the meeting's real segmentation and CAM++: the even
    windows' embeddings are the full ones, odd windows' local speakers get a neighbour's
    embedding of the same voice (close to their own), none is lost, and about half the speech
    is embedded."""
    import torch
    from pyannote.audio.pipelines import SpeakerDiarization
    from pyannote.core import SlidingWindow, SlidingWindowFeature

    from pipeline.diarize import Diarizer, embeddings_every_other_chunk

    row, _ = meeting
    seg = row["segmentation"]
    segs = SlidingWindowFeature(seg.scores, SlidingWindow(start=0.0, duration=seg.chunk_duration,
                                                          step=seg.chunk_step))
    pipe = Diarizer().pipeline
    file = {"waveform": torch.from_numpy(row["audio16"])[None], "sample_rate": 16_000, "uri": "meeting"}
    frames = []

    def embed(s):
        frames.append(float(np.nan_to_num(s.data).sum()))  # active (frame, local speaker) pairs embedded
        return SpeakerDiarization.get_embeddings(pipe, file, s)

    full = embed(segs)
    n_full = frames.pop()
    # 60 s = 11 windows: below the default min_chunks the whole set is embedded, as before
    np.testing.assert_array_equal(embeddings_every_other_chunk(segs, embed), full)
    frames.clear()
    reused = embeddings_every_other_chunk(segs, embed, min_chunks=3)
    assert sum(frames) < 0.65 * n_full
    np.testing.assert_array_equal(reused[::2], full[::2])
    odd_full, odd = full[1::2].reshape(-1, full.shape[-1]), reused[1::2].reshape(-1, full.shape[-1])
    has = ~np.isnan(odd_full).any(1)
    assert not np.isnan(odd[has]).any()  # every odd local speaker with speech still has an embedding
    cos = (odd_full[has] * odd[has]).sum(1) / np.linalg.norm(odd_full[has], axis=1) / np.linalg.norm(odd[has], axis=1)
    print(f"\nodd windows' reused vs own embeddings: cosine {np.round(np.sort(cos), 2)}")
    assert np.median(cos) > 0.8


def test_a_brief_second_voice_in_a_long_monologue_keeps_its_own_label(speech_dir):
    """Real speech: Asterisk's English prompt voice for 200 s, with 8 s of the LibriVox
    reader in the middle (an interviewer's question in a long answer). pyannote folds clusters of
    fewer than ``min_cluster_size`` embeddings into the nearest large one whatever the distance;
    at the old 6 the reader took the prompt voice's label. The default keeps it apart."""
    from pipeline.decode import Decoder

    decode = Decoder()
    prompts = sorted((speech_dir / "asterisk-core-sounds/en/wav").glob("*.wav"))
    if not prompts:
        pytest.skip("asterisk-core-sounds/en not in ../shared/speech")
    gap = np.zeros(8_000, np.float32)
    main = np.concatenate([np.concatenate([decode(str(p)).audio16, gap]) for p in prompts])
    main = np.concatenate([main, main])[: 200 * 16_000]  # ~3 minutes (the prompts twice)
    reader = decode(str(speech_dir / "pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav")).audio16
    reader = reader[: 8 * 16_000] * np.sqrt(np.mean(main ** 2) / np.mean(reader[: 8 * 16_000] ** 2))
    at = 80 * 16_000
    audio = np.concatenate([main[:at], gap, reader.astype(np.float32), gap, main[at:]])
    from pipeline.stages import Segment

    row = {"path": "x", "status": "ok", "audio16": audio}
    Segment(IngestConfig(inputs=["x"], output="x")).process(row)
    turns = _diarize(row, [])

    def label_of(a: float, b: float) -> str:
        time = {}
        for s, e, label in turns:
            time[label] = time.get(label, 0.0) + max(0.0, min(e, b) - max(s, a))
        return max(time, key=time.get)

    start = 80.5  # seconds: the reader's 8 s after the gap
    assert len({t[2] for t in turns}) == 2
    assert label_of(start + 0.5, start + 7.5) != label_of(0.0, 78.0) == label_of(start + 10, len(audio) / 16_000)


@pytest.mark.parametrize("clustering", ["threshold", "silhouette"])
def test_min_clean_speech_decides_which_local_speakers_join_the_clustering(clustering):
    import torch
    from pyannote.core import SlidingWindow, SlidingWindowFeature

    from pipeline.diarize import _build_offline_pipeline

    p = _build_offline_pipeline(None, 0.5, None, torch.device("cpu"), None, clustering=clustering)
    # 1.5 s measured with CAM++ and the cut (README); the silhouette clustering keeps pyannote's 2 s
    assert p.clustering.min_clean_speech == {"threshold": 1.5, "silhouette": 2.0}[clustering]
    p.clustering.min_clean_speech = 1.5
    frames = 589  # segmentation-3.0's frames per 10 s window
    data = np.zeros((2, frames, 3), dtype=np.float32)
    alone = lambda s: int(round(s / 10.0 * frames))  # noqa: E731
    data[0, :alone(1.7), 0] = 1  # speaks alone 1.7 s: joins at 1.5 s, not at pyannote's 2 s
    data[0, alone(5):alone(5) + alone(1.2), 1] = 1  # 1.2 s: joins only at 1 s
    data[1, :alone(3.0), 2] = 1  # 2.5 s alone (the last 0.5 s under speaker 0): joins either way
    data[1, alone(2.5):alone(6), 0] = 1  # 3 s alone: joins either way
    segs = SlidingWindowFeature(data, SlidingWindow(start=0.0, duration=10.0, step=5.0))
    emb = np.ones((2, 3, 4), dtype=np.float32)
    emb[0, 2] = np.nan  # not active: no embedding

    def joined():
        _, chunk, speaker = p.clustering.filter_embeddings(emb, segmentations=segs)
        return sorted(zip(chunk.tolist(), speaker.tolist()))

    assert joined() == [(0, 0), (1, 0), (1, 2)]
    p.clustering.min_clean_speech = 2.0
    assert joined() == [(1, 0), (1, 2)]
    p.clustering.min_clean_speech = 1.0
    assert joined() == [(0, 0), (0, 1), (1, 0), (1, 2)]


def test_min_clean_speech_is_validated_and_reaches_the_clustering():
    from pipeline.stages import Diarize

    cfg = parse_args(["--input", "x", "--output", "y", "--min-clean-speech", "1.0", "--device", "cpu"])
    assert Diarize(cfg).diarizer.pipeline.clustering.min_clean_speech == 1.0
    for bad in ("0", "-1", "12"):
        with pytest.raises(ConfigError, match="min_clean_speech"):
            IngestConfig(inputs=["x"], output="y", min_clean_speech=float(bad))


def test_the_runs_table_gets_the_diarizers_defaults_written_in():
    """None for cluster_threshold / min_clean_speech means "the diarizer's default"; the stored
    config says which value ran, read from where the defaults live."""
    from pipeline.speaker_clustering import HintedAgglomerativeClustering, SilhouetteClustering
    from pipeline.speaker_embedding import CamPlusPlusEmbedding, ResemblyzerEmbedding

    base = ["--input", "x", "--output", "y"]
    cfg = parse_args(base).resolved()
    assert (cfg.cluster_threshold, cfg.min_clean_speech) == (CamPlusPlusEmbedding.cluster_threshold,
                                                            HintedAgglomerativeClustering.min_clean_speech)
    assert json.loads(cfg.to_json())["min_clean_speech"] == 1.5
    old = parse_args(base + ["--speaker-encoder", "resemblyzer"]).resolved()
    assert old.cluster_threshold == ResemblyzerEmbedding.cluster_threshold != cfg.cluster_threshold
    sil = parse_args(base + ["--clustering", "silhouette"]).resolved()
    assert (sil.cluster_threshold, sil.min_clean_speech) == (None, SilhouetteClustering.min_clean_speech)
    given = parse_args(base + ["--cluster-threshold", "0.7", "--min-clean-speech", "1.0"]).resolved()
    assert (given.cluster_threshold, given.min_clean_speech) == (0.7, 1.0)
    pretrained = parse_args(base + ["--diarization", "/models/pipeline"])
    assert pretrained.resolved() is pretrained  # its own settings: nothing of ours to write in
    with pytest.raises(ConfigError, match="speaker_encoder"):
        IngestConfig(inputs=["x"], output="y", speaker_encoder="ecapa")
    # the ingest's driver resolves it without loading a model library (1 GB and seconds of start-up)
    import subprocess
    import sys

    code = ("import sys; from pipeline.config import IngestConfig; "
            "c = IngestConfig(inputs=['x'], output='y').resolved(); "
            "print(c.cluster_threshold, c.min_clean_speech, 'torch' in sys.modules, 'pyannote.audio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.split() == ["0.85", "1.5", "False", "False"]
