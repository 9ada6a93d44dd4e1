"""`gangsched run`: the secondary scheduler process (kubeconfig or in-cluster)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import socket
import threading
import time
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gangsched.core import Scheduler
from gangsched.live import collector
from gangsched.live import informer as inf
from gangsched.live.binder import Binder
from gangsched.live.cache import Cache
from gangsched.live.events import EventRecorder
from gangsched.live.giveback import GiveBack
from gangsched.live.kube import NOT_LEADER, ApiError, KubeClient
from gangsched.live.leader import LeaderElector
from gangsched.live.metrics import registry_for
from gangsched.live.podgroups import StatusWriter
from gangsched.live.ports import Recorder
from gangsched.live.preemption import ApiEvictor, Preemptor
from gangsched.live.scheduler import CALL, LiveScheduler
from gangsched.profile import Profile, load_profile
from gangsched.state import ClusterState

log = logging.getLogger("gangsched")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    p.add_argument("--profile", default="default", help="profile name or YAML file (default: default)")
    p.add_argument("--scheduler-name", default="gangsched", help="schedule pods with this spec.schedulerName")
    p.add_argument("--qps", type=float, default=500.0, help="client requests per second (<= 0: unlimited)")
    p.add_argument("--burst", type=int, default=1000, help="client burst above --qps")
    p.add_argument("--bind-workers", type=int, default=16, help="bindings posted concurrently")
    p.add_argument("--gang-timeout", type=float, default=60.0,
                   help="seconds a gang may stay below minMember with members bound before they are evicted, "
                        "for PodGroups without spec.scheduleTimeoutSeconds")
    p.add_argument("--leader-elect", action="store_true", help="lead through a coordination.k8s.io Lease first")
    p.add_argument("--lease-namespace", default="default")
    p.add_argument("--lease-name", default="gangsched")
    p.add_argument("--health-port", type=int, default=0,
                   help="serve /healthz, /metrics and /debug/books (what the cache holds, as JSON) here (0: off)")
    p.add_argument("--no-events", action="store_true", help="do not post Events (benchmarks)")
    p.add_argument("--no-preemption", action="store_true",
                   help="never evict lower-priority gangs to make room (priority then only orders the queue)")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(run=run)


def build(client: KubeClient, profile: Profile, *, scheduler_name: str = "gangsched", bind_workers: int = 16,
          gang_timeout: float = 60.0, events: bool = True, watch_timeout: int = 300,
          preemption: bool = True) -> LiveScheduler:
    """The production wiring: every collaborator talks to the API server through `client`."""
    state = ClusterState([])
    cache = Cache(state, scheduler_name)
    recorder: Recorder = EventRecorder(client).start() if events else NoEvents()
    sched_events: queue.Queue = queue.Queue()
    core = Scheduler(state, profile)
    preemptor = Preemptor(cache, core, ApiEvictor(client), recorder, time.time) if preemption else None
    sched = LiveScheduler(
        cache, core, profile, Binder(client, sched_events, bind_workers),
        recorder, StatusWriter(client).start(), GiveBack(cache, partial(delete_pod, client), recorder, gang_timeout),
        events=sched_events, preemptor=preemptor, informers=lambda out, stop: inf.start_informers(client, out, stop,
                                                                             watch_timeout=watch_timeout))
    return sched


def delete_pod(client: KubeClient, obj: dict) -> bool:
    """Delete a pod as it is (its uid as precondition, so a re-created namesake is left alone)."""
    meta = obj["metadata"]
    try:
        client.request("DELETE", f"/api/v1/namespaces/{meta.get('namespace', 'default')}/pods/{meta['name']}",
                       {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": meta.get("uid")}})
        return True
    except ApiError as e:
        if e.status in (404, 409):
            return True
        if e.reason != NOT_LEADER:
            log.warning("deleting %s/%s failed: %s", meta.get("namespace"), meta["name"], e)
        return False


class NoEvents:
    def record(self, obj: dict, kind: str, reason: str, message: str, warning: bool = True,
               api_version: str = "v1") -> None:
        pass


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    collector.pace()
    profile = load_profile(args.profile)
    client = KubeClient.load(args.kubeconfig, qps=args.qps, burst=args.burst, pool_size=args.bind_workers + 8)
    sched = build(client, profile, scheduler_name=args.scheduler_name, bind_workers=args.bind_workers,
                  gang_timeout=args.gang_timeout, events=not args.no_events, preemption=not args.no_preemption)
    exit_code = 0

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: finishing bindings in flight, then stopping", signum)
        sched.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.health_port:
        serve_health(sched, args.health_port)
    elector, renew_stop = None, threading.Event()
    leading: threading.Event | None = None
    renewers: list[threading.Thread] = []
    campaign: threading.Thread | None = None
    if args.leader_elect:
        identity = f"{socket.gethostname()}_{os.getpid()}"
        elector = LeaderElector(client, args.lease_namespace, args.lease_name, identity)
        client.fence = elector.holds  # from now on nothing is written unless we hold the lease
        leading = threading.Event()

        def lost() -> None:
            nonlocal exit_code
            exit_code = 1  # as kube-scheduler does: a replica that lost the lease exits and is restarted
            sched.stop.set()

        def campaign_for_lease() -> None:
            if not elector.acquire(sched.stop):
                sched.stop.set()
                return
            # its own stop event: renewals go on while the bindings in flight drain after SIGTERM
            renewers.append(elector.keep_renewing(renew_stop, lost))
            log.info("leading: scheduling pods with schedulerName=%s", args.scheduler_name)
            leading.set()

        campaign = threading.Thread(target=campaign_for_lease, name="leader-election")
        campaign.start()
    log.info("profile %s; %s", profile.name, "standby until leading" if leading else
             f"scheduling pods with schedulerName={args.scheduler_name}")
    sched.start()  # informers first, leader or not: a standby keeps its books and takes over at once
    collector.freeze_when(lambda: sched.filled, sched.stop)
    sched.run(leading)
    if campaign is not None:
        campaign.join()  # stop is set: it returns within a retry period
    sched.status.close()  # type: ignore[attr-defined]
    if isinstance(sched.recorder, EventRecorder):
        sched.recorder.flush()
    if elector is not None and renewers:
        renew_stop.set()
        renewers[0].join()  # no renewal may land after the release
        if exit_code == 0:
            elector.release()
    log.info("stopped: %s", dict(sched.stats))
    return exit_code


def books(cache: Cache) -> dict:
    """What the cache holds, as JSON: pod key -> [node, devices] for every pod holding a node (bound, or assumed
    while its binding is in flight), and which of those are assumed, or held on guessed devices (no annotation)."""
    return {"pods": {k: [a.node_name, list(a.devices)] for k, a in cache.state.assignments.items()},
            "assumed": sorted(cache.assumed), "guessed": sorted(cache.guessed), "unplaced": sorted(cache.unplaced),
            "nodes": len(cache.nodes)}


def read_books(sched: LiveScheduler, timeout: float = 10.0) -> dict | None:
    """`books` taken on the scheduling thread between two passes (so never half-way through an event); None if
    the loop does not come to it within `timeout`."""
    reply: queue.Queue = queue.Queue(maxsize=1)
    sched.events.put((CALL, "", lambda: reply.put(books(sched.cache))))
    try:
        return reply.get(timeout=timeout)
    except queue.Empty:
        return None


def serve_health(sched: LiveScheduler, port: int, books_timeout: float = 10.0) -> ThreadingHTTPServer:
    registry = registry_for(sched)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                ok = time.monotonic() - sched.alive_at < 30
                body, code, ctype = (b"ok" if ok else b"scheduling loop stuck"), (200 if ok else 500), "text/plain"
            elif self.path == "/metrics":
                body, code, ctype = generate_latest(registry), 200, CONTENT_TYPE_LATEST
            elif self.path == "/debug/books":  # read-only: the soak benchmark compares it with the API server
                snap = read_books(sched, books_timeout)
                body = json.dumps(snap).encode() if snap is not None else b"scheduling loop not answering"
                code, ctype = (200, "application/json") if snap is not None else (503, "text/plain")
            else:
                body, code, ctype = b"not found", 404, "text/plain"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
