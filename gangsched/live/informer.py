"""List+watch of one resource into the scheduler's event queue (client-go's reflector, trimmed).

Every change reaches one queue that a single scheduler thread drains, so the cache needs no locks. A
relist (at start, after 410 Gone, or after an error that lost our place) is delivered as SYNC_PART events
of up to PART objects each as they arrive, then one SYNC with the rest: the cache fills its books while
the list is still streaming (at 100,000 pods, seconds the scheduler thread would otherwise wait), and at
the SYNC drops objects deleted while we were not watching. A list cut short ends in SYNC_ABORT: what it
delivered stays, and the next list's SYNC settles the rest.

The list is a watch-list stream (KEP-3157, `sendInitialEvents`, as client-go's WatchListClient): the API
server sends every object from its watch cache as an ADDED event, then a bookmark marked
`k8s.io/initial-events-end`, and the same stream goes on as the watch. A paginated list is read from etcd
page by page (5,000 nodes and 100,000 pods: 20-25 s to sync on a 2-core machine, against 11-16 s streamed, and a
third less memory: benchmarks/README.md); the stream comes from memory and is decoded as it arrives. A server
that refuses the stream (400/422: the WatchList feature off) is listed the paginated way from then on.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from dataclasses import dataclass
from typing import Any

from gangsched.live.kube import ApiError, KubeClient

log = logging.getLogger(__name__)

SYNC = "SYNC"  # the last of a list's objects: the list is complete
SYNC_PART = "SYNC_PART"  # some of a list's objects, more follow
SYNC_ABORT = "SYNC_ABORT"  # the list begun by SYNC_PARTs was cut: the next list starts afresh
PART = 1000  # objects per SYNC_PART
INITIAL_EVENTS_END = "k8s.io/initial-events-end"  # the bookmark that ends a watch-list stream's initial objects


@dataclass(frozen=True)
class Resource:
    kind: str  # our short name: pods, nodes, podgroups, priorityclasses, pdbs
    path: str  # the collection's path, all namespaces
    optional: bool = False  # absent API (e.g. the PodGroup CRD not installed): wait for it, do not fail
    builtin: bool = False  # a built-in kind, its JSON in struct order: managedFields cut before decoding


PODS = Resource("pods", "/api/v1/pods", builtin=True)
NODES = Resource("nodes", "/api/v1/nodes", builtin=True)
PODGROUPS = Resource("podgroups", "/apis/scheduling.x-k8s.io/v1alpha1/podgroups", optional=True)
# Kubernetes' own PodGroups (Workload API): served from 1.37 with the GenericWorkload gate and the API enabled.
NATIVE_PODGROUPS = Resource("nativepodgroups", "/apis/scheduling.k8s.io/v1beta1/podgroups", optional=True)
PRIORITY_CLASSES = Resource("priorityclasses", "/apis/scheduling.k8s.io/v1/priorityclasses")
PDBS = Resource("pdbs", "/apis/policy/v1/poddisruptionbudgets")  # preemption's victim ranking


class Informer:
    def __init__(self, client: KubeClient, resource: Resource, out: queue.Queue, stop: threading.Event,
                 watch_timeout: int = 300):
        self.client = client
        self.watch_list = True  # list by a watch-list stream (else page by page): off once a server refuses it
        self.resource = resource
        self.out = out
        self.stop = stop
        self.watch_timeout = watch_timeout
        self.synced = threading.Event()
        self.relists = 0  # for tests and metrics: how often the cache had to be rebuilt from a list
        self.absent = False  # an optional API was found not served
        self.thread = threading.Thread(target=self._run, name=f"informer-{resource.kind}", daemon=True)

    def start(self) -> Informer:
        self.thread.start()
        return self

    def _run(self) -> None:
        rv = ""
        backoff = 0.2
        while not self.stop.is_set():
            try:
                if not rv and not self.watch_list:
                    items, rv = self.client.list_all(self.resource.path)
                    for o in items:
                        _strip(o)
                    self._sync(items)
                rv = self._watch(rv)
                backoff = 0.2
            except ApiError as e:
                if e.status == 410:  # our resourceVersion was compacted away: start over from a list
                    log.info("%s: watch expired (410 Gone), relisting", self.resource.kind)
                    rv = ""
                    continue
                if e.status in (400, 422) and not rv and self.watch_list:
                    log.info("%s: the API server refuses watch-list streams (%s); listing page by page",
                             self.resource.kind, e)
                    self.watch_list = False
                    continue
                if e.status in (403, 404) and self.resource.optional:
                    # absent (404), or not granted to us (403: an RBAC from before the API): nothing to schedule by,
                    # so the others are not held up; said once, as most clusters do not serve the native PodGroups
                    self.out.put((self.resource.kind, SYNC, []))
                    self.synced.set()
                    (log.warning if not self.absent else log.debug)(
                        "%s: %s; retrying", self.resource.kind,
                        "not allowed to list it (RBAC)" if e.status == 403
                        else "API not served (is the CRD installed, or the API enabled?)")
                    self.absent = True
                    backoff = 5.0
                else:
                    log.warning("%s: %s; retrying in %.1fs", self.resource.kind, e, backoff)
                self.stop.wait(backoff * (1 + random.random() * 0.2))
                backoff = min(backoff * 2, 10.0)
            except Exception:  # never let an informer die: a dead one would silently freeze the cache
                log.exception("%s: informer error", self.resource.kind)
                rv = ""
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _sync(self, items: list[dict]) -> None:
        self.relists += 1
        self.out.put((self.resource.kind, SYNC, items))
        self.synced.set()

    def _watch(self, rv: str) -> str:
        """Watch from `rv`; from none, a watch-list stream whose initial objects are delivered as SYNC_PARTs
        and a SYNC. The resourceVersion to go on from (empty: list again)."""
        initial: list[dict] | None = None
        parted = False  # SYNC_PARTs of this list are out: a cut list must be called off
        query = None
        if not rv:
            initial, query = [], {"sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan"}
        try:
            for event in self.client.watch(self.resource.path, rv, self.watch_timeout, query=query,
                                           lean=self.resource.builtin):
                if self.stop.is_set():
                    break
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    code = obj.get("code", 0)
                    raise ApiError(code, obj.get("reason", ""), obj.get("message", ""))
                meta = obj.get("metadata") or {}
                if meta.get("resourceVersion"):
                    rv = meta["resourceVersion"]
                if initial is not None:  # still the initial objects
                    if kind == "BOOKMARK" and (meta.get("annotations") or {}).get(INITIAL_EVENTS_END) == "true":
                        self._sync(initial)
                        initial = None
                    elif kind == "ADDED":
                        initial.append(_strip(obj))
                        if len(initial) >= PART:
                            self.out.put((self.resource.kind, SYNC_PART, initial))
                            initial, parted = [], True
                    continue
                if kind != "BOOKMARK":
                    self.out.put((self.resource.kind, kind, _strip(obj)))
        finally:
            if initial is not None and parted:
                self.out.put((self.resource.kind, SYNC_ABORT, None))
        if initial is not None and not self.stop.is_set():  # cut before its initial objects ended
            log.warning("%s: a watch-list stream ended before its initial objects did; listing page by page",
                        self.resource.kind)
            self.watch_list = False
        return "" if initial is not None else rv


def _strip(obj: dict) -> dict:
    """Drop what nothing here reads and that weighs most: managedFields (about half a pod's JSON), as
    kube-scheduler's informers do (client-go's TransformStripManagedFields)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return obj


def start_informers(client: KubeClient, out: queue.Queue, stop: threading.Event,
                    resources: tuple[Resource, ...] = (NODES, PODS, PODGROUPS, NATIVE_PODGROUPS, PRIORITY_CLASSES,
                                                       PDBS),
                    **kwargs: Any) -> list[Informer]:
    return [Informer(client, r, out, stop, **kwargs).start() for r in resources]
