"""DESIGN §2: tokenize/ must not shadow the standard library; no stdlib-named modules."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import REPO


def test_stdlib_tokenize_is_not_shadowed():
    assert not (REPO / "tokenize" / "__init__.py").exists()
    code = ("import inspect, tokenize, sysconfig, os;"
            "src = inspect.getsource(inspect.getsource);"
            "assert os.path.dirname(tokenize.__file__) == sysconfig.get_paths()['stdlib'], tokenize.__file__;"
            "print('ok')")
    # from the repo root, where a package named tokenize would win
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr


def test_no_module_is_named_like_a_stdlib_module():
    stdlib = set(sys.stdlib_module_names)
    offenders = []
    for pkg in ("pipeline", "codec", "model", "manifests", "tokenize", "bench"):
        for f in (REPO / pkg).rglob("*.py"):
            if f.stem in stdlib and f.stem != "__main__":
                offenders.append(str(f.relative_to(REPO)))
    assert not offenders, offenders
    assert Path(sysconfig.get_paths()["stdlib"]).is_dir()
