"""The real control-plane binaries: built once from pinned Go modules, then taken from the cache.

kube-apiserver and kube-scheduler come from the module in `deploy/k8sbin` (or the module directory named by
$GANGSCHED_K8SBIN), the scheduler-plugins scheduler from `deploy/coschedbin` (a peer pinned to the Kubernetes release
it was built against), etcd from `deploy/etcdbin` (their go.mod files pin the releases), KWOK from its own module.
Builds go to a temporary directory that is renamed into place at the end, so an interrupted build never leaves a
half cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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
REPO = Path(__file__).resolve().parents[2]
K8SBIN_DIR = REPO / "deploy" / "k8sbin"
# scheduler-plugins releases follow Kubernetes' by months: its own module keeps it on the release it was built for.
COSCHEDBIN_DIR = REPO / "deploy" / "coschedbin"
K8SBIN_ENV = "GANGSCHED_K8SBIN"  # another control-plane module directory (e.g. a newer Kubernetes to try)
# Debian's etcd 3.4 lacks RequestWatchProgress, which kube-apiserver 1.34 needs for client-go's streaming lists.
ETCDBIN_DIR = Path(__file__).resolve().parents[2] / "deploy" / "etcdbin"
# Main packages built from deploy/k8sbin and the file name each gets in the cache.
K8S_PACKAGES = {
    "k8s.io/kubernetes/cmd/kube-apiserver": "kube-apiserver",
    "k8s.io/kubernetes/cmd/kube-scheduler": "kube-scheduler",
}
COSCHED_PACKAGES = {"sigs.k8s.io/scheduler-plugins/cmd/scheduler": "coscheduler"}

# Bump when the build recipe changes (flags, stamping): it is part of the cache key, so caches rebuild.
BUILD_RECIPE = "3"

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
    k8s_version: str = ""  # of kube-apiserver and kube-scheduler, e.g. "v1.37.2": the flags they take follow it


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gangsched" / "bin"


def go_binary() -> Path:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if not found:
        raise BinariesError("the Go toolchain is needed to build kube-apiserver and friends: install Go >= 1.24 "
                            "(https://go.dev/dl/) and put `go` on PATH")
    return Path(found)


def _pinned_version(gomod: str, module: str) -> str:
    # A replace line wins over require and comes later in the file: take the last pin of `module`.
    m = re.escape(module)
    pins = re.findall(rf"{m}(?: => {m})? (v[0-9][^\s]*)", gomod)
    return pins[-1] if pins else "unknown"


def _k8s_version(gomod: str) -> str:
    return _pinned_version(gomod, "k8s.io/kubernetes")


def module_cache_dir(src: Path, name: str, version: str) -> Path:
    """Cache directory for a build of module `src`, keyed by its go.mod+go.sum so a version bump rebuilds."""
    gomod = (src / "go.mod").read_bytes()
    gosum = (src / "go.sum").read_bytes() if (src / "go.sum").exists() else b""
    digest = hashlib.sha256(gomod + b"\0" + gosum + b"\0" + BUILD_RECIPE.encode()).hexdigest()[:12]
    return cache_root() / f"{name}-{version}-{digest}"


def k8sbin_dir() -> Path:
    """The control-plane module: deploy/k8sbin, or $GANGSCHED_K8SBIN (relative to the checkout, or absolute)."""
    chosen = os.environ.get(K8SBIN_ENV)
    return REPO / chosen if chosen else K8SBIN_DIR


def k8s_cache_dir(src: Path | None = None) -> Path:
    src = src or k8sbin_dir()
    return module_cache_dir(src, "k8s", _k8s_version((src / "go.mod").read_text()))


def coscheduler_cache_dir(src: Path = COSCHEDBIN_DIR) -> Path:
    return module_cache_dir(src, "coscheduler", _pinned_version((src / "go.mod").read_text(),
                                                               "sigs.k8s.io/scheduler-plugins"))


def etcd_cache_dir(src: Path = ETCDBIN_DIR) -> Path:
    return module_cache_dir(src, "etcd", _pinned_version((src / "go.mod").read_text(), "go.etcd.io/etcd/server/v3"))


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
    return env


def _build_k8s(src: Path, dest: Path, progress: Progress) -> None:
    go = go_binary()
    version = _k8s_version((src / "go.mod").read_text())
    progress(f"building kube-apiserver and kube-scheduler from k8s.io/kubernetes {version} (first run only, "
             f"15-25 minutes on 2 cores; cached in {dest})")
    tmp = _make_tmp(dest)
    try:
        cmd = [str(go), "build", "-trimpath", f"-ldflags=-s -w {_version_ldflags(version)}", "-o", f"{tmp}/",
               *K8S_PACKAGES]
        _run_with_heartbeat(cmd, src, _go_env(go), "the Kubernetes binaries", progress,
                            dest.parent / f"{dest.name}.build.log")
        _publish(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_coscheduler(dest: Path, progress: Progress) -> None:
    go = go_binary()
    gomod = (COSCHEDBIN_DIR / "go.mod").read_text()
    version, k8s = _pinned_version(gomod, "sigs.k8s.io/scheduler-plugins"), _k8s_version(gomod)
    progress(f"building the scheduler-plugins scheduler {version} (k8s.io/kubernetes {k8s}; first run only, about "
             f"10 minutes; cached in {dest})")
    tmp = _make_tmp(dest)
    try:
        cmd = [str(go), "build", "-trimpath", f"-ldflags=-s -w {_version_ldflags(k8s)}", "-o", f"{tmp}/",
               *COSCHED_PACKAGES]
        _run_with_heartbeat(cmd, COSCHEDBIN_DIR, _go_env(go), "the scheduler-plugins scheduler", progress,
                            dest.parent / f"{dest.name}.build.log")
        (tmp / "scheduler").rename(tmp / "coscheduler")
        _copy_podgroup_crd(go, tmp / "crds")
        _publish(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _version_ldflags(version: str) -> str:
    """Stamp the release into the binaries as Kubernetes' own build does (else /version says v0.0.0-master)."""
    m = re.match(r"v(\d+)\.(\d+)", version)
    major, minor = m.groups() if m else ("0", "0")
    return " ".join(f"-X {pkg}.{var}={val}" for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
                    for var, val in (("gitVersion", version), ("gitMajor", major), ("gitMinor", minor),
                                     ("gitTreeState", "clean")))


def _copy_podgroup_crd(go: Path, dest: Path) -> None:
    """Keep the PodGroup CRD of the pinned scheduler-plugins release beside the binaries, so a cluster can serve
    the coscheduler even where deploy/crds does not carry it."""
    out = subprocess.run([str(go), "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/scheduler-plugins"],
                         cwd=COSCHEDBIN_DIR,
                         env=_go_env(go), capture_output=True, text=True, check=True)
    src = Path(out.stdout.strip()) / "manifests" / "coscheduling" / "crd.yaml"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest / "scheduling.x-k8s.io_podgroups.yaml")


def _build_kwok(dest: Path, progress: Progress) -> None:
    go = go_binary()
    progress(f"building kwok {KWOK_VERSION} from sigs.k8s.io/kwok (first run only, a minute or two)")
    tmp = _make_tmp(dest)
    try:
        env = _go_env(go) | {"GOBIN": str(tmp)}
        cmd = [str(go), "install", "-trimpath", "-ldflags=-s -w", f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"]
        _run_with_heartbeat(cmd, None, env, f"kwok {KWOK_VERSION}", progress, dest.parent / f"{dest.name}.build.log")
        _publish(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_tmp(dest: Path) -> Path:
    """A fresh build directory beside `dest`; leftovers of killed builds (over a day old) are removed first."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    for old in dest.parent.glob(f".{dest.name}.*"):
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > 86400:
                shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))


def _publish(tmp: Path, dest: Path) -> None:
    """Atomically move a finished build into place; a concurrent build that won the race is kept."""
    tmp.chmod(0o755)  # mkdtemp made it private
    try:
        tmp.rename(dest)
    except OSError:
        if not dest.is_dir():
            raise


def _build_etcd(dest: Path, progress: Progress) -> None:
    go = go_binary()
    version = dest.name.split("-")[1]
    progress(f"building etcd {version} from go.etcd.io/etcd/server/v3 (first run only, a minute or two)")
    tmp = _make_tmp(dest)
    try:
        cmd = [str(go), "build", "-trimpath", "-ldflags=-s -w", "-o", str(tmp / "etcd"), "go.etcd.io/etcd/server/v3"]
        _run_with_heartbeat(cmd, ETCDBIN_DIR, _go_env(go), "etcd", progress, dest.parent / f"{dest.name}.build.log")
        _publish(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_binaries(progress: Progress = print) -> Binaries:
    """Paths of all control-plane binaries, building the missing ones first (only the first run builds)."""
    src = k8sbin_dir()
    for mod in (src, COSCHEDBIN_DIR, ETCDBIN_DIR):
        if not (mod / "go.mod").exists():
            raise BinariesError(f"{mod}/go.mod is missing: run from a gangsched source checkout"
                                + (f" (or fix ${K8SBIN_ENV})" if mod == src and os.environ.get(K8SBIN_ENV) else ""))
    etcd_dir = etcd_cache_dir()
    if not (etcd_dir / "etcd").is_file():
        shutil.rmtree(etcd_dir, ignore_errors=True)
        _build_etcd(etcd_dir, progress)
    k8s = k8s_cache_dir(src)
    if not all((k8s / name).is_file() for name in K8S_PACKAGES.values()):
        shutil.rmtree(k8s, ignore_errors=True)  # only a hand-edited cache can be incomplete; builds publish whole
        _build_k8s(src, k8s, progress)
    cosched = coscheduler_cache_dir()
    if not all((cosched / name).is_file() for name in COSCHED_PACKAGES.values()):
        shutil.rmtree(cosched, ignore_errors=True)
        _build_coscheduler(cosched, progress)
    kwok_dir = cache_root() / f"kwok-{KWOK_VERSION}"
    if not (kwok_dir / "kwok").is_file():
        shutil.rmtree(kwok_dir, ignore_errors=True)
        _build_kwok(kwok_dir, progress)
    return Binaries(etcd=etcd_dir / "etcd", kube_apiserver=k8s / "kube-apiserver",
                    kube_scheduler=k8s / "kube-scheduler", coscheduler=cosched / "coscheduler", kwok=kwok_dir / "kwok",
                    k8s_version=_k8s_version((src / "go.mod").read_text()))


# ---- tools beside the control plane: Prometheus + promtool (metrics tests), helm (chart tests) -------------------
# Separate products with their own module directories and cache keys, so the control-plane caches stay valid.
PROMBIN_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prombin"
HELMBIN_DIR = Path(__file__).resolve().parents[2] / "deploy" / "helmbin"
PROM_PACKAGES = {"github.com/prometheus/prometheus/cmd/prometheus": "prometheus",
                 "github.com/prometheus/prometheus/cmd/promtool": "promtool"}
HELM_PACKAGES = {"helm.sh/helm/v3/cmd/helm": "helm"}


@dataclass(frozen=True)
class Prometheus:
    prometheus: Path
    promtool: Path


def _ensure_tool(src: Path, name: str, module: str, packages: dict[str, str], stamp: Callable[[str], str],
                 progress: Progress) -> Path:
    """The cache directory holding `packages` built from the module in `src`, building them on first use."""
    if not (src / "go.mod").exists():
        raise BinariesError(f"{src}/go.mod is missing: run from a gangsched source checkout")
    version = _pinned_version((src / "go.mod").read_text(), module)
    dest = module_cache_dir(src, name, version)
    if all((dest / f).is_file() for f in packages.values()):
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    go = go_binary()
    progress(f"building {', '.join(packages.values())} from {module} {version} (first run only, several minutes; "
             f"cached in {dest})")
    tmp = _make_tmp(dest)
    try:
        cmd = [str(go), "build", "-trimpath", f"-ldflags=-s -w {stamp(version)}", "-o", f"{tmp}/", *packages]
        _run_with_heartbeat(cmd, src, _go_env(go), f"{name} {version}", progress,
                            dest.parent / f"{dest.name}.build.log")
        _publish(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _prometheus_version(module_version: str) -> str:
    """Prometheus 3.x.y is tagged v0.30x.y for Go modules: v0.307.3 is Prometheus 3.7.3."""
    m = re.match(r"v0\.3(\d\d)\.(\d+)", module_version)
    return f"3.{int(m[1])}.{m[2]}" if m else module_version.lstrip("v")


def ensure_prometheus(progress: Progress = print) -> Prometheus:
    dest = _ensure_tool(PROMBIN_DIR, "prometheus", "github.com/prometheus/prometheus", PROM_PACKAGES,
                        lambda v: f"-X github.com/prometheus/common/version.Version={_prometheus_version(v)}",
                        progress)
    return Prometheus(dest / "prometheus", dest / "promtool")


def ensure_helm(progress: Progress = print) -> Path:
    dest = _ensure_tool(HELMBIN_DIR, "helm", "helm.sh/helm/v3", HELM_PACKAGES,
                        lambda v: f"-X helm.sh/helm/v3/internal/version.version={v}", progress)
    return dest / "helm"


# The Go bind-only ceiling of benchmarks/live_throughput.py (`ceiling-go`): client-go of deploy/k8sbin's release.
CEILINGBIN_DIR = Path(__file__).resolve().parents[2] / "deploy" / "ceilingbin"
CEILING_PACKAGES = {"github.com/gangsched/gangsched/deploy/ceilingbin/bind-ceiling": "bind-ceiling"}


def ensure_bind_ceiling(progress: Progress = print) -> Path:
    dest = _ensure_tool(CEILINGBIN_DIR, "bind-ceiling", "k8s.io/client-go", CEILING_PACKAGES, lambda v: "", progress)
    return dest / "bind-ceiling"


# The prometheus-operator CRDs (ServiceMonitor, PrometheusRule), from its Go module, so the chart test can
# dry-run the chart's optional monitoring objects against a real API server.
PROM_OPERATOR_VERSION = "v0.85.0"
PROM_OPERATOR_CRDS = ("monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_prometheusrules.yaml")


def ensure_prometheus_operator_crds(progress: Progress = print) -> Path:
    dest = cache_root() / f"prometheus-operator-crds-{PROM_OPERATOR_VERSION}"
    if all((dest / f).is_file() for f in PROM_OPERATOR_CRDS):
        return dest
    go = go_binary()
    progress(f"fetching the prometheus-operator {PROM_OPERATOR_VERSION} CRDs from its Go module")
    tmp = _make_tmp(dest)
    try:
        env = _go_env(go) | {"GOFLAGS": "-mod=mod"}
        mod = f"github.com/prometheus-operator/prometheus-operator@{PROM_OPERATOR_VERSION}"
        out = subprocess.run([str(go), "mod", "download", "-json", mod], cwd=tmp, env=env, capture_output=True,
                             text=True)
        info = json.loads(out.stdout or "{}")
        if out.returncode != 0 or "Dir" not in info:
            raise BinariesError(f"go mod download {mod} failed: {info.get('Error') or out.stderr.strip()}")
        for name in PROM_OPERATOR_CRDS:
            shutil.copyfile(Path(info["Dir"]) / "example" / "prometheus-operator-crd" / name, tmp / name)
        _publish(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
