"""CodecTrainer: trains a Codec on audio shards (CPU, one GPU, or several GPUs under torchrun).

One step: (1) the codec reconstructs a batch of random crops (quantizers bypassed per item as in the
paper); (2) the multi-resolution STFT discriminator takes a hinge-loss step on real vs decoded audio;
(3) the codec takes a step on  mel_weight * multi-scale mel L1 + feature_weight * L1 feature matching
+ commit_weight * vq_commitment * VQ commitment + distill_weight * (1 - cos(pred, Whisper states)).
Both optimisers are AdamW with linear warm-up and gradient clipping.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist

from codec.audio_stream import AudioCropStream
from codec.config import CodecConfig
from codec.discriminator import (
    MultiResolutionSTFTDiscriminator,
    feature_matching_loss,
    hinge_discriminator_loss,
)
from codec.losses import MultiScaleMelLoss, distill_loss
from codec.speech_codec import Codec
from codec.vq import VectorQuantizer
from manifests import checkpoint
from manifests.config_cli import cli

log = logging.getLogger("codec.train")


@dataclass
class TrainRunConfig:
    """Options of one training run (the model's own numbers are in CodecConfig); each field is a
    flag of codec/train.py (manifests.config_cli)."""

    shards: str = field(metadata=cli("folder of WebDataset audio shards (*.tar) or of audio files"))
    output: str = field(metadata=cli("checkpoint directory (created)"))
    steps: int = field(default=1000, metadata=cli("train until this global step"))
    log_every: int = 10
    save_every: int = 500
    keep: int = field(default=2, metadata=cli("step checkpoints to keep"))
    resume: bool = field(default=False, metadata=cli("continue from the newest checkpoint in --output"))
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = field(default=0, metadata=cli("torch CPU threads (0 = torch default)"))

    def __post_init__(self) -> None:
        if self.steps < 0 or self.log_every < 1 or self.save_every < 1 or self.keep < 1:
            raise ValueError("steps >= 0, log_every >= 1, save_every >= 1 and keep >= 1 are required")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device={self.device!r}: use auto, cpu or cuda")


def _lr_factor(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / max(1, warmup))


class CodecTrainer:
    def __init__(self, cfg: CodecConfig, run: TrainRunConfig) -> None:
        self.cfg, self.run = cfg, run
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = run.device == "cuda" or (run.device == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
        else:
            self.device = torch.device("cpu")
        if run.threads:
            torch.set_num_threads(run.threads)
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        self.out = Path(run.output)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed + self.rank)
        random.seed(cfg.seed + self.rank)

        self.codec = Codec(cfg).to(self.device).train()
        self.disc = (
            MultiResolutionSTFTDiscriminator(cfg.disc_fft_sizes, cfg.disc_channels).to(self.device).train()
        )
        self.mel_loss = MultiScaleMelLoss(cfg.sample_rate, cfg.mel_fft_sizes, cfg.mel_bins).to(self.device)
        self.opt_g = torch.optim.AdamW(
            self.codec.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.opt_d = torch.optim.AdamW(
            self.disc.parameters(), lr=cfg.disc_lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.g_model, self.d_model = self.codec, self.disc
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [local_rank] if use_cuda else None
            # VQ buffers are kept identical by all-reducing its EMA statistics: no buffer broadcast.
            self.g_model = DDP(
                self.codec,
                device_ids=ids,
                broadcast_buffers=False,
                # Without distillation the distill head gets no gradient.
                find_unused_parameters=cfg.distill_weight == 0,
            )
            self.d_model = DDP(self.disc, device_ids=ids, broadcast_buffers=False)
        teacher = None
        if cfg.distill_weight > 0:
            from codec.teacher import WhisperTeacher

            teacher = WhisperTeacher(cfg.teacher_model, cfg.sample_rate)
        crop = (
            max(1, round(cfg.crop_seconds * cfg.sample_rate / cfg.samples_per_frame)) * cfg.samples_per_frame
        )
        self.stream = AudioCropStream(
            run.shards,
            crop,
            cfg.samples_per_frame,
            cfg.sample_rate,
            cfg.shuffle_buffer,
            cfg.seed,
            self.rank,
            self.world_size,
            teacher,
        )
        self.step = 0
        if run.resume:
            self._resume()
        self._window_codes = torch.zeros(cfg.semantic_codebook_size, dtype=torch.long)
        if self.rank == 0:
            (self.out / "train_config.json").write_text(
                json.dumps(
                    {"codec": cfg.to_dict(), "run": asdict(run), "world_size": self.world_size}, indent=2
                )
            )
            n_params = sum(p.numel() for p in self.codec.parameters())
            log.info("codec config: %s", json.dumps(cfg.to_dict()))
            log.info("run config: %s", json.dumps(asdict(run)))
            log.info(
                "codec %.2fM params, disc %.2fM params, %s x%d, data %s (%d %s), step %d",
                n_params / 1e6,
                sum(p.numel() for p in self.disc.parameters()) / 1e6,
                self.device,
                self.world_size,
                run.shards,
                len(self.stream.containers),
                self.stream.kind,
                self.step,
            )

    # ---- data ----
    def next_batch(self) -> dict[str, torch.Tensor]:
        crops = [next(self.stream) for _ in range(self.cfg.batch_size)]
        batch = {"wav": torch.from_numpy(np.stack([c.audio for c in crops]))[:, None].to(self.device)}
        if crops[0].teacher is not None:
            batch["teacher"] = torch.from_numpy(np.stack([c.teacher for c in crops])).to(self.device)
            batch["teacher_mask"] = torch.from_numpy(np.stack([c.teacher_mask for c in crops])).to(
                self.device
            )
        return batch

    # ---- one step ----
    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.cfg
        factor = _lr_factor(self.step, cfg.warmup_steps)
        for g in self.opt_g.param_groups:
            g["lr"] = cfg.lr * factor
        for g in self.opt_d.param_groups:
            g["lr"] = cfg.disc_lr * factor
        wav = batch["wav"]
        with self._autocast():
            out = self.g_model(wav)
        recon = out["wav"].float()
        stats: dict[str, float] = {}
        adversarial = self.step >= cfg.disc_start_step and cfg.feature_weight > 0

        if adversarial:
            self.opt_d.zero_grad(set_to_none=True)
            with self._autocast():
                both = self.d_model(torch.cat([wav, recon.detach()]))
            real = [(lg[: len(wav)].float(), [f[: len(wav)] for f in fs]) for lg, fs in both]
            fake = [(lg[len(wav) :].float(), [f[len(wav) :] for f in fs]) for lg, fs in both]
            d_loss = hinge_discriminator_loss(real, fake)
            d_loss.backward()
            stats["disc_grad_norm"] = float(
                torch.nn.utils.clip_grad_norm_(self.disc.parameters(), cfg.grad_clip)
            )
            self.opt_d.step()
            stats["disc"] = float(d_loss.detach())

        self.opt_g.zero_grad(set_to_none=True)
        mel = self.mel_loss(recon, wav)
        total = cfg.mel_weight * mel
        stats["mel"] = float(mel.detach())
        if adversarial:
            with self._autocast():
                # The unwrapped discriminator: the generator step only needs gradients w.r.t. recon
                # (the disc's own gradients here are discarded), and under DDP the unused logit
                # layer would stall the gradient all-reduce.
                with torch.no_grad():
                    real = self.disc(wav)
                fake = self.disc(recon)
            fm = feature_matching_loss(real, fake)
            total = total + cfg.feature_weight * fm
            stats["feature"] = float(fm.detach())
        commit = out["commit"]
        total = total + cfg.commit_weight * cfg.vq_commitment * commit
        stats["commit"] = float(commit.detach())
        if cfg.distill_weight > 0 and "teacher" in batch:
            dl = distill_loss(out["distill"], batch["teacher"], batch["teacher_mask"])
            total = total + cfg.distill_weight * dl
            stats["distill"] = float(dl.detach())
        total.backward()
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.codec.parameters(), cfg.grad_clip))
        self.opt_g.step()
        stats["loss"] = float(total.detach())
        stats["lr"] = cfg.lr * factor
        self._window_codes += torch.bincount(
            out["codes"].reshape(-1).cpu(), minlength=cfg.semantic_codebook_size
        )
        self.step += 1
        return stats

    # ---- loop ----
    def fit(self) -> list[dict]:
        history = []
        t_last, steps_since, audio_since = time.perf_counter(), 0, 0.0
        acc: dict[str, float] = {}
        seconds_per_batch = (
            self.cfg.batch_size * self.stream.crop_samples / self.cfg.sample_rate * self.world_size
        )
        while self.step < self.run.steps:
            batch = self.next_batch()
            stats = self.train_step(batch)
            for k, v in stats.items():
                acc[k] = acc.get(k, 0.0) + v
            steps_since += 1
            audio_since += seconds_per_batch
            if self.step % self.run.log_every == 0 or self.step == self.run.steps:
                dt = time.perf_counter() - t_last
                rec = {"step": self.step, **{k: v / steps_since for k, v in acc.items()}}
                usage = VectorQuantizer.usage(
                    torch.repeat_interleave(torch.arange(len(self._window_codes)), self._window_codes),
                    self.cfg.semantic_codebook_size,
                )
                rec.update(
                    vq_perplexity=usage["perplexity"],
                    vq_used_frac=usage["used_frac"],
                    vq_codes_alive=int((self.codec.vq.cluster_size > 1e-3).sum()),
                    steps_per_s=steps_since / dt,
                    audio_s_per_s=audio_since / dt,
                    epoch=self.stream.epoch,
                )
                history.append(rec)
                if self.rank == 0:
                    self._log(rec)
                acc, steps_since, audio_since, t_last = {}, 0, 0.0, time.perf_counter()
                self._window_codes.zero_()
            if self.step % self.run.save_every == 0 or self.step == self.run.steps:
                self.save()
        return history

    def _log(self, rec: dict) -> None:
        order = ["loss", "mel", "feature", "disc", "commit", "distill", "grad_norm"]
        parts = [f"{k} {rec[k]:.4f}" for k in order if k in rec]
        log.info(
            "step %d | %s | vq ppl %.1f used %.3f | %.2f steps/s %.1f audio-s/s | lr %.2e",
            rec["step"],
            " ".join(parts),
            rec["vq_perplexity"],
            rec["vq_used_frac"],
            rec["steps_per_s"],
            rec["audio_s_per_s"],
            rec["lr"],
        )
        with open(self.out / "train_log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    # ---- checkpoints (layout and errors: manifests/checkpoint.py) ----
    def save(self) -> Path | None:
        """Collective. Every rank's data position and RNG streams differ (seeded seed + rank: each
        rank draws its own quantizer bypasses and crops); the checkpoint keeps each rank's own."""
        mine = checkpoint.RankState.capture(self.stream.state_dict(), device=self.device)

        def payload() -> tuple[dict, dict]:
            g_t, g_groups = checkpoint.flatten_optimizer(self.opt_g.state_dict(), "opt_g/")
            d_t, d_groups = checkpoint.flatten_optimizer(self.opt_d.state_dict(), "opt_d/")
            meta = {
                "param_groups": {"opt_g": g_groups, "opt_d": d_groups},
                "codec_config": self.cfg.to_dict(),
            }
            return {"disc": self.disc.state_dict(), "optimizer": {**g_t, **d_t}}, meta

        path = checkpoint.save(
            self.out,
            self.step,
            mine,
            payload,
            keep=self.run.keep,
            add_files=self.codec.save,  # model.safetensors + config.json: Codec.load(step dir) works
        )
        if path is not None:
            # The top-level copy is what users load; each file is replaced atomically by Codec.save.
            self.codec.save(self.out)
            log.info("saved %s (codec_id %s)", path, self.codec.codec_id)
        return path

    def _resume(self) -> None:
        d = checkpoint.latest(self.out)
        if d is None:
            log.info("--resume: no checkpoint in %s yet, starting from step 0", self.out)
            return
        saved = checkpoint.read_meta(d).get("codec_config")
        if saved is None or CodecConfig.from_dict(saved) != self.cfg:
            raise checkpoint.CheckpointIncompatible(
                f"{d}: the checkpoint's codec config differs from this run's; resume with the same --config "
                f"(the saved one is in {d / 'config.json'}) or start a new --output"
            )
        loaded = checkpoint.load(d)
        self.codec.load_state_dict(Codec.load(d, device=self.device).state_dict())
        self.disc.load_state_dict(loaded.tensors("disc"))
        opt = loaded.tensors("optimizer")
        groups = loaded.meta["param_groups"]
        self.opt_g.load_state_dict(checkpoint.unflatten_optimizer(opt, groups["opt_g"], "opt_g/"))
        self.opt_d.load_state_dict(checkpoint.unflatten_optimizer(opt, groups["opt_d"], "opt_d/"))
        self.stream.load_state_dict(loaded.rank.data)
        # last: building the codec above (Codec.load) draws from the torch RNG
        loaded.rank.restore_rng(self.device)
        self.step = loaded.meta["step"]
        log.info("resumed from %s at step %d", d, self.step)
