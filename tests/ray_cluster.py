"""A real multi-node Ray cluster on this machine for the fault tests: a head (no CPUs, so every
stage actor runs on a worker node) and worker nodes, each its own raylet and object store
(``ray.cluster_utils.Cluster``). Jobs connect to it with ``--address``."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
WORKER_CPUS = 2  # one node alone must hold every actor pool of a job (ingest: 1.25 CPUs)


@contextlib.contextmanager
def local_cluster(n_workers: int = 2):
    """Yields a ``Cluster`` with a head and ``n_workers`` worker nodes; shut down after.
    The dashboard stays off: a second dashboard agent collides on its port (tests/pipeline/test_ray_job.py)."""
    from ray.cluster_utils import Cluster

    old = os.environ.get("PYTHONPATH")
    # workers are started by the raylets, from this environment: the repo must be importable there
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), old) if p)
    # a dead raylet is noticed in ~1 s instead of the default ~15 s
    system = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": system,
                                      "object_store_memory": 200 * 2**20, "dashboard_port": free_port(),
                                      **own_ports()})
    try:
        for _ in range(n_workers):
            add_worker(cluster)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def add_worker(cluster):
    return cluster.add_node(num_cpus=WORKER_CPUS, object_store_memory=200 * 2**20, **own_ports())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_ports() -> dict:
    """Ports of a node's agents: Ray's fixed defaults (52365 for the dashboard agent; the head's
    API server takes 8265 even with the dashboard off) collide with every other Ray on the
    machine, and with the other nodes of this one; a raylet whose agent cannot bind dies."""
    return {"dashboard_agent_listen_port": free_port(), "metrics_export_port": free_port(),
            "runtime_env_agent_port": free_port()}


def node_of_pid(cluster, pid: int):
    """The worker node whose raylet started process ``pid`` (a worker or actor process)."""
    for node in cluster.worker_nodes:
        raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
        if pid in {c.pid for c in raylet.children(recursive=True)}:
            return node
    raise AssertionError(f"process {pid} is on no worker node of the cluster")


def wait_for(path: Path, proc, timeout: float = 300.0) -> None:
    """Wait for ``path`` to exist while job ``proc`` still runs."""
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"job ended ({proc.returncode}) before {path.name} appeared:\n{out[-6000:]}")
        if time.time() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout:.0f} s")
        time.sleep(0.2)


def lose_node_under(cluster, held: Path, release: Path) -> None:
    """Remove the worker node of the process that wrote its pid to ``held`` (a stage holding a
    batch in flight), add a fresh node, then let the retried batch go on."""
    pid = int(held.read_text())
    victim = node_of_pid(cluster, pid)
    cluster.remove_node(victim, allow_graceful=False)
    with contextlib.suppress(psutil.Error):  # its workers go with their raylet; make sure of this one
        psutil.Process(pid).kill()
    add_worker(cluster)
    release.touch()
