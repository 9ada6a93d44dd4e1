"""The real control-plane binaries: built once from pinned Go modules, then taken from the cache.

kube-apiserver, kube-scheduler and the scheduler-plugins scheduler come from the module in `deploy/k8sbin`
(its go.mod pins the releases); KWOK from its own module; etcd from Debian's `etcd-server`. Builds go to a
temporary directory that is renamed into place at the end, so an interrupted build never leaves a half cache.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KWOK_VERSION = "v0.7.0"
K8SBIN_DIR = Path(__file__).resolve().parents[2] / "deploy" / "k8sbin"
# Main packages built from deploy/k8sbin and the file name each gets in the cache.
K8S_PACKAGES = {
    "k8s.io/kubernetes/cmd/kube-apiserver": "kube-apiserver",
    "k8s.io/kubernetes/cmd/kube-scheduler": "kube-scheduler",
    "sigs.k8s.io/scheduler-plugins/cmd/scheduler": "coscheduler",
}

Progress = Callable[[str], None]


class BinariesError(RuntimeError):
    """A binary could not be found or built; the message says what to do."""


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_scheduler: Path
    coscheduler: Path
    kwok: Path


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gangsched" / "bin"


def go_binary() -> Path:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if not found:
        raise BinariesError("the Go toolchain is needed to build kube-apiserver and friends: install Go >= 1.24 "
                            "(https://go.dev/dl/) and put `go` on PATH")
    return Path(found)


def _k8s_version(gomod: str) -> str:
    # The replace line wins over require; take the last pin of k8s.io/kubernetes in the file.
    pins = re.findall(r"k8s\.io/kubernetes(?: => k8s\.io/kubernetes)? (v[0-9][^\s]*)", gomod)
    return pins[-1] if pins else "unknown"


def k8s_cache_dir(src: Path = K8SBIN_DIR) -> Path:
    """Cache directory for the k8sbin build, keyed by go.mod+go.sum so a version bump rebuilds."""
    gomod = (src / "go.mod").read_bytes()
    gosum = (src / "go.sum").read_bytes() if (src / "go.sum").exists() else b""
    digest = hashlib.sha256(gomod + b"\0" + gosum).hexdigest()[:12]
    return cache_root() / f"k8s-{_k8s_version(gomod.decode())}-{digest}"


def _run_with_heartbeat(cmd: list[str], cwd: Path | None, env: dict[str, str], what: str, progress: Progress,
                        log: Path) -> None:
    """Run a long build, printing a line every 30 s so it never looks hung; the output goes to `log`."""
    start = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    proc.wait(timeout=30)
                    break
                except subprocess.TimeoutExpired:
                    progress(f"  ... still building {what} ({time.monotonic() - start:.0f} s)")
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-25:]
        raise BinariesError(f"building {what} failed (exit {proc.returncode}); full log {log}:\n" + "\n".join(tail))
    progress(f"  built {what} in {time.monotonic() - start:.0f} s")


def _go_env(go: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{go.parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("CGO_ENABLED", "0")  # static binaries, no C toolchain needed
    return env


def _build_k8s(dest: Path, progress: Progress) -> None:
    go = go_binary()
    if not (K8SBIN_DIR / "go.mod").exists():
        raise BinariesError(f"{K8SBIN_DIR}/go.mod is missing: run from a gangsched source checkout")
    version = _k8s_version((K8SBIN_DIR / "go.mod").read_text())
    progress(f"building kube-apiserver, kube-scheduler and the scheduler-plugins scheduler from k8s.io/kubernetes "
             f"{version} (first run only, several minutes; cached in {dest})")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        cmd = [str(go), "build", "-trimpath", "-ldflags=-s -w", "-o", f"{tmp}/", *K8S_PACKAGES]
        _run_with_heartbeat(cmd, K8SBIN_DIR, _go_env(go), "the Kubernetes binaries", progress,
                            dest.parent / f"{dest.name}.build.log")
        (tmp / "scheduler").rename(tmp / "coscheduler")
        _copy_podgroup_crd(go, tmp / "crds")
        _publish(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _copy_podgroup_crd(go: Path, dest: Path) -> None:
    """Keep the PodGroup CRD of the pinned scheduler-plugins release beside the binaries, so a cluster can serve
    the coscheduler even where deploy/crds does not carry it."""
    out = subprocess.run([str(go), "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/scheduler-plugins"], cwd=K8SBIN_DIR,
                         env=_go_env(go), capture_output=True, text=True, check=True)
    src = Path(out.stdout.strip()) / "manifests" / "coscheduling" / "crd.yaml"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest / "scheduling.x-k8s.io_podgroups.yaml")


def _build_kwok(dest: Path, progress: Progress) -> None:
    go = go_binary()
    progress(f"building kwok {KWOK_VERSION} from sigs.k8s.io/kwok (first run only, a minute or two)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        env = _go_env(go) | {"GOBIN": str(tmp)}
        cmd = [str(go), "install", "-trimpath", "-ldflags=-s -w", f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"]
        _run_with_heartbeat(cmd, None, env, f"kwok {KWOK_VERSION}", progress, dest.parent / f"{dest.name}.build.log")
        _publish(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, dest: Path) -> None:
    """Atomically move a finished build into place; a concurrent build that won the race is kept."""
    try:
        tmp.rename(dest)
    except OSError:
        if not dest.is_dir():
            raise


def ensure_etcd(progress: Progress = print) -> Path:
    found = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if found:
        return Path(found)
    if os.geteuid() != 0:
        raise BinariesError("etcd is missing: install it with `sudo apt-get install -y etcd-server` "
                            "(or put any etcd >= 3.4 on PATH)")
    progress("installing etcd (apt-get install -y etcd-server)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "etcd-server"]
    if subprocess.run(install, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    found = shutil.which("etcd") or "/usr/bin/etcd"
    if not Path(found).exists():
        raise BinariesError("apt-get installed etcd-server but no etcd binary was found")
    return Path(found)


def ensure_binaries(progress: Progress = print) -> Binaries:
    """Paths of all control-plane binaries, building the missing ones first (only the first run builds)."""
    etcd = ensure_etcd(progress)
    k8s = k8s_cache_dir()
    if not all((k8s / name).is_file() for name in K8S_PACKAGES.values()):
        shutil.rmtree(k8s, ignore_errors=True)  # only a hand-edited cache can be incomplete; builds publish whole
        _build_k8s(k8s, progress)
    kwok_dir = cache_root() / f"kwok-{KWOK_VERSION}"
    if not (kwok_dir / "kwok").is_file():
        shutil.rmtree(kwok_dir, ignore_errors=True)
        _build_kwok(kwok_dir, progress)
    return Binaries(etcd=etcd, kube_apiserver=k8s / "kube-apiserver", kube_scheduler=k8s / "kube-scheduler",
                    coscheduler=k8s / "coscheduler", kwok=kwok_dir / "kwok")
