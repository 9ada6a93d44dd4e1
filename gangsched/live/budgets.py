"""PodDisruptionBudgets as preemption reads them: which victims would violate one.

As kube-scheduler's preemption does (`filterPodsWithPDBViolation`): a budget's `status.disruptionsAllowed` (kept
by the disruption controller) is what may go; each victim the budget's selector matches uses one, and a victim
past the budget violates it. Violations only rank victim sets (fewer is better); like kube-scheduler, gangsched
deletes victims rather than evicting them through the Eviction API, so a budget never blocks preemption.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gangsched.model import ModelError

log = logging.getLogger(__name__)

_OPERATORS = {"In", "NotIn", "Exists", "DoesNotExist"}


@dataclass(frozen=True)
class Selector:
    """A metav1.LabelSelector: `match_labels` and `expressions` (key, operator, values), all must hold."""

    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[tuple[str, str, frozenset[str]], ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels):
            return False
        for key, op, values in self.expressions:
            present = key in labels
            if op == "In" and not (present and labels[key] in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True


@dataclass(frozen=True)
class Budget:
    key: str  # namespace/name
    namespace: str
    selector: Selector | None  # None: a null selector, which matches no pod (policy/v1)
    allowed: int  # status.disruptionsAllowed


def selector_from(sel: object, field: str) -> Selector:
    if not isinstance(sel, dict):
        raise ModelError(f"{field}: must be a label selector object")
    labels = sel.get("matchLabels") or {}
    if not isinstance(labels, dict):
        raise ModelError(f"{field}.matchLabels: must be a map of strings")
    exprs = []
    for i, e in enumerate(sel.get("matchExpressions") or []):
        where = f"{field}.matchExpressions[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("key"), str):
            raise ModelError(f"{where}.key: must be a string")
        op, values = e.get("operator"), e.get("values") or []
        if op not in _OPERATORS:
            raise ModelError(f"{where}.operator: {op!r} is not one of {sorted(_OPERATORS)}")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ModelError(f"{where}.values: must be a list of strings")
        exprs.append((e["key"], op, frozenset(values)))
    return Selector(tuple(sorted((str(k), str(v)) for k, v in labels.items())), tuple(exprs))


def budget_from(obj: dict) -> Budget:
    meta = obj["metadata"]
    ns = meta.get("namespace", "default")
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    sel = spec.get("selector")
    allowed = status.get("disruptionsAllowed", 0)
    if not isinstance(allowed, int):
        raise ModelError("status.disruptionsAllowed: must be an integer")
    return Budget(f"{ns}/{meta['name']}", ns, None if sel is None else selector_from(sel, "spec.selector"),
                  allowed)


class Budgets:
    """The cluster's PodDisruptionBudgets, by namespace, fed by their informer."""

    def __init__(self) -> None:
        self.by_ns: dict[str, dict[str, Budget]] = {}

    def apply(self, typ: str, obj: dict | list[dict]) -> None:
        items = obj if isinstance(obj, list) else [obj]
        if typ == "SYNC":
            self.by_ns.clear()
        for o in items:
            meta = o["metadata"]
            ns, key = meta.get("namespace", "default"), f"{meta.get('namespace', 'default')}/{meta['name']}"
            self.by_ns.get(ns, {}).pop(key, None)
            if typ == "DELETED":
                continue
            try:
                self.by_ns.setdefault(ns, {})[key] = budget_from(o)
            except ModelError as e:  # the API server validates these: only a broken object gets here
                log.warning("ignoring PodDisruptionBudget %s: %s", key, e)

    def violating(self, pods: Sequence[tuple[str, str, Mapping[str, str]]]) -> set[str]:
        """Of these pods (key, namespace, labels), most important first, those whose eviction, after all the
        ones before them, would go past a budget that covers them: kube-scheduler's split into violating and
        non-violating victims, so the most important pods use the budgets up first."""
        left: dict[str, int] = {}
        out: set[str] = set()
        for key, ns, labels in pods:
            for b in _covering(self.by_ns.get(ns, {}).values(), labels):
                left[b.key] = left.get(b.key, b.allowed) - 1
                if left[b.key] < 0:
                    out.add(key)
        return out


def _covering(budgets: Iterable[Budget], labels: Mapping[str, str]) -> list[Budget]:
    return [b for b in budgets if b.selector is not None and b.selector.matches(labels)]
