import numpy as np
import pytest

from codec.audio_stream import AudioCropStream, AudioSourceError, list_containers


def _take(stream, n):
    return [next(stream) for _ in range(n)]


def test_shards_give_frame_aligned_crops(audio_shards):
    kind, shards = list_containers(audio_shards)
    assert kind == "tar" and len(shards) == 3
    s = AudioCropStream(audio_shards, crop_samples=1920 * 12, shuffle_buffer=3, seed=1)
    crops = _take(s, 12)
    assert all(c.audio.shape == (1920 * 12,) and c.audio.dtype == np.float32 for c in crops)
    assert len({c.key for c in crops}) == 5  # every utterance of every shard is visited
    assert all(0 < c.length <= 1920 * 12 for c in crops)
    assert max(np.abs(c.audio).max() for c in crops) > 0.05  # real audio, not silence


def test_resume_continues_the_same_stream(audio_shards):
    a = AudioCropStream(audio_shards, crop_samples=1920 * 6, shuffle_buffer=3, seed=3)
    _take(a, 7)
    state = a.state_dict()
    expected = _take(a, 9)
    b = AudioCropStream(audio_shards, crop_samples=1920 * 6, shuffle_buffer=3, seed=3)
    b.load_state_dict(state)
    got = _take(b, 9)
    assert [c.key for c in got] == [c.key for c in expected]
    assert all(np.array_equal(x.audio, y.audio) for x, y in zip(got, expected))


def test_folder_of_audio_files(audio_files_dir):
    s = AudioCropStream(audio_files_dir, crop_samples=1920 * 5, shuffle_buffer=2)
    assert s.kind == "files"
    assert len({c.key for c in _take(s, 15)}) == 5


def test_ranks_split_the_shards(audio_shards):
    keys = []
    for rank in (0, 1):
        s = AudioCropStream(audio_shards, 1920 * 4, shuffle_buffer=1, seed=0, rank=rank, world_size=2)
        keys.append({c.key for c in _take(s, 10)})
    assert keys[0] and keys[1] and not keys[0] & keys[1]


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(AudioSourceError, match="no such file"):
        AudioCropStream(tmp_path / "nope", 1920)
    with pytest.raises(AudioSourceError, match="no \\*.tar shards"):
        AudioCropStream(tmp_path, 1920)
