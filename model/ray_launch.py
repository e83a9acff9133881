"""Ray Train adapter: run ``model.trainer.run_training`` on N workers through ``TorchTrainer``.

Ray Train starts the workers, sets up the torch.distributed process group (gloo on CPU, NCCL on
GPU) and pins each worker to its GPU; the training code is the same as under torchrun. Outputs go
to ``--output`` (it must be on storage every worker can reach), resume works the same way.

    RAY_AUTH_MODE=disabled ray job submit --working-dir . -- \\
        python model/train.py --ray --ray-workers 8 --ray-gpu --tokens ... --output /shared/run --config 1b
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from model.config import DataConfig, ModelConfig, TrainConfig


def spec_to_dict(spec) -> dict[str, Any]:
    d = dataclasses.asdict(spec)
    d["output"] = str(Path(spec.output).resolve())
    d["tokens"] = str(Path(spec.tokens).resolve())
    return d


def spec_from_dict(d: dict[str, Any]):
    from model.trainer import RunSpec

    d = dict(d)
    d["model"] = ModelConfig.from_dict(d["model"])
    train = dict(d["train"])
    train["data"] = DataConfig(**train["data"])
    d["train"] = TrainConfig(**train)
    return RunSpec(**d)


def _worker(config: dict[str, Any]) -> None:
    """Runs inside each Ray Train worker; the process group is already initialised by Ray."""
    import ray.train
    import ray.train.torch

    from model.parallel import init_distributed
    from model.trainer import Trainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    spec = spec_from_dict(config["spec"])
    info = init_distributed(str(ray.train.torch.get_device()))
    history = Trainer(spec, info=info).train()
    last = next((r for r in reversed(history) if r.get("kind") == "train"), {})
    # Every worker reports (Ray Train expects all ranks to); rank 0's numbers are the run's.
    ray.train.report({k: v for k, v in last.items() if isinstance(v, int | float)})


# recorded in the runs row, besides manifests.run_record.CORE_PACKAGES
PACKAGES = ("transformers", "safetensors")


def launch_with_ray(spec, num_workers: int, use_gpu: bool, address: str | None = None) -> dict[str, Any]:
    """Train on ``num_workers`` Ray Train workers; the run is recorded in
    ``<output>/manifests/runs/train-<run_id>.parquet`` (manifests.run_record) with its last train log."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from manifests.run_record import RunRecord, start_ray

    out = Path(spec.output).resolve()
    with RunRecord(out, "train", spec_to_dict(spec), packages=PACKAGES) as run:
        start_ray(address)
        trainer = TorchTrainer(
            train_loop_per_worker=_worker,
            train_loop_config={"spec": spec_to_dict(spec)},
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
            run_config=RunConfig(name=out.name, storage_path=str(out.parent / "ray_results")),
        )
        result = trainer.fit()
        if result.error is not None:
            raise RuntimeError(f"Ray Train run {out} failed: {result.error}")
        log = out / "log.jsonl"
        records = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        last = next((r for r in reversed(records) if r.get("kind") == "train"), {})
        run.summary = {"workers": num_workers, "gpu": use_gpu, "last_train_log": last}
    return {"output": str(out), "run_id": run.run_id, "last_train_log": last}
