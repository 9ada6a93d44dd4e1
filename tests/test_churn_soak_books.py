"""`benchmarks/churn_soak.py`'s comparison of gangsched's /debug/books with a rebuild: what counts as a
difference (a pod missing, on another node, on other devices, a binding in flight) and what does not (devices
either side guessed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from livekit import Live, node, pod, rebuilt

from gangsched.live.run import books

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "churn_soak.py"


def load_script():
    spec = importlib.util.spec_from_file_location("churn_soak", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def snap(pods: dict, assumed: tuple = (), guessed: tuple = ()) -> dict:
    return {"pods": pods, "assumed": list(assumed), "guessed": list(guessed), "unplaced": [], "nodes": 2}


def test_equal_books_have_no_difference_and_each_kind_of_drift_is_named() -> None:
    diff = load_script().diff_books
    base = {"ns/a": ["n0", [0]], "ns/b": ["n1", [3]]}
    assert diff(snap(base), snap(dict(base))) == []
    assert diff(snap(base), snap({"ns/a": ["n0", [0]]})) == ["ns/b: books ['n1', [3]], API server None"]
    assert diff(snap({"ns/a": ["n0", [0]]}), snap(base)) == ["ns/b: books None, API server ['n1', [3]]"]
    assert diff(snap(base), snap({**base, "ns/b": ["n0", [3]]})) == ["ns/b: books ['n1', [3]], API server ['n0', [3]]"]
    assert diff(snap(base), snap({**base, "ns/b": ["n1", [4]]})) == ["ns/b: books ['n1', [3]], API server ['n1', [4]]"]
    assert diff(snap(base, guessed=("ns/b",)), snap({**base, "ns/b": ["n1", [4]]})) == []  # no annotation: a guess
    assert diff(snap(base, assumed=("ns/a",)), snap(base)) == ["1 bindings in flight, e.g. ns/a"]


def test_a_deleted_pod_the_books_still_hold_is_a_difference() -> None:
    live = Live()
    live.put("nodes", node("n0", gpus=4))
    live.put("pods", pod("a"))
    live.place()
    api = {k: o for k, o in live.objects.items()}
    held = books(live.cache)
    del api[("pods", "default/a")]  # the API server lost it, the books did not hear
    fresh = books(rebuilt([o for (k, _), o in api.items() if k == "nodes"], [],
                          [o for (k, _), o in api.items() if k == "pods"]))
    assert load_script().diff_books(held, fresh) == [f"default/a: books {held['pods']['default/a']}, API server None"]
