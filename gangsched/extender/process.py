"""`gangsched extender` as a child process on loopback, for the demo and the benchmarks: its verbs on one port,
/healthz and /metrics on another (both picked free unless given)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from gangsched.devcluster.cluster import free_ports


class ExtenderError(RuntimeError):
    pass


class ExtenderProcess:
    def __init__(self, kubeconfig: Path | str, log_path: Path, scheduler_name: str, *extra: str,
                 port: int | None = None, health_port: int | None = None):
        picked = free_ports(2)
        self.port = port or picked[0]
        self.health_port = health_port or picked[1]
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "gangsched.cli", "extender", "--kubeconfig", str(kubeconfig),
               "--scheduler-name", scheduler_name, "--address", "127.0.0.1", "--port", str(self.port),
               "--health-port", str(self.health_port), *extra]
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def _get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError:
            return 0, ""

    def wait_ready(self, timeout: float = 60.0) -> ExtenderProcess:
        """Until /healthz says its informers have synced; ExtenderError (with the log's tail) if it exits or
        the deadline passes."""
        deadline = time.monotonic() + timeout
        while self._get("/healthz", 2.0)[0] != 200:
            if self.proc.poll() is not None:
                raise ExtenderError(f"gangsched extender exited ({self.proc.returncode}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ExtenderError(f"gangsched extender not ready within {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.2)
        return self

    def metrics(self) -> str:
        """Its /metrics text ("" if it cannot be reached)."""
        return self._get("/metrics")[1]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
