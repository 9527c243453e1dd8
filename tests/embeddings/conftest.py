"""A real Ray cluster on this machine for the Ray engine's tests: a head node and a worker node, each started with
``ray start`` as its own process tree (in a temporary ``--temp-dir``, on free ports), so a test can kill the worker
node the way a machine dies. Only the processes started here are ever stopped, by their ids."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).with_name("ray"))
# Notice a dead node in about a second, not the default 15 s (GCS health checks: period x failure threshold).
FAST_FAILURE_DETECTION = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "300",
                          "RAY_health_check_timeout_ms": "300", "RAY_health_check_failure_threshold": "3"}
OBJECT_STORE_BYTES = str(200 * 1024**2)  # small: the machine is shared


def cluster_auth(temp_dir: Path) -> dict[str, str]:
    """Token authentication with a token of this cluster's own (in its temp dir), for its nodes and for the test
    process as a driver: a token another Ray user left in ``~/.ray/auth_token`` then changes nothing."""
    token = temp_dir / "auth_token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _process_tree(pid: int) -> list:
    """The process and every descendant (the raylet's workers run in their own sessions, so a process group would
    miss them)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _kill_tree(pid: int) -> None:
    import psutil

    tree = _process_tree(pid)
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=10)


@dataclass
class LocalCluster:
    """A head and worker nodes started by ``ray start --block``, one process tree each."""

    address: str
    temp_dir: Path
    head: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    seconds_to_start: float | None = None

    @property
    def logs(self) -> list[Path]:
        return [self.temp_dir / "head.log", self.temp_dir / "worker.log"]

    def wait_until_started(self, timeout: float = 90.0) -> None:
        """Block until every node has said ``Ray runtime started`` (the worker retries until the head answers)."""
        if self.seconds_to_start is not None:
            return
        processes = [self.head, *self.workers]
        for log in self.logs:
            deadline = self.started + timeout
            while not (log.exists() and "Ray runtime started" in log.read_text()):
                if any(p.poll() is not None for p in processes) or time.perf_counter() > deadline:
                    tail = "\n".join(f"--- {f.name}\n{f.read_text()[-1500:]}" for f in self.logs if f.exists())
                    raise RuntimeError(f"Ray cluster: the {log.stem} node did not start\n{tail}")
                time.sleep(0.1)
        self.seconds_to_start = time.perf_counter() - self.started

    def kill_worker(self, index: int = 0) -> None:
        """SIGKILL the worker node: its ``ray start``, raylet, agents and every worker process on it."""
        _kill_tree(self.workers[index].pid)

    def alive(self) -> bool:
        return self.head.poll() is None and all(worker.poll() is None for worker in self.workers)

    def stop(self) -> None:
        for process in [*self.workers, self.head]:
            _kill_tree(process.pid)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "w") as handle:
        return subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)


def _node_ip() -> str:
    """The address Ray advertises for this machine (the interface that routes outwards; no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("8.8.8.8", 80))
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def launch_local_cluster(temp_dir: Path, head_cpus: int = 2, worker_cpus: int = 1) -> LocalCluster:
    """Start a head (``head_cpus``) and one worker node (``worker_cpus``) together, without waiting for them (see
    :meth:`LocalCluster.wait_until_started`), so the tests' other set-up runs meanwhile.

    The head gets more CPUs than one actor needs, so an actor lost with the worker node can be restarted on it.
    """
    env = {**os.environ, **FAST_FAILURE_DETECTION, **cluster_auth(temp_dir), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    address = f"{_node_ip()}:{_free_port()}"
    common = ["--temp-dir", str(temp_dir), "--object-store-memory", OBJECT_STORE_BYTES]
    head = _start(["--head", "--num-cpus", str(head_cpus), "--port", address.rsplit(":", 1)[1],
                   "--include-dashboard=false", "--dashboard-port", str(_free_port()),
                   "--dashboard-agent-listen-port", str(_free_port()), *common], temp_dir / "head.log", env)
    cluster = LocalCluster(address=address, temp_dir=temp_dir, head=head)
    try:
        cluster.workers.append(_start(["--address", address, "--num-cpus", str(worker_cpus),
                                       "--dashboard-agent-listen-port", str(_free_port()), *common],
                                      temp_dir / "worker.log", env))
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _cannot_start(exc: Exception) -> None:
    """Outside CI a cluster that cannot start skips the Ray tests; in CI (``CI`` set) it fails them."""
    if os.environ.get("CI"):
        pytest.fail(f"could not start a local Ray cluster: {exc}")
    pytest.skip(f"could not start a local Ray cluster: {str(exc)[:500]}")


@pytest.fixture(scope="session")
def ray_cluster_launched():
    """The cluster's processes, launched (not yet waited for); stopped, by their ids, at the end of the session.

    This process connects to it as a driver with the cluster's token, through the environment."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    saved = {name: os.environ.get(name) for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")}
    os.environ.update(cluster_auth(temp_dir))
    os.environ.pop("RAY_ADDRESS", None)
    _reread_ray_config()
    cluster = None
    try:
        try:
            cluster = launch_local_cluster(temp_dir)
        except Exception as exc:
            _cannot_start(exc)
        yield cluster
    finally:
        if "ray" in sys.modules:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _reread_ray_config()


def _reread_ray_config() -> None:
    """Ray reads ``RAY_AUTH_MODE`` into its config once per process; if it is already imported, have it read the
    environment again (what Ray itself does when it turns token authentication on)."""
    if "ray" in sys.modules:
        from ray._raylet import Config

        Config.initialize("")


@pytest.fixture()
def ray_cluster(ray_cluster_launched: LocalCluster) -> LocalCluster:
    """A running head + worker cluster (put it last among a test's fixtures: it waits for the start, which the
    fixtures before it overlap)."""
    try:
        ray_cluster_launched.wait_until_started()
    except Exception as exc:
        _cannot_start(exc)
    return ray_cluster_launched
