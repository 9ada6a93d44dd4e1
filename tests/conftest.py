"""Small builders for nodes, pods and gangs, state snapshots, per-node reference checks written without numpy,
and the hypothesis strategies shared by the property and contract tests.

Test modules import these directly (`from conftest import gpu_node, ...`); pytest puts `tests/` on sys.path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from gangsched.core import Scheduler
from gangsched.frag import Workload
from gangsched.framework import CycleContext, GangInfo
from gangsched.model import (
    CPU,
    GIB,
    MEMORY,
    MILLI_PER_GPU,
    PODS,
    Demand,
    GpuDevice,
    Node,
    Pod,
    PodGroup,
    Requirement,
    Taint,
    TaintEffect,
    Toleration,
    demand,
)
from gangsched.profile import load_profile
from gangsched.state import ClusterState

# GANGSCHED_HYPOTHESIS=thorough runs every property on 1000 examples instead of 60 (a few minutes)
settings.register_profile("fast", deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", deadline=None, max_examples=1000,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("GANGSCHED_HYPOTHESIS", "fast"))

FPGA = "example.com/fpga"  # an extended resource every generated cluster declares
RACK = "topology.kubernetes.io/rack"
CORDON_KEY = "node.kubernetes.io/unschedulable"


# ---- builders ------------------------------------------------------------------------------------------------------
def gpu_node(name: str, gpus: int = 8, cpu: int = 96_000, memory: int = 512 * GIB, model: str = "A100",
             groups: Sequence[int] | None = None, labels: dict[str, str] | None = None,
             taints: Sequence[Taint] = (), unschedulable: bool = False, pods: int | None = None,
             extended: dict[str, int] | None = None) -> Node:
    """A node with `gpus` devices of one model; `groups` gives each device's NVLink island (default: all 0)."""
    groups = list(groups) if groups is not None else [0] * gpus
    alloc = {CPU: cpu, MEMORY: memory, **(extended or {})}
    if pods is not None:
        alloc[PODS] = pods
    devices = tuple(GpuDevice(i, model, 80 * 1024, groups[i]) for i in range(gpus))
    return Node(name, alloc, dict(labels or {}), tuple(taints), unschedulable, devices)


def cpu_node(name: str, cpu: int = 32_000, memory: int = 128 * GIB, **kwargs) -> Node:
    return gpu_node(name, gpus=0, cpu=cpu, memory=memory, **kwargs)


def pod(name: str, cpu: int = 1000, memory: int = GIB, gpus: int = 0, gpu_milli: int = MILLI_PER_GPU,
        group: str | None = None, **kwargs) -> Pod:
    """`pod("p", cpu=4000, gpus=1, gpu_milli=500)`; other keywords go to `model.demand`."""
    return Pod(name, demand(cpu_milli=cpu, memory=memory, gpus=gpus, gpu_milli=gpu_milli, **kwargs), group=group)


def gang(name: str, pods: Sequence[Pod], min_member: int | None = None) -> GangInfo:
    members = [Pod(p.name, p.demand, p.namespace, p.priority, name, p.creation) for p in pods]
    return GangInfo(PodGroup(name, len(members) if min_member is None else min_member), members)


def scheduler(nodes: Sequence[Node], profile: str = "spread", *, seed: int = 0, tie_break: str | None = None,
              workload: Workload | None = None, pods: Sequence[Pod] = ()) -> Scheduler:
    """A scheduler over a fresh state; profiles that need a workload get one built from `pods` (or a default)."""
    prof = load_profile(profile)
    if tie_break is not None:
        prof.tie_break = tie_break
    if prof.needs_workload and workload is None:
        workload = Workload.from_demands([p.demand for p in pods] or [demand(cpu_milli=4000, gpus=1)])
    return Scheduler(ClusterState(nodes), prof, seed=seed, workload=workload)


def context(state: ClusterState, workload: Workload | None = None, seed: int = 0) -> CycleContext:
    return CycleContext(state, np.random.default_rng(seed), workload)


# ---- snapshots and invariants --------------------------------------------------------------------------------------
@dataclass
class Snapshot:
    used: np.ndarray
    gpu_free: np.ndarray
    gpu_tags: np.ndarray
    assignments: dict
    node_pods: list

    @classmethod
    def of(cls, state: ClusterState) -> Snapshot:
        return cls(state.used.copy(), state.gpu_free.copy(), state.gpu_tags.copy(), dict(state.assignments),
                   [set(s) for s in state.node_pods])

    def assert_equals(self, state: ClusterState) -> None:
        np.testing.assert_array_equal(state.used, self.used)
        np.testing.assert_array_equal(state.gpu_free, self.gpu_free)
        np.testing.assert_array_equal(state.gpu_tags, self.gpu_tags)
        assert state.assignments == self.assignments
        assert state.node_pods == self.node_pods


def node_allocatable(node: Node, resource: str) -> int:
    if resource == PODS:
        return node.allocatable.get(PODS, 110)
    return node.allocatable.get(resource, 0)


def check_invariants(state: ClusterState, nodes: Sequence[Node], constraints: bool = True) -> None:
    """Nothing over-committed, and every array agrees with what `state.assignments` says is placed; with
    `constraints`, every pod also sits on a node its selector, affinity, tolerations and GPU models allow."""
    used = {(i, r): 0 for i in range(len(nodes)) for r in state.resources}
    taken = {(i, d): 0 for i, n in enumerate(nodes) for d in range(len(n.gpus))}
    tags = np.zeros_like(state.gpu_tags)
    for key, a in state.assignments.items():
        node = nodes[a.node]
        assert a.pod_key == key and a.node_name == node.name and key in state.node_pods[a.node]
        for res, qty in a.demand.requests:
            used[a.node, res] += qty
        assert len(a.devices) == a.demand.gpu_count == len(set(a.devices))
        for d in a.devices:
            assert 0 <= d < len(node.gpus), f"{key} got device {d} of {node.name}, which has {len(node.gpus)}"
            if a.demand.gpu_models:
                assert node.gpus[d].model in a.demand.gpu_models
            taken[a.node, d] += a.demand.gpu_milli
        if a.demand.gpu_count:
            tags[a.node, a.demand.gpu_tag] += 1
        if constraints:
            assert static_fit(node, a.demand), f"{key} is on {node.name}, which its constraints exclude"
    for i, node in enumerate(nodes):
        for r in state.resources:
            j = state.res_index[r]
            assert state.used[i, j] == used[i, r], (node.name, r)
            assert 0 <= used[i, r] <= node_allocatable(node, r), (node.name, r)
        for d in range(state.gpu_free.shape[1]):
            cap = MILLI_PER_GPU if d < len(node.gpus) else 0
            assert state.gpu_cap[i, d] == cap
            assert 0 <= state.gpu_free[i, d] <= cap
            assert state.gpu_free[i, d] == cap - taken.get((i, d), 0), (node.name, d)
    np.testing.assert_array_equal(state.gpu_tags, tags)
    assert sum(len(s) for s in state.node_pods) == len(state.assignments)


# ---- reference filters: one node at a time, plain Python, Kubernetes semantics -------------------------------------
def tolerates(tol: Toleration, taint: Taint) -> bool:
    """k8s.io/api core/v1 Toleration.ToleratesTaint (the generators never make an empty key with Equal)."""
    if tol.effect is not None and tol.effect != taint.effect:
        return False
    if tol.key and tol.key != taint.key:
        return False
    return True if tol.operator == "Exists" else tol.value == taint.value


def ref_unschedulable(node: Node, d: Demand) -> bool:
    cordon = Taint(CORDON_KEY, "", TaintEffect.NO_SCHEDULE)
    return not node.unschedulable or any(tolerates(t, cordon) for t in d.tolerations)


def ref_taints(node: Node, d: Demand) -> bool:
    hard = [t for t in node.taints if t.effect != TaintEffect.PREFER_NO_SCHEDULE]
    return all(any(tolerates(tol, t) for tol in d.tolerations) for t in hard)


def ref_requirement(labels: dict[str, str], req: Requirement) -> bool:
    if req.operator == "In":
        return req.key in labels and labels[req.key] in req.values
    if req.operator == "NotIn":
        return req.key not in labels or labels[req.key] not in req.values
    if req.operator == "Exists":
        return req.key in labels
    return req.key not in labels  # DoesNotExist


def ref_affinity(node: Node, d: Demand) -> bool:
    if any(node.labels.get(k) != v for k, v in d.node_selector):
        return False
    if not d.affinity:
        return True
    # nodeSelectorTerms are ORed; an empty term matches no node (k8s.io/component-helpers nodeaffinity)
    return any(term and all(ref_requirement(node.labels, r) for r in term) for term in d.affinity)


def ref_gpu_model(node: Node, d: Demand) -> bool:
    if not d.gpu_models or not d.gpu_count:
        return True
    return sum(g.model in d.gpu_models for g in node.gpus) >= d.gpu_count


def ref_resources(node: Node, d: Demand, used: dict[str, int], gpu_free: Sequence[int]) -> bool:
    for res, qty in d.requests:
        if qty and used.get(res, 0) + qty > node_allocatable(node, res):
            return False
    if d.gpu_count:
        room = [f >= d.gpu_milli and (not d.gpu_models or g.model in d.gpu_models)
                for g, f in zip(node.gpus, gpu_free, strict=True)]
        return sum(room) >= d.gpu_count
    return True


def static_fit(node: Node, d: Demand) -> bool:
    return ref_unschedulable(node, d) and ref_taints(node, d) and ref_affinity(node, d) and ref_gpu_model(node, d)


class Ledger:
    """What the test itself believes is placed where, kept without the state's arrays."""

    def __init__(self, nodes: Sequence[Node]):
        self.nodes = list(nodes)
        self.used: list[dict[str, int]] = [{} for _ in nodes]
        self.gpu_free: list[list[int]] = [[MILLI_PER_GPU] * len(n.gpus) for n in nodes]

    def add(self, d: Demand, node: int, devices: Sequence[int], sign: int = 1) -> None:
        for res, qty in d.requests:
            self.used[node][res] = self.used[node].get(res, 0) + sign * qty
        for dev in devices:
            self.gpu_free[node][dev] -= sign * d.gpu_milli

    def fits(self, node: int, d: Demand) -> bool:
        return ref_resources(self.nodes[node], d, self.used[node], self.gpu_free[node])


# ---- hypothesis strategies -----------------------------------------------------------------------------------------
MODELS = ("A100", "V100", "T4")
LABEL_KEYS = ("zone", "pool", RACK)
LABEL_VALUES = ("a", "b", "c")
TAINT_KEYS = ("dedicated", "nvidia.com/gpu")


_LABELS = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES))
_TAINTS = st.lists(st.builds(Taint, st.sampled_from(TAINT_KEYS), st.sampled_from(["", "x"]),
                             st.sampled_from(list(TaintEffect))), max_size=2, unique=True)
_NODE_SPEC = st.fixed_dictionaries(dict(
    gpus=st.sampled_from([0, 1, 2, 4, 8]), island=st.sampled_from([1, 2, 4, 8]), model=st.sampled_from(MODELS),
    cpu=st.sampled_from([8_000, 32_000, 96_000, 128_000, 192_000]), memory=st.sampled_from([32, 256, 1024]),
    labels=_LABELS, taints=_TAINTS, cordoned=st.integers(0, 9).map(lambda k: k == 0),
    pods=st.sampled_from([None, 2, 4]), fpga=st.integers(0, 2)))


def nodes_st(min_nodes: int = 1, max_nodes: int = 8, max_gpus: int = 8) -> st.SearchStrategy[list[Node]]:
    """A small, varied cluster: CPU-only and GPU nodes of several models and NVLink layouts, labels, taints
    (incl. PreferNoSchedule), cordons, tight pod limits and an extended resource."""

    def build(specs: list[dict]) -> list[Node]:
        return [gpu_node(f"n{i}", gpus=min(s["gpus"], max_gpus), model=s["model"], cpu=s["cpu"],
                         memory=s["memory"] * GIB, groups=[d // s["island"] for d in range(min(s["gpus"], max_gpus))],
                         labels=s["labels"], taints=s["taints"], unschedulable=s["cordoned"], pods=s["pods"],
                         extended={FPGA: s["fpga"]})
                for i, s in enumerate(specs)]

    return st.lists(_NODE_SPEC, min_size=min_nodes, max_size=max_nodes).map(build)


def _requirement(key: str, op: str, values: list[str]) -> Requirement:
    return Requirement(key, op, tuple(values) if op in ("In", "NotIn") else ())


def _toleration(key: str, op: str, value: str, effect: TaintEffect | None) -> Toleration:
    if op == "Exists":
        return Toleration(key, op, "", effect)
    return Toleration(key or TAINT_KEYS[0], op, value, effect)  # Kubernetes requires a key with Equal


_REQUIREMENT = st.builds(_requirement, st.sampled_from((*LABEL_KEYS, "absent")),
                         st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]),
                         st.lists(st.sampled_from((*LABEL_VALUES, "zz")), min_size=1, max_size=2, unique=True))
_TOLERATION = st.builds(_toleration, st.sampled_from(("", *TAINT_KEYS, CORDON_KEY)),
                        st.sampled_from(["Equal", "Exists"]), st.sampled_from(["", "x"]),
                        st.sampled_from([None, *TaintEffect]))
_SHAPE = st.one_of(
    st.just((0, MILLI_PER_GPU)),  # CPU only
    st.tuples(st.just(1), st.sampled_from([100, 250, 500, 700])),  # GPU-sharing
    st.tuples(st.sampled_from([1, 2, 3, 4, 8]), st.just(MILLI_PER_GPU)),  # whole GPUs
)
_CONSTRAINTS = st.fixed_dictionaries(dict(
    gpu_models=st.frozensets(st.sampled_from(MODELS), max_size=2),
    node_selector=st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=1).map(
        lambda sel: tuple(sorted(sel.items()))),
    affinity=st.lists(st.lists(_REQUIREMENT, max_size=2).map(tuple), max_size=2).map(tuple),  # incl. empty terms
    tolerations=st.lists(_TOLERATION, max_size=2).map(tuple),
    extended=st.integers(0, 5).map(lambda k: {FPGA: 1} if k == 0 else {})))


def demands_st(constrained: bool = True) -> st.SearchStrategy[Demand]:
    """Any pod shape: CPU-only, GPU-sharing (fractional), one or several whole GPUs; with `constrained`, also
    GPU models, node selectors, required affinity (incl. empty terms), tolerations and the extended resource."""

    def build(cpu: int, memory: int, shape: tuple[int, int], constraints: dict) -> Demand:
        return demand(cpu_milli=cpu, memory=memory, gpus=shape[0], gpu_milli=shape[1], **constraints)

    return st.builds(build, st.sampled_from([0, 500, 4_000, 16_000, 64_000]),
                     st.sampled_from([0, GIB, 16 * GIB, 200 * GIB]), _SHAPE,
                     _CONSTRAINTS if constrained else st.just({}))


@st.composite
def gangs_st(draw, name: str, max_pods: int = 4, constrained: bool = False) -> GangInfo:
    """A gang of 1..max_pods pods (often identical, as real gangs are), minMember 1..len(pods)."""
    shapes = draw(st.lists(demands_st(constrained=constrained), min_size=1, max_size=2))
    n = draw(st.integers(1, max_pods))
    pods = [Pod(f"{name}-{k}", shapes[k % len(shapes)], group=name) for k in range(n)]
    return GangInfo(PodGroup(name, draw(st.integers(1, n))), pods)


def random_fill(state: ClusterState, ledger: Ledger, rng: np.random.Generator, demands: Sequence[Demand],
                tries: int = 12, prefix: str = "bg") -> None:
    """Place pods on random nodes and random fitting devices (any fragmentation), tracked in `ledger` too."""
    for k in range(tries):
        d = demands[rng.integers(len(demands))]
        i = int(rng.integers(state.n_nodes))
        if not ledger.fits(i, d):
            continue
        node = ledger.nodes[i]
        room = [g for g in range(len(node.gpus)) if ledger.gpu_free[i][g] >= d.gpu_milli
                and (not d.gpu_models or node.gpus[g].model in d.gpu_models)]
        devices = tuple(int(g) for g in rng.permutation(room)[: d.gpu_count]) if d.gpu_count else ()
        state.assign(f"{prefix}-{k}", d, i, devices)
        ledger.add(d, i, devices)

