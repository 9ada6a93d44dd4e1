"""Process nodes: Node objects whose bound pods really run, as local processes, for tests and the demo.

There is no kubelet and no container runtime. For each pod bound to one of its nodes the agent runs the first
container's `command` + `args` as a local process (the `image` is ignored; `python`/`python3` resolve to this
interpreter so the venv's packages are used), with the pod's env, in a per-pod directory under `workdir`, and
reports phase, podIP and exit code through the pods/status subresource. restartPolicy is treated as Never: a
process runs once, exit 0 -> Succeeded, else Failed. Deleting a pod kills its process group (SIGTERM, SIGKILL
after the grace period, capped at `max_grace` s) and then finishes the deletion, as a kubelet would.

Networking, when root and `ip netns` work: a network namespace per pod (two pods on one node can both listen on
:2222, as in a real cluster), its `eth0` a veth into one bridge `gs-br0` with no uplink (10.244.0.1/16); node k
(1-based) is 10.244.k.1, its pods 10.244.k.j (j >= 2). The process also gets its own UTS namespace with the pod's
hostname. Otherwise each pod gets a distinct loopback address 127.0.k.j (in POD_IP; the process must bind to it
itself) and no isolation. Names: one hosts file lists every running pod of these nodes under the names a headless
Service gives (`<pod>`, `<pod>.<ns>.svc[.cluster.local]`, `<hostname>.<subdomain>[.<ns>.svc[.cluster.local]]`);
`ip netns exec` bind-mounts /etc/netns/<ns>/hosts over /etc/hosts, and every pod's file is a hard link to that
one file, rewritten in place, so running processes see peers appear as they start. In loopback mode the entries
go into a marked block of the machine's /etc/hosts when it is writable.

The bridge, the address range and the names are machine-wide: one agent per machine (a lock file enforces it);
start() clears what a crashed earlier run left behind. KWOK manages only nodes annotated `kwok.x-k8s.io/node`,
which these nodes are not.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gangsched.devcluster.cluster import KWOK_ANNOTATION
from gangsched.devcluster.nodes import GPU_RESOURCE
from gangsched.live.kube import ApiError, KubeClient, now_rfc3339

log = logging.getLogger(__name__)

PROCESS_NODE_LABEL = "gangsched.io/process-node"
BRIDGE = "gs-br0"
BRIDGE_ADDR = "10.244.0.1"
NETNS_PREFIX = "gs-"  # netns gs-<k>-<j>
VETH_PREFIX = "gsv"  # host-side veth gsv<k>-<j> (interface names are limited to 15 characters)
NETNS_ETC = Path("/etc/netns")
SHARED_HOSTS = NETNS_ETC / "gs-hosts"  # the one hosts file every pod netns links to
HOSTS_BEGIN = "# BEGIN gangsched process-node pods"
HOSTS_END = "# END gangsched process-node pods"
MERGE = "application/merge-patch+json"
FIELD_REF = re.compile(r"metadata\.(labels|annotations)\['([^']+)'\]")
VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip() or res.returncode}")
    return res


def _write_in_place(path: Path, text: str) -> None:
    """Overwrite without replacing the inode: bind mounts (ip netns exec, containers' /etc/hosts) keep seeing it.
    Written before truncating so a reader never finds the file empty."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal N -> 128+N, as kubelet shows it


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion against the pod's own env; $$ escapes, unknown references stay as written."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return VAR_REF.sub(sub, text)


@dataclass
class _Run:
    """One pod's process and sandbox."""

    ns: str
    name: str
    uid: str
    node: str
    ip: str
    slot: tuple[int, int]
    names: list[str]  # host names this pod answers to
    netns: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    deleting: bool = False
    exited: bool = False
    sandbox_up: bool = False
    reaper: threading.Thread | None = field(default=None, repr=False)


class ProcessNodes:
    """Node objects with `nvidia.com/gpu` capacity whose bound pods run as local processes (see module doc)."""

    def __init__(self, client: KubeClient, names: list[str], gpus_per_node: int, workdir: Path | str,
                 cpu: str = "8", memory: str = "32Gi", labels: dict[str, str] | None = None,
                 gpu_model: str = "A100", max_grace: float = 3.0, heartbeat: float = 10.0,
                 network: str = "auto") -> None:
        if not 1 <= len(names) <= 250:
            raise ValueError("ProcessNodes takes 1..250 node names")
        if network not in ("auto", "netns", "loopback"):
            raise ValueError("network must be auto, netns or loopback")
        self.client = client
        self.names = list(names)
        self.index = {n: k for k, n in enumerate(self.names, start=1)}  # node k owns 10.244.k.0/24
        self.gpus = gpus_per_node
        self.workdir = Path(workdir)
        self.cpu, self.memory, self.gpu_model = cpu, memory, gpu_model
        self.labels = dict(labels or {})
        self.max_grace = max_grace
        self.heartbeat = heartbeat
        self.network = network
        self.mode = ""  # "netns" or "loopback", decided in start()
        self._runs: dict[str, _Run] = {}  # by pod uid: a re-created pod of the same name is a new pod
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lockfile: Any = None
        self._etc_hosts_writable = False

    # ---- lifecycle ----

    def __enter__(self) -> ProcessNodes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ProcessNodes:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._take_machine_lock()
        self._stop.clear()
        self._setup_network()
        for name in self.names:
            self._register_node(name)
        for target, tname in [(self._heartbeat_loop, "procnode-heartbeat")] + [
                (lambda n=n: self._watch_loop(n), f"procnode-watch-{n}") for n in self.names]:
            t = threading.Thread(target=target, name=tname, daemon=True)
            t.start()
            self._threads.append(t)
        log.info("process nodes %s up (%s networking)", ",".join(self.names), self.mode)
        return self

    def stop(self, delete_nodes: bool = True) -> None:
        """Kill every pod process (their pods are reported Failed), tear the network down, delete the Nodes."""
        self._stop.set()
        with self._lock:
            runs = [r for r in self._runs.values() if r.proc is not None and not r.exited]
        for r in runs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(r.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.max_grace
        for r in runs:
            self._kill_after(r, deadline)
        for r in runs:
            if r.reaper is not None:
                r.reaper.join(timeout=15)
        with self._lock:
            for r in self._runs.values():
                self._teardown_sandbox(r)
            self._runs.clear()
        self._teardown_network()
        if delete_nodes:
            for name in self.names:
                with contextlib.suppress(ApiError):
                    self.client.request("DELETE", f"/api/v1/nodes/{name}")
        for t in self._threads:
            t.join(timeout=0.1)  # watchers sit in a long poll; they are daemons and check _stop on every event
        self._threads.clear()
        if self._lockfile is not None:
            self._lockfile.close()
            self._lockfile = None

    def log_path(self, namespace: str, name: str) -> Path:
        """stdout+stderr of the pod's process."""
        return self.workdir / namespace / f"{name}.log"

    def pod_dir(self, namespace: str, name: str) -> Path:
        """The process's working directory."""
        return self.workdir / namespace / name

    def pid(self, namespace: str, name: str) -> int | None:
        """The pid of the pod's process (also its process group), if it was started."""
        with self._lock:
            for r in self._runs.values():
                if r.ns == namespace and r.name == name and r.proc is not None:
                    return r.proc.pid
        return None

    # ---- nodes ----

    def _take_machine_lock(self) -> None:
        path = Path("/run" if os.access("/run", os.W_OK) else tempfile.gettempdir()) / "gangsched-procnode.lock"
        f = open(path, "w")  # noqa: SIM115 (held until stop)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise RuntimeError(f"another ProcessNodes agent runs on this machine (lock {path})") from None
        self._lockfile = f

    def _node_ip(self, name: str) -> str:
        k = self.index[name]
        return f"10.244.{k}.1" if self.mode == "netns" else f"127.0.{k}.1"

    def _node_status(self, name: str) -> dict[str, Any]:
        res = {"cpu": self.cpu, "memory": self.memory, "pods": "110", GPU_RESOURCE: str(self.gpus)}
        return {
            "capacity": dict(res), "allocatable": dict(res),
            "conditions": [self._ready_condition()],
            "addresses": [{"type": "InternalIP", "address": self._node_ip(name)},
                          {"type": "Hostname", "address": name}],
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "gangsched-procnode",
                         "kubeProxyVersion": "", "containerRuntimeVersion": "process://", "kernelVersion":
                         os.uname().release, "osImage": "process node", "machineID": "", "systemUUID": "",
                         "bootID": ""},
        }

    @staticmethod
    def _ready_condition() -> dict[str, str]:
        now = now_rfc3339()
        return {"type": "Ready", "status": "True", "reason": "ProcessNodeReady",
                "message": "gangsched process node agent is running", "lastHeartbeatTime": now,
                "lastTransitionTime": now}

    def _register_node(self, name: str) -> None:
        meta = {"name": name, "annotations": {"node.alpha.kubernetes.io/ttl": "0"}, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "nvidia.com/gpu.product": self.gpu_model, "nvidia.com/gpu.count": str(self.gpus),
            PROCESS_NODE_LABEL: "true", **self.labels}}
        body = {"apiVersion": "v1", "kind": "Node", "metadata": meta, "spec": {}, "status": self._node_status(name)}
        try:
            self.client.request("POST", "/api/v1/nodes", body)
        except ApiError as e:
            if e.status != 409:
                raise
            # Replace: metadata and spec wholesale (drops a KWOK annotation, taints, cordon), then the status.
            old = self.client.request("GET", f"/api/v1/nodes/{name}")
            body["metadata"] = dict(meta, resourceVersion=old["metadata"]["resourceVersion"])
            assert KWOK_ANNOTATION not in body["metadata"]["annotations"]
            new = self.client.request("PUT", f"/api/v1/nodes/{name}", body)
            body["metadata"]["resourceVersion"] = new["metadata"]["resourceVersion"]
            self.client.request("PUT", f"/api/v1/nodes/{name}/status", body)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat):
            for name in self.names:
                try:
                    self.client.request("PATCH", f"/api/v1/nodes/{name}/status",
                                        {"status": {"conditions": [self._ready_condition()]}}, content_type=MERGE)
                except ApiError as e:
                    if e.status == 404 and not self._stop.is_set():
                        with contextlib.suppress(ApiError):
                            self._register_node(name)  # someone deleted it: a kubelet re-registers too
                    elif not self._stop.is_set():
                        log.warning("heartbeat of node %s: %s", name, e)

    # ---- network ----

    def _setup_network(self) -> None:
        self._cleanup_stale()
        if self.network in ("auto", "netns") and os.geteuid() == 0 and shutil.which("ip"):
            try:
                _run("ip", "link", "add", BRIDGE, "type", "bridge")
                _run("ip", "addr", "add", f"{BRIDGE_ADDR}/16", "dev", BRIDGE)
                for name in self.names:  # node addresses, so hostIP answers from inside pods
                    _run("ip", "addr", "add", f"10.244.{self.index[name]}.1/16", "dev", BRIDGE)
                _run("ip", "link", "set", BRIDGE, "up")
                probe = f"{NETNS_PREFIX}probe"
                _run("ip", "netns", "add", probe)
                _run("ip", "netns", "del", probe)
                NETNS_ETC.mkdir(parents=True, exist_ok=True)
                _write_in_place(SHARED_HOSTS, self._hosts_text())
                self.mode = "netns"
                log.info("process nodes: a network namespace per pod on bridge %s (%s/16)", BRIDGE, BRIDGE_ADDR)
                return
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                if self.network == "netns":
                    raise
                log.warning("process nodes: no network namespaces (%s); falling back to loopback addresses", e)
                self._cleanup_stale()
        self.mode = "loopback"
        self._etc_hosts_writable = os.access("/etc/hosts", os.W_OK)
        log.info("process nodes: loopback address per pod (127.0.k.j), no isolation; pod names %s",
                 "in /etc/hosts" if self._etc_hosts_writable else "NOT resolvable (/etc/hosts is read-only)")

    def _cleanup_stale(self) -> None:
        """Remove namespaces, veths, bridge and hosts files a previous (crashed) agent left behind."""
        if os.geteuid() != 0 or not shutil.which("ip"):
            return
        netns_re = re.compile(rf"^{NETNS_PREFIX}(\d+-\d+|probe)$")
        for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
            ns = line.split()[0] if line.split() else ""
            if netns_re.match(ns):
                self._kill_netns_pids(ns)
                _run("ip", "netns", "del", ns, check=False)
        veth_re = re.compile(rf"^{VETH_PREFIX}\d+-\d+$")
        for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines():
            parts = line.split(":")
            ifname = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
            if veth_re.match(ifname):
                _run("ip", "link", "del", ifname, check=False)
        _run("ip", "link", "del", BRIDGE, check=False)
        if NETNS_ETC.is_dir():
            for p in NETNS_ETC.glob(f"{NETNS_PREFIX}*"):
                if p.is_dir() and netns_re.match(p.name):
                    shutil.rmtree(p, ignore_errors=True)
            SHARED_HOSTS.unlink(missing_ok=True)
        self._write_etc_hosts_block("")

    def _teardown_network(self) -> None:
        if self.mode == "netns":
            _run("ip", "link", "del", BRIDGE, check=False)
            SHARED_HOSTS.unlink(missing_ok=True)
        elif self._etc_hosts_writable:
            self._write_etc_hosts_block("")

    @staticmethod
    def _kill_netns_pids(ns: str) -> None:
        for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
                os.kill(int(pid), signal.SIGKILL)

    def _alloc_slot(self, node: str) -> tuple[int, int]:
        k = self.index[node]
        used = {r.slot[1] for r in self._runs.values() if r.node == node and r.sandbox_up}
        for j in range(2, 255):
            if j not in used:
                return k, j
        raise RuntimeError(f"node {node}: no free pod address")

    def _setup_sandbox(self, r: _Run) -> None:
        if self.mode != "netns":
            r.sandbox_up = True
            return
        k, j = r.slot
        ns, veth = f"{NETNS_PREFIX}{k}-{j}", f"{VETH_PREFIX}{k}-{j}"
        r.netns = ns
        r.sandbox_up = True  # from here on teardown has something to undo
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "link", "set", veth, "master", BRIDGE, "up")
        _run("ip", "-n", ns, "addr", "add", f"{r.ip}/16", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        (NETNS_ETC / ns).mkdir(parents=True, exist_ok=True)
        hosts = NETNS_ETC / ns / "hosts"
        hosts.unlink(missing_ok=True)
        os.link(SHARED_HOSTS, hosts)  # same inode as every other pod's: one in-place write updates them all

    def _teardown_sandbox(self, r: _Run) -> None:
        if not r.sandbox_up:
            return
        r.sandbox_up = False
        if r.netns:
            self._kill_netns_pids(r.netns)  # stragglers that left the process group
            _run("ip", "netns", "del", r.netns, check=False)  # takes eth0 and so the veth pair with it
            _run("ip", "link", "del", f"{VETH_PREFIX}{r.slot[0]}-{r.slot[1]}", check=False)
            shutil.rmtree(NETNS_ETC / r.netns, ignore_errors=True)
        self._update_hosts()

    def _hosts_text(self) -> str:
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", HOSTS_BEGIN]
        lines += [f"{r.ip}\t{' '.join(r.names)}" for r in sorted(self._runs.values(), key=lambda r: r.slot)
                  if r.sandbox_up and r.proc is not None]
        lines.append(HOSTS_END)
        return "\n".join(lines) + "\n"

    def _update_hosts(self) -> None:
        if self.mode == "netns":
            if SHARED_HOSTS.exists():
                _write_in_place(SHARED_HOSTS, self._hosts_text())
        elif self._etc_hosts_writable:
            entries = self._hosts_text().split(HOSTS_BEGIN + "\n", 1)[1].split(HOSTS_END, 1)[0]
            self._write_etc_hosts_block(entries)

    def _write_etc_hosts_block(self, entries: str) -> None:
        """Loopback mode: our entries in a marked block of the machine's /etc/hosts (empty: remove the block)."""
        try:
            text = Path("/etc/hosts").read_text()
        except OSError:
            return
        if HOSTS_BEGIN not in text and not entries:
            return
        head, _, rest = text.partition(HOSTS_BEGIN + "\n")
        tail = rest.partition(HOSTS_END + "\n")[2] if rest else ""
        block = f"{HOSTS_BEGIN}\n{entries}{HOSTS_END}\n" if entries else ""
        with contextlib.suppress(OSError):
            _write_in_place(Path("/etc/hosts"), head + block + tail)

    # ---- pods ----

    def _watch_loop(self, node: str) -> None:
        """List+watch the pods bound to `node` (server-side field selector); relist after 410 or any error."""
        query = {"fieldSelector": f"spec.nodeName={node}"}
        while not self._stop.is_set():
            try:
                items, rv = self.client.list_all("/api/v1/pods", query)
                self._sync(node, items)
                while not self._stop.is_set():
                    relist = False
                    for ev in self.client.watch("/api/v1/pods", rv, timeout_seconds=60, query=query):
                        if self._stop.is_set():
                            return
                        obj = ev.get("object") or {}
                        if ev.get("type") == "ERROR":  # 410 Gone: our resourceVersion is too old
                            relist = True
                            break
                        rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                        if ev.get("type") != "BOOKMARK":
                            self._handle(ev["type"], obj)
                    if relist:
                        break
            except Exception as e:
                if self._stop.is_set():
                    return
                log.warning("process node %s: pod watch failed (%s); relisting", node, e)
                self._stop.wait(1.0)

    def _sync(self, node: str, items: list[dict[str, Any]]) -> None:
        present = {p["metadata"]["uid"] for p in items}
        with self._lock:
            gone = [r for r in self._runs.values() if r.node == node and r.uid not in present]
        for r in gone:  # deleted while we were not watching
            self._handle("DELETED", {"metadata": {"uid": r.uid, "name": r.name, "namespace": r.ns},
                                     "spec": {"nodeName": node}})
        for p in items:
            self._handle("ADDED", p)

    def _handle(self, kind: str, pod: dict[str, Any]) -> None:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        node = spec.get("nodeName")
        if node not in self.index or self._stop.is_set():
            return
        uid = meta["uid"]
        with self._lock:
            r = self._runs.get(uid)
            if kind == "DELETED":
                if r is not None:
                    self._runs.pop(uid)
                    if not r.deleting:  # else a _terminate for it is under way already
                        r.deleting = True
                        self._spawn_thread(self._terminate, r, None)
                return
            if meta.get("deletionTimestamp"):
                if r is None or not r.deleting:
                    if r is None:  # never started here: nothing to kill, just finish the deletion
                        r = _Run(meta["namespace"], meta["name"], uid, node, "", (0, 0), [])
                        self._runs[uid] = r
                    r.deleting = True
                    self._spawn_thread(self._terminate, r, pod)
                return
            if r is not None:
                return
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                return
            if phase == "Running":  # ran under an earlier agent; its process is gone
                r = _Run(meta["namespace"], meta["name"], uid, node, "", (0, 0), [], exited=True)
                self._runs[uid] = r
                self._spawn_thread(self._report_lost, r)
                return
            try:
                self._start_pod(pod)
            except RuntimeError as e:  # no free address: leave it Pending, a later event retries
                self._runs.pop(uid, None)
                log.warning("pod %s/%s: %s", meta["namespace"], meta["name"], e)

    def _spawn_thread(self, fn: Any, *args: Any) -> None:
        threading.Thread(target=fn, args=args, daemon=True, name=f"procnode-{fn.__name__}").start()

    def _pod_names(self, pod: dict[str, Any]) -> list[str]:
        meta, spec = pod["metadata"], pod["spec"]
        name, ns = meta["name"], meta["namespace"]
        names = [name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]
        host, sub = spec.get("hostname"), spec.get("subdomain")
        if sub:
            fqdn = f"{host or name}.{sub}"
            names += [fqdn, f"{fqdn}.{ns}.svc", f"{fqdn}.{ns}.svc.cluster.local"]
        if host and host not in names:
            names.append(host)
        return names

    def _pod_env(self, pod: dict[str, Any], container: dict[str, Any], ip: str, hostname: str) -> dict[str, str]:
        meta, spec = pod["metadata"], pod["spec"]
        fields = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
                  "status.podIP": ip, "status.hostIP": self._node_ip(spec["nodeName"]),
                  "spec.nodeName": spec["nodeName"], "spec.serviceAccountName": spec.get("serviceAccountName", "")}
        own: dict[str, str] = {}
        for var in container.get("env") or []:
            if "valueFrom" in var:
                path = ((var["valueFrom"] or {}).get("fieldRef") or {}).get("fieldPath", "")
                m = FIELD_REF.fullmatch(path)
                if m:
                    own[var["name"]] = (meta.get(m.group(1)) or {}).get(m.group(2), "")
                elif path in fields:
                    own[var["name"]] = fields[path]
                else:
                    log.warning("pod %s/%s: env %s: only fieldRef is supported", meta["namespace"], meta["name"],
                                var["name"])
            else:
                own[var["name"]] = _expand(var.get("value", ""), own)
        # The agent's environment underneath (PATH, the venv, ...), then what a kubelet adds, then the pod's own.
        env = dict(os.environ, HOSTNAME=hostname, POD_IP=ip)
        # gloo otherwise picks its device by resolving the hostname; in loopback mode every pod shares `lo`.
        env["GLOO_SOCKET_IFNAME"] = "eth0" if self.mode == "netns" else "lo"
        env.update(own)
        return env

    def _argv(self, container: dict[str, Any], env: dict[str, str]) -> list[str]:
        argv = [_expand(a, env) for a in (container.get("command") or []) + (container.get("args") or [])]
        if not container.get("command"):
            raise ValueError("the container has no command (images are not run; give command: [python, ...])")
        if argv[0] in ("python", "python3") or re.fullmatch(r"python3\.\d+", argv[0]):
            argv[0] = sys.executable  # the venv's interpreter, with its TF/torch
        return argv

    def _start_pod(self, pod: dict[str, Any]) -> None:
        """Under self._lock: set up the sandbox, start the process, report Running (or Failed if it cannot)."""
        meta, spec = pod["metadata"], pod["spec"]
        ns, name, node = meta["namespace"], meta["name"], spec["nodeName"]
        slot = self._alloc_slot(node)
        ip = f"10.244.{slot[0]}.{slot[1]}" if self.mode == "netns" else f"127.0.{slot[0]}.{slot[1]}"
        r = _Run(ns, name, meta["uid"], node, ip, slot, self._pod_names(pod))
        self._runs[r.uid] = r
        containers = spec.get("containers") or [{}]
        container = containers[0]
        hostname = (spec.get("hostname") or name)[:63]
        r.started_at = now_rfc3339()
        try:
            env = self._pod_env(pod, container, ip, hostname)
            argv = self._argv(container, env)
            self._setup_sandbox(r)
            if r.netns:
                # Own UTS namespace too, so gethostname() is the pod's name (which the hosts file resolves).
                argv = ["ip", "netns", "exec", r.netns, "unshare", "--uts", "--", "sh", "-c",
                        'hostname "$0" && exec "$@"', hostname, *argv]
            cwd = self.pod_dir(ns, name)
            cwd.mkdir(parents=True, exist_ok=True)
            with open(self.log_path(ns, name), "wb") as out:
                r.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        except (OSError, ValueError, RuntimeError, subprocess.SubprocessError) as e:
            log.warning("pod %s/%s: cannot start: %s", ns, name, e)
            r.exited = True
            self._teardown_sandbox(r)
            self._spawn_thread(self._report_exit, r, pod, 128, "StartError", str(e)[:500])
            return
        self._update_hosts()
        log.info("pod %s/%s on %s: pid %d, %s", ns, name, node, r.proc.pid, ip)
        r.reaper = threading.Thread(target=self._reap, args=(r, pod), daemon=True, name=f"procnode-reap-{name}")
        r.reaper.start()

    def _container_status(self, r: _Run, pod: dict[str, Any], state: dict[str, Any], ready: bool) -> dict[str, Any]:
        c = ((pod["spec"].get("containers") or [{}])[0])
        status: dict[str, Any] = {"name": c.get("name", "main"), "image": c.get("image", ""), "imageID": "",
                                  "ready": ready, "restartCount": 0, "started": ready, "state": state}
        if r.proc is not None:
            status["containerID"] = f"process://{r.proc.pid}"
        return status

    def _conditions(self, ready: bool, reason: str = "") -> list[dict[str, Any]]:
        now = now_rfc3339()
        out = []
        for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready"):
            ok = ready or t in ("PodScheduled", "Initialized")
            c: dict[str, Any] = {"type": t, "status": "True" if ok else "False", "lastProbeTime": None,
                                 "lastTransitionTime": now}
            if not ok and reason:
                c["reason"] = reason
            out.append(c)
        return out

    def _running_status(self, r: _Run, pod: dict[str, Any]) -> dict[str, Any]:
        host_ip = self._node_ip(r.node)
        return {"phase": "Running", "hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "podIP": r.ip,
                "podIPs": [{"ip": r.ip}], "startTime": r.started_at, "conditions": self._conditions(True),
                "containerStatuses": [self._container_status(r, pod, {"running": {"startedAt": r.started_at}}, True)]}

    def _patch_status(self, r: _Run, status: dict[str, Any]) -> bool:
        for attempt in range(5):
            try:
                self.client.request("PATCH", f"/api/v1/namespaces/{r.ns}/pods/{r.name}/status",
                                    {"metadata": {"uid": r.uid}, "status": status}, content_type=MERGE)
                return True
            except ApiError as e:
                if e.status in (404, 409) or not e.retriable:  # gone, or a new pod of the same name
                    if e.status not in (404, 409):
                        log.warning("pod %s/%s: status patch: %s", r.ns, r.name, e)
                    return False
                time.sleep(0.5 * (attempt + 1))
        return False

    def _reap(self, r: _Run, pod: dict[str, Any]) -> None:
        """Report Running, wait for the process, report how it ended: one thread per pod keeps that order."""
        assert r.proc is not None
        self._patch_status(r, self._running_status(r, pod))
        code = r.proc.wait()
        finished = now_rfc3339()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(r.proc.pid, signal.SIGKILL)  # the container is over: so are its children
        with self._lock:
            r.exited = True
            self._teardown_sandbox(r)
            deleting = r.deleting
        log.info("pod %s/%s: exited %d", r.ns, r.name, _exit_code(code))
        if not deleting:  # a pod being deleted is about to disappear; no status to report
            self._report_exit(r, pod, _exit_code(code), None, None, finished)

    def _report_exit(self, r: _Run, pod: dict[str, Any], code: int, reason: str | None, message: str | None,
                     finished: str | None = None) -> None:
        reason = reason or ("Completed" if code == 0 else "Error")
        term: dict[str, Any] = {"exitCode": code, "reason": reason, "startedAt": r.started_at or now_rfc3339(),
                                "finishedAt": finished or now_rfc3339()}
        if message:
            term["message"] = message
        phase = "Succeeded" if code == 0 else "Failed"
        host_ip = self._node_ip(r.node)
        status: dict[str, Any] = {
            "phase": phase, "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
            "startTime": r.started_at or term["startedAt"],
            "conditions": self._conditions(False, "PodCompleted" if code == 0 else "PodFailed"),
            "containerStatuses": [self._container_status(r, pod, {"terminated": term}, False)]}
        if r.ip:
            status.update(podIP=r.ip, podIPs=[{"ip": r.ip}])
        self._patch_status(r, status)

    def _report_lost(self, r: _Run) -> None:
        pod = self._get_pod(r)
        if pod is not None:
            r.ip = (pod.get("status") or {}).get("podIP", "")
            r.started_at = (pod.get("status") or {}).get("startTime", "")
            self._report_exit(r, pod, 137, "ProcessLost", "the process node agent restarted; the process is gone")

    def _get_pod(self, r: _Run) -> dict[str, Any] | None:
        try:
            return self.client.request("GET", f"/api/v1/namespaces/{r.ns}/pods/{r.name}")
        except ApiError:
            return None

    def _kill_after(self, r: _Run, deadline: float) -> None:
        """Wait for r's process until `deadline`, then SIGKILL its group and wait a little more."""
        if r.proc is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            r.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(r.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            r.proc.wait(timeout=10)

    def _terminate(self, r: _Run, pod: dict[str, Any] | None) -> None:
        """Stop the pod's process (SIGTERM, SIGKILL after the grace period), free its sandbox and, when the pod
        object still exists (`pod` given: it carries a deletionTimestamp), finish its deletion."""
        if r.proc is not None and not r.exited:
            grace = float((pod or {}).get("metadata", {}).get("deletionGracePeriodSeconds") or
                          (pod or {}).get("spec", {}).get("terminationGracePeriodSeconds") or 0)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(r.proc.pid, signal.SIGTERM)
            self._kill_after(r, time.monotonic() + min(grace, self.max_grace))
            if r.reaper is not None:
                r.reaper.join(timeout=15)
        with self._lock:
            self._teardown_sandbox(r)
        if pod is None:
            return
        opts = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                "preconditions": {"uid": r.uid}}
        for attempt in range(5):
            try:
                self.client.request("DELETE", f"/api/v1/namespaces/{r.ns}/pods/{r.name}", opts)
                break
            except ApiError as e:
                if e.status in (404, 409) or not e.retriable:
                    break
                time.sleep(0.5 * (attempt + 1))
        log.info("pod %s/%s: deleted", r.ns, r.name)


__all__ = ["PROCESS_NODE_LABEL", "ProcessNodes"]
