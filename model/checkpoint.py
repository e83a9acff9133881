"""Checkpoints: safetensors for tensors, JSON for everything else; loading never unpickles.

Layout of ``RUN_DIR/checkpoints/step_NNNNNNN/``:

- ``model.safetensors``      full (unsharded) model state, parameter names without DDP/FSDP prefixes
- ``optimizer.safetensors``  AdamW moments and step counts, keys ``state/<param>/<name>``
- ``rng_rank{R}.safetensors`` torch CPU (and CUDA) generator state of rank R
- ``state.json``             step, scheduler, optimiser param groups, data position and Python RNG
                             state of every rank, model config, codec id, tokenizer

A checkpoint is written into a temporary directory and renamed when complete, so a reader (or a
resumed run) never sees half a checkpoint; ``latest_checkpoint`` ignores leftovers.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not fit this model; the message names the path."""


def _flatten_optim(osd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors = {}
    for fqn, st in osd["state"].items():
        for k, v in st.items():
            t = v if isinstance(v, torch.Tensor) else torch.tensor(v)
            tensors[f"state/{fqn}/{k}"] = t.detach().to("cpu").contiguous()
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in osd["param_groups"]
    ]
    return tensors, groups


def _unflatten_optim(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        _, rest = key.split("/", 1)
        fqn, name = rest.rsplit("/", 1)
        state.setdefault(fqn, {})[name] = t
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": groups}


def rng_state() -> tuple[dict[str, torch.Tensor], Any]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    return tensors, random.getstate()


def set_rng_state(tensors: dict[str, torch.Tensor], py_state: Any) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    if py_state is not None:
        version, internal, gauss = py_state
        random.setstate((version, tuple(internal), gauss))


def _gather_objects(obj: Any) -> list[Any]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    data_state: dict[str, Any],
    keep: int = 2,
) -> Path | None:
    """Collective: every rank calls it. Rank 0 writes; returns the checkpoint directory on rank 0."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd, osd = get_state_dict(model, optimizer, options=opts)
    rng_tensors, py_rng = rng_state()
    per_rank = _gather_objects(
        {"data": data_state, "python_rng": py_rng, "rng": {k: v.tolist() for k, v in rng_tensors.items()}}
    )
    if rank != 0:
        if dist.is_initialized():
            dist.barrier()
        return None
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:07d}"
    tmp = ckpt_root / f".tmp_step_{step:07d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in msd.items()}, str(tmp / "model.safetensors"))
    otensors, groups = _flatten_optim(osd)
    save_file(otensors, str(tmp / "optimizer.safetensors"))
    for r, st in enumerate(per_rank):
        save_file(
            {k: torch.tensor(v, dtype=torch.uint8) for k, v in st["rng"].items()},
            str(tmp / f"rng_rank{r}.safetensors"),
        )
    state = {
        "step": step,
        "world_size": len(per_rank),
        "param_groups": groups,
        "data": [st["data"] for st in per_rank],
        "python_rng": [st["python_rng"] for st in per_rank],
        **extra,
    }
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    # Retention: keep the newest ``keep`` complete checkpoints.
    done = sorted(p for p in ckpt_root.glob("step_*") if (p / "state.json").exists())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted(p for p in (run_dir / "checkpoints").glob("step_*") if (p / "state.json").exists())
    return done[-1] if done else None


def read_state(ckpt: Path) -> dict[str, Any]:
    f = ckpt / "state.json"
    if not f.exists():
        raise CheckpointError(f"{ckpt} is not a complete checkpoint (no state.json)")
    return json.loads(f.read_text())


def load_model_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    f = ckpt / "model.safetensors"
    if not f.exists():
        raise CheckpointError(f"{ckpt}: model.safetensors is missing")
    return load_file(str(f))


def load_checkpoint(
    ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int
) -> dict[str, Any]:
    """Collective: restores model, optimiser and this rank's RNG; returns state.json (data, step...)."""
    state = read_state(ckpt)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if state["world_size"] != world:
        raise CheckpointError(
            f"{ckpt} was written by {state['world_size']} rank(s), this run has {world}: exact resume needs "
            "the same number of ranks (the data position is per rank)"
        )
    msd = load_model_weights(ckpt)
    osd = _unflatten_optim(load_file(str(ckpt / "optimizer.safetensors")), state["param_groups"])
    try:
        set_state_dict(
            model,
            optimizer,
            model_state_dict=msd,
            optim_state_dict=osd,
            options=StateDictOptions(full_state_dict=True),
        )
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{ckpt} does not fit this model/optimiser: {e}") from e
    set_rng_state(load_file(str(ckpt / f"rng_rank{rank}.safetensors")), state["python_rng"][rank])
    return state
