"""Sequences, prompts, silence weights, packing and sharding, on token shards made from real speech."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from model.config import FRAME_RATE, DataConfig
from model.packing import Packer
from model.sequence import EOA, IGNORE, Prompt, SequenceBuilder, Specials, speech_mask
from model.text_tokenizer import ByteTokenizer
from model.token_stream import PackedTokenStream, PromptPicker, list_shards, read_shard, split_train_eval


@pytest.fixture(scope="module")
def samples(token_dir):
    return [s for shard in list_shards(token_dir) for s in read_shard(shard)]


def test_shards_hold_real_tokens(samples):
    assert len(samples) == 10
    for s in samples:
        assert s.semantic.ndim == 1 and s.acoustic.shape == (s.n_frames, 36)
        assert 0 <= s.semantic.min() and s.semantic.max() < 8192
        assert 0 <= s.acoustic.min() and s.acoustic.max() <= 20
        assert s.text and s.words
    by_speaker = {}
    for s in samples:
        by_speaker.setdefault(s.speaker, []).append(s)
    assert max(len(v) for v in by_speaker.values()) >= 2, "need a speaker with two segments for voice prompts"


def test_sequence_layout_and_targets(samples):
    cfg = DataConfig(seq_len=1024)
    tok = ByteTokenizer()
    b = SequenceBuilder(tok, cfg)
    s, other = samples[1], samples[0]
    prompt = Prompt(other.semantic[:40], other.acoustic[:40], "other")
    seq = b.build(s, prompt)
    sp = Specials(256)
    text_ids = tok.encode(s.text)
    P, N, T = 40, len(text_ids), s.n_frames
    assert len(seq) == 4 + P + N + T
    assert seq.text[0] == sp.bos and seq.text[1] == sp.prompt and seq.text[2 + P] == sp.text
    assert list(seq.text[3 + P : 3 + P + N]) == text_ids
    a0 = 3 + P + N
    assert seq.text[a0] == sp.audio
    np.testing.assert_array_equal(seq.semantic[2 : 2 + P], other.semantic[:40])
    np.testing.assert_array_equal(seq.semantic[a0 + 1 :], s.semantic)
    assert seq.is_audio.sum() == P + T
    # AUDIO predicts frame 0, frame k predicts k+1, the last frame predicts end-of-audio.
    np.testing.assert_array_equal(seq.sem_target[a0 : a0 + T], s.semantic)
    np.testing.assert_array_equal(seq.ac_target[a0 : a0 + T], s.acoustic)
    assert seq.sem_target[a0 + T] == EOA and not seq.ac_valid[a0 + T]
    assert (seq.sem_target[:a0] == IGNORE).all() and (seq.weight[:a0] == 0).all()


def test_silence_weight_uses_source_relative_word_times(samples):
    # The second half of the cut LibriSpeech file starts at a non-zero time in its source.
    s = next(x for x in samples if x.start > 0)
    mask = speech_mask(s, margin_s=0.0)
    first = s.words[0]
    f_in = int(((first["start"] + first["end"]) / 2 - s.start) * FRAME_RATE)
    assert mask[f_in], "a frame inside the first word must count as speech"
    # Ignoring `start` would put every word past the segment's end: no speech at all.
    shifted = dataclasses.replace(s, meta={**s.meta, "start": 0.0})
    assert speech_mask(shifted, 0.0).sum() < mask.sum()
    cfg = DataConfig(silence_weight=0.25, silence_margin_s=0.0)
    seq = SequenceBuilder(ByteTokenizer(), cfg).build(s, Prompt.none())
    w = seq.weight[seq.ac_valid]
    np.testing.assert_allclose(w, np.where(mask, 1.0, 0.25))
    assert (w == 0.25).any() and (w == 1.0).any()


def test_prompt_from_other_segment_or_self_prefix(samples):
    cfg = DataConfig(p_no_prompt=0.0, prompt_min_s=1.0)
    picker = PromptPicker(cfg, random.Random(0))
    lib = [s for s in samples if s.speaker.startswith("librivox")]
    # First segment of a speaker: a prefix of itself, cut at a word boundary; text = the rest.
    prompt, text, start = picker.pick(lib[0])
    assert prompt.source == "self" and start == len(prompt.semantic) > 0
    np.testing.assert_array_equal(prompt.semantic, lib[0].semantic[:start])
    assert text and lib[0].text.endswith(text.split()[-1]) and len(text) < len(lib[0].text)
    # Second segment of the same speaker: a crop of the first one.
    prompt, text, start = picker.pick(lib[1])
    assert prompt.source == "other" and text is None and start == 0
    joined = lib[0].semantic.tobytes()
    assert prompt.semantic.tobytes() in joined
    assert len(prompt.semantic) >= min(lib[0].n_frames, int(cfg.prompt_min_s * FRAME_RATE))


def test_packing_fills_rows_and_separates_documents(samples):
    cfg = DataConfig(seq_len=512, batch_size=2)
    b = SequenceBuilder(ByteTokenizer(), cfg)
    seqs = [b.build(s, Prompt.none()) for s in samples[:8]]
    batches = list(Packer(512, 2, b.sp.pad, buffer=4).pack(seqs))
    total = sum(len(s) for s in seqs)
    assert sum(int(x["n_tokens"]) for x in batches) == total
    x = batches[0]
    for row in range(x["doc_ids"].shape[0]):
        d = x["doc_ids"][row]
        for doc in d[d >= 0].unique():
            pos = x["positions"][row][d == doc]
            assert pos.tolist() == list(range(len(pos))), "positions restart at 0 in every document"
    # Fewer rows than sequences: packing did put several documents in one row.
    assert sum(x["doc_ids"].shape[0] for x in batches) < len(seqs)


def _keys(stream, epoch=0):
    return [s.key for s in stream.samples(epoch)]


@pytest.mark.parametrize("shards", ["one", "two"])
@pytest.mark.parametrize("world,workers", [(2, 1), (3, 1), (1, 2), (2, 2)])
def test_ranks_and_workers_partition_the_data_without_duplicates(token_dir, world, workers, shards):
    # One shard: the sample-level split; two shards with 2 consumers: the shard-level split.
    pool = list_shards(token_dir)[:1] if shards == "one" else list_shards(token_dir)
    cfg = DataConfig(shuffle_buffer=4)
    all_keys = [s.key for sh in pool for s in read_shard(sh)]
    seen = []
    for rank in range(world):
        for w in range(workers):
            st = PackedTokenStream(pool, ByteTokenizer(), cfg, rank, world)
            st.worker_override = (w, workers)
            mine = _keys(st)
            assert mine, f"rank {rank} worker {w} got nothing"
            seen += mine
    assert sorted(seen) == sorted(all_keys)


def test_shuffle_changes_with_epoch_and_is_reproducible(token_dir):
    train, _ = split_train_eval(list_shards(token_dir), 1)
    st = PackedTokenStream(train, ByteTokenizer(), DataConfig(shuffle_buffer=8, seed=3))
    assert _keys(st, 0) == _keys(st, 0)
    assert sorted(_keys(st, 0)) == sorted(_keys(st, 1))
    assert any(_keys(st, e) != _keys(st, 0) for e in range(1, 5))


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resume_skips_to_the_same_batches(token_dir, workers):
    import torch

    from model.loader import ResumableLoader

    train, _ = split_train_eval(list_shards(token_dir), 1)
    cfg = DataConfig(seq_len=256, batch_size=1, shuffle_buffer=4, pack_buffer=2)

    def loader():
        return ResumableLoader(PackedTokenStream(train, ByteTokenizer(), cfg), num_workers=workers)

    first = loader()
    batches = [next(first) for _ in range(8)]
    state = first.state_dict()
    assert state["consumed"] == 8
    later = [next(first) for _ in range(3)]
    for n in (3, 8):  # an odd count exercises the per-worker share of the skip
        resumed = loader()
        resumed.load_state_dict({**state, "consumed": n})
        want = (batches + later)[n : n + 3]
        for a, b in zip(want, [next(resumed) for _ in range(3)]):
            assert a.keys() == b.keys()
            for k in a:
                assert torch.equal(a[k], b[k]), k
        assert resumed.consumed == n + 3


def test_shards_of_two_codecs_do_not_mix(token_dir, tmp_path):
    import io
    import json
    import tarfile

    from model.token_stream import TokenShardError, codec_id_of, list_shards

    shards = list_shards(token_dir)
    other = tmp_path / "other" / "000009.tar"
    other.parent.mkdir()
    with tarfile.open(shards[0]) as src, tarfile.open(other, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name.endswith(".json"):
                data = json.dumps({**json.loads(data), "codec_id": "tiny-000000000000"}).encode()
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    assert codec_id_of(shards) == token_dir.name
    with pytest.raises(TokenShardError, match="different codecs"):
        codec_id_of([*shards, other])


def _many_shards(token_dir, dest, n_shards=12, per_shard=4):
    """The real training samples re-dealt into many small shards (keys made unique per copy)."""
    import io
    import json
    import tarfile

    from model.token_stream import _raw_samples

    train, _ = split_train_eval(list_shards(token_dir), 1)
    raw = [r for sh in train for r in _raw_samples(sh)]
    dest.mkdir()
    for s in range(n_shards):
        with tarfile.open(dest / f"{s:06d}.tar", "w") as tar:
            for k in range(per_shard):
                r = raw[(s * per_shard + k) % len(raw)]
                key = f"{r['__key__']}c{s:03d}{k}"
                meta = dict(json.loads(r["json"]), key=key)
                for name, data in ((f"{key}.tokens.npz", r["tokens.npz"]), (f"{key}.json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return list_shards(dest)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_cost_does_not_grow_with_the_step(token_dir, tmp_path, workers):
    """A saved stream position resumes EXACTLY, by opening one shard: the samples decoded before the
    first batch after resume stay within one shard's worth whether the run stopped at batch N or 3N
    (the replay it replaces decodes everything consumed so far, and that is checked too)."""
    import json

    import torch

    from model.loader import ResumableLoader

    per_shard, n = 4, 8
    shards = _many_shards(token_dir, tmp_path / "tok", per_shard=per_shard)
    cfg = DataConfig(seq_len=256, batch_size=1, shuffle_buffer=3, pack_buffer=2)

    def loader():
        ld = ResumableLoader(PackedTokenStream(shards, ByteTokenizer(), cfg), num_workers=workers)
        ld.plan_snapshots(every=n)
        return ld

    first = loader()
    batches, saved = [], {}
    for i in range(1, 3 * n + 4):
        batches.append(next(first))
        if i in (n, 3 * n):
            saved[i] = (first.state_dict(), first.state_arrays())
    assert all("workers" in st for st, _ in saved.values()), "no stream snapshot was saved"
    cost = {}
    for at, (state, arrays) in saved.items():
        resumed = loader()
        resumed.load_state_dict(json.loads(json.dumps(state)), arrays)  # JSON as read from state.json
        got = [next(resumed)]
        if workers == 0:  # decoded before the first batch after resume
            cost[at] = resumed.stream.last_consumer.decoded
        got += [next(resumed) for _ in range(2)]
        for a, b in zip(batches[at : at + 3], got):
            assert a.keys() == b.keys()
            for k in a:
                assert torch.equal(a[k], b[k]), (at, k)
    if workers == 0:
        assert max(cost.values()) <= per_shard, cost
        replay = {}
        for at, (state, _) in saved.items():
            again = loader()
            again.load_state_dict({k: v for k, v in state.items() if k != "workers"})
            next(again)
            replay[at] = again.stream.last_consumer.decoded
        assert replay[3 * n] > replay[n] > per_shard, replay  # what the snapshot saves


def test_loader_workers_start_from_a_forkserver_and_stop_on_close(token_dir):
    """Workers are not forked from the trainer's process (whose thread pools can crash a forked
    child: a worker died of SIGSEGV in the full suite), and close() stops them at once."""
    import multiprocessing.context

    from model.loader import ResumableLoader

    train, _ = split_train_eval(list_shards(token_dir), 1)
    ld = ResumableLoader(PackedTokenStream(train, ByteTokenizer(), DataConfig(seq_len=256, batch_size=1)),
                         num_workers=2)
    next(ld)
    workers = list(ld._it._workers)
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    assert all(isinstance(w, multiprocessing.context.ForkServerProcess) for w in workers)
    ld.close()
    assert not any(w.is_alive() for w in workers)
    ld.close()  # closing twice is harmless
