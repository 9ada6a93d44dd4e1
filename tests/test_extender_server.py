"""The extender's HTTP(S) server on loopback: connection handling as kube-scheduler's Go client needs it."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time

import pytest

from gangsched.devcluster.pki import generate_tls
from gangsched.extender.server import Extender, serve
from tests.livekit import pod
from tests.test_extender_book import NAMES, SCHED, add, make

TIMEOUT = 0.2  # the per-request timeout of these servers


def connection(tls, port: int) -> http.client.HTTPConnection:
    if tls is None:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    ctx = ssl.create_default_context(cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.client_crt), str(tls.client_key))
    return http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ctx)


def start_server(tmp_path, tls: bool):
    book, _, _ = make()
    pods = add(book, pod("solo", scheduler=SCHED))
    pair = generate_tls(tmp_path / "tls") if tls else None
    files = {} if pair is None else {"tls_cert": str(pair.server_crt), "tls_key": str(pair.server_key),
                                     "client_ca": str(pair.ca)}
    return serve(Extender(book.book, request_timeout=TIMEOUT), "127.0.0.1", 0, **files), pair, pods[0]


@pytest.fixture(params=["http", "mutual-tls"])
def server(request, tmp_path):
    srv, tls, p = start_server(tmp_path, request.param == "mutual-tls")
    yield srv.server_address[1], tls, p
    srv.shutdown()


def test_a_kept_alive_connection_idle_longer_than_the_request_timeout_is_still_served(server):
    # kube-scheduler keeps idle connections for 90 s and resends nothing on one the server closed meanwhile
    port, tls, p = server
    conn = connection(tls, port)
    body = json.dumps({"Pod": p, "NodeNames": NAMES})
    for _ in range(2):
        conn.request("POST", "/filter", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and len(json.loads(resp.read())["NodeNames"]) == 1
        time.sleep(3 * TIMEOUT)  # idle, on purpose: longer than a request may take
    conn.close()


def test_a_stalled_request_is_cut_off_after_the_request_timeout(tmp_path):
    srv, _, _ = start_server(tmp_path, tls=False)
    with socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=5) as s:
        s.sendall(b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")  # and never the rest
        start = time.monotonic()
        reply = b""
        while chunk := s.recv(4096):  # until the server closes it
            reply += chunk
        assert time.monotonic() - start < 5
    srv.shutdown()
    assert reply.startswith(b"HTTP/1.1 400") and b"timed out" in reply
