"""PodDisruptionBudgets as preemption reads them (gangsched.live.budgets)."""

from __future__ import annotations

import pytest

from gangsched.live.budgets import Budgets, budget_from, selector_from
from gangsched.model import ModelError


def pdb(name: str, selector: dict | None, allowed: int, ns: str = "default") -> dict:
    spec = {} if selector is None else {"selector": selector}
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec, "status": {"disruptionsAllowed": allowed}}


def test_selectors_as_the_api_defines_them() -> None:
    sel = selector_from({"matchLabels": {"app": "a"},
                         "matchExpressions": [{"key": "tier", "operator": "In", "values": ["x", "y"]},
                                              {"key": "canary", "operator": "DoesNotExist"}]}, "spec.selector")
    assert sel.matches({"app": "a", "tier": "x"})
    assert not sel.matches({"app": "a", "tier": "z"})
    assert not sel.matches({"app": "a", "tier": "x", "canary": "1"})
    assert not sel.matches({"tier": "x"})
    assert selector_from({}, "s").matches({"anything": "1"})  # policy/v1: an empty selector matches every pod
    assert budget_from(pdb("none", None, 5)).selector is None  # a null one matches none


def test_the_pods_past_each_budget_violate_it() -> None:
    budgets = Budgets()
    budgets.apply("SYNC", [pdb("a", {"matchLabels": {"app": "a"}}, 1), pdb("other-ns", {}, 0, ns="elsewhere")])
    a = {"app": "a"}
    assert budgets.violating([("p1", "default", a)]) == set()
    assert budgets.violating([("p1", "default", a), ("p2", "default", a), ("p3", "default", a)]) == {"p2", "p3"}
    assert budgets.violating([("b", "default", {"app": "b"})]) == set()
    assert budgets.violating([("e", "elsewhere", {})]) == {"e"}
    budgets.apply("DELETED", pdb("a", {"matchLabels": {"app": "a"}}, 1))
    assert budgets.violating([("p1", "default", a), ("p2", "default", a)]) == set()


@pytest.mark.parametrize("selector, field", [
    ({"matchExpressions": [{"key": "k", "operator": "Near"}]}, "spec.selector.matchExpressions[0].operator"),
    ({"matchLabels": ["x"]}, "spec.selector.matchLabels"),
    ({"matchExpressions": [{"key": "k", "operator": "In", "values": "x"}]},
     "spec.selector.matchExpressions[0].values"),
])
def test_a_broken_budget_names_the_field_and_is_ignored(selector: dict, field: str) -> None:
    with pytest.raises(ModelError, match=field.replace("[", r"\[").replace("]", r"\]")):
        budget_from(pdb("bad", selector, 0))
    budgets = Budgets()
    budgets.apply("ADDED", pdb("bad", selector, 0))
    assert budgets.violating([("p", "default", {"k": "v"})]) == set()
