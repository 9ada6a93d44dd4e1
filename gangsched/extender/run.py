"""`gangsched extender`: the process (kubeconfig or in-cluster) and the kube-scheduler configuration for it.

The same books as `gangsched run`: informers into a `live.cache.Cache`, the core's `Scheduler` over its state,
`live.preemption.Preemptor` for the preempt verb. One thread drains the informers' events into the book (under
its lock) and plans complete gangs ahead of kube-scheduler's calls, one gang per hold of the lock; the HTTP
threads answer kube-scheduler's calls (under the same lock).
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gangsched.core import Scheduler
from gangsched.extender.reservations import Book
from gangsched.extender.server import Extender, serve
from gangsched.live import collector
from gangsched.live import informer as inf
from gangsched.live.binder import BindRequest, binding_body
from gangsched.live.cache import Cache
from gangsched.live.events import EventRecorder
from gangsched.live.giveback import GiveBack
from gangsched.live.kube import ApiError, KubeClient, now_rfc3339
from gangsched.live.podgroups import StatusWriter
from gangsched.live.ports import Recorder
from gangsched.live.preemption import ApiEvictor, Preemptor
from gangsched.live.run import NoEvents, delete_pod
from gangsched.profile import Profile, load_profile
from gangsched.state import ClusterState

log = logging.getLogger("gangsched.extender")

GPU = "nvidia.com/gpu"
REQUEUE_CONDITION = "gangsched.io/GangPlaced"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    p.add_argument("--profile", default="default", help="profile name or YAML file (default: default)")
    p.add_argument("--scheduler-name", default="default-scheduler",
                   help="the kube-scheduler profile (spec.schedulerName) whose pods are gang-scheduled")
    p.add_argument("--address", default="0.0.0.0", help="listen address (default: 0.0.0.0)")
    p.add_argument("--port", type=int, default=8888, help="listen port (default: 8888; 0 picks a free one)")
    p.add_argument("--url-prefix", default="", help="path prefix of the verbs (kube-scheduler's urlPrefix path)")
    p.add_argument("--tls-cert", help="serving certificate (PEM): serve HTTPS (kube-scheduler's enableHTTPS)")
    p.add_argument("--tls-key", help="the serving certificate's key (PEM)")
    p.add_argument("--client-ca", help="require client certificates signed by this CA (tlsConfig.certFile)")
    p.add_argument("--health-port", type=int, default=0, help="plain-HTTP /healthz and /metrics here (0: off)")
    p.add_argument("--request-timeout", type=float, default=10.0,
                   help="seconds a call may take before it is answered with an error; keep it below "
                        "kube-scheduler's httpTimeout (default: 10)")
    p.add_argument("--bind-wait", type=float, default=15.0,
                   help="seconds a member's bind waits for the rest of its gang to reach bind before the gang's "
                        "reservation is dropped; below httpTimeout (default: 15)")
    p.add_argument("--reservation-ttl", type=float, default=30.0,
                   help="seconds a reservation kube-scheduler never binds is kept (default: 30)")
    p.add_argument("--no-preemption", action="store_true", help="the preempt verb never names victims")
    p.add_argument("--no-plan-ahead", action="store_true",
                   help="plan a gang only when kube-scheduler filters its first member, inside that call, instead "
                        "of as soon as it is complete (the behaviour before plan-ahead, to compare)")
    p.add_argument("--gang-timeout", type=float, default=60.0,
                   help="seconds a gang may stay below minMember with members bound (a binding failed for good) "
                        "before they are deleted, for PodGroups without spec.scheduleTimeoutSeconds (default: 60)")
    p.add_argument("--follow-lease", metavar="NAMESPACE/NAME", type=lease_ref,
                   help="kube-scheduler's leader-election Lease: write PodGroup status and give back incomplete "
                        "gangs only while the kube-scheduler beside us (same hostname) holds it (default: always)")
    p.add_argument("--no-events", action="store_true", help="do not post Events")
    p.add_argument("--qps", type=float, default=200.0, help="client requests per second (<= 0: unlimited)")
    p.add_argument("--burst", type=int, default=400)
    p.add_argument("--print-config", metavar="URL",
                   help="print a KubeSchedulerConfiguration calling an extender at URL, and exit")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(run=run)


def build(client: KubeClient, profile: Profile, *, scheduler_name: str = "default-scheduler", ttl: float = 30.0,
          bind_wait: float = 15.0, preemption: bool = True, gang_timeout: float = 60.0, events: bool = True,
          writes: Callable[[], bool] = lambda: True, plan_ahead: bool = True) -> Book:
    """The production wiring: the book over the cache, its bindings, evictions, Events and PodGroup status
    through `client`."""
    state = ClusterState([])
    cache = Cache(state, scheduler_name)
    core = Scheduler(state, profile)
    recorder: Recorder = EventRecorder(client).start() if events else NoEvents()
    preemptor = Preemptor(cache, core, ApiEvictor(client), recorder, time.time) if preemption else None

    def post(req: BindRequest) -> ApiError | None:
        try:
            client.request("POST", f"/api/v1/namespaces/{req.namespace}/pods/{req.name}/binding", binding_body(req))
            return None
        except ApiError as e:
            return e

    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="nudge")

    def nudge(pod: dict, message: str) -> None:
        pool.submit(requeue, client, pod, message)

    def delete(pod: dict) -> bool:  # called under the book's lock: the API call goes to the pool
        pool.submit(delete_pod, client, pod)
        return True

    return Book(cache, core, profile, post, preemptor=preemptor, ttl=ttl, bind_wait=bind_wait, nudge=nudge,
                giveback=GiveBack(cache, delete, recorder, gang_timeout), status=StatusWriter(client).start(),
                writes=writes, plan_ahead=plan_ahead)


def lease_ref(value: str) -> str:
    namespace, _, name = value.partition("/")
    if not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{value!r}: expected NAMESPACE/NAME")
    return value


class LeaseFollower:
    """Whether the kube-scheduler beside us leads: its Lease's holderIdentity is `<hostname>_<uuid>`, and as a
    sidecar we share its hostname. Read every `every` seconds from a thread; False until a read says so."""

    def __init__(self, client: KubeClient, lease: str, hostname: str | None = None, every: float = 2.0):
        namespace, _, name = lease_ref(lease).partition("/")
        self.client, self.every = client, every
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self.hostname = hostname or socket.gethostname()
        self.leading = False

    def __call__(self) -> bool:
        return self.leading

    def read(self) -> bool:
        try:
            holder = (self.client.request("GET", self.path).get("spec") or {}).get("holderIdentity") or ""
        except ApiError as e:
            if e.status != 404:
                log.warning("reading kube-scheduler's lease failed: %s", e)
            holder = ""
        leading = holder.rsplit("_", 1)[0] == self.hostname
        if leading != self.leading:
            log.info("kube-scheduler beside us %s (lease holder %r)", "leads" if leading else "does not lead",
                     holder)
        self.leading = leading
        return leading

    def start(self, stop: threading.Event) -> LeaseFollower:
        def loop() -> None:
            while not stop.is_set():
                self.read()
                stop.wait(self.every)
        threading.Thread(target=loop, name="lease-follower", daemon=True).start()
        return self


def requeue(client: KubeClient, pod: dict, message: str) -> None:
    """Touch the pod's status (a condition saying why) so kube-scheduler schedules it again now."""
    meta = pod["metadata"]
    condition = {"type": REQUEUE_CONDITION, "status": "True", "reason": "GangPlaced", "message": message,
                 "lastTransitionTime": now_rfc3339()}
    try:
        client.request("PATCH", f"/api/v1/namespaces/{meta.get('namespace', 'default')}/pods/{meta['name']}/status",
                       {"status": {"conditions": [condition]}}, content_type="application/strategic-merge-patch+json")
    except ApiError as e:
        if e.status != 404:
            log.warning("re-queueing %s/%s failed: %s", meta.get("namespace"), meta["name"], e)


def pump(book: Book, events: queue.Queue, stop: threading.Event, tick: float = 0.5, plan_for: float = 0.05
         ) -> None:
    """Informer events into the book, in batches, a tick after each batch and at least every `tick` seconds,
    then gangs planned ahead (`Book.plan_step`) for up to `plan_for` seconds before events are looked at again.
    The lock is released between gangs, so kube-scheduler's calls wait for one gang's plan at most."""
    left = False  # gangs left to plan: come back at once, not after the idle tick
    ticked = 0.0
    while not stop.is_set():
        batch = []
        try:
            batch.append(events.get_nowait() if left else events.get(timeout=tick))
            while len(batch) < 1000:
                batch.append(events.get_nowait())
        except queue.Empty:
            pass
        with book.lock:
            for item in batch:
                book.apply(*item)
            if batch or time.monotonic() - ticked >= tick or not left:
                book.tick()
                ticked = time.monotonic()
        until = time.monotonic() + plan_for
        while True:  # at least one gang per round, however short `plan_for`
            with book.lock:
                left = book.plan_step()
            time.sleep(0)  # let a call waiting for the lock take it (a released lock is not handed over)
            if not left or stop.is_set() or time.monotonic() >= until:
                break


def scheduler_config(scheduler_name: str, url: str, *, node_cache_capable: bool = True, ca_file: str | None = None,
                     cert_file: str | None = None, key_file: str | None = None, http_timeout: str = "30s",
                     ignorable: bool = False, managed: tuple[str, ...] = (GPU,), preempt: bool = True
                     ) -> dict[str, Any]:
    """A KubeSchedulerConfiguration whose profile `scheduler_name` calls the extender at `url` for filter,
    prioritize, bind and preempt. percentageOfNodesToScore 100: the extender must see every feasible node, or
    a gang's reserved node may simply not be among the ones kube-scheduler sampled."""
    ext: dict[str, Any] = {
        "urlPrefix": url, "filterVerb": "filter", "prioritizeVerb": "prioritize", "bindVerb": "bind",
        "weight": 1, "enableHTTPS": url.startswith("https"), "httpTimeout": http_timeout,
        "nodeCacheCapable": node_cache_capable, "ignorable": ignorable,
        "managedResources": [{"name": r, "ignoredByScheduler": False} for r in managed],
    }
    if preempt:
        ext["preemptVerb"] = "preempt"
    tls = {k: v for k, v in (("caFile", ca_file), ("certFile", cert_file), ("keyFile", key_file)) if v}
    if tls:
        ext["tlsConfig"] = tls
    return {"apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
            "percentageOfNodesToScore": 100, "profiles": [{"schedulerName": scheduler_name}], "extenders": [ext]}


def run(args: argparse.Namespace) -> int:
    import yaml

    if args.print_config:
        print(yaml.safe_dump(scheduler_config(args.scheduler_name, args.print_config), sort_keys=False), end="")
        return 0
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    collector.pace()
    for flag in ("tls_cert", "tls_key", "client_ca"):
        path = getattr(args, flag)
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"--{flag.replace('_', '-')} {path}: no such file")
    if bool(args.tls_cert) != bool(args.tls_key) or (args.client_ca and not args.tls_cert):
        raise FileNotFoundError("--tls-cert and --tls-key go together, and --client-ca needs them")
    profile = load_profile(args.profile)
    client = KubeClient.load(args.kubeconfig, qps=args.qps, burst=args.burst)
    stop = threading.Event()
    follower = LeaseFollower(client, args.follow_lease).start(stop) if args.follow_lease else None
    book = build(client, profile, scheduler_name=args.scheduler_name, ttl=args.reservation_ttl,
                 bind_wait=args.bind_wait, preemption=not args.no_preemption, gang_timeout=args.gang_timeout,
                 events=not args.no_events, writes=follower or (lambda: True), plan_ahead=not args.no_plan_ahead)
    events: queue.Queue = queue.Queue()
    informers = inf.start_informers(client, events, stop)
    pumper = threading.Thread(target=pump, args=(book, events, stop), name="extender-events", daemon=True)
    pumper.start()

    def synced() -> bool:
        return all(i.synced.is_set() for i in informers) and pumper.is_alive()

    collector.freeze_when(lambda: synced() and events.empty(), stop)

    ext = Extender(book, request_timeout=args.request_timeout, ready=synced)
    server = serve(ext, args.address, args.port, prefix=args.url_prefix, tls_cert=args.tls_cert,
                   tls_key=args.tls_key, client_ca=args.client_ca, healthy=synced)
    if args.health_port:
        serve(ext, args.address, args.health_port, healthy=synced, verbs=False)
    scheme = "https" if args.tls_cert else "http"
    host, port = server.server_address[:2]
    # the line tests and operators wait for: where kube-scheduler's urlPrefix must point
    print(f"extender serving on {scheme}://{host}:{port}/{args.url_prefix.strip('/')}", flush=True)
    log.info("gang-scheduling pods of kube-scheduler profile %s, profile %s", args.scheduler_name, profile.name)

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    server.shutdown()  # no new calls; bindings already being posted finish (a gang is never left half-bound)
    with book.lock:
        deadline = time.monotonic() + args.request_timeout
        while book.posting and time.monotonic() < deadline:
            book.lock.wait(0.1)
    book.status.close()  # type: ignore[union-attr]
    if isinstance(book.giveback.recorder, EventRecorder):  # type: ignore[union-attr]
        book.giveback.recorder.flush()  # type: ignore[union-attr]
    log.info("stopped: %s", dict(book.stats))
    return 0
