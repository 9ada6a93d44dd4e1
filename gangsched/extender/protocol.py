"""kube-scheduler's extender wire types (k8s.io/kube-scheduler/extender/v1), as plain dicts in and out.

The JSON keys are the Go field names (the types carry no json tags): `ExtenderArgs{Pod, Nodes, NodeNames}`,
`ExtenderFilterResult{Nodes, NodeNames, FailedNodes, FailedAndUnresolvableNodes, Error}`, `HostPriorityList`
`[{Host, Score}]` with scores 0..MaxExtenderPriority, `ExtenderBindingArgs{PodName, PodNamespace, PodUID,
Node}` / `ExtenderBindingResult{Error}`, `ExtenderPreemptionArgs{Pod, NodeNameToVictims,
NodeNameToMetaVictims}` / `ExtenderPreemptionResult{NodeNameToMetaVictims}` with `MetaVictims{Pods: [{UID}],
NumPDBViolations}`. With `nodeCacheCapable: true` kube-scheduler sends `NodeNames` (and `NodeNameToMetaVictims`)
and reads the same back; otherwise whole `Nodes` (and `NodeNameToVictims` with whole pods).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_PRIORITY = 10  # extenderv1.MaxExtenderPriority


class ProtocolError(ValueError):
    """A request that is not what kube-scheduler sends; the message names the field."""


@dataclass(frozen=True)
class NodeArgs:
    """ExtenderArgs: the pod and its candidate nodes, in whichever form they came."""

    pod: dict
    names: list[str]
    nodes: list[dict] | None  # the full Node objects when not nodeCacheCapable

    @property
    def cached(self) -> bool:
        return self.nodes is None


@dataclass
class FilterVerdict:
    """What the extender says about a pod's candidate nodes: the ones it may use, the others with a reason."""

    nodes: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unresolvable: dict[str, str] = field(default_factory=dict)
    error: str = ""

    @classmethod
    def only(cls, node: str) -> FilterVerdict:
        return cls(nodes=[node])

    @classmethod
    def none(cls, names: list[str], message: str, unresolvable: bool) -> FilterVerdict:
        reasons = dict.fromkeys(names, message)
        return cls(unresolvable=reasons) if unresolvable else cls(failed=reasons)


@dataclass(frozen=True)
class BindArgs:
    name: str
    namespace: str
    uid: str
    node: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PreemptArgs:
    pod: dict
    victims: dict[str, list[str]]  # node -> UIDs of the pods kube-scheduler would evict there
    cached: bool


def _object(body: Any, name: str) -> dict:
    if not isinstance(body, dict):
        raise ProtocolError(f"{name}: expected a JSON object, got {type(body).__name__}")
    return body


def _pod(body: dict) -> dict:
    pod = body.get("Pod")
    if not isinstance(pod, dict) or not isinstance(pod.get("metadata"), dict) or not pod["metadata"].get("name"):
        raise ProtocolError("Pod: expected a Pod object with metadata.name")
    return pod


def node_args(body: Any) -> NodeArgs:
    body = _object(body, "ExtenderArgs")
    pod = _pod(body)
    names, nodes = body.get("NodeNames"), body.get("Nodes")
    if names is not None:
        if not isinstance(names, list) or not set(map(type, names)) <= {str}:  # (C speed: 5,000 names)
            raise ProtocolError("NodeNames: expected a list of node names")
        return NodeArgs(pod, names, None)
    if isinstance(nodes, dict) and isinstance(nodes.get("items", []), list):
        items = nodes.get("items") or []
        try:
            return NodeArgs(pod, [n["metadata"]["name"] for n in items], items)
        except (KeyError, TypeError):
            raise ProtocolError("Nodes.items: every node needs metadata.name") from None
    raise ProtocolError("ExtenderArgs: neither NodeNames nor Nodes given")


def filter_result(args: NodeArgs, verdict: FilterVerdict) -> dict:
    out: dict[str, Any] = {"FailedNodes": verdict.failed, "FailedAndUnresolvableNodes": verdict.unresolvable,
                           "Error": verdict.error}
    if args.cached:
        out["NodeNames"] = verdict.nodes
    else:
        keep = set(verdict.nodes)
        out["Nodes"] = {"apiVersion": "v1", "kind": "NodeList",
                        "items": [n for n in args.nodes or () if n["metadata"]["name"] in keep]}
    return out


def priorities(names: list[str], scores: dict[str, int]) -> list[dict]:
    """HostPriorityList: the candidates with a score above 0 (clipped to 10). kube-scheduler adds the list's
    scores into its per-node totals, so a node left out scores 0: no need to send thousands of zeros."""
    # scores name one node or a few: looked up in the list, not a set of thousands built per call
    return [{"Host": n, "Score": min(MAX_PRIORITY, int(s))} for n, s in scores.items() if s > 0 and n in names]


def bind_args(body: Any) -> BindArgs:
    body = _object(body, "ExtenderBindingArgs")
    values = {}
    for key in ("PodName", "PodNamespace", "Node"):
        value = body.get(key)
        if not isinstance(value, str) or not value:
            raise ProtocolError(f"ExtenderBindingArgs.{key}: expected a non-empty string")
        values[key] = value
    uid = body.get("PodUID") or ""
    if not isinstance(uid, str):
        raise ProtocolError("ExtenderBindingArgs.PodUID: expected a string")
    return BindArgs(values["PodName"], values["PodNamespace"], uid, values["Node"])


def bind_result(error: str | None) -> dict:
    return {"Error": error or ""}


def preempt_args(body: Any) -> PreemptArgs:
    body = _object(body, "ExtenderPreemptionArgs")
    pod = _pod(body)
    meta, full = body.get("NodeNameToMetaVictims"), body.get("NodeNameToVictims")
    victims: dict[str, list[str]] = {}
    try:
        if meta is not None:
            for node, v in _object(meta, "NodeNameToMetaVictims").items():
                victims[node] = [p["UID"] for p in (v or {}).get("Pods") or ()]
            return PreemptArgs(pod, victims, True)
        for node, v in _object(full or {}, "NodeNameToVictims").items():
            victims[node] = [p["metadata"]["uid"] for p in (v or {}).get("Pods") or ()]
    except (KeyError, TypeError, AttributeError):
        raise ProtocolError("NodeNameToVictims: every victim needs a UID") from None
    return PreemptArgs(pod, victims, False)


def preempt_result(victims: dict[str, list[str]]) -> dict:
    """ExtenderPreemptionResult: per node, the UIDs to evict there (kube-scheduler looks each up on that node)."""
    return {"NodeNameToMetaVictims": {node: {"Pods": [{"UID": u} for u in uids], "NumPDBViolations": 0}
                                      for node, uids in victims.items() if uids}}
