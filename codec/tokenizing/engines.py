"""The two engines of the tokenize job: read -> batch -> encode, yielding TokenBatches.

- Ray (the job): Ray Data over the shard list; one reader task per shard (:func:`read_stage`,
  a generator, so a shard's batches stream out as they are decoded) feeds a pool of encoder
  actors (:class:`EncodeStage`, one codec each). Batches travel as one-row Arrow tables
  (:data:`AUDIO_BATCH_SCHEMA`, :data:`TOKEN_BATCH_SCHEMA`) and come back in completion order.
- Local: one reader thread feeds one :class:`~codec.token_encoder.TokenEncoder` in this process
  (a machine without Ray, a quick CPU run, the GPU benchmark).

Either way the driver (``tokenize/run.py``) gets :class:`~codec.token_encoder.TokenBatch` es in
any order and puts each shard back together (``manifests.tokens.ShardAssembler``). ``cfg`` is the
job's ``TokenizeConfig``, ``info`` the codec's :class:`~codec.speech_codec.CodecInfo`, ``rr`` the
resolved resources (``codec.tokenizing.resources``). Ray and torch are imported when used.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from codec.token_encoder import AudioBatch, CodecContractError, EncoderConfig, TokenBatch, TokenEncoder
from codec.tokenizing import TokenizeConfigError
from codec.tokenizing.bucketing import AudioShardReader, BatchingConfig
from codec.tokenizing.resources import READER_BASE_MIB
from manifests.shards import ShardReadError

if TYPE_CHECKING:
    from codec.speech_codec import CodecInfo

log = logging.getLogger(__name__)


def token_batches(cfg, todo: list[tuple[str, str]], info: CodecInfo, rr: dict) -> Iterator[TokenBatch]:
    """The encoded batches of the ``todo`` shards (``(shard, tar path)``), by ``cfg.engine``."""
    engine = ray_token_batches if cfg.engine == "ray" else local_token_batches
    return engine(cfg, todo, info, rr)


def _configs(cfg, info: CodecInfo, rr: dict) -> tuple[BatchingConfig, EncoderConfig]:
    bcfg = BatchingConfig(batch_seconds=cfg.batch_seconds, max_items=cfg.max_batch_items, max_padding=cfg.max_padding,
                          sample_rate=info.sample_rate, samples_per_frame=info.samples_per_frame)
    ecfg = EncoderConfig(codec_dir=str(Path(cfg.codec).resolve()), device=rr["device"], precision=cfg.precision,
                         threads=rr["threads"] if rr["device"] == "cpu" else None)
    return bcfg, ecfg


# --------------------------------------------------------------------------------------
# Ray engine


def build_dataset(cfg, todo: list[tuple[str, str]], info: CodecInfo, rr: dict):
    """The Ray Data pipeline: shard list -> read+bucket (tasks) -> encode (actor pool)."""
    import ray

    from manifests.run_record import actor_retry_args_allowed

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = False  # the driver puts batches back in order
    ctx.enable_progress_bars = cfg.progress_bars
    ctx.max_errored_blocks = cfg.max_errored_blocks  # a dropped batch leaves its shard uncommitted
    bcfg, ecfg = _configs(cfg, info, rr)
    items = [{"shard": s, "path": p} for s, p in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # One task per shard; a generator, so the shard's batches stream out as they are decoded.
    # A reader process holds a few decoded batches (int16) on top of its imports (Ray, pyarrow,
    # soundfile: no torch, see codec/__init__.py). Reserving that memory also makes its remote
    # args differ from the encoder's, so Ray Data does not fuse the reader into the encoder
    # actors (decoding there would stall the GPU).
    read_memory = int(4 * cfg.batch_seconds * info.sample_rate * 2 + READER_BASE_MIB * 2**20)
    ds = ds.map_batches(read_stage, fn_kwargs={"config": bcfg}, batch_size=1, batch_format="pyarrow",
                        num_cpus=cfg.read_cpus, memory=read_memory)
    with actor_retry_args_allowed():
        ds = ds.map_batches(
            EncodeStage,
            fn_constructor_kwargs={"config": ecfg, "expected_codec_id": info.codec_id},
            batch_size=rr["batches_per_call"],
            batch_format="pyarrow",
            num_gpus=rr["gpus_per_actor"] if rr["device"] == "cuda" else 0,
            num_cpus=cfg.cpus_per_actor,
            compute=ray.data.ActorPoolStrategy(size=rr["num_actors"]),
            # Ray core's actor fault tolerance (Ray Data's default, -1/-1, retries forever); extra
            # **ray_remote_args, deprecated in Ray 2.60 (see pipeline/ray_adapter.py)
            max_restarts=cfg.max_restarts,
            max_task_retries=cfg.max_task_retries,
        )
    return ds


def ray_token_batches(cfg, todo: list[tuple[str, str]], info: CodecInfo, rr: dict) -> Iterator[TokenBatch]:
    """TokenBatches from the Ray Data pipeline, in completion order."""
    ds = build_dataset(cfg, todo, info, rr)
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
        for row in table.to_pylist():
            yield TokenBatch.from_row(row)


def read_stage(table, config: BatchingConfig) -> Iterator:
    """``pa.Table`` of shards (columns ``shard``, ``path``) -> one table per bucketed batch.

    A generator, so that Ray Data streams a shard's batches downstream as they are
    decoded instead of holding the whole shard. A shard that cannot be read at all
    yields one batch carrying ``shard_error`` (the job reports it and does not commit).
    """
    import pyarrow as pa

    reader = AudioShardReader(config)
    for row in table.to_pylist():
        try:
            for batch in reader.batches(row["path"], row["shard"]):
                yield pa.Table.from_pylist([batch.to_row()], schema=AUDIO_BATCH_SCHEMA)
        except ShardReadError as e:
            bad = AudioBatch(shard=row["shard"], batch_index=0, n_batches=1, shard_error=str(e))
            yield pa.Table.from_pylist([bad.to_row()], schema=AUDIO_BATCH_SCHEMA)


class EncodeStage:
    """``pa.Table`` of audio batches -> ``pa.Table`` of token batches, one codec per actor."""

    def __init__(self, config: EncoderConfig, expected_codec_id: str | None = None):
        self.encoder = TokenEncoder(config)
        if expected_codec_id is not None and self.encoder.codec_id != expected_codec_id:
            raise CodecContractError(
                f"codec at {config.codec_dir} loads as {self.encoder.codec_id}, the job expected "
                f"{expected_codec_id}: was the checkpoint replaced while the job ran?"
            )
        log.info("encoder ready: codec %s on %s (%s)", self.encoder.codec_id, self.encoder.device,
                 self.encoder.precision)

    def __call__(self, table):
        import pyarrow as pa

        batches = [AudioBatch.from_row(r) for r in table.to_pylist()]
        _encode_fault(batches)
        rows = [t.to_row() for t in self.encoder(batches)]
        return pa.Table.from_pylist(rows, schema=TOKEN_BATCH_SCHEMA)


def _encode_fault(batches) -> None:
    """Test hook: ``VOXFORGE_ENCODE_FAULT=hold:SHARD`` makes the encoder actor that gets a batch of
    shard SHARD write its pid to ``held-encode-SHARD`` in ``$VOXFORGE_ENCODE_FAULT_DIR`` and wait
    until a file ``release`` appears there (a test removes its node with the batch in flight)."""
    import os

    spec = os.environ.get("VOXFORGE_ENCODE_FAULT")
    if not spec:
        return
    mode, _, shard = spec.partition(":")
    if mode != "hold":
        raise ValueError(f"VOXFORGE_ENCODE_FAULT: unknown mode {mode!r}; use hold:SHARD")
    if any(b.shard == shard for b in batches):
        from manifests.fault_hooks import hold_until_released

        hold_until_released(os.environ["VOXFORGE_ENCODE_FAULT_DIR"], f"encode-{shard}")


def _schemas():
    import pyarrow as pa

    common = [
        ("shard", pa.string()),
        ("batch_index", pa.int64()),
        ("n_batches", pa.int64()),
        ("keys", pa.list_(pa.string())),
        ("positions", pa.list_(pa.int64())),
        ("metas", pa.list_(pa.string())),
    ]
    audio = pa.schema(common + [
        ("lengths", pa.list_(pa.int64())),
        ("pcm", pa.large_binary()),
        ("failures", pa.string()),
        ("shard_error", pa.string()),
    ])
    tokens = pa.schema(common + [
        ("n_samples", pa.list_(pa.int64())),
        ("n_frames", pa.list_(pa.int64())),
        ("semantic", pa.large_binary()),
        ("acoustic", pa.large_binary()),
        ("failures", pa.string()),
        ("padded_samples", pa.int64()),
        ("encode_seconds", pa.float64()),
        ("encode_end", pa.float64()),
        ("shard_error", pa.string()),
    ])
    return audio, tokens


AUDIO_BATCH_SCHEMA, TOKEN_BATCH_SCHEMA = _schemas()


# --------------------------------------------------------------------------------------
# Local engine


def local_token_batches(cfg, todo: list[tuple[str, str]], info: CodecInfo, rr: dict) -> Iterator[TokenBatch]:
    """The same stages without Ray: one reader thread feeds one encoder in this process
    (a machine without Ray, a quick CPU run, the GPU benchmark)."""
    bcfg, ecfg = _configs(cfg, info, rr)
    enc = TokenEncoder(ecfg)
    if enc.codec_id != info.codec_id:
        raise TokenizeConfigError(f"codec loads as {enc.codec_id}, expected {info.codec_id}")
    q: queue.Queue = queue.Queue(maxsize=2 * rr["batches_per_call"])
    stop = threading.Event()
    done = object()

    def produce():
        reader = AudioShardReader(bcfg)
        try:
            for shard, path in todo:
                try:
                    for b in reader.batches(path, shard):
                        while not stop.is_set():
                            try:
                                q.put(b, timeout=0.5)
                                break
                            except queue.Full:
                                continue
                        if stop.is_set():
                            return
                except ShardReadError as e:
                    q.put(AudioBatch(shard=shard, batch_index=0, n_batches=1, shard_error=str(e)))
        except BaseException as e:  # surfaced in the consumer
            q.put(e)
        finally:
            q.put(done)

    t = threading.Thread(target=produce, name="shard-reader", daemon=True)
    t.start()
    try:
        buf = []
        while True:
            item = q.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            buf.append(item)
            if len(buf) >= rr["batches_per_call"]:
                yield from enc(buf)
                buf = []
        if buf:
            yield from enc(buf)
    finally:
        stop.set()
