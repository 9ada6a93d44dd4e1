"""Posting bindings concurrently, off the scheduling thread.

A gang's capacity is reserved in the cache before its bindings are posted; each outcome comes back to the
scheduling thread through its event queue, which decides whether to retry (capacity still held) or give up.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from gangsched.live.kube import ApiError, KubeClient
from gangsched.live.translate import GPU_DEVICES_ANNOTATION

BIND = "BIND"  # the event kind bind outcomes arrive under


@dataclass(frozen=True)
class BindRequest:
    namespace: str
    name: str
    uid: str
    node: str
    devices: tuple[int, ...]
    gang: Hashable  # the gang's key in the scheduler
    attempt: int = 0


@dataclass(frozen=True)
class BindOutcome:
    request: BindRequest
    error: ApiError | None
    seconds: float


def binding_body(req: BindRequest) -> dict:
    meta: dict = {"name": req.name, "namespace": req.namespace}
    if req.uid:
        meta["uid"] = req.uid  # the API server refuses to bind a pod re-created under the same name
    if req.devices:
        # The Binding's annotations are copied onto the pod by the API server: no second request needed.
        meta["annotations"] = {GPU_DEVICES_ANNOTATION: ",".join(map(str, req.devices))}
    return {"apiVersion": "v1", "kind": "Binding", "metadata": meta, "target": {"kind": "Node", "name": req.node}}


class Binder:
    def __init__(self, client: KubeClient, out: queue.Queue, workers: int = 16):
        self.client = client
        self.out = out
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bind")
        self.in_flight = 0

    def submit(self, req: BindRequest, delay: float = 0.0) -> None:
        self.in_flight += 1
        self.pool.submit(self._bind, req, delay)

    def _bind(self, req: BindRequest, delay: float) -> None:
        if delay:
            time.sleep(delay)
        start = time.monotonic()
        error = None
        try:
            self.client.request("POST", f"/api/v1/namespaces/{req.namespace}/pods/{req.name}/binding",
                                binding_body(req))
        except ApiError as e:
            error = e
        except Exception as e:  # keep the outcome flowing back, or the gang's reservation would never settle
            error = ApiError(0, type(e).__name__, str(e))
        self.out.put((BIND, "DONE", BindOutcome(req, error, time.monotonic() - start)))

    def shutdown(self) -> None:
        """Wait for every binding already handed over: a gang whose bindings started is finished whole."""
        self.pool.shutdown(wait=True)
