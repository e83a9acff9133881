"""The offline diarizer's second pass (pipeline.speaker_split) on real voices with CAM++."""

from __future__ import annotations

import numpy as np
import pytest

RATE = 16_000
BLOCK = 3.0  # seconds of one voice per turn


def blocks_of(audio, count: int) -> list:
    """``count`` consecutive blocks of ``BLOCK`` s of 16 kHz ``audio``, from 2 s in (past any lead-in
    silence)."""
    n = int(BLOCK * RATE)
    return [audio[2 * RATE + k * n: 2 * RATE + (k + 1) * n] for k in range(count)]


@pytest.fixture(scope="module")
def voices(speech_dir):
    """Two real voices, 16 kHz: the MFA author (male) and an Open Speech Repository reader (female),
    each cut into eight 3 s blocks."""
    from pipeline.decode import Decoder

    dec = Decoder()
    a = dec(str(speech_dir / "mfa/tests/data/wav/acoustic_corpus.wav")).audio16
    b = dec(str(speech_dir / "joinly/tests/data/speech_audio/OSR_us_000_0034_8k.wav")).audio16
    return blocks_of(a, 8), blocks_of(b, 8)


@pytest.fixture(scope="module")
def third_voice(speech_dir):
    """A third real voice (a FLEURS French reader; the cosine distance between its CAM++ centroid
    and each of the two above is >= 0.55), four 3 s blocks."""
    from pipeline.decode import Decoder

    c = Decoder()(str(speech_dir / "cuttledoc-fleurs/fleurs-fr-001.ogg")).audio16
    return blocks_of(c, 4)


class CountingEncoder:
    """The speaker encoder, counting the pieces it embeds."""

    def __init__(self, encoder):
        self.encoder, self.calls = encoder, 0

    def __call__(self, waveforms):
        self.calls += len(waveforms)
        return self.encoder(waveforms)


@pytest.fixture(scope="module")
def encoder():
    from pipeline.speaker_embedding import CamPlusPlusEmbedding

    return CamPlusPlusEmbedding()


def one_speaker(blocks):
    """The blocks laid end to end, as a diarizer that tracked them all as one speaker gives them:
    one turn per block, all SPEAKER_00."""
    audio = np.concatenate(blocks)
    turns = [(k * BLOCK, (k + 1) * BLOCK, "SPEAKER_00") for k in range(len(blocks))]
    return audio, turns


def label_at(turns, t):
    return next(label for s, e, label in turns if s <= t < e)


def test_a_speaker_holding_two_voices_is_split_at_their_turns(voices, encoder):
    from pipeline.speaker_split import SpeakerSplit

    a, b = voices
    blocks = [a[0], b[0], a[1], b[1], a[2], b[2], a[3], b[3]]  # the voices take turns, 12 s each
    audio, turns = one_speaker(blocks)
    new_turns, exclusive = SpeakerSplit()(audio, turns, turns, encoder)
    assert len({label for *_, label in exclusive}) == 2

    first = {label_at(new_turns, (k + 0.5) * BLOCK) for k in (0, 2, 4, 6)}
    second = {label_at(new_turns, (k + 0.5) * BLOCK) for k in (1, 3, 5, 7)}
    assert len(first) == 1 and len(second) == 1 and first != second  # each voice one label, not the other's
    # the turns still cover exactly the same time, only relabelled
    assert sum(e - s for s, e, _ in new_turns) == pytest.approx(len(blocks) * BLOCK)


def test_a_part_that_is_another_speakers_voice_joins_that_speaker(voices, encoder):
    """SPEAKER_00 holds both voices; SPEAKER_01, found by the clustering, is the second voice
    alone: the second voice's part of SPEAKER_00 goes to SPEAKER_01, not to a new speaker."""
    from pipeline.speaker_split import SpeakerSplit

    a, b = voices
    audio, turns = one_speaker([a[0], b[0], a[1], b[1], a[2], b[2], a[3], b[3], b[4], b[5], b[6], b[7]])
    turns = turns[:8] + [(s, e, "SPEAKER_01") for s, e, _ in turns[8:]]
    new_turns, exclusive = SpeakerSplit()(audio, turns, turns, encoder)
    assert {label for *_, label in exclusive} == {"SPEAKER_00", "SPEAKER_01"}
    first_voice = {label_at(new_turns, (k + 0.5) * BLOCK) for k in (0, 2, 4, 6)}
    second_voice = {label_at(new_turns, (k + 0.5) * BLOCK) for k in (1, 3, 5, 7, 8, 9, 10, 11)}
    assert second_voice == {"SPEAKER_01"} and first_voice == {"SPEAKER_00"}


def test_one_voice_is_never_split_and_hints_bound_the_count(voices, encoder):
    from pipeline.speaker_split import SpeakerSplit

    a, b = voices
    for voice in (a, b):  # 24 s of one voice
        audio, turns = one_speaker(voice)
        assert SpeakerSplit()(audio, turns, turns, encoder) == (turns, turns)
    mixed, mixed_turns = one_speaker([a[0], b[0], a[1], b[1], a[2], b[2], a[3], b[3]])
    # a source already at max_speakers is not split, nor a part below min_speech
    assert SpeakerSplit()(mixed, mixed_turns, mixed_turns, encoder, max_speakers=1) == (mixed_turns, mixed_turns)
    assert SpeakerSplit(min_speech=13.0)(mixed, mixed_turns, mixed_turns, encoder) == (mixed_turns, mixed_turns)


def test_a_long_speaker_is_embedded_every_other_piece_first(voices, encoder):
    """Above ``sample_above`` pieces a speaker is embedded every other piece; the other half only
    when it splits, and then each of those pieces goes to its own voice's part."""
    from pipeline.speaker_split import SpeakerSplit

    a, b = voices
    audio, turns = one_speaker(a)  # 24 s of one voice: 16 pieces of 1.5 s
    counting = CountingEncoder(encoder)
    assert SpeakerSplit(sample_above=8)(audio, turns, turns, counting) == (turns, turns)
    assert counting.calls == 8  # every other piece, and no split: the rest never embedded
    counting.calls = 0
    assert SpeakerSplit(sample_above=16)(audio, turns, turns, counting) == (turns, turns)
    assert counting.calls == 16  # at or below the bound: every piece

    # both voices, 48 s in 3 s turns: 32 pieces, first 16 embedded, then, as it splits, the other 16
    blocks = [x for pair in zip(a, b) for x in pair]
    audio, turns = one_speaker(blocks)
    counting.calls = 0
    new_turns, _ = SpeakerSplit()(audio, turns, turns, counting)
    assert counting.calls == 32
    first = {label_at(new_turns, (k + 0.5) * BLOCK) for k in range(0, 16, 2)}
    second = {label_at(new_turns, (k + 0.5) * BLOCK) for k in range(1, 16, 2)}
    assert len(first) == 1 and len(second) == 1 and first != second


def test_a_part_under_min_speech_once_every_piece_is_placed_is_folded_back(voices, encoder):
    """18 turns of 1.5 s, two of them (turns 4 and 10) the second voice: embedded every other
    piece, each second-voice piece also counts for the unembedded piece after it, so the split
    sees 6 s of that voice and splits; once every piece has its part, the part holds 3 s, under
    ``min_speech``, and folds back: one speaker, as the diarizer gave it."""
    from pipeline.speaker_split import SpeakerSplit

    a, b = voices
    half = int(1.5 * RATE)
    a_halves = [x[k * half:(k + 1) * half] for x in a for k in (0, 1)]
    b_halves = [b[0][:half], b[1][:half]]
    order = ["b" if k in (4, 10) else "a" for k in range(18)]
    take = {"a": iter(a_halves), "b": iter(b_halves)}
    audio = np.concatenate([next(take[v]) for v in order])
    turns = [(k * 1.5, (k + 1) * 1.5, "SPEAKER_00") for k in range(18)]
    assert SpeakerSplit()(audio, turns, turns, encoder) == (turns, turns)
    # at min_speech 2 s the same 3 s part stands as a speaker: the second voice's two turns
    new_turns, _ = SpeakerSplit(min_speech=2.0)(audio, turns, turns, encoder)
    second = {label_at(new_turns, t) for t in (4 * 1.5 + 0.7, 10 * 1.5 + 0.7)}
    rest = {label_at(new_turns, k * 1.5 + 0.7) for k in range(18) if order[k] == "a"}
    assert len(second) == 1 and rest == {"SPEAKER_00"} and second != rest


def test_three_voices_split_twice_unless_max_speakers_says_two(voices, third_voice, encoder):
    """One diarized speaker holding three voices comes out as three (the split recurses), or as
    two where ``max_speakers=2`` leaves budget for one split only."""
    from pipeline.speaker_split import SpeakerSplit

    a, b = voices
    blocks = [x for trio in zip(a[:4], b[:4], third_voice) for x in trio]  # a b c a b c ..., 36 s
    audio, turns = one_speaker(blocks)
    new_turns, _ = SpeakerSplit()(audio, turns, turns, encoder)
    by_voice = {v: {label_at(new_turns, (k + 0.5) * BLOCK) for k in range(v, 12, 3)} for v in range(3)}
    assert all(len(labels) == 1 for labels in by_voice.values())
    assert len(set.union(*by_voice.values())) == 3
    new_turns, exclusive = SpeakerSplit()(audio, turns, turns, encoder, max_speakers=2)
    assert len({label for *_, label in exclusive}) == 2
    assert len({label for *_, label in new_turns}) == 2


def test_pieces_and_settings():
    from pipeline.speaker_split import SpeakerSplit

    pieces = SpeakerSplit(piece=2.0).pieces([(0.0, 5.0, "A"), (6.0, 7.5, "B")])
    assert [(round(s, 3), round(e, 3), x) for s, e, x in pieces] == [
        (0.0, 1.667, "A"), (1.667, 3.333, "A"), (3.333, 5.0, "A"), (6.0, 7.5, "B")]
    # a part that joined a found speaker may overlap that speaker's own turns: one turn there
    from pipeline.speaker_split import _merge_adjacent

    assert _merge_adjacent([(4.0, 5.0, "B"), (3.0, 6.0, "B"), (6.0, 7.0, "A"), (7.0, 8.0, "B")]) == [
        (3.0, 6.0, "B"), (6.0, 7.0, "A"), (7.0, 8.0, "B")]
    with pytest.raises(ValueError, match="cosine distance"):
        SpeakerSplit(distance=0.0)
    with pytest.raises(ValueError, match="min_piece"):
        SpeakerSplit(piece=0.5, min_piece=0.8)


def test_the_diarizer_splits_unless_told_the_count_or_not_to():
    from pipeline.config import ConfigError, IngestConfig
    from pipeline.diarize import Diarizer

    assert Diarizer(device="cpu").split.distance == 0.25  # CAM++'s, pipeline.diarizer_defaults
    assert Diarizer(device="cpu", num_speakers=2).split is None  # a given count is kept
    assert Diarizer(device="cpu", speaker_split=False).split is None
    assert Diarizer(device="cpu", split_distance=0.4, min_split_speech=6.0).split.min_speech == 6.0
    cfg = IngestConfig(inputs=["x"], output="o")
    assert cfg.resolved().split_distance == 0.25
    assert IngestConfig(inputs=["x"], output="o", speaker_encoder="resemblyzer").resolved().split_distance is None
    with pytest.raises(ConfigError, match="split_distance"):
        IngestConfig(inputs=["x"], output="o", split_distance=2.5)
    with pytest.raises(ConfigError, match="min_split_speech"):
        IngestConfig(inputs=["x"], output="o", min_split_speech=0)


def test_a_small_part_folds_into_the_nearest_and_the_speaker_keeps_its_label():
    """``_fold_small`` on unit vectors laid out by hand: a 2 s part joins the part whose centroid is
    nearest, not the larger one; where the folded part is the speaker's own, the label stays."""
    from pipeline.speaker_split import SpeakerSplit

    pieces = [(float(k), k + 1.0, "S") for k in range(12)]
    x, y, z = np.eye(3)
    near_y = (y + 0.2 * x) / np.linalg.norm(y + 0.2 * x)
    vectors = {i: v for i, v in enumerate([x] * 6 + [y] * 4 + [near_y] * 2)}
    parts = {i: p for i, p in enumerate(["S"] * 6 + ["S+1"] * 4 + ["S+2"] * 2)}
    out = SpeakerSplit()._fold_small(parts, list(range(12)), pieces, vectors, "S")
    assert [out[i] for i in range(12)] == ["S"] * 6 + ["S+1"] * 6
    # the speaker's own part is the small one: its pieces and the part they join carry "S"
    parts = {i: p for i, p in enumerate(["S+1"] * 6 + ["S+2"] * 4 + ["S"] * 2)}
    out = SpeakerSplit()._fold_small(parts, list(range(12)), pieces, vectors, "S")
    assert [out[i] for i in range(12)] == ["S+1"] * 6 + ["S"] * 6
