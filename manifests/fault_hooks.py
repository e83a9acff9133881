"""Test fault hooks shared by the jobs' Ray workers (the ingest's stages, the tokenize encoder).

They only act when a test sets their environment variables (``VOXFORGE_STAGE_FAULT``,
``VOXFORGE_ENCODE_FAULT``); here so that ``pipeline`` and ``codec`` need not import each other.
"""

from __future__ import annotations

import os
import time


def hold_until_released(marker_dir: str, tag: str, timeout: float = 600.0) -> None:
    """Test hook: announce this process (``held-<tag>`` holds its pid) and wait for ``release``
    in ``marker_dir``; returns at once when released before (a retry after the test's fault)."""
    release = os.path.join(marker_dir, "release")
    if os.path.exists(release):
        return
    held = os.path.join(marker_dir, f"held-{tag}")
    with open(held + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(held + ".tmp", held)  # the test never reads half a pid
    deadline = time.time() + timeout
    while not os.path.exists(release) and time.time() < deadline:
        time.sleep(0.1)
