"""A lean Kubernetes API client for the scheduler's hot paths.

The official `kubernetes` client loads kubeconfig / in-cluster config and builds the TLS connection pool; we
then talk JSON dicts over that pool directly. Its generated models cost about a millisecond per pod to
(de)serialise, which alone would cap binding at a few hundred pods/s on these machines.
"""

from __future__ import annotations

import http.client
import platform
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.watch.watch import iter_resp_lines
from urllib3.util.wait import wait_for_read

NOT_LEADER = "NotLeader"  # ApiError.reason of a write the fence stopped; never sent, so never retried
WRITE_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})  # the ones that take ?fieldManager=


def _version() -> str:
    try:
        return metadata.version("gangsched")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "dev"


USER_AGENT = f"gangsched/{_version()} ({platform.system().lower()}/{platform.machine().lower()})"


class ApiError(RuntimeError):
    def __init__(self, status: int, reason: str, message: str = ""):
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retriable(self) -> bool:
        if self.reason == NOT_LEADER:  # retrying cannot help: this replica must not write any more
            return False
        return self.status in (0, 429) or self.status >= 500


class RateLimiter:
    """client-go's token bucket: `qps` tokens a second, at most `burst` saved. qps <= 0 means unlimited."""

    def __init__(self, qps: float, burst: int):
        self.qps = qps
        self.burst = max(burst, 1)
        self._tokens = float(self.burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if self.qps <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.qps)
            self._last = now
            self._tokens -= 1.0
            wait = -self._tokens / self.qps if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class Connections:
    """Keep-alive connections straight over the standard library's http.client, idle ones kept for the next
    request of any thread (the binder's workers, the extender's per-connection handlers): a request costs about
    0.6 of the CPU it takes through urllib3's pool manager (benchmarks/request_cpu.py), and the binder posts one
    per pod. An idle connection the server closed is seen before it is reused (readable with nothing asked: EOF)
    and replaced; one that fails mid-request is dropped and the error raised, never re-sent (a POST may have been
    applied). `for_config` gives None where the configuration needs what only urllib3 does here (a proxy, a TLS
    server name other than the host)."""

    def __init__(self, scheme: str, host: str, port: int | None, context: ssl.SSLContext | None,
                 keep: int = 32):
        self.scheme, self.host, self.port, self.context = scheme, host, port, context
        self.keep = keep  # idle connections kept at most
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    @classmethod
    def for_config(cls, cfg: k8s_client.Configuration, keep: int = 32) -> Connections | None:
        url = urlsplit(cfg.host)
        if cfg.proxy or getattr(cfg, "tls_server_name", None) or url.scheme not in ("http", "https") or \
                url.path.strip("/"):
            return None
        context = None
        if url.scheme == "https":
            context = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
            if not cfg.verify_ssl:
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            if cfg.cert_file:
                context.load_cert_chain(cfg.cert_file, cfg.key_file)
        return cls(url.scheme, url.hostname or "", url.port, context, keep)

    def _take(self) -> http.client.HTTPConnection | None:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None or (conn.sock is not None and not wait_for_read(conn.sock, timeout=0.0)):
                return conn
            conn.close()  # closed by the server while idle

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(conn)
                return
        conn.close()

    def send(self, method: str, target: str, body: bytes | None, headers: dict[str, str],
             timeout: float) -> tuple[int, bytes]:
        """(status, body) of one request within `timeout` seconds (its connect within 5 s at most)."""
        deadline = time.monotonic() + timeout
        conn = self._take()
        try:
            if conn is None:
                conn = (http.client.HTTPSConnection(self.host, self.port, timeout=min(5.0, timeout),
                                                    context=self.context) if self.scheme == "https"
                        else http.client.HTTPConnection(self.host, self.port, timeout=min(5.0, timeout)))
                conn.connect()
            conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            conn.request(method, target, body=body, headers=headers)
            conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))  # the reply's reads: what is left
            resp = conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException) as e:
            if conn is not None:
                conn.close()
            raise ApiError(0, "ConnectionError", f"{type(e).__name__}: {e}") from None
        if resp.will_close:
            conn.close()
        else:
            self._give_back(conn)
        return resp.status, payload


class KubeClient:
    """`fence`, when set, is asked right before every write (any method but GET) is sent; False stops the write
    with ApiError(0, NOT_LEADER) — e.g. `LeaderElector.holds`, so a replica that lost its lease writes nothing.
    `field_manager` names us in the objects' managedFields (the server would otherwise take the User-Agent)."""

    def __init__(self, configuration: k8s_client.Configuration, qps: float = 50.0, burst: int = 100,
                 pool_size: int = 32, fence: Callable[[], bool] | None = None, field_manager: str = "gangsched",
                 user_agent: str = USER_AGENT):
        configuration.connection_pool_maxsize = pool_size
        self.configuration = configuration
        self.api_client = k8s_client.ApiClient(configuration)
        self.pool: urllib3.PoolManager = self.api_client.rest_client.pool_manager
        self.host = configuration.host.rstrip("/")
        self.connections = Connections.for_config(configuration, pool_size)  # requests; watches use urllib3
        self.limiter = RateLimiter(qps, burst)
        self.requests = 0  # total API requests sent, for benchmarks
        self.fence = fence
        self.field_manager = field_manager
        self.user_agent = user_agent

    @classmethod
    def load(cls, kubeconfig: str | None = None, **kwargs: Any) -> KubeClient:
        """From a kubeconfig file, else $KUBECONFIG / ~/.kube/config, else the in-cluster service account."""
        cfg = k8s_client.Configuration()
        try:
            k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        except (k8s_config.ConfigException, FileNotFoundError, TypeError):
            if kubeconfig:
                raise
            k8s_config.load_incluster_config(client_configuration=cfg)
        return cls(cfg, **kwargs)

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        if content_type:
            headers["Content-Type"] = content_type
        cfg = self.configuration
        if cfg.refresh_api_key_hook is not None:
            cfg.refresh_api_key_hook(cfg)  # in-cluster tokens rotate
        token = cfg.get_api_key_with_prefix("authorization") or cfg.get_api_key_with_prefix("BearerToken")
        if token:
            headers["Authorization"] = token
        return headers

    def url(self, path: str, query: dict[str, Any] | None = None) -> str:
        return f"{self.host}{path}?{urlencode(query)}" if query else f"{self.host}{path}"

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
                content_type: str = "application/json", timeout: float = 30.0, limit: bool = True,
                fenced: bool = True) -> dict:
        """One API call; the decoded JSON reply, or ApiError (status 0 for a connection failure).

        `timeout` bounds the whole call (connect and read). `fenced=False` skips the write fence: only for the
        leader election's own Lease requests, which must go out precisely when the fence is down."""
        method = method.upper()
        if self.field_manager and method in WRITE_METHODS_WITH_BODY and "fieldManager" not in (query or {}):
            query = dict(query or {}, fieldManager=self.field_manager)
        data = None if body is None else orjson.dumps(body)
        if limit:
            self.limiter.acquire()
        headers = self._headers(content_type if data is not None else None)
        # Last thing before sending, after the rate limiter's wait (which can be long): the lease may be gone.
        if fenced and method != "GET" and self.fence is not None and not self.fence():
            raise ApiError(0, NOT_LEADER, f"not sent: {method} {path} (this replica does not hold the lease)")
        self.requests += 1
        if self.connections is not None:
            target = f"{path}?{urlencode(query)}" if query else path
            status, payload = self.connections.send(method, target, data, headers, timeout)
        else:
            try:
                resp = self.pool.request(method, self.url(path, query), body=data, headers=headers,
                                         timeout=urllib3.Timeout(total=timeout, connect=min(5.0, timeout),
                                                                 read=timeout), retries=False)
            except urllib3.exceptions.HTTPError as e:
                raise ApiError(0, "ConnectionError", str(e)) from None
            status, payload = resp.status, resp.data
        if status >= 300:
            raise _error(status, payload)
        return orjson.loads(payload) if payload else {}

    def list_all(self, path: str, query: dict[str, Any] | None = None, page: int = 500) -> tuple[list[dict], str]:
        """Every item of a collection (paginated) and the list's resourceVersion to watch from."""
        items: list[dict] = []
        q = dict(query or {}, limit=page)
        while True:
            reply = self.request("GET", path, query=q, timeout=120.0, limit=False)
            items.extend(reply.get("items") or [])
            meta = reply.get("metadata") or {}
            if not meta.get("continue"):
                return items, meta.get("resourceVersion", "")
            q["continue"] = meta["continue"]

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 300,
              query: dict[str, Any] | None = None, lean: bool = False) -> Iterator[dict]:
        """Watch events as dicts {"type", "object"}; ends when the server closes the stream. `lean`: objects of
        a built-in kind come without their managedFields, cut before decoding (see `cut_managed_fields`)."""
        q = dict(query or {}, watch="true", allowWatchBookmarks="true", resourceVersion=resource_version,
                 timeoutSeconds=timeout_seconds)
        try:
            resp = self.pool.request("GET", self.url(path, q), headers=self._headers(), preload_content=False,
                                     timeout=urllib3.Timeout(connect=5.0, read=timeout_seconds + 30), retries=False)
        except urllib3.exceptions.HTTPError as e:
            raise ApiError(0, "ConnectionError", str(e)) from None
        try:
            if resp.status >= 300:
                raise _error(resp.status, resp.read())
            for line in iter_resp_lines(resp):
                if line:
                    yield orjson.loads(cut_managed_fields(line) if lean else line)
        except urllib3.exceptions.HTTPError as e:
            raise ApiError(0, "ConnectionError", str(e)) from None
        finally:
            resp.release_conn()


_MANAGED = ',"managedFields":['
_MANAGED_END = ']},"spec":'


def cut_managed_fields(line: str) -> str:
    """A watch event of a built-in kind without its object's managedFields, cut from the JSON text: about half of
    a pod's JSON, and most of the dicts its decoding would make, which nothing here reads.

    The API server writes a built-in object's fields in its Go struct's order: ObjectMeta's managedFields come
    last, right before `spec`. So the array runs from the first `,"managedFields":[` (a quote in a string is
    escaped, and labels and annotations hold only strings) to the first `]},"spec":` after it (its entries' keys
    are `manager`, `operation`, ... and fieldsV1's `f:`/`k:`/`v:`/`i:` paths, never `spec`). Not for custom
    resources, whose keys come sorted. A line without both marks is left whole (then decoded whole)."""
    start = line.find(_MANAGED)
    if start < 0:
        return line
    end = line.find(_MANAGED_END, start)
    return line if end < 0 else line[:start] + line[end + 1:]


def _error(status: int, payload: bytes) -> ApiError:
    try:
        doc = orjson.loads(payload)
        return ApiError(status, doc.get("reason", ""), doc.get("message", ""))
    except (ValueError, AttributeError):
        return ApiError(status, "", payload[:200].decode(errors="replace"))


def now_rfc3339(micro: bool = False) -> str:
    t = time.time()
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
    return f"{base}.{int((t % 1) * 1e6):06d}Z" if micro else f"{base}Z"
