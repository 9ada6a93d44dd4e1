"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and KWOK as detached processes.

Everything lives in one state directory (certificates, kubeconfig, logs, pids, etcd data), so a cluster can be
found again by another process (`gangsched devcluster status`/`down`) and several clusters can run side by side:
every port is picked free at start. There is no controller-manager: namespaces never finish terminating, nothing
creates ServiceAccounts or lifts node taints, so the ServiceAccount and TaintNodesByCondition admission plugins are
off, and nothing evicts pods from a NotReady node.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gangsched.devcluster import pki as pki_mod
from gangsched.devcluster.binaries import Binaries, coscheduler_cache_dir, ensure_binaries

REPO_CRDS = Path(__file__).resolve().parents[2] / "deploy" / "crds"
SERVICE_CIDR = "10.0.0.0/24"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
# Start order; `down` stops in reverse.
CORE = ("etcd", "kube-apiserver", "kwok")
# The Workload API (KEP-4671): scheduling.k8s.io/v1beta1 Workload and PodGroup, pods naming their group in
# spec.schedulingGroup, kube-scheduler's PodGroup cycle (GangScheduling plugin). Beta in 1.37, off by default.
WORKLOAD_API = "scheduling.k8s.io/v1beta1"
WORKLOAD_GATES = ("GenericWorkload",)


def minor_version(version: str) -> tuple[int, int]:
    """(1, 37) of "v1.37.2"; (0, 0) if unknown."""
    parts = version.lstrip("v").split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return 0, 0


def serves_workload_api(version: str) -> bool:
    return minor_version(version) >= (1, 37)


class DevClusterError(RuntimeError):
    """The control plane did not come up; the message names the log to read."""


def default_state_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gangsched" / "devcluster"


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (all held open while choosing, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def pid_alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped) counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def stop_process_group(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group led by `pid`, then SIGKILL what is left after `timeout`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it is our child, so it is not a zombie forever
            if not pid_alive(pid):
                return
            time.sleep(0.05)


@dataclass
class ProcessHandle:
    """A detached control-plane process (its own session and process group), with its log file."""

    name: str
    pid: int
    log: Path
    pidfile: Path
    port: int | None = None
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        return pid_alive(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        stop_process_group(self.pid, timeout)
        if self._popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=1)
        self.pidfile.unlink(missing_ok=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _spawn(name: str, cmd: list[str], state_dir: Path, port: int | None = None,
           env: dict[str, str] | None = None) -> ProcessHandle:
    logs = state_dir / "logs"
    pids = state_dir / "pids"
    logs.mkdir(parents=True, exist_ok=True)
    pids.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        # start_new_session: the process outlives this Python process and its group is killed as one by `down`.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=state_dir, env=env)
    pidfile = pids / f"{name}.pid"
    pidfile.write_text(f"{proc.pid}\n")
    return ProcessHandle(name, proc.pid, log, pidfile, port, proc)


class DevCluster:
    """A loopback control plane rooted at `state_dir`.

    `up()` starts (or finds already running) etcd, kube-apiserver and KWOK, applies the CRDs and waits until all
    are ready; `down()` stops every process started from this state dir, schedulers included.
    """

    def __init__(self, state_dir: Path | str | None = None, binaries: Binaries | None = None) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self._binaries = binaries
        self.processes: dict[str, ProcessHandle] = {}

    # ---- paths and identity -------------------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def _state_file(self) -> Path:
        return self.state_dir / "cluster.json"

    @property
    def pki(self) -> pki_mod.Pki:
        return pki_mod.Pki(self.state_dir / "pki")

    def _state(self) -> dict[str, Any]:
        try:
            return json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def server(self) -> str:
        port = self._state().get("ports", {}).get("apiserver")
        if not port:
            raise DevClusterError(f"no cluster in {self.state_dir}: run `gangsched devcluster up` first")
        return f"https://127.0.0.1:{port}"

    @property
    def binaries(self) -> Binaries:
        if self._binaries is None:
            self._binaries = ensure_binaries()
        return self._binaries

    def _is_state_dir(self) -> bool:
        return any((self.state_dir / n).exists() for n in ("cluster.json", "pids", "pki", "kubeconfig"))

    # ---- lifecycle ----------------------------------------------------------------------------------------------
    def _recorded_pids(self) -> dict[str, int]:
        pids: dict[str, int] = {}
        for f in sorted((self.state_dir / "pids").glob("*.pid")):
            with contextlib.suppress(ValueError, OSError):
                pids[f.stem] = int(f.read_text().strip())
        return pids

    def running(self) -> bool:
        """All core processes recorded in the state dir are alive and the apiserver answers /readyz."""
        pids = self._recorded_pids()
        if not all(name in pids and pid_alive(pids[name]) for name in CORE):
            return False
        try:
            return self._readyz(timeout=3)
        except DevClusterError:
            return False

    def up(self, wait: bool = True, timeout: float = 120.0, progress: Any = print) -> DevCluster:
        """Start the control plane; a no-op when this state dir's cluster is already running."""
        import cryptography  # noqa: F401  (the devcluster extra, for pki.generate: fail before building binaries)

        if self.running():
            self._adopt()
            return self
        if self.state_dir.exists() and any(self.state_dir.iterdir()):
            if not self._is_state_dir():
                raise DevClusterError(f"{self.state_dir} is not empty and holds no devcluster: choose another --dir")
            self.down()  # stale or half-started: clean it so ports, pids and etcd data start fresh
        b = self.binaries
        t0 = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        etcd_port, peer_port, api_port, kwok_port = free_ports(4)
        ports = {"etcd": etcd_port, "etcd_peer": peer_port, "apiserver": api_port, "kwok": kwok_port}
        self._state_file.write_text(json.dumps({"ports": ports, "created": time.time()}, indent=2))
        p = pki_mod.generate(self.pki.dir)
        self._write_kubeconfig(api_port)

        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self.processes["etcd"] = _spawn("etcd", [
            str(b.etcd), "--name=devcluster", f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=devcluster={peer_url}", "--initial-cluster-state=new",
            "--quota-backend-bytes=8589934592",  # 8 GiB: benchmarks with many objects must not hit the 2 GiB alarm
            # A throwaway cluster needs no durability; fsync per write would cap object creation at disk latency.
            "--unsafe-no-fsync", "--snapshot-count=50000", "--log-level=warn",
        ], self.state_dir, etcd_port)

        self.processes["kube-apiserver"] = _spawn("kube-apiserver", [
            str(b.kube_apiserver), f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
            f"--tls-cert-file={p.apiserver_crt}", f"--tls-private-key-file={p.apiserver_key}",
            f"--client-ca-file={p.ca_crt}",
            f"--service-account-key-file={p.sa_pub}", f"--service-account-signing-key-file={p.sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            # No controller-manager: nothing would create ServiceAccounts (the plugin would reject every pod), and
            # nothing would lift the not-ready taint TaintNodesByCondition puts on every new node.
            "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition",
            # Benchmarks hammer the apiserver from one client identity; APF would queue them in one flow.
            "--enable-priority-and-fairness=false",
            "--max-requests-inflight=3000", "--max-mutating-requests-inflight=1000",
            # The loopback advertise address is invalid in Endpoints; nothing in-cluster needs the kubernetes service.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true", "--profiling=false", "--v=1",
            # pods/log of the kubelet node (kubeletnode.py): its host name does not resolve, its IP does
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            *self._workload_api_flags(runtime_config=True),
        ], self.state_dir, api_port)
        if wait:
            self._wait_ready(timeout)
            self.apply_crds()
        self.processes["kwok"] = _spawn("kwok", [
            str(b.kwok), f"--kubeconfig={self.kubeconfig}", f"--server-address=127.0.0.1:{kwok_port}",
            # Only nodes annotated as fake: real process nodes added later must not be touched by KWOK.
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}={KWOK_ANNOTATION_VALUE}",
        ], self.state_dir, kwok_port)
        if wait:
            self._wait_kwok(timeout)
            progress(f"devcluster up in {time.monotonic() - t0:.1f} s: {self.server} (state {self.state_dir})")
        return self

    @property
    def workload_api(self) -> bool:
        """The control plane serves the Workload API (scheduling.k8s.io/v1beta1 PodGroups, spec.schedulingGroup)."""
        return serves_workload_api(self.binaries.k8s_version)

    def _workload_api_flags(self, runtime_config: bool = False) -> list[str]:
        if not self.workload_api:
            return []
        gates = [f"--feature-gates={','.join(f'{g}=true' for g in WORKLOAD_GATES)}"]
        return gates + ([f"--runtime-config={WORKLOAD_API}=true"] if runtime_config else [])

    def _adopt(self) -> None:
        """Fill `processes` from the pid files of a cluster started by another process."""
        ports = self._state().get("ports", {})
        portmap = {"etcd": ports.get("etcd"), "kube-apiserver": ports.get("apiserver"), "kwok": ports.get("kwok")}
        for name, pid in self._recorded_pids().items():
            if name not in self.processes:
                self.processes[name] = ProcessHandle(name, pid, self.state_dir / "logs" / f"{name}.log",
                                                     self.state_dir / "pids" / f"{name}.pid", portmap.get(name))

    def down(self, keep: bool = False) -> None:
        """Stop every process of this state dir (schedulers first, etcd last) and remove it unless `keep`."""
        pids = self._recorded_pids()
        order = [n for n in pids if n not in CORE] + [n for n in reversed(CORE) if n in pids]
        for name in order:
            stop_process_group(pids[name])
            (self.state_dir / "pids" / f"{name}.pid").unlink(missing_ok=True)
        self.processes.clear()
        if not keep and self._is_state_dir():  # never delete a directory this class did not fill
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        pids = self._recorded_pids()
        st = self._state()
        ready = False
        if pids:
            with contextlib.suppress(DevClusterError):
                ready = self._readyz(timeout=3)
        return {
            "state_dir": str(self.state_dir),
            "server": f"https://127.0.0.1:{st['ports']['apiserver']}" if st.get("ports") else None,
            "kubeconfig": str(self.kubeconfig) if self.kubeconfig.exists() else None,
            "ready": ready,
            "processes": {name: {"pid": pid, "alive": pid_alive(pid)} for name, pid in pids.items()},
        }

    # ---- readiness ----------------------------------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_crt))
        ctx.load_cert_chain(str(self.pki.admin_crt), str(self.pki.admin_key))
        return ctx

    def _readyz(self, timeout: float = 5) -> bool:
        if not self.pki.ca_crt.exists():
            return False
        try:
            with urllib.request.urlopen(f"{self.server}/readyz", timeout=timeout, context=self._ssl_context()) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return False

    def _check_alive(self, *names: str) -> None:
        for name in names:
            h = self.processes.get(name)
            if h is not None and not h.alive():
                raise DevClusterError(f"{name} exited during startup; its log {h.log} ends with:\n{h.log_tail()}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive("etcd", "kube-apiserver")
            if self._readyz(timeout=2):
                return
            time.sleep(0.2)
        h = self.processes["kube-apiserver"]
        raise DevClusterError(f"kube-apiserver not ready after {timeout:.0f} s; see {h.log}:\n{h.log_tail()}")

    def _wait_kwok(self, timeout: float) -> None:
        # KWOK serves /healthz once its informers run; before that it would miss nodes.
        url = f"http://127.0.0.1:{self.processes['kwok'].port}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive("kwok")
            with contextlib.suppress(urllib.error.URLError, OSError), urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
            time.sleep(0.2)
        h = self.processes["kwok"]
        raise DevClusterError(f"kwok not healthy after {timeout:.0f} s; see {h.log}:\n{h.log_tail()}")

    # ---- clients and objects ------------------------------------------------------------------------------------
    def _write_kubeconfig(self, port: int) -> None:
        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "devcluster", "preferences": {},
            "clusters": [{"name": "devcluster", "cluster": {
                "server": f"https://127.0.0.1:{port}", "certificate-authority-data": b64(self.pki.ca_crt)}}],
            "users": [{"name": "admin", "user": {
                "client-certificate-data": b64(self.pki.admin_crt), "client-key-data": b64(self.pki.admin_key)}}],
            "contexts": [{"name": "devcluster", "context": {"cluster": "devcluster", "user": "admin"}}],
        }
        self.kubeconfig.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.kubeconfig.chmod(0o600)

    def api_client(self, pool_size: int = 32) -> Any:
        """A `kubernetes.client.ApiClient` for this cluster (admin identity)."""
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg)
        cfg.connection_pool_maxsize = pool_size  # thread pools creating many objects need as many connections
        return client.ApiClient(cfg)

    def crd_files(self) -> list[Path]:
        """deploy/crds/*.yaml, plus the PodGroup CRD shipped with scheduler-plugins when deploy/crds lacks it."""
        files = sorted(REPO_CRDS.glob("*.yaml")) if REPO_CRDS.is_dir() else []
        has_podgroup = any("podgroups.scheduling.x-k8s.io" in f.read_text() for f in files)
        bundled = coscheduler_cache_dir() / "crds" / "scheduling.x-k8s.io_podgroups.yaml"
        if not has_podgroup and bundled.exists():
            files.append(bundled)
        return files

    def apply_crds(self, timeout: float = 60.0) -> list[str]:
        """Create or update every CRD and wait until each is Established; returns their names."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        names: list[str] = []
        with self.api_client() as api:
            ext = client.ApiextensionsV1Api(api)
            for f in self.crd_files():
                for doc in yaml.safe_load_all(f.read_text()):
                    if not doc or doc.get("kind") != "CustomResourceDefinition":
                        continue
                    name = doc["metadata"]["name"]
                    try:
                        ext.create_custom_resource_definition(doc)
                    except ApiException as e:
                        if e.status != 409:
                            raise DevClusterError(f"{f}: CRD {name} rejected: {e.body}") from e
                        cur = ext.read_custom_resource_definition(name)
                        doc["metadata"]["resourceVersion"] = cur.metadata.resource_version
                        ext.replace_custom_resource_definition(name, doc)
                    names.append(name)
            deadline = time.monotonic() + timeout
            for name in names:
                while True:
                    conds = ext.read_custom_resource_definition(name).status.conditions or []
                    if any(c.type == "Established" and c.status == "True" for c in conds):
                        break
                    if time.monotonic() > deadline:
                        raise DevClusterError(f"CRD {name} not Established after {timeout:.0f} s")
                    time.sleep(0.1)
        return names

    # ---- schedulers ---------------------------------------------------------------------------------------------
    def _scheduler_config(self, scheduler_name: str, coscheduling: bool) -> dict[str, Any]:
        profile: dict[str, Any] = {"schedulerName": scheduler_name}
        if coscheduling:
            # As in scheduler-plugins' manifests/coscheduling/scheduler-config.yaml.
            profile["plugins"] = {"multiPoint": {"enabled": [{"name": "Coscheduling"}]},
                                  "queueSort": {"enabled": [{"name": "Coscheduling"}], "disabled": [{"name": "*"}]}}
            profile["pluginConfig"] = [{"name": "Coscheduling", "args": {"permitWaitingTimeSeconds": 10}}]
        return {"apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
                "profiles": [profile]}

    def _start_scheduler(self, binary: Path, proc_name: str, config: dict[str, Any] | Path | str,
                         qps: float | None, burst: int | None, timeout: float,
                         extra_flags: tuple[str, ...] = ()) -> ProcessHandle:
        if proc_name in self.processes and self.processes[proc_name].alive():
            raise DevClusterError(f"{proc_name} is already running (pid {self.processes[proc_name].pid})")
        cfg = dict(config) if isinstance(config, dict) else yaml.safe_load(Path(config).read_text())
        # With --config, kube-scheduler ignores --kubeconfig/--kube-api-qps: the connection must be in the file.
        conn = dict(cfg.get("clientConnection") or {})
        conn["kubeconfig"] = str(self.kubeconfig)
        conn.update({k: v for k, v in (("qps", qps), ("burst", burst)) if v is not None})
        cfg["clientConnection"] = conn
        cfg["leaderElection"] = {"leaderElect": False}  # one instance per run; nothing to elect
        path = self.state_dir / f"{proc_name}.config.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        port = free_ports(1)[0]
        h = _spawn(proc_name, [
            str(binary), f"--config={path}", "--bind-address=127.0.0.1", f"--secure-port={port}",
            f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}",
            "--v=1", *extra_flags,
        ], self.state_dir, port)
        self.processes[proc_name] = h
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the scheduler's self-signed serving cert; only /healthz is read
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not h.alive():
                raise DevClusterError(f"{proc_name} exited at startup; its log {h.log} ends with:\n{h.log_tail()}")
            with (contextlib.suppress(urllib.error.URLError, OSError),
                  urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=2, context=ctx) as r):
                if r.status == 200:
                    return h
            time.sleep(0.2)
        h.stop()
        raise DevClusterError(f"{proc_name} not healthy after {timeout:.0f} s; see {h.log}:\n{h.log_tail()}")

    def start_kube_scheduler(self, name: str = "default-scheduler", qps: float | None = None,
                             burst: int | None = None, config: dict[str, Any] | Path | str | None = None,
                             timeout: float = 60.0, gangs: bool = False) -> ProcessHandle:
        """Run the stock kube-scheduler with one profile `name`, or with a given KubeSchedulerConfiguration (dict or
        file) whose clientConnection gets this cluster's kubeconfig (and `qps`/`burst` when given). `gangs`: with
        the Workload API's gates on, so it schedules native PodGroups whole (its GangScheduling plugin); needs a
        control plane that serves the API (`workload_api`)."""
        if gangs and not self.workload_api:
            raise DevClusterError(f"kube-scheduler {self.binaries.k8s_version or '(unknown version)'} has no native "
                                  "gang scheduling: it needs Kubernetes >= 1.37 (set $GANGSCHED_K8SBIN)")
        cfg = config if config is not None else self._scheduler_config(name, coscheduling=False)
        return self._start_scheduler(self.binaries.kube_scheduler, f"kube-scheduler-{name}", cfg, qps, burst, timeout,
                                     tuple(self._workload_api_flags()) if gangs else ())

    def start_kube_scheduler_with_extender(self, name: str, url: str, timeout: float = 60.0,
                                           **extender: Any) -> ProcessHandle:
        """The stock kube-scheduler with profile `name` calling `gangsched extender` at `url` for filter,
        prioritize, bind and preempt (`extender`: options of `gangsched.extender.run.scheduler_config`, e.g.
        ca_file/cert_file/key_file for HTTPS, node_cache_capable)."""
        from gangsched.extender.run import scheduler_config

        return self.start_kube_scheduler(name, config=scheduler_config(name, url, **extender), timeout=timeout)

    def start_coscheduler(self, name: str = "coscheduler", qps: float | None = None, burst: int | None = None,
                          config: dict[str, Any] | Path | str | None = None, timeout: float = 60.0) -> ProcessHandle:
        """Run the scheduler-plugins scheduler with the Coscheduling plugin as profile `name` (or with `config`, e.g.
        deploy/coscheduler-config.yaml, completed as for start_kube_scheduler)."""
        cfg = config if config is not None else self._scheduler_config(name, coscheduling=True)
        return self._start_scheduler(self.binaries.coscheduler, f"coscheduler-{name}", cfg, qps, burst, timeout)


def tmp_state_dir(prefix: str = "gangsched-devcluster-") -> Path:
    """A fresh directory for a throwaway cluster (tests, benchmarks)."""
    return Path(tempfile.mkdtemp(prefix=prefix))
