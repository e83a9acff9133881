"""Special files (named pipes, devices) in the input never hang the ingest: discovery takes regular
files only (after links); one given explicitly gets a ``not_a_file`` row; hashing never blocks."""

from __future__ import annotations

import os
import shutil
import threading

import pytest

from pipeline.config import IngestConfig
from pipeline.discover import discover
from pipeline.stages import HashAndDecode

FILE = "lhotse/test/fixtures/mix_cut_test/audio/storage/2412-153948-0000.flac"


@pytest.fixture
def corpus(tmp_path, speech_dir):
    d = tmp_path / "corpus"
    d.mkdir()
    shutil.copy(speech_dir / FILE, d / "real.flac")
    os.mkfifo(d / "pipe.flac")  # a FIFO with an audio name: opening it to read blocks until a writer comes
    os.symlink(d / "pipe.flac", d / "link_to_pipe.wav")
    os.symlink(d / "real.flac", d / "link_to_real.flac")
    yield d
    _unblock(d / "pipe.flac")


def _unblock(fifo) -> None:
    """Release a reader that today's code may have left blocked on the FIFO."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass  # no reader waiting


def _hash_with_deadline(path: str, tmp_path, seconds: float = 30.0) -> dict:
    cfg = IngestConfig(inputs=["x"], output=str(tmp_path), vad="silero", diarization="none")
    stage = HashAndDecode(cfg)
    out: dict = {}

    def work():
        b = stage({"path": [path], "status": ["ok"], "error": [None]})
        out.update({k: v[0] for k, v in b.items()})

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"hashing {path} still blocked after {seconds} s"
    return out


def test_a_directory_walk_takes_regular_files_only(corpus):
    found = {os.path.basename(p) for p in discover([str(corpus)])}
    assert found == {"real.flac", "link_to_real.flac"}


def test_special_files_given_explicitly_are_kept_for_a_row(corpus, tmp_path):
    lst = tmp_path / "files.txt"
    lst.write_text(f"{corpus / 'pipe.flac'}\n/dev/zero\n{corpus / 'real.flac'}\n")
    found = discover([str(lst), str(corpus / "link_to_pipe.wav")])
    assert set(found) == {str(corpus / "pipe.flac"), "/dev/zero", str(corpus / "real.flac"),
                          str(corpus / "link_to_pipe.wav")}


@pytest.mark.parametrize("name", ["pipe.flac", "link_to_pipe.wav", "/dev/zero"])
def test_hashing_a_special_file_rejects_it_without_blocking(corpus, tmp_path, name):
    path = name if name.startswith("/") else str(corpus / name)
    row = _hash_with_deadline(path, tmp_path)
    assert row["status"] == "rejected"
    assert row["error"].startswith(f"not_a_file: {path}: "), row["error"]
    assert row.get("bytes") is None and row.get("source_id") is None


def test_a_regular_file_still_hashes_and_decodes(corpus, tmp_path):
    row = _hash_with_deadline(str(corpus / "link_to_real.flac"), tmp_path, 120)
    assert row["status"] == "ok", row.get("error")
    assert row["bytes"] == (corpus / "real.flac").stat().st_size and len(row["source_id"]) == 16


def test_a_glob_takes_regular_files_only(corpus):
    found = {os.path.basename(p) for p in discover([str(corpus / "*")])}
    assert found == {"real.flac", "link_to_real.flac"}


def test_a_rejected_special_file_is_not_redone_by_every_rerun(corpus):
    from pipeline.job import _unchanged

    fifo = str(corpus / "pipe.flac")
    assert _unchanged(fifo, {fifo: None})  # committed as not_a_file (bytes None), still a FIFO
    assert _unchanged("/dev/zero", {"/dev/zero": None})
    os.unlink(fifo)
    (corpus / "pipe.flac").write_bytes(b"now a file")
    assert not _unchanged(fifo, {fifo: None})  # a regular file now: redone
