"""The device plugin's loop: discovery and health in, the kubelet's questions answered from the API server's view
of this node's pods, and what the node really did written back for the scheduler's books."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gangsched.deviceplugin import allocation
from gangsched.deviceplugin.allocation import Choice
from gangsched.deviceplugin.inventory import Gpu, annotation, annotation_patch
from gangsched.deviceplugin.pb import podresources_v1_pb2 as prpb
from gangsched.deviceplugin.pb import podresources_v1_pb2_grpc as prpb_grpc
from gangsched.deviceplugin.server import DevicePluginService, Devices, Hooks, PluginServer
from gangsched.live.kube import ApiError, KubeClient
from gangsched.live.translate import GPU_INVENTORY_ANNOTATION

log = logging.getLogger(__name__)
MERGE_PATCH = "application/merge-patch+json"
FULL_PASS_SECONDS = 30.0


class Source(Protocol):
    gpus: list[Gpu]
    error: str | None

    def poll(self) -> bool: ...


class Recorder(Protocol):
    def record(self, obj: dict, kind: str, reason: str, message: str, warning: bool = True) -> None: ...


class PodResources:
    """The kubelet's pod-resources API: which devices of `resource` each pod (ns/name) was given."""

    def __init__(self, socket: Path, resource: str):
        self.resource = resource
        self.channel = grpc.insecure_channel(f"unix:{socket}")
        self.stub = prpb_grpc.PodResourcesListerStub(self.channel)

    def allocated(self, timeout: float = 3.0) -> dict[str, set[str]]:
        resp = self.stub.List(prpb.ListPodResourcesRequest(), timeout=timeout)
        out: dict[str, set[str]] = {}
        for pod in resp.pod_resources:
            ids = {d for c in pod.containers for dev in c.devices if dev.resource_name == self.resource
                   for d in dev.device_ids}
            if ids:
                out[f"{pod.namespace}/{pod.name}"] = ids
        return out

    def close(self) -> None:
        self.channel.close()


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.preferred = Counter("gangsched_deviceplugin_preferred_total",
                                 "GetPreferredAllocation answers, by outcome: honoured (the scheduler's devices), "
                                 "diverged (they were not free: the kubelet chose), unannotated (no pod named "
                                 "devices: the kubelet chose)", ["outcome"], registry=self.registry)
        self.corrections = Counter("gangsched_deviceplugin_corrections_total",
                                   "pod annotations rewritten to the devices the kubelet allocated, by reason",
                                   ["reason"], registry=self.registry)
        self.registrations = Counter("gangsched_deviceplugin_registrations_total",
                                     "registrations with the kubelet (one more after each kubelet restart)",
                                     registry=self.registry)
        self.preferred_seconds = Histogram("gangsched_deviceplugin_preferred_seconds",
                                           "time to answer GetPreferredAllocation (an API LIST of the node's pods and "
                                           "a pod-resources List)", registry=self.registry,
                                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.unhealthy = Gauge("gangsched_deviceplugin_unhealthy_devices", "devices reported unhealthy",
                               registry=self.registry)


class DevicePlugin:
    def __init__(self, client: KubeClient, node: str, source: Source, server_dir: Path, resource: str,
                 pod_resources: PodResources, recorder: Recorder, metrics: Metrics, preferred: bool = True,
                 endpoint: str = "gangsched-gpu.sock", reconcile_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.client = client
        self.node = node
        self.source = source
        self.resource = resource
        self.pod_resources = pod_resources
        self.recorder = recorder
        self.metrics = metrics
        self.reconcile_seconds = reconcile_seconds
        self.clock = clock
        self.devices = Devices(source.gpus)
        self.service = DevicePluginService(self.devices, Hooks(prefer=self.prefer, allocated=self._allocated),
                                           preferred=preferred)
        self.server = PluginServer(self.service, server_dir, endpoint, resource)
        self.published: str | None = None
        self.registered = False
        self.poke = threading.Event()  # reconcile now (an allocation just happened)
        self.stop_event = threading.Event()
        self._allocated_cache: dict[str, set[str]] = {}
        self._reconciled: dict[str, set[str]] | None = None  # the allocations the last complete pass wrote back
        self._full_pass_due = 0.0
        self._source_error: str | None = None

    # ---- the kubelet's questions -----------------------------------------------------------------------------
    def node_pods(self) -> list[allocation.BoundPod]:
        items, _ = self.client.list_all("/api/v1/pods", {"fieldSelector": f"spec.nodeName={self.node}"})
        return allocation.bound_pods(items)

    def allocated(self) -> dict[str, set[str]]:
        try:
            self._allocated_cache = self.pod_resources.allocated()
        except grpc.RpcError as e:
            log.warning("pod-resources List failed (%s); using the last answer", e.code())
        return self._allocated_cache

    def prefer(self, size: int, available: list[str], must_include: list[str]) -> Choice:
        with self.metrics.preferred_seconds.time():
            return self._prefer(size, available, must_include)

    def _prefer(self, size: int, available: list[str], must_include: list[str]) -> Choice:
        pods = self.node_pods()
        gpus = self.devices.gpus
        choice = allocation.choose(size, available, must_include, pods, self.allocated(),
                                   {g.index: g.uuid for g in gpus})
        if choice.pod is not None:
            self.metrics.preferred.labels("honoured").inc()
            log.info("pod %s: preferring its GPUs %s", choice.pod.key, choice.pod.named)
        elif choice.diverged is not None:
            self.metrics.preferred.labels("diverged").inc()
            p = choice.diverged
            log.warning("pod %s: its GPUs %s are not free on the node; the kubelet chooses", p.key, p.named)
            self.recorder.record(p.obj, "Pod", "GPUDevicesNotFree",
                                 f"the scheduler picked GPUs {','.join(map(str, p.named or ()))}, which are not free "
                                 f"on node {self.node}; the kubelet chooses others")
        else:
            self.metrics.preferred.labels("unannotated").inc()
            log.info("no pod names %d free GPUs; the kubelet chooses", size)
        return choice

    def _allocated(self, ids: list[str]) -> None:
        self.poke.set()

    # ---- what the node did, written back -----------------------------------------------------------------------
    def reconcile(self) -> int:
        """Rewrite the annotation of every pod whose devices differ from it; the number rewritten. The node's pods
        are listed only when the kubelet's allocations changed since the last complete pass (cheap at scale), and
        every FULL_PASS_SECONDS anyway (a pod re-created under the same name can get the same devices)."""
        allocated = self.allocated()
        now = self.clock()
        if not allocated or (allocated == self._reconciled and now < self._full_pass_due):
            return 0
        self._full_pass_due = now + FULL_PASS_SECONDS
        index_of = {g.uuid: g.index for g in self.devices.gpus}
        done, complete = 0, True
        for c in allocation.corrections(self.node_pods(), allocated, index_of):
            path = f"/api/v1/namespaces/{c.pod.namespace}/pods/{c.pod.name}"
            try:
                self.client.request("PATCH", path, c.patch, content_type=MERGE_PATCH)
            except ApiError as e:
                log.warning("pod %s: cannot record its GPUs %s: %s", c.pod.key, c.actual, e)
                complete = complete and e.status == 404  # gone: nothing left to record
                continue
            done += 1
            self.metrics.corrections.labels(c.reason).inc()
            log.info("pod %s: %s", c.pod.key, c.message)
            self.recorder.record(c.pod.obj, "Pod", c.reason, c.message,
                                 warning=c.reason == "GPUAllocationDiverged")
        if complete:
            self._reconciled = {k: set(v) for k, v in allocated.items()}
        return done

    def publish(self, gpus: list[Gpu] | None = None) -> None:
        """The inventory as a Node annotation, when it changed (retried on the next tick if the write fails)."""
        gpus = self.devices.gpus if gpus is None else gpus
        value = annotation(gpus)
        if value == self.published:
            return
        try:
            self.client.request("PATCH", f"/api/v1/nodes/{self.node}", annotation_patch(gpus),
                                content_type=MERGE_PATCH)
        except ApiError as e:
            log.warning("node %s: cannot publish %s: %s", self.node, GPU_INVENTORY_ANNOTATION, e)
            return
        self.published = value

    def refresh_health(self) -> None:
        changed = self.source.poll()
        if self.source.error != self._source_error:
            self._source_error = self.source.error
            if self.source.error:
                log.error("device list: %s; keeping the last good one", self.source.error)
        if not changed:
            return
        new, old = self.source.gpus, self.devices.gpus
        lost = [g.index for g in new if not g.healthy and (g.index >= len(old) or old[g.index].healthy)]
        log.info("devices changed: %s", json.loads(annotation(new)))
        if lost:  # the scheduler hears first, so it never picks a device the kubelet is about to drop
            self.publish(new)
            self.devices.set(new)
        else:  # and hears last of a device coming back, so it never picks one the kubelet does not offer yet
            self.devices.set(new)
            self.publish(new)
        self.metrics.unhealthy.set(sum(not g.healthy for g in new))

    # ---- life ------------------------------------------------------------------------------------------------------
    def ensure_registered(self) -> None:
        if self.registered and not self.server.stale():
            return
        if self.registered:
            log.warning("the kubelet restarted (or removed our socket): serving and registering again")
            self.server.stop()
            self.registered = False
        if not (self.server.directory / "kubelet.sock").exists():
            return  # the kubelet is not up (yet)
        if self.server.server is None:
            self.server.start()
        try:
            self.server.register()
        except grpc.RpcError as e:
            log.warning("registering %s with the kubelet failed: %s; retrying", self.resource, e.details() or e)
            return
        self.registered = True
        self.metrics.registrations.inc()
        log.info("registered %s with the kubelet (%d devices, socket %s)", self.resource,
                 len(self.devices.gpus), self.server.socket)

    def run(self, tick: float = 0.5) -> None:
        self.metrics.unhealthy.set(sum(not g.healthy for g in self.devices.gpus))
        next_reconcile = 0.0
        while not self.stop_event.is_set():
            self.refresh_health()
            self.publish()
            self.ensure_registered()
            now = self.clock()
            if self.registered and (self.poke.is_set() or now >= next_reconcile):
                self.poke.clear()
                next_reconcile = now + self.reconcile_seconds
                try:
                    self.reconcile()
                except (ApiError, OSError) as e:  # the API server is away: try again next time
                    log.warning("reconcile failed: %s", e)
            self.poke.wait(tick)

    def shutdown(self) -> None:
        self.stop_event.set()
        self.poke.set()
        self.server.stop()
        self.pod_resources.close()
