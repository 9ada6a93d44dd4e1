"""A real kubelet node for the dev cluster: kubelet (built from the pinned k8s.io/kubernetes, deploy/kubeletbin),
containerd and runc from Debian, a busybox image made locally and imported with `ctr` (no registry), and
`gangsched device-plugin` serving fake GPUs from a device list file.

One per machine: the kubelet's device-plugin directory is fixed at /var/lib/kubelet/device-plugins, and containers
outlive a killed kubelet. So a lock file guards it, everything else lives under one machine-wide directory
(MACHINE_DIR), and `start()` first clears whatever a crashed run left there (containers through `ctr`, processes by
the pids it recorded). Pods must run with hostNetwork (the CNI config is loopback only) and tolerate the node's
taint, which keeps every other test's pods off it. Needs root.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import yaml

from gangsched.devcluster import binaries as bins
from gangsched.devcluster.cluster import DevClusterError, free_ports, minor_version, pid_alive, stop_process_group

KUBELETBIN_DIR = Path(__file__).resolve().parents[2] / "deploy" / "kubeletbin"

MACHINE_DIR = Path("/var/lib/gangsched-kubelet")
LOCK_FILE = Path("/run/gangsched-kubelet.lock")
CLAIM_FILE = Path("/run/gangsched-kubelet.claim")
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")  # the kubelet's, whatever --root-dir says
IMAGE = "gangsched.local/busybox:1"
TAINT_KEY = "gangsched.io/kubelet-node"
LABEL = "gangsched.io/kubelet-node"
NAMESPACE = "k8s.io"  # containerd's namespace for CRI containers
DEBIAN_PACKAGES = ("containerd", "runc", "busybox-static")
PROCS = ("device-plugin", "kubelet", "containerd")  # stop order


def ensure_kubelet(progress: bins.Progress = print) -> Path:
    """The kubelet from deploy/kubeletbin (the same k8s.io/kubernetes as deploy/k8sbin), built once into its own
    cache directory, so adding it left the control-plane binaries' cache key alone (about 4-9 min cold)."""
    if not (KUBELETBIN_DIR / "go.mod").exists():
        raise bins.BinariesError(f"{KUBELETBIN_DIR}/go.mod is missing: run from a gangsched source checkout")
    version = bins._k8s_version((KUBELETBIN_DIR / "go.mod").read_text())
    dest = bins.module_cache_dir(KUBELETBIN_DIR, "kubelet", version)
    if (dest / "kubelet").is_file():
        return dest / "kubelet"
    shutil.rmtree(dest, ignore_errors=True)
    go = bins.go_binary()
    progress(f"building the kubelet from k8s.io/kubernetes {version} (first run only, several minutes; cached in "
             f"{dest})")
    tmp = bins._make_tmp(dest)
    try:
        cmd = [str(go), "build", "-trimpath", f"-ldflags=-s -w {bins._version_ldflags(version)}", "-o", f"{tmp}/",
               "k8s.io/kubernetes/cmd/kubelet"]
        bins._run_with_heartbeat(cmd, KUBELETBIN_DIR, bins._go_env(go), "the kubelet", progress,
                                 dest.parent / f"{dest.name}.build.log")
        bins._publish(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / "kubelet"


def toleration() -> dict:
    return {"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}


def fake_gpus(n: int, island_size: int = 4, model: str = "A100-SXM4-80GB") -> list[dict]:
    return [{"uuid": f"GPU-{i:08x}-0000-4000-8000-{i:012x}", "model": model, "memoryMiB": 81920,
             "numa": i // island_size, "island": i // island_size, "healthy": True} for i in range(n)]


class MachineLock:
    """One kubelet node per machine, whoever asks: an flock on LOCK_FILE while starting or stopping, and a claim
    (CLAIM_FILE: the pid the node lives as long as) once up. A test run's claim is its own pid; `gangsched devcluster
    up --kubelet-nodes 1` exits, so its claim is the kubelet's pid. A claim whose pid is dead is stale (a crash):
    the next start takes over and clears what was left."""

    def __init__(self, path: Path = LOCK_FILE, claim: Path = CLAIM_FILE):
        self.path = path
        self.claim_file = claim
        self.fd: int | None = None

    def holder(self) -> int | None:
        """The live pid claiming the node, if any (not us)."""
        try:
            pid = int(self.claim_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid != os.getpid() and pid_alive(pid) else None

    def acquire(self, timeout: float, force: bool = False) -> None:
        """Take the lock; wait up to `timeout` for another claim to go, unless `force` (to stop that node)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                holder = None if force else self.holder()
                if holder is None:
                    break
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                holder = None
            if time.monotonic() >= deadline:
                os.close(fd)
                raise DevClusterError(f"another kubelet node runs on this machine ({self.claim_file}: pid "
                                      f"{holder or 'starting'}); one per machine: `gangsched devcluster down` it, "
                                      f"or wait") from None
            time.sleep(0.5)
        self.fd = fd

    def claim(self, pid: int) -> None:
        self.claim_file.write_text(f"{pid}\n")

    def release(self, unclaim: bool = True) -> None:
        if unclaim:
            self.claim_file.unlink(missing_ok=True)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def busybox_image(out: Path, busybox: Path = Path("/bin/busybox"), name: str = IMAGE) -> Path:
    """A docker-archive image tarball: one layer with busybox-static and its applets. Its entrypoint sleeps, so it
    is also the pods' sandbox ("pause") image; pods give their own `command`."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for d in ("bin", "tmp", "etc", "proc", "sys", "dev"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(busybox.resolve()), "bin/busybox")
        for applet in ("sh", "sleep", "env", "cat", "echo", "true", "ls", "printenv"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        for fname, text in (("etc/passwd", "root:x:0:0:root:/:/bin/sh\n"), ("etc/group", "root:x:0:\n")):
            data = text.encode()
            info = tarfile.TarInfo(fname)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Entrypoint": ["/bin/sleep", "2147483647"], "Env": ["PATH=/bin"],
                                    "WorkingDir": "/"},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    manifest = json.dumps([{"Config": "config.json", "RepoTags": [name], "Layers": ["layer.tar"]}]).encode()
    with tarfile.open(out, "w") as tar:
        for fname, data in (("layer.tar", layer_bytes), ("config.json", config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(fname)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


class KubeletNode:
    """`start()` brings the node up and Ready with `gpus` fake GPUs served by the device plugin; `stop()` removes
    everything (containers, processes, files, the Node object)."""

    def __init__(self, kubeconfig: Path, kubelet: Path, name: str = "kubelet-0", gpus: int = 8,
                 base: Path = MACHINE_DIR, plugin_args: tuple[str, ...] = ()):
        self.kubeconfig = Path(kubeconfig)
        self.kubelet_bin = kubelet
        self.name = name
        self.gpus = gpus
        self.base = base
        self.plugin_args = plugin_args
        self.lock = MachineLock()
        self.procs: dict[str, subprocess.Popen] = {}
        self.devices_file = base / "devices.json"
        self.root = base / "kubelet"
        self.socket = base / "containerd" / "containerd.sock"
        self.pod_resources = self.root / "pod-resources" / "kubelet.sock"

    @staticmethod
    def _missing_packages() -> str:
        for tool in ("containerd", "ctr", "runc"):
            if not shutil.which(tool):
                return tool
        busybox = Path("/bin/busybox").resolve()
        if not busybox.is_file() or b"ld-linux" in busybox.read_bytes()[:8192]:  # a dynamic one has an interpreter
            return "a static /bin/busybox (busybox-static)"
        return ""

    # ---- life ------------------------------------------------------------------------------------------------------
    def start(self, lock_timeout: float = 600.0, timeout: float = 120.0, detach: bool = False) -> KubeletNode:
        """`detach`: the node outlives this process (the CLI): it is claimed by the kubelet's pid, not ours."""
        if os.geteuid() != 0:
            raise DevClusterError("a kubelet node needs root (containerd, runc, cgroups)")
        if self._missing_packages():  # first use on a fresh machine, as the Go binaries are built on first use
            _apt_install(DEBIAN_PACKAGES)
        missing = self._missing_packages()
        if missing:
            raise DevClusterError(f"a kubelet node needs {missing}: apt-get install {' '.join(DEBIAN_PACKAGES)}")
        self.lock.acquire(lock_timeout)
        try:
            self.clear()
            for d in (self.base / "logs", self.root, self.base / "cni", DEVICE_PLUGIN_DIR):
                d.mkdir(parents=True, exist_ok=True)
            self._start_containerd(timeout)
            self._import_image()
            self.write_devices(fake_gpus(self.gpus))
            self._start_kubelet()
            self.start_plugin()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.lock.claim(self.procs["kubelet"].pid if detach else os.getpid())
        if detach:
            self.lock.release(unclaim=False)
        return self

    def stop(self) -> None:
        """Remove the node and everything it ran (also one a `detach`ed start left, or a crash)."""
        if self.lock.fd is None:
            self.lock.acquire(60, force=True)
        try:
            self.clear()
            self._delete_node()
        finally:
            self.lock.release()

    def clear(self) -> None:
        """Remove all a run left: processes (recorded pids), containers, shims, sockets, files."""
        pids = self._recorded()
        for name in PROCS:
            if name == "containerd":
                self._remove_containers()  # while containerd still runs, if it does
            if name in pids:
                stop_process_group(pids[name], timeout=10)
            self.procs.pop(name, None)
        for pid in self._shims():  # a killed containerd leaves its shims (and their containers) running
            stop_process_group(pid, timeout=5)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        self._unmount_under(self.base)
        shutil.rmtree(self.base, ignore_errors=True)
        if DEVICE_PLUGIN_DIR.is_dir():
            for f in DEVICE_PLUGIN_DIR.iterdir():  # kubelet.sock, plugin sockets, the kubelet's checkpoint
                f.unlink(missing_ok=True)

    # ---- processes -----------------------------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = (self.base / "logs" / f"{name}.log").open("ab")
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=self.base)
        log.close()
        (self.base / "pids").mkdir(exist_ok=True)
        (self.base / "pids" / f"{name}.pid").write_text(f"{proc.pid}\n")
        self.procs[name] = proc
        return proc

    def _recorded(self) -> dict[str, int]:
        out = {}
        for f in (self.base / "pids").glob("*.pid") if (self.base / "pids").is_dir() else ():
            with contextlib.suppress(ValueError, OSError):
                out[f.stem] = int(f.read_text())
        return out

    def log(self, name: str) -> Path:
        return self.base / "logs" / f"{name}.log"

    def _check(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is not None:
            tail = "\n".join(self.log(name).read_text(errors="replace").splitlines()[-15:])
            raise DevClusterError(f"{name} exited ({proc.returncode}); see {self.log(name)}:\n{tail}")

    def _start_containerd(self, timeout: float) -> None:
        cfg = self.base / "containerd" / "config.toml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        (self.base / "cni" / "10-loopback.conflist").write_text(json.dumps(
            {"cniVersion": "1.0.0", "name": "loopback", "plugins": [{"type": "loopback"}]}))
        c = self.base / "containerd"
        cfg.write_text(f"""version = 2
root = "{c}/root"
state = "{c}/state"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{c}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  # root here lacks CAP_SYS_RESOURCE: runc fails with "can't get final child's PID from pipe" otherwise
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{self.base}/cni"
""")
        self._spawn("containerd", ["containerd", "--config", str(cfg)])
        deadline = time.monotonic() + timeout
        while self._ctr("version", check=False).returncode != 0:
            self._check("containerd")
            if time.monotonic() > deadline:
                raise DevClusterError(f"containerd did not come up; see {self.log('containerd')}")
            time.sleep(0.2)

    def _ctr(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)

    def _import_image(self) -> None:
        tarball = busybox_image(self.base / "busybox.tar")
        self._ctr("images", "import", "--snapshotter", "native", str(tarball))
        self._ctr("images", "label", IMAGE, "io.cri-containerd.pinned=pinned")

    def write_devices(self, devices: list[dict]) -> None:
        """The device plugin's device list; it re-reads it on change (health)."""
        tmp = self.devices_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"devices": devices}))
        tmp.replace(self.devices_file)

    def devices(self) -> list[dict]:
        return json.loads(self.devices_file.read_text())["devices"]

    def _start_kubelet(self) -> None:
        port, healthz = free_ports(2)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupsPerQOS": False, "enforceNodeAllocatable": [],
            "failSwapOn": False, "port": port, "readOnlyPort": 0, "healthzPort": healthz,
            "healthzBindAddress": "127.0.0.1", "containerRuntimeEndpoint": f"unix://{self.socket}",
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "nodeStatusUpdateFrequency": "1s", "nodeStatusReportFrequency": "5s", "syncFrequency": "5s",
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "resolvConf": "", "registerWithTaints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
            "volumePluginDir": str(self.base / "volume-plugins"), "serializeImagePulls": False,
        }
        if minor_version(bins._k8s_version((KUBELETBIN_DIR / "go.mod").read_text())) < (1, 35):
            # With cgroupsPerQOS off there is no pod cgroup, and 1.34's in-place resize path dereferences its nil
            # CPU quota (a kubelet panic seen once in ~100 pod starts here): nobody resizes pods on this node.
            # From 1.35 the gate is GA and locked on (setting it stops the kubelet).
            config["featureGates"] = {"InPlacePodVerticalScaling": False}
        path = self.base / "kubelet-config.yaml"
        path.write_text(yaml.safe_dump(config))
        self._spawn("kubelet", [str(self.kubelet_bin), f"--config={path}", f"--kubeconfig={self.kubeconfig}",
                                f"--root-dir={self.root}", f"--hostname-override={self.name}",
                                f"--cert-dir={self.base / 'pki'}", f"--node-labels={LABEL}=true", "--v=2"])

    def start_plugin(self, *extra: str) -> subprocess.Popen:
        """(Re)start `gangsched device-plugin` for this node, with `extra` arguments."""
        self.stop_plugin()
        exe = Path(sys.executable).with_name("gangsched")
        return self._spawn("device-plugin", [
            str(exe), "device-plugin", f"--kubeconfig={self.kubeconfig}", f"--node-name={self.name}",
            f"--devices={self.devices_file}", f"--pod-resources-socket={self.pod_resources}",
            "--reconcile-seconds=0.5", *self.plugin_args, *extra])

    def stop_plugin(self) -> None:
        proc = self.procs.pop("device-plugin", None)
        if proc is not None:
            stop_process_group(proc.pid, timeout=10)
            proc.wait(5)

    def restart_kubelet(self) -> None:
        """Kill the kubelet (its containers keep running, as on a real node) and start it again."""
        proc = self.procs.pop("kubelet")
        stop_process_group(proc.pid, timeout=10)
        proc.wait(5)
        self._start_kubelet()

    # ---- readiness -----------------------------------------------------------------------------------------------
    def node(self) -> dict | None:
        from gangsched.live.kube import ApiError, KubeClient

        try:
            return KubeClient.load(str(self.kubeconfig)).request("GET", f"/api/v1/nodes/{self.name}")
        except ApiError:
            return None

    def ready(self, gpus: int | None = None) -> bool:
        node = self.node()
        if node is None:
            return False
        st = node.get("status") or {}
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions") or [])
        want = self.gpus if gpus is None else gpus
        return ready and str((st.get("allocatable") or {}).get("nvidia.com/gpu")) == str(want)

    def wait_ready(self, timeout: float = 120.0, gpus: int | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while not self.ready(gpus):
            for name in PROCS:
                self._check(name)
            if time.monotonic() > deadline:
                raise DevClusterError(f"kubelet node {self.name} not Ready with its GPUs after {timeout:.0f} s; "
                                      f"see {self.log('kubelet')} and {self.log('device-plugin')}")
            time.sleep(0.3)
        return self.node() or {}

    # ---- clean-up helpers ------------------------------------------------------------------------------------------
    def _remove_containers(self) -> None:
        if not self.socket.exists() or self._ctr("version", check=False, timeout=10).returncode != 0:
            return
        tasks = self._ctr("tasks", "ls", "-q", check=False).stdout.split()
        for t in tasks:
            self._ctr("tasks", "kill", "-s", "SIGKILL", t, check=False)
        for t in tasks:
            self._ctr("tasks", "delete", "-f", t, check=False)
        for c in self._ctr("containers", "ls", "-q", check=False).stdout.split():
            self._ctr("containers", "delete", c, check=False)

    def _shims(self) -> list[int]:
        """containerd-shim processes started for our containerd (its socket is in their command line)."""
        needle = str(self.base / "containerd").encode()
        out = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmd = (p / "cmdline").read_bytes()
                if b"containerd-shim" in cmd and needle in cmd and pid_alive(int(p.name)):
                    out.append(int(p.name))
        return out

    def _unmount_under(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
            for m in sorted((m for m in mounts if m.startswith(str(path) + "/")), key=len, reverse=True):
                subprocess.run(["umount", "-l", m], capture_output=True, check=False)

    def _delete_node(self) -> None:
        from gangsched.live.kube import ApiError, KubeClient

        with contextlib.suppress(ApiError, OSError, Exception):
            KubeClient.load(str(self.kubeconfig)).request("DELETE", f"/api/v1/nodes/{self.name}", timeout=10)

    def status(self) -> dict[str, Any]:
        return {"node": self.name, "base": str(self.base),
                "processes": {n: {"pid": p, "alive": pid_alive(p)} for n, p in self._recorded().items()}}


def _apt_install(packages: tuple[str, ...]) -> None:
    """Install Debian packages (root, apt-get); failures are left to the caller's check."""
    apt = shutil.which("apt-get")
    if apt is None:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {' '.join(packages)} from Debian for the kubelet node (first use only)", flush=True)
    subprocess.run([apt, "update", "-q"], env=env, check=False, stdout=subprocess.DEVNULL)
    subprocess.run([apt, "install", "-y", "-q", *packages], env=env, check=False, stdout=subprocess.DEVNULL)
