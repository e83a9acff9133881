"""TrainCheckpoint: the full training state on disk as safetensors + JSON (never pickle).

Layout of a training output directory::

    OUT/model.safetensors, OUT/config.json        latest codec (Codec.load(OUT) works)
    OUT/checkpoints/step_0000500/
        model.safetensors, config.json            the codec at that step (Codec.load works too)
        train_state.safetensors                   discriminator, both optimisers, RNG states (rng.*.<rank>)
        train_state.json                          step, data position, optimiser hyper-parameters,
                                                  python RNG per rank, resolved config
    OUT/train_log.jsonl                           one JSON object per logged step

A step directory is written under a temporary name and renamed when complete, so a run killed while
saving leaves the previous checkpoint intact; resume takes the newest complete one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"


class CheckpointError(RuntimeError):
    """A training checkpoint is missing or inconsistent."""


def optimizer_to_flat(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state -> (tensors named '<prefix>.<param index>.<name>', JSON-able param_groups)."""
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"{prefix}.{idx}.{name}"] = t.detach().to("cpu").contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def optimizer_from_flat(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict, prefix: str
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if not k.startswith(prefix + "."):
            continue
        _, idx, name = k.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def step_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step_{step:07d}"


def latest_step_dir(out: Path) -> Path | None:
    root = out / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(d for d in root.glob("step_*") if d.is_dir() and (d / STATE_JSON).is_file())
    return done[-1] if done else None


def write(
    out: Path,
    step: int,
    codec: Any,
    tensors: dict[str, torch.Tensor],
    meta: dict,
    keep: int = 2,
) -> Path:
    """Atomically write step `step` (codec + extra tensors + JSON meta); keep the newest `keep`."""
    final = step_dir(out, step)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    codec.save(tmp)
    save_file(tensors, str(tmp / STATE_TENSORS))
    (tmp / STATE_JSON).write_text(json.dumps(meta, indent=1))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    # The top-level copy is what users load; each file is replaced atomically by Codec.save.
    codec.save(out)
    old = sorted(
        d for d in (out / "checkpoints").glob("step_*") if d.is_dir() and not d.name.endswith(".tmp")
    )
    for d in old[:-keep]:
        shutil.rmtree(d, ignore_errors=True)
    return final


def read(directory: Path) -> tuple[dict[str, torch.Tensor], dict]:
    t, j = directory / STATE_TENSORS, directory / STATE_JSON
    if not t.is_file() or not j.is_file():
        raise CheckpointError(f"{directory}: incomplete checkpoint (needs {STATE_TENSORS} and {STATE_JSON})")
    return load_file(str(t)), json.loads(j.read_text())
