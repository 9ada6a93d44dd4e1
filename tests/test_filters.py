"""Filter plugins, case by case: which of a few hand-built nodes each admits, and why the rest are rejected."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FPGA, context, cpu_node, gpu_node

from gangsched.filters.gpu_model import GpuModel
from gangsched.filters.node_affinity import NodeAffinity
from gangsched.filters.resources import ResourceFit
from gangsched.filters.taints import TaintToleration
from gangsched.filters.unschedulable import Unschedulable
from gangsched.framework import ALL
from gangsched.model import (
    GIB,
    NODE_NAME_FIELD,
    Demand,
    ModelError,
    Requirement,
    Taint,
    TaintEffect,
    Toleration,
    demand,
)
from gangsched.state import ClusterState

NS, PNS, NE = TaintEffect.NO_SCHEDULE, TaintEffect.PREFER_NO_SCHEDULE, TaintEffect.NO_EXECUTE


def admitted(flt, nodes, d: Demand, state: ClusterState | None = None) -> list[str]:
    state = state or ClusterState(nodes)
    mask = flt(context(state), d, ALL)
    assert mask.dtype == bool and mask.shape == (state.n_nodes,)
    return [state.names[i] for i in np.flatnonzero(mask)]


# ---- resources -----------------------------------------------------------------------------------------------------
@pytest.fixture
def partly_used() -> ClusterState:
    """a: 4 GPUs with [1000, 600, 0, 1000] free and 6 of 8 cores used; b: 2 idle T4s; c: CPU only, fpga 1."""
    s = ClusterState([gpu_node("a", gpus=4, cpu=8000, memory=64 * GIB),
                      gpu_node("b", gpus=2, model="T4", cpu=8000, memory=64 * GIB),
                      cpu_node("c", cpu=8000, memory=64 * GIB, extended={FPGA: 1})])
    s.assign("x", demand(cpu_milli=6000, gpus=1, gpu_milli=400), 0, (1,))
    s.assign("y", demand(gpus=1), 0, (2,))
    return s


@pytest.mark.parametrize(("d", "expected"), [
    (demand(cpu_milli=2000), ["a", "b", "c"]),
    (demand(cpu_milli=2001), ["b", "c"]),  # a has exactly 2000 milli left
    (demand(memory=64 * GIB), ["a", "b", "c"]),  # x and y asked for no memory
    (demand(memory=64 * GIB + 1), []),
    (demand(gpus=1, gpu_milli=600), ["a", "b"]),  # a's device 1 has exactly 600 left
    (demand(gpus=1, gpu_milli=601), ["a", "b"]),  # still fits a whole free device of a
    (demand(gpus=2), ["a", "b"]),  # a: devices 0 and 3 are fully free
    (demand(gpus=3), []),  # a has only 2 fully free devices; b has 2 devices
    (demand(gpus=2, gpu_models=frozenset({"T4"})), ["b"]),
    (demand(gpus=1, gpu_milli=100, gpu_models=frozenset({"H100"})), []),
    (demand(extended={FPGA: 1}), ["c"]),
    (demand(extended={FPGA: 2}), []),
])
def test_resource_fit(partly_used: ClusterState, d: Demand, expected: list[str]) -> None:
    assert admitted(ResourceFit(), None, d, partly_used) == expected


def test_resource_fit_counts_pods_against_the_pod_limit() -> None:
    s = ClusterState([cpu_node("small", pods=1), cpu_node("big")])
    s.assign("p", demand(cpu_milli=1), 0)
    assert admitted(ResourceFit(), None, demand(cpu_milli=1), s) == ["big"]


def test_resource_fit_explain_counts_each_lacking_resource(partly_used: ClusterState) -> None:
    d = demand(cpu_milli=3000, gpus=2, gpu_milli=1000)
    rows = np.arange(3)
    ok = ResourceFit()(context(partly_used), d, rows)
    assert ok.tolist() == [False, True, False]
    # a lacks cpu (2000 free) and has 2 free GPUs -> cpu only; c lacks GPUs only
    assert ResourceFit().explain(context(partly_used), d, rows[~ok]) == {"Insufficient cpu": 1,
                                                                        "Insufficient nvidia.com/gpu": 1}


# ---- taints and cordons --------------------------------------------------------------------------------------------
TAINTED = [
    cpu_node("plain"),
    cpu_node("soft", taints=[Taint("dedicated", "ml", PNS)]),  # PreferNoSchedule never filters
    cpu_node("hard", taints=[Taint("dedicated", "ml", NS)]),
    cpu_node("evict", taints=[Taint("gpu", "", NE)]),
    cpu_node("both", taints=[Taint("dedicated", "ml", NS), Taint("gpu", "", NE)]),
]


@pytest.mark.parametrize(("tolerations", "expected"), [
    ((), ["plain", "soft"]),
    ((Toleration("dedicated", "Equal", "ml"),), ["plain", "soft", "hard"]),
    ((Toleration("dedicated", "Equal", "other"),), ["plain", "soft"]),  # value must match
    ((Toleration("dedicated", "Exists"),), ["plain", "soft", "hard"]),
    ((Toleration("dedicated", "Exists", effect=NE),), ["plain", "soft"]),  # effect must match
    ((Toleration("gpu", "Exists", effect=NE),), ["plain", "soft", "evict"]),
    ((Toleration("dedicated", "Equal", "ml", NS), Toleration("gpu", "Exists")), ["plain", "soft", "hard", "evict",
                                                                                "both"]),
    ((Toleration("", "Exists"),), ["plain", "soft", "hard", "evict", "both"]),  # tolerates everything
])
def test_taint_toleration(tolerations, expected) -> None:
    assert admitted(TaintToleration(), TAINTED, demand(tolerations=tolerations)) == expected


def test_unschedulable() -> None:
    nodes = [cpu_node("up"), cpu_node("cordoned", unschedulable=True)]
    assert admitted(Unschedulable(), nodes, demand()) == ["up"]
    cordon = Toleration("node.kubernetes.io/unschedulable", "Exists", effect=NS)
    assert admitted(Unschedulable(), nodes, demand(tolerations=(cordon,))) == ["up", "cordoned"]
    assert admitted(Unschedulable(), nodes, demand(tolerations=(Toleration("", "Exists"),))) == ["up", "cordoned"]
    wrong_effect = Toleration("node.kubernetes.io/unschedulable", "Exists", effect=NE)
    assert admitted(Unschedulable(), nodes, demand(tolerations=(wrong_effect,))) == ["up"]


# ---- node selector and required affinity ---------------------------------------------------------------------------
LABELLED = [
    cpu_node("a1", labels={"zone": "a", "pool": "train"}),
    cpu_node("a2", labels={"zone": "a"}),
    cpu_node("b1", labels={"zone": "b", "pool": "serve"}),
    cpu_node("none"),
]


def req(key: str, op: str, *values: str) -> Requirement:
    return Requirement(key, op, values)


@pytest.mark.parametrize(("d", "expected"), [
    (demand(), ["a1", "a2", "b1", "none"]),
    (demand(node_selector=(("zone", "a"),)), ["a1", "a2"]),
    (demand(node_selector=(("zone", "a"), ("pool", "train"))), ["a1"]),
    (demand(node_selector=(("zone", "c"),)), []),  # value no node has
    (demand(node_selector=(("rack", "r1"),)), []),  # key no node has
    (demand(affinity=((req("zone", "In", "b", "c"),),)), ["b1"]),
    (demand(affinity=((req("zone", "NotIn", "a"),),)), ["b1", "none"]),  # NotIn admits nodes without the key
    (demand(affinity=((req("rack", "NotIn", "r1"),),)), ["a1", "a2", "b1", "none"]),  # key no node has
    (demand(affinity=((req("pool", "Exists"),),)), ["a1", "b1"]),
    (demand(affinity=((req("pool", "DoesNotExist"),),)), ["a2", "none"]),
    (demand(affinity=((req("rack", "DoesNotExist"),),)), ["a1", "a2", "b1", "none"]),
    (demand(affinity=((req("rack", "Exists"),),)), []),
    # requirements of one term are ANDed, terms are ORed
    (demand(affinity=((req("zone", "In", "a"), req("pool", "DoesNotExist")),)), ["a2"]),
    (demand(affinity=((req("zone", "In", "b"),), (req("pool", "In", "train"),))), ["a1", "b1"]),
    # selector and affinity must both hold
    (demand(node_selector=(("zone", "a"),), affinity=((req("pool", "Exists"),),)), ["a1"]),
    # an empty nodeSelectorTerm matches no node (Kubernetes API: "A null or empty node selector term matches
    # no objects"), so it adds nothing to the ORed terms ...
    (demand(affinity=((), (req("zone", "In", "b"),))), ["b1"]),
    # ... and affinity made only of empty terms admits no node
    (demand(affinity=((),)), []),
])
def test_node_affinity(d: Demand, expected: list[str]) -> None:
    assert admitted(NodeAffinity(), LABELLED, d) == expected


# ---- GPU model -----------------------------------------------------------------------------------------------------
def test_gpu_model() -> None:
    nodes = [gpu_node("a100x8"), gpu_node("t4x2", gpus=2, model="T4"), cpu_node("cpu")]
    assert admitted(GpuModel(), nodes, demand(gpus=1)) == ["a100x8", "t4x2", "cpu"]  # no model named: no opinion
    assert admitted(GpuModel(), nodes, demand(gpus=1, gpu_models=frozenset({"T4"}))) == ["t4x2"]
    assert admitted(GpuModel(), nodes, demand(gpus=4, gpu_models=frozenset({"T4", "A100"}))) == ["a100x8"]
    assert admitted(GpuModel(), nodes, demand(gpus=1, gpu_models=frozenset({"H100"}))) == []
    # a CPU-only pod naming models is not constrained by them
    assert admitted(GpuModel(), nodes, demand(gpu_models=frozenset({"T4"}))) == ["a100x8", "t4x2", "cpu"]


def test_filters_take_index_rows_and_empty_rows() -> None:
    s = ClusterState(LABELLED)
    d = demand(node_selector=(("zone", "a"),))
    assert NodeAffinity()(context(s), d, np.array([3, 0])).tolist() == [False, True]
    for flt in (ResourceFit(), TaintToleration(), Unschedulable(), GpuModel(), NodeAffinity()):
        assert flt(context(s), d, np.array([], dtype=np.intp)).shape == (0,)


# ---- Gt / Lt and node names ------------------------------------------------------------------------------------
GENERATIONS = [
    cpu_node("g3", labels={"gen": "3"}),
    cpu_node("g5", labels={"gen": "5"}),
    cpu_node("g-2", labels={"gen": "-2"}),
    cpu_node("g+7", labels={"gen": "+7"}),  # Go's strconv.ParseInt reads a sign
    cpu_node("gx", labels={"gen": "x"}),  # not an integer: matches neither Gt nor Lt
    cpu_node("g1.5", labels={"gen": "1.5"}),
    cpu_node("g_1", labels={"gen": "1_0"}),  # Python's int() would read it, Go's ParseInt does not
    cpu_node("g-huge", labels={"gen": str(2**63)}),  # out of int64
    cpu_node("none"),
]


@pytest.mark.parametrize(("d", "expected"), [
    (demand(affinity=((req("gen", "Gt", "3"),),)), ["g5", "g+7"]),
    (demand(affinity=((req("gen", "Lt", "3"),),)), ["g-2"]),
    (demand(affinity=((req("gen", "Gt", "-3"),),)), ["g3", "g5", "g-2", "g+7"]),
    (demand(affinity=((req("gen", "Lt", "+6"),),)), ["g3", "g5", "g-2"]),
    (demand(affinity=((req("rack", "Gt", "0"),),)), []),  # key no node has
    (demand(affinity=((req("gen", "Gt", "2"), req("gen", "Lt", "6")),)), ["g3", "g5"]),
    (demand(affinity=((req("gen", "Gt", "5"),), (req("gen", "Lt", "0"),))), ["g-2", "g+7"]),
])
def test_node_affinity_gt_lt(d: Demand, expected: list[str]) -> None:
    assert admitted(NodeAffinity(), GENERATIONS, d) == expected


@pytest.mark.parametrize("values", [(), ("1", "2"), ("x",), ("1.5",), (" 1",), ("1_0",), (str(2**63),)])
@pytest.mark.parametrize("op", ["Gt", "Lt"])
def test_gt_lt_need_one_integer(op: str, values: tuple[str, ...]) -> None:
    with pytest.raises(ModelError, match=rf"{op} for key 'gen' needs exactly one integer value"):
        Requirement("gen", op, values)


def name_is(op: str, name: str) -> Requirement:
    return Requirement(NODE_NAME_FIELD, op, (name,), field=True)


NAMED = [cpu_node("a1", labels={NODE_NAME_FIELD: "b1"}), cpu_node("b1"), cpu_node("c1")]


@pytest.mark.parametrize(("d", "expected"), [
    (demand(affinity=((name_is("In", "b1"),),)), ["b1"]),  # the name, not a label spelled like the field
    (demand(affinity=((name_is("NotIn", "b1"),),)), ["a1", "c1"]),
    (demand(affinity=((name_is("In", "gone"),),)), []),
    (demand(affinity=((name_is("NotIn", "gone"),),)), ["a1", "b1", "c1"]),
    (demand(affinity=((req(NODE_NAME_FIELD, "In", "b1"),),)), ["a1"]),  # matchExpressions reads labels
    (demand(affinity=((name_is("In", "a1"),), (name_is("In", "c1"),))), ["a1", "c1"]),
    (demand(affinity=((name_is("NotIn", "a1"), req(NODE_NAME_FIELD, "DoesNotExist")),)), ["b1", "c1"]),
])
def test_node_affinity_match_fields(d: Demand, expected: list[str]) -> None:
    assert admitted(NodeAffinity(), NAMED, d) == expected


def test_node_affinity_rows_are_a_slice_of_all() -> None:
    state = ClusterState(GENERATIONS + NAMED)
    d = demand(affinity=((req("gen", "Gt", "0"), name_is("NotIn", "g5")), (name_is("In", "b1"),)))
    full = NodeAffinity()(context(state), d, ALL)
    rows = np.array([0, 1, 3, 4, 10])
    np.testing.assert_array_equal(NodeAffinity()(context(state), d, rows), full[rows])
    assert [state.names[i] for i in np.flatnonzero(full)] == ["g3", "g+7", "b1"]


@pytest.mark.parametrize(("key", "op", "values", "message"), [
    ("spec.unschedulable", "In", ("true",), "only metadata.name"),
    (NODE_NAME_FIELD, "Exists", (), "In or NotIn"),
    (NODE_NAME_FIELD, "Gt", ("1",), "In or NotIn"),
    (NODE_NAME_FIELD, "In", ("a", "b"), "exactly one value"),
    (NODE_NAME_FIELD, "NotIn", (), "exactly one value"),
])
def test_match_fields_validation(key: str, op: str, values: tuple[str, ...], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        Requirement(key, op, values, field=True)
