"""`gangsched run --health-port`'s /debug/books: the cache's books as JSON, read on the scheduling thread, equal
to a rebuild from the same API objects once the bindings are answered (what benchmarks/churn_soak.py checks)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from livekit import Live, node, pod, podgroup, rebuilt

from gangsched.live.run import books, serve_health


@contextmanager
def serving(live: Live) -> Iterator[str]:
    """The health server on a free port and the scheduling loop in a thread (the books are read on it)."""
    server = serve_health(live.sched, 0)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            live.sched.step(wait=0.01)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        thread.join(5)
        server.shutdown()
        server.server_close()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_books_show_bound_assumed_and_guessed_pods_and_equal_a_rebuild_once_answered() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=4))
    live.put("nodes", node("n1", gpus=4))
    live.put("podgroups", podgroup("g", 2))
    live.put("pods", pod("a", group="g"))
    live.put("pods", pod("b", group="g"))
    live.put("pods", pod("other", scheduler="default-scheduler", node_name="n1"))  # not ours, bound, no devices
    live.cycle()  # the gang is placed: both assumed, bindings not answered yet
    with serving(live) as url:
        code, body = get(f"{url}/debug/books")
    assert code == 200
    snap = json.loads(body)
    assert snap["assumed"] == ["default/a", "default/b"]
    assert snap["guessed"] == ["default/other"] and snap["unplaced"] == [] and snap["nodes"] == 2
    assert set(snap["pods"]) == {"default/a", "default/b", "default/other"}
    node_a, devices_a = snap["pods"]["default/a"]
    assert node_a in ("n0", "n1") and len(devices_a) == 1
    assert snap["pods"]["default/other"][0] == "n1"

    live.answer()  # the API server accepts both; the watch shows them bound with their devices annotated
    with serving(live) as url:
        snap = json.loads(get(f"{url}/debug/books")[1])
    assert snap["assumed"] == [] and snap["pods"]["default/a"] == [node_a, devices_a]
    fresh = books(rebuilt([o for (k, _), o in live.objects.items() if k == "nodes"],
                          [o for (k, _), o in live.objects.items() if k == "podgroups"],
                          [o for (k, _), o in live.objects.items() if k == "pods"]))
    assert snap == json.loads(json.dumps(fresh))


def test_books_of_a_stopped_loop_are_a_503_not_a_hang() -> None:
    live = Live()
    server = serve_health(live.sched, 0, books_timeout=0.2)  # no loop running: nobody takes the request
    try:
        code, body = get(f"http://127.0.0.1:{server.server_address[1]}/debug/books")
        assert (code, body) == (503, b"scheduling loop not answering")
        assert get(f"http://127.0.0.1:{server.server_address[1]}/debug/nothing")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
