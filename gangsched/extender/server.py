"""The extender's HTTP(S) server: POST <prefix>/filter, /prioritize, /bind, /preempt; GET /healthz, /metrics.

Each request is bounded: the socket times out after `request_timeout`, and a verb that cannot take the book's
lock within it answers with an error rather than let kube-scheduler's `httpTimeout` expire (filter and bind
carry an `Error` field kube-scheduler shows on the pod; prioritize and preempt answer 503). Bad input is a 400
with a one-line message. TLS with `tls_cert`/`tls_key`; with `client_ca` the client (kube-scheduler's
`tlsConfig.certFile`) must present a certificate that CA signed.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gangsched.extender import protocol as wire
from gangsched.extender.reservations import Book

log = logging.getLogger(__name__)

VERBS = ("filter", "prioritize", "bind", "preempt")
# per-verb latency; sub-millisecond buckets: the target is a few ms per verb
# How long a kept-alive connection may wait for its next request: longer than the 90 s for which kube-scheduler's
# Go client keeps an idle connection (http.Transport IdleConnTimeout), so the server never closes one first: a
# POST sent on a connection the server is just closing fails (Go does not resend it), and kube-scheduler takes
# that as the extender's error (a bind lost at the gang's barrier).
IDLE_TIMEOUT = 120.0
BUCKETS = (0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05,
           0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, book: Book):
        self.registry = CollectorRegistry()
        self.latency = Histogram("gangsched_extender_request_duration_seconds",
                                 "one extender call, from reading its body to the answer (bind: with its wait at "
                                 "the gang's barrier), by verb", ["verb"], buckets=BUCKETS,
                                 registry=self.registry)
        self.errors = Counter("gangsched_extender_request_errors_total",
                              "extender calls answered with an error, by verb", ["verb"], registry=self.registry)
        for name, doc in (("gangs_planned", "gangs placed whole and reserved"),
                          ("planned_ahead", "of those, placed before kube-scheduler asked about any member"),
                          ("ahead_misses", "gangs tried ahead of kube-scheduler that did not fit"),
                          ("replans", "reservations "
                          "re-planned because kube-scheduler rejected a reserved node"),
                          ("expired", "reservations never bound, expired"),
                          ("barrier_timeouts", "gangs whose members did not all reach bind in time"),
                          ("pods_bound", "bindings posted"), ("bind_errors", "bindings that failed"),
                          ("preemptions", "gang preemptions started")):
            Gauge(f"gangsched_extender_{name}_total", doc, registry=self.registry).set_function(
                lambda n=name: book.stats[n])
        Gauge("gangsched_extender_reservations", "gangs reserved, not bound yet", registry=self.registry
              ).set_function(lambda: len(book.reservations))
        Gauge("gangsched_extender_plan_ahead_queue", "complete gangs not reserved yet, queued to plan ahead "
              "(those tried stay until they fit or change)", registry=self.registry
              ).set_function(lambda: len(book.ahead))


class Extender:
    """The verbs over a `Book`, as functions of decoded JSON: what the HTTP handler (and tests) call."""

    def __init__(self, book: Book, *, request_timeout: float = 10.0, ready: Callable[[], bool] = lambda: True):
        self.book, self.request_timeout, self.ready = book, request_timeout, ready
        self.metrics = Metrics(book)

    def handle(self, verb: str, body: Any, started: float | None = None,
               after_reply: Callable[[Callable[[], None]], None] | None = None) -> tuple[int, Any]:
        """`started`: perf_counter() when the request began to be read (the body's decoding counts too).
        `after_reply`: takes what must run once the reply is sent (see `Book.bind`); the caller runs it."""
        start = time.perf_counter() if started is None else started
        try:
            code, out = self._handle(verb, body, after_reply)
        except wire.ProtocolError as e:
            code, out = 400, f"{verb}: {e}"
        except Exception as e:  # one bad request must not take the server down
            log.exception("%s failed", verb)
            code, out = 500, f"{verb}: internal error: {type(e).__name__}: {e}"
        if verb in VERBS:
            self.metrics.latency.labels(verb).observe(time.perf_counter() - start)
            if code != 200 or (isinstance(out, dict) and out.get("Error")):
                self.metrics.errors.labels(verb).inc()
        return code, out

    def _handle(self, verb: str, body: Any, after_reply: Callable[[Callable[[], None]], None] | None
                ) -> tuple[int, Any]:
        book, deadline = self.book, time.monotonic() + self.request_timeout
        if verb == "bind":
            args = wire.bind_args(body)
            return 200, wire.bind_result(book.bind(args, after_reply))
        if verb == "filter":
            nargs = wire.node_args(body)
            return 200, wire.filter_result(nargs, self._locked(deadline, self._filter, nargs))
        if verb == "prioritize":
            nargs = wire.node_args(body)
            scores = self._locked(deadline, self._prioritize, nargs)
            return (503, scores) if isinstance(scores, str) else (200, wire.priorities(nargs.names, scores))
        if verb == "preempt":
            pargs = wire.preempt_args(body)
            victims = self._locked(deadline, self._preempt, pargs)
            return (503, victims) if isinstance(victims, str) else (200, wire.preempt_result(victims))
        return 404, f"unknown verb {verb!r}: expected one of {', '.join(VERBS)}"

    def _locked(self, deadline: float, fn: Callable, args: Any) -> Any:
        if not self.ready():
            return _failure(fn, "the extender's cache is not synced yet")
        if not self.book.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return _failure(fn, f"the extender is busy: no answer within {self.request_timeout:.0f}s")
        try:
            return fn(args, deadline)
        finally:
            self.book.lock.release()

    def _filter(self, args: wire.NodeArgs, deadline: float) -> wire.FilterVerdict:
        info = self.book.wait_known(args.pod, min(deadline, time.monotonic() + 2.0))
        if info is None:
            return wire.FilterVerdict(error=f"pod {_ref(args.pod)} is not in the extender's cache yet")
        return self.book.filter(info, args.names)

    def _prioritize(self, args: wire.NodeArgs, deadline: float) -> dict[str, int] | str:
        info = self.book.known(args.pod)
        return {} if info is None else self.book.prioritize(info, args.names)

    def _preempt(self, args: wire.PreemptArgs, deadline: float) -> dict[str, list[str]] | str:
        info = self.book.wait_known(args.pod, min(deadline, time.monotonic() + 2.0))
        return {} if info is None else self.book.preempt(info, args.victims)


def _failure(fn: Callable, message: str) -> Any:
    return wire.FilterVerdict(error=message) if getattr(fn, "__name__", "") == "_filter" else message


def _ref(pod: dict) -> str:
    meta = pod["metadata"]
    return f"{meta.get('namespace', 'default')}/{meta['name']}"


def serve(ext: Extender, host: str, port: int, *, prefix: str = "", tls_cert: str | None = None,
          tls_key: str | None = None, client_ca: str | None = None, healthy: Callable[[], bool] = lambda: True,
          verbs: bool = True) -> ThreadingHTTPServer:
    """Start serving in a daemon thread; returns the server (`server_address`, `shutdown()`). `verbs=False`:
    only /healthz and /metrics (a plain-HTTP port for probes and Prometheus beside a mutual-TLS one)."""
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""

    class Handler(BaseHTTPRequestHandler):
        timeout = ext.request_timeout  # socket reads and writes: a stalled client cannot hold a thread
        protocol_version = "HTTP/1.1"  # keep-alive: kube-scheduler's Go client reuses connections

        def setup(self) -> None:
            super().setup()
            # one reply is headers then body in two writes: without NODELAY the second waits for the client's
            # delayed ACK (40 ms on Linux)
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.served = False

        def handle_one_request(self) -> None:
            # A request (and the TLS handshake, with the first one) must arrive whole within `timeout`; between
            # requests a kept-alive connection idles up to IDLE_TIMEOUT.
            if self.served:
                self.connection.settimeout(IDLE_TIMEOUT)
                try:
                    if not self.rfile.peek(1):  # the client closed it
                        self.close_connection = True
                        return
                except OSError:  # idle too long, or reset
                    self.close_connection = True
                    return
                self.connection.settimeout(self.timeout)
            self.served = True
            super().handle_one_request()

        def do_POST(self) -> None:
            if not verbs:
                self._send(404, "not found")
                return
            started = time.perf_counter()
            verb = self.path.split("?", 1)[0]
            verb = verb[len(prefix):] if prefix and verb.startswith(prefix) else verb
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = orjson.loads(self.rfile.read(length)) if length else None
            except (ValueError, OSError) as e:
                self._send(400, f"request body is not JSON: {e}")
                return
            after: list[Callable[[], None]] = []
            try:
                code, out = ext.handle(verb.strip("/"), body, started, after.append)
                self._send(code, out)
            finally:  # even if the reply could not be sent: a bind's waiting mates are released here
                for f in after:
                    f()

        def do_GET(self) -> None:
            if self.path == "/healthz":
                ok = healthy()
                self._send(200 if ok else 503, "ok" if ok else "not synced or not healthy")
            elif self.path == "/metrics":
                self._send(200, generate_latest(ext.metrics.registry), CONTENT_TYPE_LATEST)
            else:
                self._send(404, "not found")

        def _send(self, code: int, out: Any, ctype: str | None = None) -> None:
            if isinstance(out, bytes):
                data = out
            elif isinstance(out, str):
                data, ctype = (out + "\n").encode(), ctype or "text/plain; charset=utf-8"
            else:
                data, ctype = orjson.dumps(out), "application/json"
            self.send_response(code)
            self.send_header("Content-Type", ctype or "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt: str, *args: object) -> None:
            log.debug("%s " + fmt, self.address_string(), *args)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        # kube-scheduler's binding goroutines connect at once; the default backlog of 5 drops the rest's SYNs,
        # which their kernel retries only after 1 s
        request_queue_size = 256

    server = Server((host, port), Handler)
    if tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(tls_cert, tls_key)
        if client_ca:
            ctx.load_verify_locations(client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        # the handshake happens in the request's thread (on first read), not in the accept loop
        server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, name="extender-http", daemon=True).start()
    return server
