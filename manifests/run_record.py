"""One run of a job, recorded: its id, resolved config, package versions, status, timings and
summary, as a row of the ``runs`` table (DESIGN §5), plus Ray start-up for the jobs that use Ray.

    with RunRecord(cfg.output, job="ingest", config=cfg, packages=INGEST_PACKAGES) as run:
        start_ray(cfg.ray_address)                 # a cluster (address / $RAY_ADDRESS) or a local Ray
        ...                                        # the job; run.run_id names its outputs
        run.summary = stats                        # the counts the job reports

The row ``<out>/manifests/runs/<job>-<run_id>.parquet`` is written when the run starts
(``finished`` null, ``stats`` ``{"status": "running"}``) and rewritten when it ends, atomically
each time (manifests.store): ``stats`` is then the summary plus ``status`` (``ok``; ``failed``
with ``error`` when the block raised; ``interrupted`` on Ctrl-C) and ``run_seconds`` (wall time
of the block). A run killed outright keeps its start row: ``finished`` null. The table's schema
is unchanged (status and timings live in the ``stats`` JSON), so older rows read as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from manifests.store import write_part

log = logging.getLogger("manifests.run_record")

REPO = Path(__file__).resolve().parents[1]

# Recorded for every job; a job adds its own (RunRecord(packages=...)).
CORE_PACKAGES = ("voxforge", "torch", "ray", "numpy", "pyarrow", "webdataset", "soundfile")


def new_run_id(now: datetime | None = None) -> str:
    """``YYYYmmddTHHMMSS-xxxxxx`` (UTC, then 6 random hex digits): sorts by start time, and two
    runs started in the same second still differ."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Installed version of each distribution (None when it is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(repo: Path = REPO) -> str | None:
    """HEAD of the checkout the code runs from, or None (no git, or not a checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions(packages: Iterable[str] = (), extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What produced a run: python, the git commit, CORE_PACKAGES + ``packages``, then ``extra``."""
    names = list(dict.fromkeys([*CORE_PACKAGES, *packages]))
    return {"python": platform.python_version(), "git": git_commit(), **package_versions(names), **(extra or {})}


def config_json(config: Any) -> str:
    """A config as the JSON stored in the row: its own ``to_json()`` when it has one (which may hide
    secrets), else a dataclass's fields, a mapping, or a JSON string as given."""
    if hasattr(config, "to_json"):
        return config.to_json()
    if isinstance(config, str):
        return config
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    return json.dumps(config, sort_keys=True, default=str)


class RunRecord:
    """The ``runs`` row of one run of ``job`` writing into ``out`` (see the module docstring).

    ``run_id`` exists from construction, so outputs made before the block (a writer that needs
    the id) can carry it. ``summary`` is what the job sets before the block ends; ``set_config``
    records a config resolved during the run (the row is rewritten at once).
    """

    def __init__(self, out: str | os.PathLike, job: str, config: Any, *, packages: Iterable[str] = (),
                 extra_versions: Mapping[str, Any] | None = None, run_id: str | None = None):
        self.out, self.job = str(out), job
        self.started = datetime.now(UTC)
        self.run_id = run_id or new_run_id(self.started)
        self.config = config_json(config)
        self.versions = versions(packages, extra_versions)
        self.summary: dict[str, Any] = {}
        self.status: str | None = None
        self.finished: datetime | None = None
        self._t0: float | None = None

    @property
    def part(self) -> str:
        return f"{self.job}-{self.run_id}"

    @property
    def seconds(self) -> float:
        """Wall time since the block started (s)."""
        return 0.0 if self._t0 is None else time.monotonic() - self._t0

    def row(self) -> dict[str, Any]:
        stats = ({"status": "running"} if self.status is None else
                 {**self.summary, "status": self.status, "run_seconds": round(self.seconds, 3)})
        return {"run_id": self.run_id, "job": self.job, "started": self.started, "finished": self.finished,
                "config": self.config, "versions": json.dumps(self.versions), "stats": json.dumps(stats, default=str)}

    def write(self) -> Path:
        return write_part(self.out, "runs", self.part, [self.row()])

    def set_config(self, config: Any) -> None:
        self.config = config_json(config)
        if self._t0 is not None and self.status is None:
            self.write()

    def __enter__(self) -> RunRecord:
        self._t0 = time.monotonic()
        log.info("run %s (%s) in %s; config: %s", self.run_id, self.job, self.out, self.config)
        self.write()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.status = "ok"
        elif issubclass(exc_type, KeyboardInterrupt):
            self.status = "interrupted"
        else:
            self.status = "failed"
            self.summary = {**self.summary, "error": f"{exc_type.__name__}: {exc}"}
        self.finished = datetime.now(UTC)
        try:
            self.write()
        except OSError as e:  # the job's own error matters more than its record's
            if exc_type is None:
                raise
            log.error("could not record the end of run %s: %s", self.run_id, e)
        log.info("run %s (%s) %s after %.1f s", self.run_id, self.job, self.status, self.seconds)
        return False


def retry_settings_error(max_restarts: int, max_task_retries: int, max_errored_blocks: int) -> str | None:
    """What is wrong with a job's Ray fault-tolerance settings (README "Faults and retries"), as a
    message that says how to fix it; None when they are sound. ``max_restarts``: restarts of an
    actor whose process died (-1: always); ``max_task_retries``: resubmissions of its batch;
    ``max_errored_blocks``: batches Ray Data may drop after that (-1: any number)."""
    if max_restarts < -1 or max_errored_blocks < -1:
        return (f"--max-restarts and --max-errored-blocks are counts >= 0, or -1 for no limit; got "
                f"{max_restarts}, {max_errored_blocks}")
    if max_task_retries < 0:
        # -1 (Ray's "retry forever") would never end a run that has an input killing its actor
        return (f"--max-task-retries must be >= 0 (resubmissions of a batch whose actor died; -1, retry "
                f"forever, would never end a run whose batch kills its actor every time), got {max_task_retries}")
    if max_restarts == 0 and max_task_retries > 0:
        return ("--max-task-retries > 0 needs --max-restarts != 0 (a retry runs on the restarted actor); set "
                "--max-restarts to -1 or at least --max-task-retries")
    return None


@contextlib.contextmanager
def actor_retry_args_allowed():
    """Around ``map_batches(..., max_restarts=..., max_task_retries=...)``: Ray 2.60 takes these two
    only as extra ``**ray_remote_args``, and warns on every call that those are deprecated (to be
    removed in Ray 2.64, with no named parameter for them yet). The warning says nothing a user
    can act on, so it is silenced here, for that one message; revisit when Ray is upgraded."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        yield


def start_ray(address: str | None = None, *, num_cpus: int | None = None, object_store_mb: int | None = None,
              env_vars: Mapping[str, str] | None = None, hook_prefix: str | None = None) -> None:
    """Connect to the Ray cluster at ``address`` (else ``$RAY_ADDRESS``, as ``ray job submit``
    sets it; ``auto`` finds a cluster started with ``ray start`` on this machine), or start a new
    local Ray; nothing when Ray is already initialised in this process.

    A local Ray's workers get this checkout first on their PYTHONPATH, so that they import the
    same code as the driver (an editable install of another checkout would win otherwise), and
    ``env_vars`` (a local Ray only: on a cluster the job's own runtime environment, e.g.
    ``ray job submit --working-dir . --runtime-env-json ...``, sets the workers' environment).
    ``hook_prefix``: environment variables of this process named so (a test's fault hooks) are
    passed to a cluster's workers too, which its raylets start, not this process. Ray's own INFO
    lines ("Started a local Ray instance") stay off the console (``logging_level``).
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        log.info("connecting to Ray at %s", address)
        hooks = {k: v for k, v in os.environ.items() if hook_prefix and k.startswith(hook_prefix)}
        ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING,
                 **({"runtime_env": {"env_vars": hooks}} if hooks else {}))
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # our own single-user local cluster
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    kw: dict[str, Any] = {}
    if object_store_mb:
        kw["object_store_memory"] = int(object_store_mb) * 1024 * 1024
    log.info("starting a local Ray (no address given, no RAY_ADDRESS)")
    # address="local": a new Ray of our own. With None, Ray joins a cluster that `ray start` left
    # running on this machine (someone else's, maybe), and then refuses num_cpus/object_store_memory.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True,
             logging_level=logging.WARNING, runtime_env={"env_vars": {"PYTHONPATH": path, **(env_vars or {})}}, **kw)
