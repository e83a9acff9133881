"""The training loop: data, model, optimiser, schedule, logging, eval, checkpoints, exact resume.

``run_training`` is what every launcher calls (plain ``python``, ``torchrun``, Ray Train workers).
One optimiser step = ``grad_accum`` micro-batches of ``batch_size`` packed rows per rank.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from manifests import checkpoint
from manifests.checkpoint import CheckpointIncompatible
from model.config import ConfigError, ModelConfig, TrainConfig, save_run_config
from model.flops import peak_tflops, step_flops
from model.loader import ResumableLoader
from model.parallel import DistInfo, all_reduce_sum, init_distributed, set_grad_sync, unwrap, wrap_model
from model.text_tokenizer import load_tokenizer
from model.token_stream import PackedTokenStream, codec_id_of, list_shards, split_train_eval
from model.tts import TTSModel

log = logging.getLogger("model.train")


@dataclass
class RunSpec:
    """What a launcher hands to ``run_training``: paths and configs."""

    tokens: str
    output: str
    model: ModelConfig
    train: TrainConfig
    resume: bool = False
    eval_tokens: str = ""
    tokenizer: str = "bytes"  # "bytes" or a local HF tokenizer dir (set by --init-from)
    init_from: str = ""  # local HF Llama/Mistral checkpoint dir for the backbone
    warm_start: str = ""  # a run dir / checkpoint of this project: weights only, fresh optimiser and data
    device: str = "auto"


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine to ``lr * min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms, biases and embeddings (decaying them only hurts)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (
            no_decay
            if p.ndim < 2 or "embeddings" in name or "null_h" in name or "token_type" in name
            else decay
        ).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=1e-8)


class Trainer:
    def __init__(
        self, spec: RunSpec, info: DistInfo | None = None, on_log: Callable[[dict], None] | None = None
    ):
        self.spec, self.cfg, self.mcfg = spec, spec.train, spec.model
        self.info = info or init_distributed(spec.device)
        self.on_log = on_log
        self.run_dir = Path(spec.output)
        self.device = self.info.device
        bf16 = self.cfg.precision == "bf16" or (self.cfg.precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if bf16 else None

        self.tokenizer = load_tokenizer(spec.tokenizer)
        if self.mcfg.text_vocab_size != self.tokenizer.vocab_size:
            raise ConfigError(
                f"model text_vocab_size={self.mcfg.text_vocab_size} but tokenizer {self.tokenizer.name} has "
                f"{self.tokenizer.vocab_size} ids; set text_vocab_size to the tokenizer's size"
            )
        shards = list_shards(spec.tokens)
        self.train_shards, self.eval_shards = split_train_eval(shards, self.cfg.data.eval_shards)
        if spec.eval_tokens:
            self.eval_shards = list_shards(spec.eval_tokens)
        # from the samples' JSON (DESIGN §6), not the folder name: copied or renamed shards keep it
        self.codec_id = codec_id_of(self.train_shards + self.eval_shards)

        torch.manual_seed(self.cfg.seed)  # same initial weights on every rank
        model = TTSModel(self.mcfg)
        if spec.init_from:
            from model.hf_init import load_hf_backbone

            load_hf_backbone(model, spec.init_from)
        if spec.warm_start:
            from model.synthesis import resolve_checkpoint

            ckpt = resolve_checkpoint(spec.warm_start)
            if checkpoint.read_meta(ckpt)["model_config"] != self.mcfg.to_dict():
                raise CheckpointIncompatible(
                    f"--warm-start {ckpt}: its model config differs from this run's; use its --config"
                )
            model.load_state_dict(checkpoint.read_tensors(ckpt, "model"))
        model.to(self.device)
        if self.cfg.compile:
            for layer in model.backbone.layers:
                layer.compile()
            model.flow_head.compile()
        self.model = wrap_model(model, self.info, self.cfg.parallel, bf16)
        self.optimizer = build_optimizer(self.model, self.cfg)
        # Different ranks draw different noise / CFG drops.
        torch.manual_seed(self.cfg.seed + 1000 * self.info.rank)
        random.seed(self.cfg.seed + 1000 * self.info.rank)

        stream = PackedTokenStream(
            self.train_shards, self.tokenizer, self.cfg.data, self.info.rank, self.info.world_size
        )
        self.loader = ResumableLoader(stream, self.cfg.data.num_workers)
        # the workers save their stream state before each checkpoint (counted in micro-batches)
        ga = self.cfg.grad_accum
        self.loader.plan_snapshots(self.cfg.ckpt_every * ga, self.cfg.steps * ga)
        self.step = 0
        self.peak = peak_tflops(self.device, self.cfg.peak_tflops)
        self.history: list[dict[str, Any]] = []

    # ---- bookkeeping ----
    def extra_state(self) -> dict[str, Any]:
        return {
            "model_config": self.mcfg.to_dict(),
            "codec_id": self.codec_id,
            "tokenizer": self.spec.tokenizer,
            "scheduler": {"step": self.step, "lr": lr_at(self.step, self.cfg)},
        }

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.info.is_main:
            with open(self.run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if record.get("kind") == "train":
                mfu = f" mfu {record['mfu']:.1%}" if record.get("mfu") is not None else ""
                log.info(
                    "step %d loss %.4f sem_ce %.4f flow %.4f acc %.3f lr %.2e gnorm %.3f tok/s %.0f tflops %.3f%s pad %.1f%%",
                    record["step"],
                    record["loss"],
                    record["semantic_ce"],
                    record["flow"],
                    record["semantic_acc"],
                    record["lr"],
                    record["grad_norm"],
                    record["tokens_per_s"],
                    record["tflops"],
                    mfu,
                    100 * record["padding"],
                )
            elif record.get("kind") == "eval":
                log.info(
                    "eval step %d sem_ce %.4f flow %.4f (%d frames)",
                    record["step"],
                    record["eval_semantic_ce"],
                    record["eval_flow"],
                    record["eval_frames"],
                )
        if self.on_log is not None:
            self.on_log(record)

    # ---- resume ----
    def maybe_resume(self) -> None:
        ckpt = checkpoint.latest(self.run_dir) if self.spec.resume else None
        if self.spec.resume and ckpt is None:
            if self.info.is_main:
                log.info("--resume: no checkpoint in %s, starting from step 0", self.run_dir / "checkpoints")
            return
        if ckpt is None:
            return
        if checkpoint.read_meta(ckpt).get("model_config") != self.mcfg.to_dict():
            raise CheckpointIncompatible(
                f"{ckpt} was trained with a different model config; use a new --output or the same --config"
            )
        loaded = checkpoint.load(ckpt)
        meta = loaded.meta
        osd = checkpoint.unflatten_optimizer(loaded.tensors("optimizer"), meta["param_groups"])
        checkpoint.load_full_state(ckpt, self.model, self.optimizer, loaded.tensors("model"), osd)
        self.loader.load_state_dict(loaded.rank.data, loaded.rank.data_tensors)
        loaded.rank.restore_rng(self.device)  # last, so nothing above can draw from it
        self.step = int(meta["step"])
        if self.info.is_main:
            log.info(
                "resumed from %s at step %d (data: %d batches consumed, %s)",
                ckpt,
                self.step,
                self.loader.consumed,
                "from the saved stream position" if "workers" in loaded.rank.data else "replayed",
            )

    def save(self) -> Path | None:
        """Collective (FSDP gathers the full state to rank 0, on the CPU); rank 0 writes."""
        msd, osd = checkpoint.full_state(self.model, self.optimizer)  # full copies on rank 0 only
        mine = checkpoint.RankState.capture(self.loader.state_dict(), self.loader.state_arrays(), self.device)

        def payload() -> tuple[dict, dict]:
            otensors, groups = checkpoint.flatten_optimizer(osd)
            return {"model": msd, "optimizer": otensors}, {**self.extra_state(), "param_groups": groups}

        return checkpoint.save(self.run_dir, self.step, mine, payload, keep=self.cfg.keep_checkpoints)

    # ---- eval ----
    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        if not self.eval_shards:
            return None
        model = self.model
        model.eval()
        # Fixed noise for comparable numbers across steps, without touching the training RNG.
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(1234 + self.info.rank)
            stream = PackedTokenStream(
                self.eval_shards,
                self.tokenizer,
                self.cfg.data,
                self.info.rank,
                self.info.world_size,
                infinite=False,
                shuffle=False,
            )
            batches = []
            try:
                for batch in stream:
                    batches.append(batch)
                    if len(batches) >= self.cfg.eval_batches:
                        break
            except Exception as e:  # eval must not kill training; say why it was skipped
                log.warning("eval data unreadable on rank %d: %s", self.info.rank, e)
                batches = []
            # Every rank runs the same number of forwards: FSDP all-gathers in each of them.
            n = len(batches)
            if self.info.enabled:
                t = torch.tensor([n], device=self.device if self.device.type == "cuda" else "cpu")
                torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
                n = int(t)
            sums = [0.0, 0.0, 0.0, 0.0, 0.0]
            for batch in batches[:n]:
                with self._autocast():
                    out = model(self._to_device(batch))
                sums[0] += float(out["semantic_ce"]) * float(out["w_sem"])
                sums[1] += float(out["w_sem"])
                sums[2] += float(out["flow"]) * float(out["w_flow"])
                sums[3] += float(out["w_flow"])
                sums[4] += float(batch["n_frames"])
        model.train()
        s = all_reduce_sum(sums, self.info)
        return {
            "eval_semantic_ce": s[0] / max(s[1], 1e-9),
            "eval_flow": s[2] / max(s[3], 1e-9),
            "eval_frames": int(s[4]),
        }

    # ---- train ----
    def train(self) -> list[dict[str, Any]]:
        try:
            return self._train()
        finally:
            self.loader.close()

    def _train(self) -> list[dict[str, Any]]:
        cfg, info = self.cfg, self.info
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_run_config(
                self.run_dir / "config.json",
                self.mcfg,
                cfg,
                {
                    "codec_id": self.codec_id,
                    "tokenizer": self.spec.tokenizer,
                    "tokens": str(self.spec.tokens),
                    "world_size": info.world_size,
                    "train_shards": [str(p) for p in self.train_shards],
                    "eval_shards": [str(p) for p in self.eval_shards],
                    "init_from": self.spec.init_from,
                },
            )
            n = unwrap(self.model).num_params() if not cfg.parallel == "fsdp" or not info.enabled else None
            log.info(
                "run %s: model %s (%s params), %d train / %d eval shards, world %d, device %s, precision %s",
                self.run_dir,
                self.mcfg.name,
                f"{n / 1e6:.2f}M" if n else "sharded",
                len(self.train_shards),
                len(self.eval_shards),
                info.world_size,
                self.device,
                "bf16" if self.autocast_dtype else "fp32",
            )
            log.info(
                "config: %s",
                json.dumps({"model": self.mcfg.to_dict(), "train": cfg.to_dict()}, sort_keys=True),
            )
        self.maybe_resume()
        model = self.model
        model.train()
        acc = {
            "loss": 0.0,
            "semantic_ce": 0.0,
            "flow": 0.0,
            "semantic_acc": 0.0,
            "n": 0,
            "tokens": 0,
            "frames": 0,
            "flops": 0.0,
        }
        t0 = time.perf_counter()
        while self.step < cfg.steps:
            lr = lr_at(self.step, cfg)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            for micro in range(cfg.grad_accum):
                batch = next(self.loader)
                acc["flops"] += step_flops(self.mcfg, batch)
                acc["tokens"] += int(batch["n_tokens"])
                acc["frames"] += int(batch["n_frames"])
                last = micro == cfg.grad_accum - 1
                with set_grad_sync(model, last):
                    with self._autocast():
                        out = model(self._to_device(batch))
                    (out["loss"] / cfg.grad_accum).backward()
                for k in ("loss", "semantic_ce", "flow", "semantic_acc"):
                    acc[k] += float(out[k].detach())
                acc["n"] += 1
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns a DTensor
                grad_norm = grad_norm.full_tensor()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1

            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                vals = all_reduce_sum(
                    [
                        acc["loss"],
                        acc["semantic_ce"],
                        acc["flow"],
                        acc["semantic_acc"],
                        acc["n"],
                        acc["tokens"],
                        acc["frames"],
                        acc["flops"],
                    ],
                    info,
                )
                n = max(vals[4], 1)
                tflops = vals[7] / dt / 1e12 / info.world_size  # per device
                self._log(
                    {
                        "kind": "train",
                        "step": self.step,
                        "loss": vals[0] / n,
                        "semantic_ce": vals[1] / n,
                        "flow": vals[2] / n,
                        "semantic_acc": vals[3] / n,
                        "lr": lr,
                        "grad_norm": float(grad_norm),
                        "tokens_per_s": vals[5] / dt,
                        "frames_per_s": vals[6] / dt,
                        "tflops": tflops,
                        "mfu": tflops / self.peak if self.peak else None,
                        "padding": self.loader.padding_fraction,
                        "truncated": self.loader.truncated,
                        "time": time.time(),
                    }
                )
                acc = dict.fromkeys(acc, 0.0)
                t0 = time.perf_counter()
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                ev = self.evaluate()
                if ev is not None:
                    self._log({"kind": "eval", "step": self.step, **ev})
                t0 = time.perf_counter()  # eval time is not training throughput
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                path = self.save()
                if path is not None:
                    log.info("checkpoint %s", path)
                t0 = time.perf_counter()
        return self.history


def run_training(spec: RunSpec, on_log: Callable[[dict], None] | None = None) -> list[dict[str, Any]]:
    """Entry point shared by every launcher; returns the log records of this rank."""
    return Trainer(spec, on_log=on_log).train()
