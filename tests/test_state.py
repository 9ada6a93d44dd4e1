"""ClusterState: layout, assign/release bookkeeping, refusals, trials, the touch log and node-set changes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import FPGA, Snapshot, check_invariants, cpu_node, gpu_node

from gangsched import state as state_module
from gangsched.model import CPU, GIB, GPU, MEMORY, PODS, Demand, ModelError, Node, demand
from gangsched.state import CapacityError, ClusterState

WHOLE2 = demand(cpu_milli=8000, memory=16 * GIB, gpus=2)
SHARE300 = demand(cpu_milli=1000, memory=GIB, gpus=1, gpu_milli=300)
CPU_ONLY = demand(cpu_milli=4000, memory=8 * GIB)


@pytest.fixture
def state() -> ClusterState:
    return ClusterState([gpu_node("g4", gpus=4, cpu=32_000, memory=64 * GIB, extended={FPGA: 1}),
                         gpu_node("g2", gpus=2, model="T4", pods=3),
                         cpu_node("c", cpu=16_000)])


def test_layout(state: ClusterState) -> None:
    assert state.resources == (CPU, MEMORY, PODS, FPGA)
    assert state.max_gpus == 4
    np.testing.assert_array_equal(state.allocatable, [[32_000, 64 * GIB, 110, 1],
                                                      [96_000, 512 * GIB, 3, 0],
                                                      [16_000, 128 * GIB, 110, 0]])
    np.testing.assert_array_equal(state.gpu_cap, [[1000] * 4, [1000, 1000, 0, 0], [0] * 4])
    np.testing.assert_array_equal(state.gpu_free, state.gpu_cap)
    assert state.models == ["A100", "T4"]
    np.testing.assert_array_equal(state.dev_model, [[0] * 4, [1, 1, -1, -1], [-1] * 4])
    np.testing.assert_array_equal(state.gpu_count, [4, 2, 0])
    assert state.gpu_milli_total() == 6000 and state.gpu_milli_allocated() == 0


def test_assign_and_release_bookkeeping(state: ClusterState) -> None:
    a = state.assign("ns/w", WHOLE2, 0, (1, 3))
    s = state.assign("ns/s", SHARE300, 0, (0,))
    assert (a.node_name, a.devices, a.gpu_milli) == ("g4", (1, 3), 1000)
    np.testing.assert_array_equal(state.used[0], [9000, 17 * GIB, 2, 0])
    np.testing.assert_array_equal(state.gpu_free[0], [700, 0, 1000, 0])
    assert state.gpu_tags[0, 2] == 1 and state.gpu_tags[0, 0] == 1  # one 2-GPU pod, one sharing pod
    assert state.node_pods[0] == {"ns/w", "ns/s"}
    assert state.gpu_milli_allocated() == 2300
    assert state.pods_on([0, 1]) and sorted(state.pods_on([0])) == ["ns/s", "ns/w"]
    assert state.release("ns/w") == a
    np.testing.assert_array_equal(state.gpu_free[0], [700, 1000, 1000, 1000])
    np.testing.assert_array_equal(state.free[0], [31_000, 63 * GIB, 109, 1])
    assert state.assignments == {"ns/s": s}
    check_invariants(state, state.nodes)


@pytest.mark.parametrize(("d", "node", "devices", "why"), [
    (WHOLE2, 0, (0,), "needs 2 distinct GPUs"),  # too few devices
    (WHOLE2, 0, (1, 1), "needs 2 distinct GPUs"),  # the same device twice
    (WHOLE2, 1, (2, 3), "has no GPUs \\(2, 3\\)"),  # padding devices of a 2-GPU node
    (WHOLE2, 0, (3, 4), "has no GPUs \\(3, 4\\)"),  # past the widest node
    (demand(cpu_milli=33_000), 0, (), "does not fit"),  # cpu beyond allocatable
    (demand(extended={FPGA: 1}), 1, (), "does not fit"),  # g2 has no fpga
    (SHARE300, 2, (0,), "has no GPUs \\(0,\\)"),  # a CPU node has no GPU
])
def test_assign_refuses_and_leaves_state_unchanged(state: ClusterState, d: Demand, node: int, devices, why) -> None:
    before = Snapshot.of(state)
    with pytest.raises(CapacityError, match=why):
        state.assign("p", d, node, devices)
    before.assert_equals(state)


def test_negative_device_index_refused(state: ClusterState) -> None:
    # numpy would read -1 as the node's last column: a real device on g4, so it must be refused explicitly
    with pytest.raises(CapacityError):
        state.assign("p", SHARE300, 0, (-1,))
    assert state.gpu_free[0].tolist() == [1000] * 4


def test_pods_limit_and_double_assign(state: ClusterState) -> None:
    for k in range(3):
        state.assign(f"p{k}", CPU_ONLY, 1)
    with pytest.raises(CapacityError, match="does not fit"):  # allocatable pods=3
        state.assign("p3", CPU_ONLY, 1)
    with pytest.raises(CapacityError, match="already assigned to g2"):
        state.assign("p0", CPU_ONLY, 2)


def test_fractional_gpus_share_a_device_up_to_1000(state: ClusterState) -> None:
    for k in range(3):
        state.assign(f"s{k}", SHARE300, 0, (0,))
    assert state.gpu_free[0, 0] == 100
    with pytest.raises(CapacityError):
        state.assign("s3", SHARE300, 0, (0,))
    with pytest.raises(CapacityError):  # a whole GPU needs the full 1000 of a device
        state.assign("w", demand(gpus=1), 0, (0,))
    state.assign("w", demand(gpus=1), 0, (1,))
    assert state.gpu_free[0].tolist() == [100, 0, 1000, 1000]


def test_vector_unknown_resource_and_zero_quantity(state: ClusterState) -> None:
    with pytest.raises(ModelError, match=r"unknown resource 'example\.com/nic'"):
        state.vector(demand(extended={"example.com/nic": 1}))
    np.testing.assert_array_equal(state.vector(demand(cpu_milli=5, extended={"example.com/nic": 0})), [5, 0, 1, 0])
    assert not state.vector(CPU_ONLY).flags.writeable


def test_trial_rollback_and_commit(state: ClusterState) -> None:
    state.assign("keep", CPU_ONLY, 2)
    before = Snapshot.of(state)
    with state.trial() as t:
        state.assign("a", WHOLE2, 0, (0, 1))
        state.release("keep")
        state.assign("keep", CPU_ONLY, 0)  # moved
        t.rollback()
    before.assert_equals(state)
    with state.trial() as t:
        state.assign("a", WHOLE2, 0, (0, 1))
        t.commit()
    assert set(state.assignments) == {"keep", "a"}
    with pytest.raises(RuntimeError, match="already closed"):
        t.commit()


def test_trial_rolls_back_when_block_raises(state: ClusterState) -> None:
    before = Snapshot.of(state)
    with pytest.raises(KeyError), state.trial():
        state.assign("a", SHARE300, 0, (2,))
        state.release("nobody")
    before.assert_equals(state)
    assert state._depth == 0 and state._log == []


def test_nested_trials(state: ClusterState) -> None:
    start = Snapshot.of(state)
    with state.trial() as outer:
        state.assign("o1", WHOLE2, 0, (0, 1))
        mid = Snapshot.of(state)
        with state.trial() as inner:
            state.assign("i1", SHARE300, 0, (2,))
            state.release("o1")
            inner.rollback()
        mid.assert_equals(state)  # inner rollback: back to the outer's own changes
        with state.trial() as inner:
            state.assign("i2", SHARE300, 1, (0,))
            inner.commit()
        assert set(state.assignments) == {"o1", "i2"}
        outer.rollback()  # undoes the committed inner trial too
    start.assert_equals(state)
    assert state._log == []


def test_touch_log_and_version(state: ClusterState) -> None:
    v0 = state.version
    state.assign("a", CPU_ONLY, 2)
    state.assign("b", CPU_ONLY, 0)
    state.release("a")
    assert state.version == v0 + 3
    assert state.touched_since(v0).tolist() == [0, 2]
    assert state.touched_since(state.version).tolist() == []


def test_touch_log_truncation_reports_unknown(monkeypatch: pytest.MonkeyPatch, state: ClusterState) -> None:
    monkeypatch.setattr(state_module, "_TOUCH_LOG_LIMIT", 4)
    v0 = state.version
    for k in range(6):
        state.assign(f"p{k}", demand(cpu_milli=1), k % 3)
    assert state.version == v0 + 6  # versions keep counting across truncation
    assert state.touched_since(v0) is None  # the log no longer reaches back
    assert state.touched_since(state.version - 1).tolist() == [2]


def test_set_nodes_keeps_survivors_and_returns_lost(state: ClusterState) -> None:
    state.assign("on-g4", WHOLE2, 0, (2, 3))
    state.assign("on-c", CPU_ONLY, 2)
    epoch = state.epoch
    nodes = [state.nodes[2], gpu_node("new", gpus=1), state.nodes[0]]  # g2 removed, order changed
    lost = state.set_nodes(nodes)
    assert [a.pod_key for a in lost] == [] and state.epoch == epoch + 1
    assert state.assignments["on-g4"].node == 2 and state.assignments["on-c"].node == 0
    assert state.gpu_free[2].tolist() == [1000, 1000, 0, 0]
    check_invariants(state, nodes)
    lost = state.set_nodes([state.nodes[2]])
    assert [a.pod_key for a in lost] == ["on-c"]
    check_invariants(state, state.nodes)


def test_set_nodes_with_a_shrunken_node_drops_only_pods_on_gpus_it_lost(state: ClusterState) -> None:
    state.assign("big", demand(cpu_milli=20_000), 0)
    state.assign("gpus", WHOLE2, 0, (2, 3))
    smaller = gpu_node("g4", gpus=2, cpu=8_000, memory=64 * GIB, extended={FPGA: 1})
    lost = state.set_nodes([smaller, *state.nodes[1:]])
    # "big" still holds the node (over-committed now); "gpus" holds devices the node no longer lists
    assert [a.pod_key for a in lost] == ["gpus"] and "big" in state.assignments and state.overcommitted(0)


def test_node_and_demand_validation() -> None:
    with pytest.raises(ModelError, match=r"nvidia\.com/gpu=3 but 2 devices"):
        Node("x", {GPU: 3}, gpus=gpu_node("y", gpus=2).gpus)
    assert len(Node("x", {GPU: 2}, {"nvidia.com/gpu.product": "H100"}).gpus) == 2
    assert Node("x", {GPU: 2}, {"nvidia.com/gpu.product": "H100"}).gpus[1].model == "H100"
    with pytest.raises(ModelError, match="negative"):
        Node("x", {CPU: -1})
    with pytest.raises(ModelError, match="gpu_count"):
        Demand(requests=((GPU, 1),))
    with pytest.raises(ModelError, match="gpu_milli=0"):
        demand(gpus=1, gpu_milli=0)
    with pytest.raises(ModelError, match="must ask for one device"):
        demand(gpus=2, gpu_milli=500)
    with pytest.raises(ModelError, match="node name 'a' appears twice"):
        ClusterState([cpu_node("a"), cpu_node("a")])


def test_empty_cluster() -> None:
    s = ClusterState([])
    assert s.n_nodes == 0 and s.gpu_free.shape == (0, 1)


def test_force_records_a_pod_that_holds_a_node_whatever_it_asks(state: ClusterState) -> None:
    # a pod bound by someone else beyond the node's cpu, with a resource no node offers, on a busy GPU
    state.assign("ours", WHOLE2, 0, (0, 1))
    a = state.assign("foreign", demand(cpu_milli=40_000, gpus=1, extended={"example.com/x": 3}), 0, (1,), force=True)
    assert state.overcommitted(0) and state.free[0, 0] < 0 and state.gpu_free[0, 1] == -1000
    assert not any(state.overcommitted(i) for i in range(1, state.n_nodes))
    state.release("foreign")
    assert a.pod_key == "foreign" and not state.overcommitted(0) and state.gpu_free[0, 1] == 0
    with pytest.raises(CapacityError, match="has no GPUs"):  # even forced, a device must exist
        state.assign("bad", SHARE300, 2, (0,), force=True)


def test_set_nodes_keeps_pods_on_a_node_that_shrank(state: ClusterState) -> None:
    state.assign("p", demand(cpu_milli=30_000), 0)
    nodes = [replace(state.nodes[0], allocatable={**state.nodes[0].allocatable, "cpu": 8000}), *state.nodes[1:]]
    lost = state.set_nodes(nodes)
    assert lost == [] and "p" in state.assignments and state.overcommitted(0)
