"""Shared fixtures: the real speech folder, offline settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPEECH = Path(os.environ.get("VOXFORGE_SPEECH", REPO.parent / "shared" / "speech"))

# tests never touch the network: a missing model fails fast instead of hanging
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    if not (SPEECH / "MANIFEST.tsv").is_file():
        pytest.skip(f"real speech folder not found at {SPEECH} (set VOXFORGE_SPEECH)")
    return SPEECH


def speech_manifest() -> list[dict]:
    import csv

    with open(SPEECH / "MANIFEST.tsv", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# the end-to-end ingest, shared by tests/pipeline/test_ingest_e2e.py and tests/manifests/test_report.py
from tests.pipeline.e2e import e2e_ingested  # noqa: E402, F401
