"""manifests/checkpoint.py: the one checkpoint layout of both trainers -- atomic write, retention, RNG
per rank, data position, and the typed errors for a missing, partial or incompatible checkpoint.
(The trainers' exact-resume tests are in tests/codec/test_train.py and tests/model/test_trainer.py.)"""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

from manifests import checkpoint as ck


def _trained():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.9))
    for _ in range(2):
        model(torch.randn(5, 4)).square().sum().backward()
        opt.step()
    return model, opt


def _save(out, step, model, opt, data=None, keep=2):
    otensors, groups = ck.flatten_optimizer(opt.state_dict(), "opt/")
    mine = ck.RankState.capture(data or {"consumed": step}, {"w0.buf": torch.arange(step)})
    payload = lambda: ({"model": model.state_dict(), "optimizer": otensors}, {"param_groups": groups})  # noqa: E731
    return ck.save(out, step, mine, payload, keep=keep)


def test_round_trip_restores_weights_optimiser_rng_and_data_position(tmp_path):
    model, opt = _trained()
    random.seed(5)
    torch.manual_seed(6)
    path = _save(tmp_path, 3, model, opt, {"consumed": 3, "workers": [{"offset": 1}]})
    want = (torch.rand(3), random.random())
    assert ck.latest(tmp_path) == path == tmp_path / "checkpoints" / "step_0000003"
    assert sorted(p.name for p in path.iterdir()) == [
        "data_rank0.safetensors", "model.safetensors", "optimizer.safetensors", "rng_rank0.safetensors",
        "state.json",
    ]  # fmt: skip

    loaded = ck.load(path)
    assert loaded.meta["checkpoint_format"] == ck.FORMAT and loaded.meta["versions"]["torch"] == torch.__version__
    assert loaded.rank.data == {"consumed": 3, "workers": [{"offset": 1}]}
    assert torch.equal(loaded.rank.data_tensors["w0.buf"], torch.arange(3))
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    fresh.load_state_dict(loaded.tensors("model"))
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    fresh_opt.load_state_dict(
        ck.unflatten_optimizer(loaded.tensors("optimizer"), loaded.meta["param_groups"], "opt/")
    )
    a, b = opt.state_dict(), fresh_opt.state_dict()
    assert a["param_groups"] == b["param_groups"] and b["param_groups"][0]["betas"] == (0.8, 0.9)
    for i, st in a["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][i][k])), (i, k)
    torch.rand(7), random.random()  # move both generators on
    loaded.rank.restore_rng()
    assert torch.equal(torch.rand(3), want[0]) and random.random() == want[1]


def test_retention_and_leftovers_of_an_interrupted_save(tmp_path):
    model, opt = _trained()
    for step in (1, 2, 3):
        _save(tmp_path, step, model, opt)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_0000002", "step_0000003"]
    # a save killed before its rename, and one killed before state.json: neither is "latest"
    (root / ".tmp_step_0000004").mkdir()
    shutil.copytree(root / "step_0000003", root / "step_0000005")
    (root / "step_0000005" / "state.json").unlink()
    assert ck.latest(tmp_path) == root / "step_0000003"
    with pytest.raises(ck.CheckpointPartial, match="not a complete checkpoint.*older step") as e:
        ck.load(root / "step_0000005")
    assert e.value.reason == "partial"
    (root / "step_0000003" / "optimizer.safetensors").unlink()
    with pytest.raises(ck.CheckpointPartial, match="optimizer.safetensors is missing"):
        ck.load(root / "step_0000003").tensors("optimizer")


def test_missing_and_incompatible_checkpoints_say_what_to_do(tmp_path):
    assert ck.latest(tmp_path) is None  # a fresh run
    with pytest.raises(ck.CheckpointMissing, match="no such checkpoint directory") as e:
        ck.load(tmp_path / "checkpoints" / "step_0000009")
    assert e.value.reason == "missing" and isinstance(e.value, ck.CheckpointError)
    model, opt = _trained()
    path = _save(tmp_path, 1, model, opt)
    state = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps({**state, "world_size": 2, "data": [{}, {}]}))
    with pytest.raises(ck.CheckpointIncompatible, match="written by 2 process.*same number"):
        ck.load(path)
    del state["checkpoint_format"]  # written before this module
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(ck.CheckpointIncompatible, match="checkpoint_format None.*new --output") as e:
        ck.load(path)
    assert e.value.reason == "incompatible"
    assert ck.read_meta(path)["step"] == 1  # weights-only readers (generate, --warm-start) still can


def test_the_codec_trainers_older_layout_is_not_silently_ignored(tmp_path):
    old = tmp_path / "checkpoints" / "step_0000500"
    old.mkdir(parents=True)
    (old / "train_state.json").write_text("{}")
    with pytest.raises(ck.CheckpointIncompatible, match="older codec checkpoint layout"):
        ck.latest(tmp_path)
