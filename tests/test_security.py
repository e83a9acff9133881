"""Security checks over the code (grep level, with Python's own parser): nothing unpickles a model or
checkpoint file, checkpoints are safetensors, and no output or temporary path is built from an
input file's name. The README's "Security of a cluster job" says what a Ray head exposes."""

from __future__ import annotations

import ast
from pathlib import Path

import fsspec

from tests.conftest import REPO

CODE_DIRS = ("pipeline", "codec", "model", "tokenize", "manifests", "bench", "scripts", "tests")
# pickle of the job's own rows between Ray stages (built in the same job, never read from a file)
PICKLE_ALLOWED = {"pipeline/ray_adapter.py"}


def _calls():
    for d in CODE_DIRS:
        for path in sorted((REPO / d).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=rel)):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    owner = node.func.value
                    name = owner.id if isinstance(owner, ast.Name) else ast.unparse(owner)
                    yield rel, node.lineno, name, node.func.attr, node


def _kw(node: ast.Call, name: str):
    for k in node.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<not a constant>"
    return None


def test_every_torch_load_passes_weights_only_true():
    bad = [f"{f}:{ln}" for f, ln, owner, attr, node in _calls()
           if owner == "torch" and attr == "load" and _kw(node, "weights_only") is not True]
    assert not bad, f"torch.load without weights_only=True (unpickles arbitrary code): {bad}"


def test_checkpoints_are_never_pickled():
    saves = [f"{f}:{ln}" for f, ln, owner, attr, _ in _calls()
             if owner == "torch" and attr == "save" and not f.startswith("tests/")]
    assert not saves, f"torch.save pickles; checkpoints are safetensors + JSON: {saves}"
    pickles = [f"{f}:{ln}" for f, ln, owner, attr, _ in _calls()
               if owner in ("pickle", "cloudpickle", "joblib", "dill") and attr in ("load", "loads")
               and f not in PICKLE_ALLOWED]
    assert not pickles, f"unpickling outside {PICKLE_ALLOWED}: {pickles}"
    np_pickle = [f"{f}:{ln}" for f, ln, owner, attr, node in _calls()
                 if owner in ("np", "numpy") and attr == "load" and _kw(node, "allow_pickle") not in (None, False)]
    assert not np_pickle, f"np.load with allow_pickle: {np_pickle}"


def test_a_remote_inputs_temporary_copy_is_not_named_after_it():
    from pipeline.stages import _local_copy

    fs = fsspec.filesystem("memory")
    for name in ("LEAK.sh", "LEAK.flac.$(reboot)", "LEAK;rm -rf ~.FLAC"):
        fs.pipe(f"/voxforge-sec/{name}", b"RIFF")
        with _local_copy(f"memory:///voxforge-sec/{name}") as local:
            assert "LEAK" not in local and "$" not in local and ";" not in local
            assert Path(local).suffix in ("", ".flac"), local
    fs.rm("/voxforge-sec", recursive=True)


def test_readme_says_what_a_ray_head_exposes():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    sec = text[text.index("### Security of a cluster job"):]
    sec = sec[: sec.index("\n#", 10)]
    for needed in ("8265", "127.0.0.1", "--dashboard-host", "RAY_AUTH_MODE=token", "ray get-auth-token",
                   "weights_only=True", "safetensors", "source_id"):
        assert needed in sec, needed
