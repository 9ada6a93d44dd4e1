"""The DevicePlugin gRPC service the kubelet calls, and the plugin's life beside the kubelet: serve on a socket in
the device-plugin directory, register, and start over whenever the kubelet restarts (it wipes that directory and
makes a new kubelet.sock)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from gangsched.deviceplugin.allocation import Choice
from gangsched.deviceplugin.inventory import CONTROL_DEVICES, Gpu
from gangsched.deviceplugin.pb import deviceplugin_v1beta1_pb2 as pb
from gangsched.deviceplugin.pb import deviceplugin_v1beta1_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")  # the kubelet's, whatever its --root-dir
KUBELET_SOCKET = "kubelet.sock"
HEALTHY, UNHEALTHY = "Healthy", "Unhealthy"
VISIBLE_DEVICES_ENV = "NVIDIA_VISIBLE_DEVICES"  # what NVIDIA's container toolkit reads: the devices' UUIDs
INDICES_ENV = "GANGSCHED_GPU_DEVICES"  # the same devices as gangsched names them (indices on the node)


class Devices:
    """The current device list, shared by the gRPC handlers and the loop that watches health."""

    def __init__(self, gpus: list[Gpu]):
        self._cond = threading.Condition()
        self._gpus = list(gpus)
        self.version = 0

    @property
    def gpus(self) -> list[Gpu]:
        with self._cond:
            return list(self._gpus)

    def set(self, gpus: list[Gpu]) -> None:
        with self._cond:
            self._gpus = list(gpus)
            self.version += 1
            self._cond.notify_all()

    def wait_change(self, version: int, timeout: float) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self.version != version, timeout)
            return self.version

    def wake(self) -> None:
        """Let every ListAndWatch stream look again (e.g. to notice it is being shut down)."""
        with self._cond:
            self._cond.notify_all()


@dataclass
class Hooks:
    """What the service asks of the rest of the plugin (passed in, so tests give their own)."""

    prefer: Callable[[int, list[str], list[str]], Choice]  # (size, available, must_include) -> choice
    allocated: Callable[[list[str]], None] = lambda ids: None  # after each Allocate: reconcile soon


class DevicePluginService(pb_grpc.DevicePluginServicer):
    def __init__(self, devices: Devices, hooks: Hooks, preferred: bool = True, stopping: threading.Event | None = None):
        self.devices = devices
        self.hooks = hooks
        self.preferred = preferred
        self.stopping = stopping or threading.Event()

    def GetDevicePluginOptions(self, request, context):
        return pb.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=self.preferred)

    def ListAndWatch(self, request, context):
        version = -1
        while not self.stopping.is_set() and context.is_active():
            now = self.devices.version
            if now != version:
                version = now
                yield pb.ListAndWatchResponse(devices=[_device(g) for g in self.devices.gpus])
            self.devices.wait_change(version, 1.0)

    def GetPreferredAllocation(self, request, context):
        out = []
        for req in request.container_requests:
            try:
                choice = self.hooks.prefer(req.allocation_size, list(req.available_deviceIDs),
                                           list(req.must_include_deviceIDs))
                ids = list(choice.devices)
            except Exception:  # an error here fails the pod's admission: let the kubelet choose instead
                log.exception("GetPreferredAllocation failed; the kubelet chooses")
                ids = []
            out.append(pb.ContainerPreferredAllocationResponse(deviceIDs=ids))
        return pb.PreferredAllocationResponse(container_responses=out)

    def Allocate(self, request, context):
        by_id = {g.uuid: g for g in self.devices.gpus}
        out = []
        for req in request.container_requests:
            unknown = [d for d in req.devices_ids if d not in by_id]
            if unknown:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown device IDs {unknown}")
            gpus = sorted((by_id[d] for d in req.devices_ids), key=lambda g: g.index)
            out.append(container_response(gpus))
        self.hooks.allocated([d for r in request.container_requests for d in r.devices_ids])
        return pb.AllocateResponse(container_responses=out)

    def PreStartContainer(self, request, context):
        return pb.PreStartContainerResponse()


def container_response(gpus: list[Gpu], exists: Callable[[str], bool] = os.path.exists) -> pb.ContainerAllocateResponse:
    envs = {VISIBLE_DEVICES_ENV: ",".join(g.uuid for g in gpus), INDICES_ENV: ",".join(str(g.index) for g in gpus)}
    paths = [p for g in gpus for p in g.paths if exists(p)]
    if paths:  # real GPUs: their device nodes and the driver's control devices
        paths += [p for p in CONTROL_DEVICES if exists(p)]
    specs = [pb.DeviceSpec(container_path=p, host_path=p, permissions="rw") for p in dict.fromkeys(paths)]
    return pb.ContainerAllocateResponse(envs=envs, devices=specs)


def _device(g: Gpu) -> pb.Device:
    topology = pb.TopologyInfo(nodes=[pb.NUMANode(ID=g.numa)]) if g.numa >= 0 else None
    return pb.Device(ID=g.uuid, health=HEALTHY if g.healthy else UNHEALTHY, topology=topology)


class PluginServer:
    """One life of the plugin's gRPC server on `dir/endpoint`, registered with the kubelet."""

    def __init__(self, service: DevicePluginService, directory: Path, endpoint: str, resource: str):
        self.service = service
        self.directory = directory
        self.endpoint = endpoint
        self.resource = resource
        self.socket = directory / endpoint
        self.server: grpc.Server | None = None
        self.kubelet_stamp: tuple[int, float] | None = None

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        self.service.stopping.clear()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="deviceplugin"))
        pb_grpc.add_DevicePluginServicer_to_server(self.service, server)
        server.add_insecure_port(f"unix:{self.socket}")
        server.start()
        self.server = server

    def register(self, timeout: float = 10.0) -> None:
        """Tell the kubelet we serve `resource` (it dials us back at once). grpc.RpcError if it refuses."""
        kubelet = self.directory / KUBELET_SOCKET
        self.kubelet_stamp = _stamp(kubelet)
        with grpc.insecure_channel(f"unix:{kubelet}") as channel:
            pb_grpc.RegistrationStub(channel).Register(pb.RegisterRequest(
                version=API_VERSION, endpoint=self.endpoint, resource_name=self.resource,
                options=pb.DevicePluginOptions(get_preferred_allocation_available=self.service.preferred)),
                timeout=timeout)

    def stale(self) -> bool:
        """The kubelet restarted (new kubelet.sock) or removed our socket: serve and register again."""
        return not self.socket.exists() or _stamp(self.directory / KUBELET_SOCKET) != self.kubelet_stamp

    def stop(self) -> None:
        self.service.stopping.set()
        self.service.devices.wake()
        if self.server is not None:
            self.server.stop(grace=1).wait(5)
            self.server = None
        self.socket.unlink(missing_ok=True)


def _stamp(path: Path) -> tuple[int, float] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime
