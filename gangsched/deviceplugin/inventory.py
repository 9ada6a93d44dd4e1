"""A node's GPUs: discovered through NVML where a driver is present, else read from a device list file.

Device index = position in the inventory (NVML's index), the number the live scheduler writes in
`gangsched.io/gpu-devices`; the kubelet knows each device by its UUID. The inventory goes on the Node as the
`gangsched.io/gpu-inventory` annotation (JSON, read by `gangsched.live.translate.node_gpus`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from gangsched.live.translate import GPU_INVENTORY_ANNOTATION

# NVIDIA's device plugin skips these Xids: application errors, not a broken GPU.
IGNORED_XIDS = frozenset({13, 31, 43, 45, 68, 109})
CONTROL_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")


class InventoryError(ValueError):
    """The device list is unusable; the message names the file and field."""


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    model: str = ""
    memory_mib: int = 0
    numa: int = -1  # -1: unknown
    island: int = 0  # NVLink island: devices of one island talk over NVLink
    healthy: bool = True
    paths: tuple[str, ...] = field(default=())  # device nodes handed to the container (/dev/nvidiaN)


def annotation(gpus: list[Gpu]) -> str:
    """The Node annotation: what the scheduler needs per device, in index order."""
    return json.dumps([{"index": g.index, "uuid": g.uuid, "model": g.model, "memoryMiB": g.memory_mib,
                        "island": g.island, "numa": g.numa, "healthy": g.healthy} for g in gpus],
                      separators=(",", ":"))


def annotation_patch(gpus: list[Gpu]) -> dict:
    return {"metadata": {"annotations": {GPU_INVENTORY_ANNOTATION: annotation(gpus)}}}


# ---- device list file ----------------------------------------------------------------------------------------
_FIELDS = {"uuid": str, "model": str, "memoryMiB": int, "numa": int, "island": int, "healthy": bool, "paths": list}


def from_file(path: Path) -> list[Gpu]:
    """YAML or JSON: `devices: [{uuid, model, memoryMiB, numa, island, healthy, paths}]`, index = position.
    InventoryError naming the file, entry and field for anything else."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise InventoryError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise InventoryError(f"{path}: not YAML/JSON: {str(e).splitlines()[0]}") from None
    entries = doc.get("devices") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InventoryError(f"{path}: expected a non-empty list under 'devices'")
    gpus, seen = [], set()
    for i, e in enumerate(entries):
        where = f"{path}: devices[{i}]"
        if not isinstance(e, dict):
            raise InventoryError(f"{where}: expected a mapping")
        for key, value in e.items():
            want = _FIELDS.get(key)
            if want is None:
                raise InventoryError(f"{where}: unknown field {key!r} (expected {', '.join(_FIELDS)})")
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise InventoryError(f"{where}.{key}={value!r}: expected {want.__name__}")
        uuid = e.get("uuid")
        if not uuid or len(uuid) > 63:  # the kubelet's limit on a device ID
            raise InventoryError(f"{where}.uuid: required, at most 63 characters")
        if uuid in seen:
            raise InventoryError(f"{where}.uuid={uuid!r} appears twice")
        seen.add(uuid)
        if e.get("memoryMiB", 0) < 0:
            raise InventoryError(f"{where}.memoryMiB={e['memoryMiB']} is negative")
        gpus.append(Gpu(i, uuid, e.get("model", ""), e.get("memoryMiB", 0), e.get("numa", -1), e.get("island", 0),
                        e.get("healthy", True), tuple(str(p) for p in e.get("paths", ()))))
    return gpus


# ---- NVML ------------------------------------------------------------------------------------------------------
def from_nvml(nvml: Any) -> list[Gpu]:
    """Every GPU NVML sees (`nvml` is the initialised `pynvml` module): NUMA node from sysfs, NVLink islands as
    the connected components of active links."""
    count = nvml.nvmlDeviceGetCount()
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    bus = [_str(nvml.nvmlDeviceGetPciInfo(h).busId).lower() for h in handles]
    by_bus = {_short_bus(b): i for i, b in enumerate(bus)}
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, h in enumerate(handles):
        for link in range(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18)):
            try:
                if nvml.nvmlDeviceGetNvLinkState(h, link) != 1:
                    continue
                peer = by_bus.get(_short_bus(_str(nvml.nvmlDeviceGetNvLinkRemotePciInfo(h, link).busId).lower()))
            except nvml.NVMLError:
                continue  # no such link, or NVLink unsupported
            if peer is not None:
                parent[root(i)] = root(peer)
    islands: dict[int, int] = {}
    gpus = []
    for i, h in enumerate(handles):
        minor = nvml.nvmlDeviceGetMinorNumber(h)
        gpus.append(Gpu(index=i, uuid=_str(nvml.nvmlDeviceGetUUID(h)), model=_str(nvml.nvmlDeviceGetName(h)),
                        memory_mib=int(nvml.nvmlDeviceGetMemoryInfo(h).total) // 2**20, numa=_numa(bus[i]),
                        island=islands.setdefault(root(i), len(islands)), paths=(f"/dev/nvidia{minor}",)))
    return gpus


def _str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _short_bus(bus_id: str) -> str:
    """NVML writes PCI bus ids with an 8-digit domain (00000000:3B:00.0), sysfs with 4: compare without it."""
    return bus_id.split(":", 1)[-1]


def _numa(bus_id: str) -> int:
    try:
        return int(Path(f"/sys/bus/pci/devices/{bus_id[-12:]}/numa_node").read_text())
    except (OSError, ValueError):
        return -1


class NvmlHealth:
    """Marks a GPU unhealthy on a critical Xid event (NVIDIA's device plugin does the same)."""

    def __init__(self, nvml: Any, gpus: list[Gpu]):
        self.nvml = nvml
        self.events = nvml.nvmlEventSetCreate()
        self.by_uuid = {g.uuid: g.index for g in gpus}
        for g in gpus:
            h = nvml.nvmlDeviceGetHandleByIndex(g.index)
            with contextlib.suppress(nvml.NVMLError):  # a GPU that cannot report Xids stays as it is
                nvml.nvmlDeviceRegisterEvents(h, nvml.nvmlEventTypeXidCriticalError, self.events)

    def wait(self, timeout_ms: int) -> int | None:
        """The index of a GPU that just failed, or None (timeout, or an Xid to ignore)."""
        try:
            data = self.nvml.nvmlEventSetWait(self.events, timeout_ms)
        except self.nvml.NVMLError:
            return None  # timeout (NVML_ERROR_TIMEOUT) or a transient error
        if data.eventType != self.nvml.nvmlEventTypeXidCriticalError or data.eventData in IGNORED_XIDS:
            return None
        return self.by_uuid.get(_str(self.nvml.nvmlDeviceGetUUID(data.device)))


# ---- the source the plugin polls -----------------------------------------------------------------------------
class FileSource:
    """The device list file, re-read when it changes (health is edited there). A broken edit keeps the last good
    list (`error` says why), so a typo never takes GPUs away."""

    def __init__(self, path: Path):
        self.path = path
        self.gpus = from_file(path)  # a bad file at start-up is the caller's error
        self.error: str | None = None
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def poll(self) -> bool:
        """Re-read if the file changed; True if the devices or their health changed."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            gpus = from_file(self.path)
        except InventoryError as e:
            self.error = str(e)
            return False
        self.error = None
        changed, self.gpus = gpus != self.gpus, gpus
        return changed


class NvmlSource:
    """GPUs from NVML; `poll` takes the Xid events seen since the last call (one NVML wait of `wait_ms`)."""

    def __init__(self, nvml: Any, wait_ms: int = 1000):
        self.nvml = nvml
        self.gpus = from_nvml(nvml)
        self.health = NvmlHealth(nvml, self.gpus)
        self.wait_ms = wait_ms
        self.error: str | None = None

    def poll(self) -> bool:
        failed = self.health.wait(self.wait_ms)
        if failed is None or not self.gpus[failed].healthy:
            return False
        self.gpus = [replace(g, healthy=False) if g.index == failed else g for g in self.gpus]
        return True


def nvml_source(loader: Callable[[], Any] | None = None) -> NvmlSource:
    """NVML through nvidia-ml-py (`pynvml`), optional: InventoryError when it or the driver is missing."""
    try:
        nvml = loader() if loader else __import__("pynvml")
    except ImportError:
        raise InventoryError("NVML discovery needs nvidia-ml-py (pip install 'gangsched[nvml]'), "
                             "or pass --devices FILE") from None
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        raise InventoryError(f"NVML: {e} (is the NVIDIA driver installed?); or pass --devices FILE") from None
    return NvmlSource(nvml)
