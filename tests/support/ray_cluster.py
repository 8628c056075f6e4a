"""A real Ray cluster on loopback for tests: `ray start --head` (+ worker nodes), stopped by pid.

`ray stop` kills every Ray process of the user on the machine, other people's
included, so this never calls it: each node runs `ray start --block` in its
own process group, which is killed on exit, and any process whose command
line names this cluster's private temp dir is killed by pid after that.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

from tests.conftest import free_port

BIN = Path(sys.executable).parent


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_DEDUP_LOGS="0",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", RAY_raylet_start_wait_time_s="120")
    env.pop("RAY_ADDRESS", None)
    return env


def kill_tree(pids: list[int], marker: str | None = None) -> None:
    """SIGKILL these process groups and every process whose command line contains `marker`."""
    import psutil

    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if not marker:
        return
    me = os.getpid()
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.info["pid"] != me and marker in " ".join(p.info["cmdline"] or []):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


class RayCluster:
    """`with RayCluster(workers=1, dashboard=True) as c:` then `c.env` for `ray job submit` / drivers."""

    def __init__(self, num_cpus: int = 1, workers: int = 0, dashboard: bool = False, timeout_s: float = 120):
        self.num_cpus, self.workers, self.dashboard, self.timeout_s = num_cpus, workers, dashboard, timeout_s
        # Short: Ray puts unix sockets under it (107-byte limit).
        self.temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
        self.port = free_port()
        self.dashboard_port = free_port()
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for a driver or `ray job submit` that must use this cluster."""
        return {**base_env(), "RAY_ADDRESS": self.address, "RAY_API_SERVER_ADDRESS": self.dashboard_url}

    def _start(self, args: list[str], temp_dir: str | None = None) -> None:
        log = Path(self.temp_dir) / f"node{len(self.procs)}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.procs.append(subprocess.Popen(
                # Ports that default to fixed numbers get free ones: several clusters may run side by side.
                [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", f"--num-cpus={self.num_cpus}",
                 f"--temp-dir={temp_dir or self.temp_dir}", f"--dashboard-agent-listen-port={free_port()}", *args],
                env=base_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            ))

    def _wait_nodes(self, n: int) -> None:
        deadline = time.monotonic() + self.timeout_s
        probe = ("import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
                 "print(sum(1 for x in ray.nodes() if x['Alive']))")
        while time.monotonic() < deadline:
            for p, log in zip(self.procs, self.logs):
                if p.poll() is not None:
                    raise RuntimeError(f"ray start exited with {p.returncode}: {log.read_text()[-2000:]}")
            try:
                out = subprocess.run([sys.executable, "-c", probe, self.address], env=base_env(),
                                     capture_output=True, text=True, timeout=30, check=False)
            except subprocess.TimeoutExpired:
                continue
            if out.returncode == 0 and out.stdout.strip().isdigit() and int(out.stdout.strip()) >= n:
                return
            time.sleep(1)
        raise TimeoutError(f"Ray cluster at {self.address} did not get {n} nodes in {self.timeout_s} s")

    def _start_head(self) -> None:
        # Even without the dashboard UI the head runs a dashboard process: give it a free port too.
        head = ["--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
                f"--include-dashboard={'true' if self.dashboard else 'false'}",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={free_port()}"]
        self._start(head)
        self._wait_nodes(1)

    def __enter__(self) -> Self:
        try:
            for attempt in range(3):
                # `ray start` gives a node 30 s to register (hard-coded); a busy machine can miss that.
                try:
                    self._start_head()
                    break
                except (RuntimeError, TimeoutError):
                    self.stop()
                    if attempt == 2:
                        raise
                    self.procs, self.logs = [], []
                    self.port, self.dashboard_port = free_port(), free_port()
            for i in range(self.workers):
                # Its own temp dir, inside ours: nodes sharing one would delete each other's job working dirs.
                self._start([f"--address={self.address}", "--node-ip-address=127.0.0.1"], f"{self.temp_dir}/w{i}")
            if self.workers:
                self._wait_nodes(1 + self.workers)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        # Killed, not stopped: a disposable cluster has nothing to save, and `ray start --block` took
        # 15 s to act on SIGTERM. Its process groups first, then anything left that names our temp dir.
        kill_tree([p.pid for p in self.procs], marker=self.temp_dir)
        for p in self.procs:
            p.wait()

    def cleanup(self) -> None:
        shutil.rmtree(self.temp_dir, ignore_errors=True)
