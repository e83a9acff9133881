"""Shared fixtures: the real speech folder, offline settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPEECH = Path(os.environ.get("VOXFORGE_SPEECH", REPO.parent / "shared" / "speech"))
DIARIZATION = REPO.parent / "shared" / "diarization"  # real AMI excerpts with RTTM references

# tests never touch the network: a missing model fails fast instead of hanging
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    if not (SPEECH / "MANIFEST.tsv").is_file():
        pytest.skip(f"real speech folder not found at {SPEECH} (set VOXFORGE_SPEECH)")
    return SPEECH


def load_script(path: Path, name: str):
    """A script that is not in a package (``bench/*.py``, ``tokenize/run.py``: DESIGN §2) as the
    module ``name``, registered in ``sys.modules`` (dataclasses look their module up there)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def speech_manifest() -> list[dict]:
    import csv

    with open(SPEECH / "MANIFEST.tsv", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# the end-to-end ingest, shared by tests/pipeline/test_ingest_e2e.py and tests/manifests/test_report.py
from tests.pipeline.e2e import e2e_ingested  # noqa: E402, F401
