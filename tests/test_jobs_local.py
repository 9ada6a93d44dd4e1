"""The real training jobs of gangsched.jobs as local processes on 127.0.0.1, no Kubernetes: each pod's env comes from
gangsched.jobs.manifests with its peers' names rewritten to 127.0.0.1 and every replica on a port of its own.

Every run has a hard timeout (the processes are killed and the test fails), so none of these can hang CI.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from gangsched.jobs.manifests import pytorch_job, tf_job

pytestmark = pytest.mark.e2e

RUN_TIMEOUT = 240.0  # a 2-4 process job takes 10-35 s here on 2 busy cores


def _require(module: str) -> None:
    """Skip on a developer machine without the e2e extra; fail in CI, where a skip would hide a missing install."""
    if importlib.util.find_spec(module) is None:
        msg = f"{module} is not installed: pip install -e '.[e2e]'"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@dataclass
class Proc:
    name: str
    returncode: int
    out: str
    err: str

    @property
    def result(self) -> dict:
        lines = [ln for ln in self.out.splitlines() if ln.startswith("{")]
        assert lines, f"{self.name} printed no JSON summary (exit {self.returncode}); stderr:\n{self.err[-3000:]}"
        return json.loads(lines[-1])


def free_port_block(n: int) -> int:
    """A base port with base..base+n-1 all free on 127.0.0.1 (random start: parallel runs rarely collide)."""
    for _ in range(200):
        base = random.randrange(20000, 30000 - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


def local_env(pod: dict) -> dict[str, str]:
    """The pod's env with `<pod>.<job>.<ns>.svc` names pointing at 127.0.0.1."""
    meta = pod["metadata"]
    svc = re.compile(rf"[a-z0-9-]+\.{re.escape(meta['labels']['training.kubeflow.org/job-name'])}"
                     rf"\.{re.escape(meta['namespace'])}\.svc")
    return {e["name"]: svc.sub("127.0.0.1", e["value"]) for e in pod["spec"]["containers"][0]["env"]}


def run_pods(pods: list[dict], tmp_path: Path, timeout: float = RUN_TIMEOUT) -> tuple[dict[str, Proc], float]:
    """Run every pod's command at once; wait for all of them, or kill all at `timeout` and fail."""
    procs = {}
    for pod in pods:
        name = pod["metadata"]["name"]
        cmd = pod["spec"]["containers"][0]["command"]
        argv = [sys.executable, *cmd[1:]] if cmd[0] == "python" else cmd
        env = {k: v for k, v in os.environ.items() if k != "GLOO_SOCKET_IFNAME"} | local_env(pod)
        out, err = open(tmp_path / f"{name}.out", "w+"), open(tmp_path / f"{name}.err", "w+")  # noqa: SIM115
        procs[name] = (subprocess.Popen(argv, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                        start_new_session=True), out, err)
    t0 = time.monotonic()
    try:
        for name, (p, _, _) in procs.items():
            left = timeout - (time.monotonic() - t0)
            try:
                p.wait(timeout=max(left, 0.1))
            except subprocess.TimeoutExpired:
                tails = {n: (tmp_path / f"{n}.err").read_text()[-1500:] for n in procs}
                pytest.fail(f"{name} still running after {timeout:.0f}s; stderr tails: {json.dumps(tails, indent=1)}")
    finally:
        for p, out, err in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            out.close()
            err.close()
    elapsed = time.monotonic() - t0
    done = {n: Proc(n, p.returncode, (tmp_path / f"{n}.out").read_text(), (tmp_path / f"{n}.err").read_text())
            for n, (p, _, _) in procs.items()}
    return done, elapsed


def assert_ok(procs: dict[str, Proc]) -> None:
    for p in procs.values():
        assert p.returncode == 0, f"{p.name} exited {p.returncode}; stderr:\n{p.err[-3000:]}"


def test_tf_mwms_two_workers(tmp_path: Path) -> None:
    _require("tensorflow")
    pods = tf_job("mwms", "e2e", workers=2, port=free_port_block(2), distinct_ports=True)[1:]
    procs, elapsed = run_pods(pods, tmp_path)
    assert_ok(procs)
    results = [p.result for p in procs.values()]
    assert all(r["identical"] for r in results)
    assert len({r["weights_sha256"] for r in results}) == 1, results
    assert results[0]["loss_last"] < results[0]["loss_first"]  # it did train
    print(f"tf_mwms 2 workers: {elapsed:.1f}s")


def test_tf_parameter_server(tmp_path: Path) -> None:
    _require("tensorflow")
    pods = tf_job("ps", "e2e", workers=2, kind="ps", ps=1, port=free_port_block(4), distinct_ports=True)[1:]
    procs, elapsed = run_pods(pods, tmp_path)
    assert_ok(procs)
    chief = procs["ps-chief-0"].result
    assert chief["identical"] and chief["workers"] == 2 and chief["ps"] == 1
    assert chief["worker_digests"] == [chief["weights_sha256"]] * 2  # both workers read the chief's weights
    assert chief["loss_last"] < chief["loss_first"]
    for name in ("ps-ps-0", "ps-worker-0", "ps-worker-1"):
        assert procs[name].result["exit"] == "chief gone"
    print(f"tf_ps chief+1ps+2workers: {elapsed:.1f}s")


def test_torch_ddp_two_ranks(tmp_path: Path) -> None:
    _require("torch")
    pods = pytorch_job("ddp", "e2e", workers=1, port=free_port_block(1))[1:]
    procs, elapsed = run_pods(pods, tmp_path)
    # Every rank exits 0 by itself, not just prints its summary: a group still alive at interpreter teardown
    # made a rank abort after a successful run (exit -6, "terminate called without an active exception"), at
    # random. That the group is freed by destroy_process_group() is checked on every run, not only by luck.
    for p in procs.values():
        assert p.returncode == 0, f"{p.name} exited {p.returncode}; stderr:\n{p.err[-3000:]}"
        assert "terminate called" not in p.err, p.err[-3000:]
        assert "outlived destroy_process_group" not in p.err, p.err[-3000:]
    results = [p.result for p in procs.values()]
    assert [r["rank"] for r in results] == [0, 1] and all(r["world"] == 2 for r in results)
    assert all(r["identical"] for r in results)
    assert len({r["weights_sha256"] for r in results}) == 1, results
    assert results[0]["loss_last"] < results[0]["loss_first"]
    print(f"torch_ddp 2 ranks: {elapsed:.1f}s")


def test_lone_replicas_exit_at_their_startup_deadline(tmp_path: Path) -> None:
    """One replica of each job whose peers never start: each must give up (non-zero) at its 15 s deadline,
    instead of TF's hour or PyTorch's 30 min. All three at once, to keep the test short."""
    _require("tensorflow")
    _require("torch")
    deadline = 15
    base = free_port_block(8)
    mwms = tf_job("lone-mwms", "e2e", workers=2, port=base, deadline=deadline, distinct_ports=True)[1]
    ps_worker = tf_job("lone-ps", "e2e", workers=1, kind="ps", port=base + 2, deadline=deadline,
                       distinct_ports=True)[3]
    ddp_worker = pytorch_job("lone-ddp", "e2e", workers=1, port=base + 6, deadline=deadline)[2]
    assert [p["metadata"]["name"] for p in (mwms, ps_worker, ddp_worker)] == [
        "lone-mwms-worker-0", "lone-ps-worker-0", "lone-ddp-worker-0"]
    procs, elapsed = run_pods([mwms, ps_worker, ddp_worker], tmp_path, timeout=90)
    for p in procs.values():
        assert p.returncode != 0, f"{p.name} exited 0 without its peers; stdout:\n{p.out}"
    assert "Timeout" in procs["lone-mwms-worker-0"].err  # the faulthandler watchdog, not some other error
    assert "Timeout" in procs["lone-ps-worker-0"].err
    print(f"lone replicas gave up after {elapsed:.1f}s")
