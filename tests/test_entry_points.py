"""Entry scripts run as files (``python pipeline/ingest.py``, what ``ray job submit`` runs) import the
installed packages: no script edits sys.path, and no module next to a script shadows a package."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import REPO

ENTRY_SCRIPTS = ["pipeline/ingest.py", "codec/train.py", "codec/eval.py", "codec/serve.py", "model/train.py",
                 "model/generate.py", "tokenize/run.py"]
SCRIPT_DIRS = ("pipeline", "codec", "model", "tokenize", "bench")
PACKAGES = ("pipeline", "codec", "model", "manifests")


def _scripts() -> list[str]:
    return ENTRY_SCRIPTS + sorted(p.relative_to(REPO).as_posix() for p in (REPO / "bench").glob("*.py"))


def test_every_documented_script_is_checked():
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    documented = {m.group(1) for d in docs for m in re.finditer(
        r"python3? ((?:pipeline|codec|model|tokenize|bench)/\w+\.py)", d.read_text(encoding="utf-8"))}
    assert documented and documented <= set(_scripts()), documented - set(_scripts())
    for s in documented:
        assert (REPO / s).is_file(), f"{s} is in the docs but not in the tree"


@pytest.mark.slow
def test_every_entry_script_starts_as_a_file_from_another_directory(tmp_path):
    """``--help`` of each script run as a file from a folder outside the repository. PYTHONPATH
    holds only this checkout, standing in for its ``pip install -e .`` (the shared venv's editable
    install may point at another checkout)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)

    def run(script: str) -> tuple[str, subprocess.CompletedProcess]:
        return script, subprocess.run([sys.executable, str(REPO / script), "--help"], cwd=tmp_path, env=env,
                                      capture_output=True, text=True, timeout=600)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, _scripts()))
    bad = {s: p.stderr[-1500:] for s, p in results if p.returncode != 0 or "usage:" not in p.stdout}
    assert not bad, bad


def test_no_script_edits_sys_path():
    edit = re.compile(r"sys\.path\s*(\.\s*(insert|append|extend)\s*\(|\[[^\]]*\]\s*=)")
    offenders = [p.relative_to(REPO).as_posix() for d in (*SCRIPT_DIRS, "manifests") for p in (REPO / d).rglob("*.py")
                 if edit.search(p.read_text(encoding="utf-8"))]
    assert not offenders, offenders


def test_no_module_next_to_a_script_shadows_an_importable_module():
    """Run as a file, a script's folder is sys.path[0]: a sibling named like a package (as
    bench/codec.py once was) or like an installed module would be imported instead of it."""
    offenders = []
    for d in SCRIPT_DIRS:
        for p in (REPO / d).glob("*.py"):
            name = p.stem
            if name.startswith("__"):
                continue
            if name in PACKAGES or name in sys.stdlib_module_names:
                offenders.append(f"{d}/{p.name}")
                continue
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.origin != str(p):
                offenders.append(f"{d}/{p.name} (shadows {spec.origin})")
    assert not offenders, offenders


# Defaults changed on purpose since the capture, with the reason: (script, flag) -> what it is now.
CHANGED_SINCE_CAPTURE = {
    # issue 11: segmentation-3.0 + CAM++ + a calibrated threshold became the offline diarizer
    ("pipeline/ingest.py", "--vad-model"): {"default": "segmentation-3.0", "required": False, "choices": None,
                                            "nargs": None},
    ("pipeline/ingest.py", "--clustering"): {"default": "threshold", "required": False,
                                             "choices": ["threshold", "silhouette"], "nargs": None},
    ("pipeline/ingest.py", "--cluster-threshold"): {"default": None, "required": False, "choices": None,
                                                    "nargs": None},
    ("pipeline/ingest.py", "--overlap-threshold"): {"default": 0.1, "required": False, "choices": None,
                                                    "nargs": None},
    # issue 11: utterances end at shorter pauses, so fewer missed voice changes stay inside one
    ("pipeline/ingest.py", "--max-pause"): {"default": 0.5, "required": False, "choices": None, "nargs": None},
}


def test_the_built_command_lines_keep_every_flag_and_default():
    """The flags of the converted scripts as they were built by hand (captured before issue 13 in
    tests/cli_flags_before_issue13.json): each is still there, with its default, choices and nargs,
    unless ``CHANGED_SINCE_CAPTURE`` says why it changed."""
    import json

    from codec.train import build_parser as codec_train
    from model.generate import build_parser as generate
    from model.train import build_parser as model_train
    from pipeline.ingest import build_parser as ingest

    tokenize_run = _load_tokenize_run()

    before = json.loads((REPO / "tests" / "cli_flags_before_issue13.json").read_text())
    parsers = {"pipeline/ingest.py": ingest(), "codec/train.py": codec_train(), "model/train.py": model_train(),
               "model/generate.py": generate(), "tokenize/run.py": tokenize_run.build_parser()}
    for script, flags in before.items():
        if script not in parsers:
            continue
        now = {o: a for a in parsers[script]._actions for o in a.option_strings}
        for flag, was in flags.items():
            assert flag in now, f"{script}: {flag} is gone"
            a = now[flag]
            got = {"default": a.default, "required": a.required, "choices": list(a.choices) if a.choices else None,
                   "nargs": a.nargs}
            assert got == CHANGED_SINCE_CAPTURE.get((script, flag), was), (script, flag, got, was)


def _load_tokenize_run():
    """tokenize/run.py as a module (tokenize/ is not a package: DESIGN §2)."""
    spec = importlib.util.spec_from_file_location("tokenize_run", REPO / "tokenize" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("tokenize_run", mod)  # dataclasses resolve the config's annotations there
    spec.loader.exec_module(mod)
    return sys.modules["tokenize_run"]
