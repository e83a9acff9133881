"""Training checkpoints of both trainers (codec/trainer.py, model/trainer.py): one layout, one writer,
one reader, one set of errors. Tensors are safetensors, everything else JSON; nothing is unpickled.

Layout of ``OUT/checkpoints/step_NNNNNNN/`` (OUT = the trainer's --output)::

    <group>.safetensors        one file per tensor group the trainer hands in: "model" (full, unsharded
                               state; FSDP/DDP prefixes stripped), "optimizer" (moments and step
                               counts flattened: "<prefix>state/<param>/<name>"), the codec's "disc"
    rng_rank{R}.safetensors    rank R's torch CPU generator (and CUDA, if in use)
    data_rank{R}.safetensors   arrays of rank R's data position (shuffle buffer, prompt cache, packer
                               rows of the model's token stream; empty for the codec's audio stream)
    state.json                 written last: checkpoint_format, step, world_size, versions, per rank
                               {data position, python random state}, and the trainer's own metadata
                               (configs, optimiser param groups, codec id, ...)
    (files a trainer adds itself: the codec's config.json, so Codec.load works on a step directory)

Global numpy RNG is not saved: neither trainer draws from it (their streams own seeded generators
whose state is part of the data position).

Writing is atomic: rank 0 fills ``.tmp_step_NNNNNNN`` and renames it when complete, so a run killed
while saving leaves the previous checkpoint intact and ``latest`` never returns half a checkpoint.
Every rank calls ``save`` and ``load`` (they gather and scatter the per-rank state).

This lives in ``manifests/`` (the layer of on-disk contracts that every part may import) because both
``codec`` and ``model`` use it and ``codec`` must never import ``model``.
"""

from __future__ import annotations

import json
import platform
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

FORMAT = 1  # state.json "checkpoint_format"; bump when a reader of the old layout would misread
STATE_JSON = "state.json"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; ``reason`` is "missing", "partial" or "incompatible" and the
    message names the path and says what to do."""

    reason = "unusable"


class CheckpointMissing(CheckpointError):
    reason = "missing"


class CheckpointPartial(CheckpointError):
    reason = "partial"


class CheckpointIncompatible(CheckpointError):
    reason = "incompatible"


# ---- where checkpoints are ----
def step_dir(out: Path, step: int) -> Path:
    return Path(out) / "checkpoints" / f"step_{step:07d}"


def complete(out: Path) -> list[Path]:
    """Complete step directories under ``OUT/checkpoints``, oldest first."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(d for d in root.glob("step_*") if d.is_dir() and (d / STATE_JSON).is_file())


def latest(out: Path) -> Path | None:
    """The newest complete checkpoint, or None if there is none (a fresh run).

    Raises CheckpointIncompatible when the only step directories are of the codec trainer's older
    layout (``train_state.json``): resuming would silently restart from step 0 otherwise."""
    done = complete(out)
    if done:
        return done[-1]
    old = sorted((Path(out) / "checkpoints").glob("step_*/train_state.json"))
    if old:
        raise CheckpointIncompatible(
            f"{old[-1].parent} was written by the older codec checkpoint layout (train_state.json): "
            "resume it with the commit that wrote it, or start a new --output (its codec still loads "
            "with Codec.load)"
        )
    return None


def read_meta(ckpt: Path) -> dict[str, Any]:
    """state.json of a checkpoint (no format check: weights-only readers accept older ones)."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise CheckpointMissing(
            f"{ckpt}: no such checkpoint directory (expected OUT/checkpoints/step_NNNNNNN)"
        )
    f = ckpt / STATE_JSON
    if not f.is_file():
        raise CheckpointPartial(
            f"{ckpt} is not a complete checkpoint (no {STATE_JSON}; a save was interrupted): "
            "delete it or use an older step directory"
        )
    return json.loads(f.read_text())


def read_tensors(ckpt: Path, group: str) -> dict[str, torch.Tensor]:
    f = Path(ckpt) / f"{group}.safetensors"
    if not f.is_file():
        raise CheckpointPartial(
            f"{ckpt}: {f.name} is missing; the checkpoint is incomplete, use an older step"
        )
    return load_file(str(f))


# ---- optimiser state as flat tensors ----
def flatten_optimizer(osd: dict[str, Any], prefix: str = "") -> tuple[dict[str, torch.Tensor], list[dict]]:
    """optimizer.state_dict() (keys: param index or FQN) -> (tensors "<prefix>state/<key>/<name>",
    JSON-able param_groups)."""
    tensors = {}
    for key, st in osd["state"].items():
        for name, v in st.items():
            t = v if isinstance(v, torch.Tensor) else torch.tensor(v)
            tensors[f"{prefix}state/{key}/{name}"] = t.detach().to("cpu").contiguous()
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in osd["param_groups"]
    ]
    return tensors, groups


def unflatten_optimizer(
    tensors: dict[str, torch.Tensor], groups: list[dict], prefix: str = ""
) -> dict[str, Any]:
    """Inverse of ``flatten_optimizer``; tensors of other prefixes are ignored."""
    state: dict[Any, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if not key.startswith(prefix + "state/"):
            continue
        p, name = key[len(prefix) + len("state/") :].rsplit("/", 1)
        state.setdefault(int(p) if p.isdigit() else p, {})[name] = t
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": groups}


# ---- per-rank state ----
@dataclass
class RankState:
    """What each rank contributes: its data position (JSON + arrays) and its RNG streams."""

    data: dict[str, Any]
    data_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    rng: dict[str, torch.Tensor] = field(default_factory=dict)
    python_rng: list | None = None

    @staticmethod
    def capture(data: dict[str, Any], data_tensors: dict[str, torch.Tensor] | None = None,
                device: torch.device | None = None) -> RankState:  # fmt: skip
        """This process's RNG streams now, with the given data position."""
        rng = {"torch_cpu": torch.get_rng_state()}
        if device is not None and device.type == "cuda":
            rng["torch_cuda"] = torch.cuda.get_rng_state(device)
        version, internal, gauss = random.getstate()
        return RankState(data, dict(data_tensors or {}), rng, [version, list(internal), gauss])

    def restore_rng(self, device: torch.device | None = None) -> None:
        torch.set_rng_state(self.rng["torch_cpu"])
        if "torch_cuda" in self.rng and device is not None and device.type == "cuda":
            torch.cuda.set_rng_state(self.rng["torch_cuda"], device)
        if self.python_rng is not None:
            version, internal, gauss = self.python_rng
            random.setstate((version, tuple(internal), gauss))


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def versions() -> dict[str, str]:
    import safetensors

    return {
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }


# ---- write ----
def save(
    out: Path,
    step: int,
    mine: RankState,
    payload: Callable[[], tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]] | None = None,
    keep: int = 2,
    add_files: Callable[[Path], None] | None = None,
) -> Path | None:
    """Collective. Gathers every rank's ``RankState`` on rank 0, which calls ``payload()`` -> (tensor
    groups {file stem: tensors}, trainer metadata for state.json), writes them and the per-rank files,
    then renames; keeps the newest ``keep``. ``payload`` runs on rank 0 only: under FSDP with a
    rank-0-only gather the other ranks hold empty state dicts. ``add_files(tmp_dir)`` may write more
    files into the checkpoint before it is completed.
    Returns the checkpoint directory on rank 0, None elsewhere."""
    rank, world = _dist()
    if world > 1:
        states: list[RankState | None] | None = [None] * world if rank == 0 else None
        dist.gather_object(mine, states, dst=0)
    else:
        states = [mine]
    if rank != 0:
        _barrier()
        return None
    final = step_dir(out, step)
    tmp = final.with_name(".tmp_" + final.name)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    groups, meta = payload() if payload is not None else ({}, {})
    for name, tensors in groups.items():
        save_file(
            {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
            str(tmp / f"{name}.safetensors"),
        )
    for r, st in enumerate(states):
        save_file({k: v.contiguous() for k, v in st.rng.items()}, str(tmp / f"rng_rank{r}.safetensors"))
        save_file(
            {k: v.contiguous() for k, v in st.data_tensors.items()}, str(tmp / f"data_rank{r}.safetensors")
        )
    if add_files is not None:
        add_files(tmp)
    state = {
        "checkpoint_format": FORMAT,
        "step": step,
        "world_size": world,
        "versions": versions(),
        "data": [st.data for st in states],
        "python_rng": [st.python_rng for st in states],
        **meta,
    }
    (tmp / STATE_JSON).write_text(json.dumps(state, indent=1))  # last: marks the directory complete
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in complete(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


# ---- read ----
@dataclass
class Loaded:
    path: Path
    meta: dict[str, Any]  # state.json
    rank: RankState  # this rank's data position and RNG state (not yet restored)

    def tensors(self, group: str) -> dict[str, torch.Tensor]:
        return read_tensors(self.path, group)


def load(ckpt: Path) -> Loaded:
    """Read a checkpoint for resuming on this rank: checks format and world size, loads this rank's
    data position and RNG state. Model/optimiser tensors: ``Loaded.tensors``. The caller restores
    the RNG (``Loaded.rank.restore_rng``) LAST: building a module on the way draws from it."""
    ckpt = Path(ckpt)
    meta = read_meta(ckpt)
    if meta.get("checkpoint_format") != FORMAT:
        raise CheckpointIncompatible(
            f"{ckpt} has checkpoint_format {meta.get('checkpoint_format')}, this code reads {FORMAT}: "
            "resume it with the commit that wrote it, or start a new --output (weights still load with "
            "--warm-start / Codec.load)"
        )
    rank, world = _dist()
    if meta["world_size"] != world:
        raise CheckpointIncompatible(
            f"{ckpt} was written by {meta['world_size']} process(es), this run has {world}: exact resume "
            "needs the same number (data position and RNG are per rank); use the same torchrun "
            "--nproc-per-node / --ray-workers, or start a new --output"
        )
    st = RankState(
        data=meta["data"][rank],
        data_tensors=read_tensors(ckpt, f"data_rank{rank}"),
        rng=read_tensors(ckpt, f"rng_rank{rank}"),
        python_rng=meta["python_rng"][rank],
    )
    return Loaded(ckpt, meta, st)


# ---- full (unsharded) state of a possibly DDP/FSDP-wrapped module ----
def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Collective under FSDP: (model state, optimiser state) gathered to full tensors on the CPU,
    parameter names without wrapper prefixes. With ``cpu_offload`` the full copy is gathered to rank 0
    only (the other ranks get empty dicts): one rank's host memory holds it, not every rank's."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(
    ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, msd: dict, osd: dict
) -> None:
    """Collective under FSDP: load full states into a possibly sharded model and its optimiser."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    try:
        set_state_dict(
            model, optimizer, model_state_dict=msd, optim_state_dict=osd,
            options=StateDictOptions(full_state_dict=True),
        )  # fmt: skip
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointIncompatible(
            f"{ckpt} does not fit this model/optimiser ({e}); resume with the same --config or start a new --output"
        ) from e
