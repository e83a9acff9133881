from __future__ import annotations

import numpy as np
import pytest

from pipeline.transcribe import Transcript
from pipeline.utterances import assign_speakers, build_utterances


def w(word, start, end, speaker="A", overlap=False):
    return {"word": word, "start": start, "end": end, "score": 0.9, "speaker": speaker, "overlap": overlap}


def test_split_at_speaker_change_and_long_pause():
    words = [w("a", 0.0, 0.5), w("b", 0.6, 1.2), w("c", 1.3, 2.0, "B"), w("d", 2.1, 3.0, "B"),
             w("e", 5.0, 5.5, "B"), w("f", 5.6, 6.4, "B")]
    utts = build_utterances(words, max_pause=0.8, min_duration=0.5, edge_pad=0.1)
    assert [u.text for u in utts] == ["a b", "c d", "e f"]
    assert [u.speaker for u in utts] == ["A", "B", "B"]


def test_boundaries_never_cut_a_word_and_pads_stay_out_of_neighbours():
    words = [w("x", 0.0, 1.0), w("y", 1.05, 2.0, "B")]
    utts = build_utterances(words, edge_pad=0.2, min_duration=0.5)
    for u in utts:
        for word in u.words:
            assert u.start <= word["start"] and word["end"] <= u.end
    assert utts[0].end <= utts[1].start  # no overlap between consecutive utterances


def test_long_runs_are_cut_at_the_longest_inner_pause():
    # 40 s of one speaker with short pauses; the longest (0.6 s) is after word 19
    words, t = [], 0.0
    for i in range(40):
        words.append(w(f"w{i}", t, t + 0.8))
        t += 0.8 + (0.6 if i == 19 else 0.2)
    utts = build_utterances(words, max_pause=0.8, max_duration=30.0, min_duration=1.0, edge_pad=0.0)
    assert len(utts) == 2
    assert utts[0].words[-1]["word"] == "w19" and utts[1].words[0]["word"] == "w20"
    assert all(u.duration <= 30.0 for u in utts)


def test_short_pieces_merge_with_same_speaker_neighbour():
    words = [w("hi", 0.0, 0.3), w("there", 1.2, 1.6), w("friend", 1.7, 2.4)]
    utts = build_utterances(words, max_pause=0.8, min_duration=1.0, edge_pad=0.0)
    assert [u.text for u in utts] == ["hi there friend"]


def test_overlapped_words_form_their_own_marked_utterance():
    words = [w("a", 0.0, 0.5), w("b", 0.6, 1.0, overlap=True), w("c", 1.1, 1.5, overlap=True), w("d", 1.6, 2.5)]
    utts = build_utterances(words, min_duration=0.1, edge_pad=0.0)
    assert [(u.text, u.overlap) for u in utts] == [("a", False), ("b c", True), ("d", False)]


def test_assign_speakers_by_largest_overlap_and_flags_overlap():
    turns = [(0.0, 2.0, "S0"), (1.5, 4.0, "S1")]
    exclusive = [(0.0, 1.75, "S0"), (1.75, 4.0, "S1")]
    words = [{"word": "a", "start": 0.2, "end": 0.8, "score": 1.0},
             {"word": "b", "start": 1.5, "end": 2.0, "score": 1.0},
             {"word": "c", "start": 3.0, "end": 3.5, "score": 1.0},
             {"word": "d", "start": 5.0, "end": 5.5, "score": 1.0}]
    out = assign_speakers(words, turns, exclusive)
    assert [x["speaker"] for x in out] == ["S0", "S0", "S1", "S1"]
    assert [x["overlap"] for x in out] == [False, True, False, False]


def test_no_utterance_spans_a_diarized_speaker_change_without_words():
    from pipeline.utterances import speaker_purity

    # A speaks, B answers with a backchannel that ASR missed (no words), A goes on: two utterances
    words = [w("one", 0.0, 0.4), w("two", 0.5, 0.9), w("three", 1.5, 1.9), w("four", 2.0, 2.4)]
    turns = [(0.0, 0.95, "A"), (1.0, 1.4, "B"), (1.45, 2.5, "A")]
    utts = build_utterances(words, max_pause=0.8, min_duration=0.1, turns=turns)
    assert [u.text for u in utts] == ["one two", "three four"]
    # without the diarizer's turns the pause alone (0.6 s) would not split
    assert len(build_utterances(words, max_pause=0.8, min_duration=0.1)) == 1
    # a turn edge that strays by frame rounding does not split
    assert len(build_utterances(words, max_pause=0.8, min_duration=0.1,
                                turns=[(0.0, 0.95, "A"), (0.95, 0.98, "B"), (0.98, 2.5, "A")])) == 1
    assert speaker_purity(turns, 0.0, 2.5, "A") == pytest.approx((0.95 + 1.05) / (0.95 + 1.05 + 0.4))
    assert speaker_purity(turns, 3.0, 4.0, "A") is None


def test_mixed_speakers_is_a_drop_reason():
    from pipeline.config import IngestConfig
    from pipeline.quality import drop_reason

    cfg = IngestConfig(inputs=["x"], output="x")
    seg = {"text": "hello there", "overlap": False, "duration": 2.0,
           "asr": {"avg_logprob": -0.2, "no_speech_prob": 0.1, "compression_ratio": 1.2},
           "quality": {"snr_db": 30.0, "clipping_ratio": 0.0, "speech_rate_cps": 10.0, "speaker_purity": 0.7}}
    assert drop_reason(seg, cfg) == "mixed_speakers"
    seg["quality"]["speaker_purity"] = 0.95
    assert drop_reason(seg, cfg) is None
    seg["quality"]["speaker_purity"] = None  # no diarization: nothing to check against
    assert drop_reason(seg, cfg) is None


def test_diarized_speech_without_words_becomes_wordless_utterances():
    from pipeline.utterances import untranscribed_turns

    words = [w("one", 0.0, 0.4), w("two", 0.5, 0.9)]
    utts = build_utterances(words, min_duration=0.1, edge_pad=0.0)
    exclusive = [(0.0, 0.9, "A"), (1.0, 1.6, "B"), (1.8, 2.3, "B"), (3.0, 3.1, "A"), (5.0, 6.0, "A")]
    extra = untranscribed_turns(exclusive, utts, max_pause=0.8, min_duration=0.2)
    # B's two turns joined across a 0.2 s pause; A's 0.1 s turn too short; A's later turn kept
    assert [(u.start, u.end, u.speaker, u.text) for u in extra] == [(1.0, 2.3, "B", ""), (5.0, 6.0, "A", "")]
    # the part of a turn that an utterance covers is not repeated
    assert untranscribed_turns([(0.0, 0.9, "A")], utts) == []


def test_a_voice_heard_under_another_gets_its_own_overlap_rows():
    from pipeline.config import IngestConfig
    from pipeline.quality import drop_reason
    from pipeline.utterances import overlapped_turns

    words = [w("one", 0.0, 0.4), w("two", 0.5, 0.9), w("three", 1.0, 2.0)]
    utts = build_utterances(words, min_duration=0.1, edge_pad=0.0)
    # B talks under A from 0.3 to 1.2 s (a backchannel) and 1.3-1.4 s (too short); A's own
    # turn is covered by A's utterance, so A gets no extra row
    turns = [(0.0, 2.0, "A"), (0.3, 1.2, "B"), (1.3, 1.4, "B")]
    extra = overlapped_turns(turns, utts, max_pause=0.05, min_duration=0.2)
    assert [(u.start, u.end, u.speaker, u.overlap, u.text) for u in extra] == [(0.3, 1.2, "B", True, "")]
    # such a row is dropped as overlap, not as no_text
    seg = {"text": "", "overlap": True, "duration": 0.9, "asr": {}, "quality": {}}
    assert drop_reason(seg, IngestConfig(inputs=["x"], output="x")) == "overlap"
    assert drop_reason({**seg, "overlap": False}, IngestConfig(inputs=["x"], output="x")) == "no_text"
    # a speaker's turn that its own utterances cover gives nothing
    assert overlapped_turns([(0.0, 2.0, "A")], utts) == []


def test_word_times_are_fitted_to_the_voice_activity():
    from pipeline.utterances import fit_words_to_speech

    speech = [(0.0, 1.0), (1.15, 1.25), (1.5, 3.0), (6.0, 7.0), (9.0, 20.0)]
    words = [{"word": "one", "start": 0.2, "end": 0.6},
             # Whisper's last word before a pause, stretched 1.4 s into the silence after it
             {"word": "link.", "start": 2.5, "end": 4.4},
             # a first word whose start was pulled back into the silence before it
             {"word": "If", "start": 5.2, "end": 6.3},
             # a word across pauses of 0.15 s (a stop's closure) keeps the regions on both sides
             {"word": "stop", "start": 0.9, "end": 1.25},
             # a word across a pause of more than 0.2 s: the stretch it overlaps most (1.5 s of it
             # lies in 1.4-3.1, 0.15 s in -0.1-1.35)
             {"word": "across", "start": 1.2, "end": 2.9},
             # a word where the VAD heard nothing keeps its times: nothing to fit it to
             {"word": "faint", "start": 4.6, "end": 5.0},
             # inside one long region, a word stretched over 3 s is cut to 1.5 s from its start
             {"word": "very", "start": 10.0, "end": 13.0}]
    out = fit_words_to_speech(words, speech, tolerance=0.1)
    assert [(x["word"], round(x["start"], 3), round(x["end"], 3)) for x in out] == [
        ("one", 0.2, 0.6), ("link.", 2.5, 3.1), ("If", 5.9, 6.3), ("stop", 0.9, 1.25), ("across", 1.4, 2.9),
        ("faint", 4.6, 5.0), ("very", 10.0, 11.5)]
    assert out[1]["word"] == "link." and "score" not in out[1]  # other fields pass through untouched
    # the earlier stretch where it holds more of the word, and where both hold the same
    two = [(0.0, 1.0), (1.5, 2.4)]
    assert [(round(x["start"], 3), round(x["end"], 3)) for x in fit_words_to_speech(
        [{"word": "a", "start": 0.2, "end": 1.6}, {"word": "b", "start": 0.6, "end": 1.9}], two)] == [
        (0.2, 1.1), (0.6, 1.1)]
    # no limit asked for, no speech to fit to: the times as they came
    assert fit_words_to_speech(words, [], max_word=None) == words
    assert [x["end"] for x in fit_words_to_speech(words, [])][1:3] == [4.0, 6.3]  # the limit still holds


def test_a_backchannel_over_a_quarter_of_a_word_flags_it_as_overlapped():
    # B says "mm" for 0.15 s under A's 0.5 s word: 30 % of it, below the half that used to count
    turns = [(0.0, 3.0, "A"), (1.2, 1.35, "B")]
    exclusive = [(0.0, 3.0, "A")]
    words = [{"word": "so", "start": 0.2, "end": 0.6, "score": 1.0},
             {"word": "then", "start": 1.0, "end": 1.5, "score": 1.0},
             {"word": "we", "start": 1.6, "end": 2.0, "score": 1.0}]
    out = assign_speakers(words, turns, exclusive)
    assert [x["overlap"] for x in out] == [False, True, False]
    assert [x["overlap"] for x in assign_speakers(words, turns, exclusive, min_overlap=0.5)] == [False] * 3
    # the same from the overlap regions the segmentation model detected, with no second turn
    out = assign_speakers(words, [(0.0, 3.0, "A")], exclusive, overlap=[(1.3, 1.45)])
    assert [x["overlap"] for x in out] == [False, True, False]
    # and the utterances split around that word: A's speech on both sides is kept apart from it
    utts = build_utterances(assign_speakers(words, turns, exclusive), min_duration=0.1, edge_pad=0.0)
    assert [(u.text, u.overlap) for u in utts] == [("so", False), ("then", True), ("we", False)]


def test_a_sentence_end_before_a_pause_ends_the_utterance():
    """AMI dev00 24.4-30 s, the words as tiny.en gives them: one diarized voice, sentences 0.12 to
    0.38 s apart (below max_pause), spoken by two people in turn (MEE009, MEE012, MEE009)."""
    words = [w("And", 24.38, 24.60), w("he's", 24.60, 24.82), w("Ed.", 24.82, 25.12),
             w("And", 25.24, 25.24), w("you're", 25.24, 25.48), w("all", 25.48, 25.68), w("his.", 25.68, 26.18),
             w("I'm", 26.42, 26.82), w("the", 26.82, 27.46), w("marketing", 27.46, 27.68),
             w("expert.", 27.68, 28.22), w("You're", 28.60, 28.82), w("the", 28.82, 28.90),
             w("marketing", 28.90, 29.22), w("expert,", 29.22, 29.62), w("OK?", 29.62, 29.98)]
    whole = build_utterances(words, max_pause=0.5, min_duration=1.0, edge_pad=0.1)
    assert [u.text for u in whole] == [" ".join(x["word"] for x in words)]
    utts = build_utterances(words, max_pause=0.5, min_duration=1.0, edge_pad=0.1, sentence_pause=0.1)
    assert [u.text for u in utts] == ["And he's Ed.", "And you're all his.", "I'm the marketing expert.",
                                      "You're the marketing expert, OK?"]
    # a comma is no sentence end; a full stop with no pause after it (an abbreviation) splits nothing
    assert len(build_utterances([w("Well,", 0.0, 0.4), w("yes", 0.7, 1.2)], sentence_pause=0.1,
                                min_duration=0.1)) == 1
    assert len(build_utterances([w("Mr.", 0.0, 0.4), w("Smith", 0.45, 1.2)], sentence_pause=0.1,
                                min_duration=0.1)) == 1


def test_a_short_sentence_is_not_merged_back_across_its_end():
    """Short pieces join a same-speaker neighbour, but not across a sentence's end: "No." and
    the next sentence are often two voices."""
    words = [w("No.", 0.0, 0.4), w("Put", 0.8, 1.0), w("it", 1.0, 1.2), w("there", 1.2, 1.8)]
    assert [u.text for u in build_utterances(words, max_pause=0.5, min_duration=1.0)] == ["No. Put it there"]
    assert [u.text for u in build_utterances(words, max_pause=0.5, min_duration=1.0, sentence_pause=0.1)] == \
        ["No.", "Put it there"]


def test_sentence_pause_is_validated_and_turned_off_at_max_pause(monkeypatch):
    from pipeline import assemble
    from pipeline.config import ConfigError, IngestConfig

    with pytest.raises(ConfigError, match="sentence_pause"):
        IngestConfig(inputs=["x"], output="x", sentence_pause=-0.1)
    seen = []
    monkeypatch.setattr(assemble, "build_utterances", lambda words, **kw: seen.append(kw["sentence_pause"]) or [])
    for value in (0.1, 0.5, 0.9):
        cfg = IngestConfig(inputs=["x"], output="x", max_pause=0.5, sentence_pause=value)
        assemble.Assembler(cfg)({"source_id": "s", "path": "p"}, np.zeros(16000, np.float32),
                                np.zeros(24000, np.float32), Transcript("en", 1.0, []), None, [])
    assert seen == [0.1, None, None]
