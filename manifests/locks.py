"""One job at a time per output tree: an exclusive ``flock`` on a lock file, held while the job's
process lives and dropped by the OS when it dies (even by SIGKILL), so a killed job never leaves a
stale lock behind. Jobs that recover at start-up (delete a killed run's uncommitted part) need it:
a second job would delete the first one's unfinished part and take the same part number."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class JobLocked(RuntimeError):
    """Another job holds the lock; the message says which file and what to do."""


def exclusive_lock(path: str | os.PathLike, what: str, hint: str) -> IO:
    """Take the lock at ``path`` without waiting, or raise :class:`JobLocked` with
    ``"another {what} is running ... ; {hint}"``. Keep the returned file open for as long as the
    job runs (``close()`` releases it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")  # noqa: SIM115 - kept open for the whole run
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.close()
        raise JobLocked(f"another {what} is running (lock {path} is held); {hint}") from e
    return f
