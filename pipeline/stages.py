"""The ingest's stages in their batch form: ``__init__`` loads models once, ``__call__``
maps a batch (dict of column lists, one entry per source) to a batch.

A row that failed earlier (``status != "ok"``) passes through untouched. A typed
``SourceError`` rejects the source; any other exception marks it ``failed`` with the
error, and the run goes on. None of this knows about Ray (see ``pipeline.ray_adapter``).
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
import traceback

from manifests.fault_hooks import hold_until_released
from pipeline.config import AUDIO_EXTENSIONS, IngestConfig
from pipeline.errors import NotAFile, SourceError, StageFailure, Unreadable

Batch = dict[str, list]


def source_id_of(path: str, chunk: int = 1 << 20) -> str:
    """First 16 hex chars of the SHA-256 of the file's bytes (DESIGN §3). Raises ``NotAFile``
    for anything but a regular file (after links), without blocking: the file is opened
    non-blocking (a FIFO without a writer would block a plain open forever) and checked with
    ``fstat`` on that descriptor, so a path swapped after a check cannot slip through."""
    return _hash_regular(path, chunk)[0]


def _hash_regular(path: str, chunk: int = 1 << 20) -> tuple[str, int]:
    """(source_id, size in bytes) of a regular file; see :func:`source_id_of`."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a named pipe" if stat.S_ISFIFO(st.st_mode) else "a character device" if stat.S_ISCHR(st.st_mode)
                    else "a block device" if stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                    else "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file")
            raise NotAFile(path, f"{kind}, not a regular file: not read")
        h = hashlib.sha256()
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()[:16], st.st_size


def _stage_fault(stage: str, path: str) -> None:
    """Fault injection for tests: ``VOXFORGE_STAGE_FAULT=STAGE:NAME[:MODE][,...]`` hits stage
    ``STAGE`` for every source whose file name is ``NAME``. MODE ``raise`` (the default) raises an
    unexpected error (the source ends ``failed``, the actor lives on); ``exit`` ends the actor's
    process with ``os._exit`` on every attempt (a crash Ray sees as a dead actor); ``exit_once``
    does that only on the first attempt, remembered by a marker file in
    ``$VOXFORGE_STAGE_FAULT_DIR`` (a directory every node can see), where ``exit`` counts its
    attempts (``<stage>-<hash>.attempts``); ``hold`` writes this process's pid to
    ``held-<stage>-<name>`` there and waits until a file ``release`` appears (a test removes the
    node under a batch in flight, at a known point)."""
    spec = os.environ.get("VOXFORGE_STAGE_FAULT")
    if not spec:
        return
    name = os.path.basename(path)
    for one in spec.split(","):
        st, _, rest = one.partition(":")
        target, _, mode = rest.partition(":")
        if st != stage or target != name:
            continue
        mode = mode or "raise"
        if mode == "raise":
            raise RuntimeError(f"injected fault ({one})")
        marker_dir = os.environ.get("VOXFORGE_STAGE_FAULT_DIR")
        if mode in ("exit_once", "hold") and not marker_dir:
            raise RuntimeError(f"VOXFORGE_STAGE_FAULT mode {mode} needs VOXFORGE_STAGE_FAULT_DIR (a marker directory)")
        marker = os.path.join(marker_dir or "", f"{stage}-{hashlib.sha256(path.encode()).hexdigest()[:16]}")
        if mode == "exit_once":
            try:  # O_EXCL: exactly one attempt creates it, and only that one dies
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            os._exit(1)
        if mode == "exit":
            if marker_dir:
                with open(marker + ".attempts", "a") as f:
                    f.write(f"{os.getpid()}\n")
            os._exit(1)
        if mode == "hold":
            hold_until_released(marker_dir, f"{stage}-{name}")
            continue
        raise ValueError(f"VOXFORGE_STAGE_FAULT: unknown mode {mode!r} in {one!r}; modes: raise, exit, exit_once, hold")


def rows_of(batch: Batch) -> list[dict]:
    n = len(next(iter(batch.values()))) if batch else 0
    return [{k: batch[k][i] for k in batch} for i in range(n)]


def batch_of(rows: list[dict]) -> Batch:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: [r.get(k) for r in rows] for k in keys}


class _Stage:
    name = "stage"

    def process(self, row: dict) -> None:  # fills fields of ``row`` in place
        raise NotImplementedError

    def __call__(self, batch: Batch) -> Batch:
        rows = rows_of(batch)
        for row in rows:
            if row.get("status") != "ok":
                continue
            t = time.perf_counter()
            try:
                _stage_fault(self.name, row.get("path", ""))
                self.process(row)
            except SourceError as e:
                row["status"], row["error"] = e.status, str(e)
            except Exception as e:  # noqa: BLE001 - a bug or resource problem must not end the run
                err = StageFailure(row.get("path", "?"), f"{self.name}: {type(e).__name__}: {e}")
                row["status"], row["error"] = err.status, str(err)
                row["traceback"] = traceback.format_exc(limit=8)
            row.setdefault("timings", {})[self.name] = time.perf_counter() - t
        return batch_of(rows)


class HashAndDecode(_Stage):
    """path -> source_id, bytes, audio16, audio24 and the source's properties."""

    name = "decode"

    def __init__(self, cfg: IngestConfig, done: frozenset[str] = frozenset()):
        from pipeline.decode import Decoder

        self.decoder = Decoder(cfg.analysis_rate, cfg.output_rate, cfg.min_source_duration, cfg.silence_dbfs)
        self.done = done

    def process(self, row: dict) -> None:
        path = row["path"]
        with _local_copy(path) as local:
            try:
                row["source_id"], row["bytes"] = _hash_regular(local)
            except OSError as e:
                raise Unreadable(path, f"cannot read file ({e.strerror or e})") from e
            if row["source_id"] in self.done:
                row["status"], row["error"] = "skip", None
                return
            d = self.decoder(local)
        row.update(audio16=d.audio16, audio24=d.audio24, duration=d.duration, sample_rate=d.sample_rate,
                   channels=d.channels, codec=d.codec)


class _local_copy:
    """A local path for ``path``: itself, or a temporary download of a remote URI (fsspec)."""

    def __init__(self, path: str):
        self.path, self.tmp = path, None

    def __enter__(self) -> str:
        if "://" not in self.path or self.path.startswith("file://"):
            return self.path.removeprefix("file://")
        import tempfile

        import fsspec

        # the temporary name never comes from the input's name: only a known audio extension is
        # kept (a decoder's hint), never whatever text a remote object's name ends with
        ext = os.path.splitext(self.path)[1].lower()
        fd, self.tmp = tempfile.mkstemp(prefix="voxforge-", suffix=ext if ext in AUDIO_EXTENSIONS else "")
        os.close(fd)
        try:
            with fsspec.open(self.path, "rb") as src, open(self.tmp, "wb") as dst:
                while b := src.read(1 << 22):
                    dst.write(b)
        except OSError as e:
            raise Unreadable(self.path, f"cannot fetch ({e})") from e
        return self.tmp

    def __exit__(self, *exc):
        if self.tmp:
            os.unlink(self.tmp)


class Segment(_Stage):
    """audio16 -> segmentation (VAD regions + raw speaker scores)."""

    name = "segment"

    def __init__(self, cfg: IngestConfig):
        from pipeline.segment import Segmenter

        r = cfg.resources["segment"]
        self.segmenter = Segmenter(cfg.vad, cfg.vad_model, cfg.segmentation_step, cfg.vad_onset, cfg.vad_offset,
                                   cfg.device, r.threads, token=cfg.hf_token, runtime=cfg.segmentation_runtime)

    def process(self, row: dict) -> None:
        row["segmentation"] = self.segmenter(row["audio16"])


class Transcribe(_Stage):
    """audio16 + VAD regions -> transcript with word timestamps."""

    name = "transcribe"

    def __init__(self, cfg: IngestConfig):
        from pipeline.transcribe import Transcriber

        r = cfg.resources["transcribe"]
        self.transcriber = Transcriber(cfg.asr_model, cfg.asr_device, cfg.asr_compute_type, cfg.asr_batch_size,
                                       cfg.asr_beam_size, cfg.language, cfg.align_model, r.threads, cfg.asr_mode)
        self.window, self.max_gap = cfg.asr_window, cfg.asr_max_gap

    def process(self, row: dict) -> None:
        row["transcript"] = self.transcriber(row["audio16"], self._windows(row))

    def _windows(self, row: dict) -> list[tuple[float, float]]:
        from pipeline.segment import merge_for_asr

        return merge_for_asr(row["segmentation"].speech, max_chunk=self.window, max_gap=self.max_gap)

    def __call__(self, batch: Batch) -> Batch:
        """All sources of the batch share Whisper batches; if that fails, one by one (so one
        bad source cannot fail the others)."""
        rows = rows_of(batch)
        ok = [r for r in rows if r.get("status") == "ok"]
        if len(ok) > 1:
            t = time.perf_counter()
            try:
                results = self.transcriber.transcribe_many([(r["audio16"], self._windows(r)) for r in ok])
            except Exception:  # noqa: BLE001 - fall back to per-source processing below
                results = None
            if results is not None:
                dt = (time.perf_counter() - t) / len(ok)
                for r, tr in zip(ok, results):
                    r["transcript"] = tr
                    r.setdefault("timings", {})[self.name] = dt
                return batch_of(rows)
        return super().__call__(batch)


class Diarize(_Stage):
    """audio16 + segmentation -> speaker turns (None when diarization is off)."""

    name = "diarize"

    def __init__(self, cfg: IngestConfig):
        self.diarizer = None
        if cfg.diarization != "none":
            from pipeline.diarize import Diarizer

            r = cfg.resources["diarize"]
            self.diarizer = Diarizer(cfg.diarization, cfg.vad_model, cfg.segmentation_step, cfg.cluster_threshold,
                                     cfg.device, r.threads, cfg.num_speakers, cfg.min_speakers, cfg.max_speakers,
                                     cfg.hf_token, clustering=cfg.clustering, min_silhouette=cfg.min_silhouette,
                                     overlap_threshold=cfg.overlap_threshold,
                                     speaker_encoder=cfg.speaker_encoder,
                                     speaker_encoder_runtime=cfg.speaker_encoder_runtime,
                                     reuse_embeddings=not cfg.embed_every_chunk,
                                     min_clean_speech=cfg.min_clean_speech,
                                     speaker_split=cfg.speaker_split, split_distance=cfg.split_distance,
                                     min_split_speech=cfg.min_split_speech)

    def process(self, row: dict) -> None:
        speech = row["segmentation"].speech
        if self.diarizer is None or not speech:
            row["diarization"] = None
            return
        row["diarization"] = self.diarizer(row["audio16"], row["segmentation"])


class Assemble(_Stage):
    """Everything -> segment rows + WebDataset samples; drops the audio arrays."""

    name = "assemble"

    def __init__(self, cfg: IngestConfig):
        from pipeline.assemble import Assembler

        self.assembler = Assembler(cfg)

    def process(self, row: dict) -> None:
        t = row["transcript"]
        row["segment_rows"], row["samples"] = self.assembler(row, row["audio16"], row["audio24"], t,
                                                             row.get("diarization"), row["segmentation"].speech)
        row["language"], row["language_prob"] = t.language, t.language_prob

    def __call__(self, batch: Batch) -> Batch:
        out = super().__call__(batch)
        # the big arrays stop here: only FLAC bytes travel to the writer
        for k in ("audio16", "audio24", "segmentation"):
            out.pop(k, None)
        return out
