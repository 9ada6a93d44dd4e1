"""The contract every filter, score and device picker must keep, checked for each registered plugin in turn (like
scikit-learn's estimator checks). Each check runs on random clusters left in a random state of use.

Each check is a function `check_*(plugin, world)`; `test_plugin_contract` (filters and scores) and
`test_device_picker_contract` run them all on each random world.
The core's incremental cache (`core.Evaluator`) evaluates plugins on all feasible nodes once, then only on the rows
whose usage changed; that is only correct if evaluating a subset of rows gives exactly the slice of evaluating all
rows (`check_rows_are_independent`). The capabilities a plugin declares (framework's `StaticFilter`,
`ExplainingFilter`, `WorkloadAware`) are checked against what it does: a static filter ignores usage, an
explanation covers every rejected node, and only a workload-aware plugin's result depends on the workload.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pytest
from conftest import Ledger, Snapshot, context, cpu_node, demands_st, gpu_node, nodes_st, random_fill
from hypothesis import given, settings
from hypothesis import strategies as st

from gangsched.core import Evaluator
from gangsched.devices import FgdDevice
from gangsched.frag import Workload
from gangsched.framework import (
    ALL,
    CycleContext,
    DevicePicker,
    ExplainingFilter,
    FilterPlugin,
    Normalized,
    ScorePlugin,
    StaticFilter,
    WorkloadAware,
)
from gangsched.model import Demand, demand
from gangsched.profile import DEVICES, FILTERS, SCORES, load_profile
from gangsched.scores.best_fit import BestFit
from gangsched.scores.fgd import Fgd
from gangsched.state import ClusterState

FILTER_PLUGINS = [pytest.param(cls(), id=name) for name, cls in FILTERS.items()]
SCORE_PLUGINS = [pytest.param(cls(), id=name) for name, cls in SCORES.items()] + [
    pytest.param(BestFit(quantize=True), id="best-fit-quantize"),
    pytest.param(Fgd(quantize=True), id="fgd-quantize"),
]
PLUGINS = FILTER_PLUGINS + SCORE_PLUGINS
DEVICE_PLUGINS = [pytest.param(cls(), id=name) for name, cls in DEVICES.items()] + [
    pytest.param(FgdDevice(quantize=True), id="fgd-quantize"),
]
Same = Literal["same"]  # World's calls: the world's own workload

# capability -> its marker member (framework's rule: declared by presence, and then True)
CAPABILITIES = {StaticFilter: "static", ExplainingFilter: "explain", WorkloadAware: "reads_workload"}
# another typical pod mix than any world's: GPU-sharing and 2-GPU pods
OTHER_WORKLOAD = Workload.from_demands([demand(cpu_milli=2000, gpus=1, gpu_milli=300), demand(cpu_milli=8000, gpus=2)])


@dataclass
class World:
    state: ClusterState
    ctx: CycleContext
    demand: Demand
    rows: np.ndarray  # a random subset of nodes, ascending
    feasible: np.ndarray  # nodes every registered filter admits the demand to
    background: list[Demand] = field(default_factory=list)  # the shapes the cluster was filled with

    def context(self, seed: int = 0, workload: Same | Workload | None = "same") -> CycleContext:
        wl = self.ctx.workload if workload == "same" else workload
        return CycleContext(self.state, np.random.default_rng(seed), wl, self.ctx.gang_nodes)

    def call(self, plugin, rows, seed: int = 0, workload: Same | Workload | None = "same") -> np.ndarray:
        return plugin(self.context(seed, workload), self.demand, rows)

    def picks(self, picker, seed: int = 0, workload: Same | Workload | None = "same") -> list[tuple[int, ...]]:
        """The picker's devices on each feasible node, for a GPU demand (pickers are not asked otherwise)."""
        if not self.demand.gpu_count:
            return []
        ctx = self.context(seed, workload)
        return [picker(ctx, self.demand, int(node)) for node in self.feasible]


@st.composite
def worlds(draw) -> World:
    nodes = draw(nodes_st(min_nodes=1, max_nodes=10, max_gpus=8))
    background = draw(st.lists(demands_st(constrained=False), min_size=1, max_size=4))
    state = ClusterState(nodes)
    random_fill(state, Ledger(nodes), np.random.default_rng(draw(st.integers(0, 2**32 - 1))), background, tries=20)
    d = draw(demands_st(constrained=True))
    ctx = context(state, Workload.from_demands([*background, d]))
    ctx.gang_nodes = np.array(draw(st.lists(st.booleans(), min_size=len(nodes), max_size=len(nodes))), dtype=bool)
    subset = draw(st.lists(st.sampled_from(range(len(nodes))), unique=True))
    mask = np.ones(len(nodes), dtype=bool)
    for cls in FILTERS.values():
        mask &= cls()(ctx, d, ALL)
    return World(state, ctx, d, np.array(sorted(subset), dtype=np.intp), np.flatnonzero(mask), background)


# ---- checks --------------------------------------------------------------------------------------------------------
def test_registry() -> None:
    assert list(FILTERS) == ["unschedulable", "taints", "node-affinity", "gpu-model", "resources"]
    assert set(SCORES) >= {"least-allocated", "most-allocated", "best-fit", "fgd", "gang-locality", "random",
                           "dotprod", "gpu-clustering", "gpu-packing"}
    for name, cls in FILTERS.items():
        plugin = cls()
        assert plugin.name == name and isinstance(plugin, FilterPlugin)
        assert isinstance(plugin.reason, str) and plugin.reason and isinstance(plugin.per_node, bool)
    for name, cls in SCORES.items():
        plugin = cls()
        assert plugin.name == name and isinstance(plugin, ScorePlugin) and isinstance(plugin.per_node, bool)
    for name, cls in DEVICES.items():
        plugin = cls()
        assert plugin.name == name and isinstance(plugin, DevicePicker)
    # the plugins that depend on more than a node's own row say so
    assert not SCORES["gang-locality"]().per_node and not SCORES["random"]().per_node


def _declaring(capability: type, registry: dict[str, type]) -> set[str]:
    return {name for name, cls in registry.items() if isinstance(cls(), capability)}


def test_declared_capabilities() -> None:
    """Who declares what (a marker lost in a refactor would silently slow the cache or drop the workload)."""
    assert _declaring(StaticFilter, FILTERS) == {"unschedulable", "taints", "node-affinity", "gpu-model"}
    assert _declaring(ExplainingFilter, FILTERS) == {"resources"}
    assert not _declaring(WorkloadAware, FILTERS)
    assert _declaring(WorkloadAware, SCORES) == {"fgd"} and _declaring(WorkloadAware, DEVICES) == {"fgd"}


def test_core_and_profile_dispatch_on_the_protocols() -> None:
    state = ClusterState([cpu_node("a")])
    profile = load_profile("default")
    ev = Evaluator(profile, context(state))
    assert ev.static_filters == [f for f in profile.filters if isinstance(f, StaticFilter)]
    assert ev.dynamic_filters == [f for f in profile.filters if not isinstance(f, StaticFilter)]
    assert profile.needs_workload and not load_profile("binpack").needs_workload


def check_declarations(plugin, world: World) -> None:
    """A capability is declared by presence (framework's rule), and whole: having a marker member makes the plugin
    an instance of its protocol (a filter with `static` but no `reason` would quietly count as dynamic), and a
    marker attribute is True where present (`static = False` would read as static)."""
    for capability, member in CAPABILITIES.items():
        assert hasattr(plugin, member) == isinstance(plugin, capability), (plugin.name, capability.__name__)
        if member != "explain":
            assert getattr(plugin, member, True) is True, f"{plugin.name}: {member} must be True or absent"
    if isinstance(plugin, StaticFilter):
        assert plugin.per_node  # the cache keeps its mask per node


def check_static_filters_ignore_usage(plugin, world: World) -> None:
    """A StaticFilter's result depends on node attributes only: emptying the cluster and filling it again
    differently leaves it unchanged (a filter that is not static, like resources, may change)."""
    if not isinstance(plugin, StaticFilter):
        return
    state, before = world.state, world.call(plugin, ALL)
    epoch = state.epoch
    with state.trial():  # rolled back on exit
        for key in list(state.assignments):
            state.release(key)
        np.testing.assert_array_equal(world.call(plugin, ALL), before)
        random_fill(state, Ledger(state.nodes), np.random.default_rng(state.n_nodes),
                    [world.demand, *world.background], tries=20, prefix="usage")
        np.testing.assert_array_equal(world.call(plugin, ALL), before)
        np.testing.assert_array_equal(world.call(plugin, world.rows), before[world.rows])
    assert state.epoch == epoch


def check_explanations_cover_rejections(plugin, world: World) -> None:
    """An ExplainingFilter's reasons count only rejected rows, and every rejected row under at least one."""
    if not isinstance(plugin, ExplainingFilter):
        return
    for rows in (np.arange(world.state.n_nodes), world.rows):
        rejected = rows[~world.call(plugin, rows)]
        reasons = plugin.explain(world.context(), world.demand, rejected)
        assert all(isinstance(r, str) and r and 0 < n <= rejected.size for r, n in reasons.items()), reasons
        assert sum(reasons.values()) >= rejected.size, (reasons, rejected)


def check_only_workload_aware_plugins_read_the_workload(plugin, world: World) -> None:
    """A plugin that does not declare WorkloadAware gives the same result with another workload, or none."""
    if isinstance(plugin, WorkloadAware):
        return
    if isinstance(plugin, FilterPlugin | ScorePlugin):
        same = world.call(plugin, ALL)
        for other in (None, OTHER_WORKLOAD):
            np.testing.assert_array_equal(world.call(plugin, ALL, workload=other), same)
    else:
        same = world.picks(plugin)
        for other in (None, OTHER_WORKLOAD):
            assert world.picks(plugin, workload=other) == same


def check_one_result_per_row(plugin, world: World) -> None:
    assert world.call(plugin, ALL).shape == (world.state.n_nodes,)
    assert world.call(plugin, world.rows).shape == world.rows.shape
    assert world.call(plugin, np.array([], dtype=np.intp)).shape == (0,)


def check_filters_return_bool(plugin, world: World) -> None:
    if isinstance(plugin, FilterPlugin):
        assert world.call(plugin, ALL).dtype == bool
        assert world.call(plugin, world.rows).dtype == bool


def check_deterministic(plugin, world: World) -> None:
    """Same input twice, or another cycle RNG: a per_node plugin is a pure function of its rows and the demand.
    (per_node=False plugins may depend on more: random on the RNG, gang-locality on the gang.)"""
    if plugin.per_node:
        first = world.call(plugin, ALL, seed=1)
        np.testing.assert_array_equal(world.call(plugin, ALL, seed=1), first)
        np.testing.assert_array_equal(world.call(plugin, ALL, seed=2), first)


def check_rows_are_independent(plugin, world: World) -> None:
    """Evaluating a subset of rows equals the slice of evaluating all rows (what Evaluator's cache relies on;
    per_node=False plugins are re-evaluated on every call instead)."""
    if not plugin.per_node:
        return
    everything = world.call(plugin, ALL)
    np.testing.assert_array_equal(world.call(plugin, world.rows), everything[world.rows])
    np.testing.assert_array_equal(world.call(plugin, np.arange(world.state.n_nodes)), everything)
    # scores are only ever asked about feasible nodes: all of them first, then any subset
    feasible = world.feasible
    if feasible.size:
        whole = world.call(plugin, feasible)
        part = np.isin(feasible, world.rows)
        np.testing.assert_array_equal(world.call(plugin, feasible[part]), whole[part])
        for k in range(min(3, feasible.size)):  # single rows, as an incremental refresh after one assignment
            np.testing.assert_array_equal(world.call(plugin, feasible[k:k + 1]), whole[k:k + 1])


def check_leaves_the_state_alone(plugin, world: World) -> None:
    before, version = Snapshot.of(world.state), world.state.version
    world.call(plugin, ALL)
    world.call(plugin, world.rows)
    before.assert_equals(world.state)
    assert world.state.version == version


def check_normalized_scores_lie_in_0_100(plugin, world: World) -> None:
    if not isinstance(plugin, ScorePlugin):
        return
    raw = world.call(plugin, world.feasible)
    assert np.all(np.isfinite(raw)), raw
    norm = plugin.normalize(raw)
    assert norm.shape == raw.shape and np.all(np.isfinite(norm))
    assert np.all((norm >= 0) & (norm <= 100)), (raw, norm)
    if isinstance(plugin, Normalized):  # these pass raw scores through unchanged
        np.testing.assert_array_equal(norm, raw)
    assert plugin.normalize(np.array([])).shape == (0,)


def check_devices_fit(picker, world: World) -> None:
    """A picker gives a GPU demand `gpu_count` distinct devices of the node, each with room for it."""
    if not world.demand.gpu_count:
        return
    for node, devices in zip(world.feasible, world.picks(picker), strict=True):
        assert len(devices) == world.demand.gpu_count == len(set(devices)), devices
        usable = world.state.usable_devices(world.demand, np.array([node]))[0]
        assert all(usable[d] for d in devices), (node, devices)


def check_picker_leaves_the_state_alone(picker, world: World) -> None:
    before, version = Snapshot.of(world.state), world.state.version
    world.picks(picker)
    before.assert_equals(world.state)
    assert world.state.version == version


CHECKS = [check_one_result_per_row, check_filters_return_bool, check_deterministic, check_rows_are_independent,
          check_leaves_the_state_alone, check_normalized_scores_lie_in_0_100, check_declarations,
          check_static_filters_ignore_usage, check_explanations_cover_rejections,
          check_only_workload_aware_plugins_read_the_workload]
DEVICE_CHECKS = [check_declarations, check_devices_fit, check_picker_leaves_the_state_alone,
                 check_only_workload_aware_plugins_read_the_workload]


@pytest.mark.parametrize("plugin", PLUGINS)
@settings(max_examples=20)
@given(world=worlds())
def test_plugin_contract(plugin, world: World) -> None:
    for check in CHECKS:  # a failure's traceback names the check
        check(plugin, world)


@pytest.mark.parametrize("picker", DEVICE_PLUGINS)
@settings(max_examples=20)
@given(world=worlds())
def test_device_picker_contract(picker, world: World) -> None:
    for check in DEVICE_CHECKS:
        check(picker, world)


def _fragmenting_world(workload: Workload) -> World:
    """Two 2-GPU nodes, one with 700 milli left on its first device, and a 300-milli pod to place: whether the
    first device's leftover is fragmentation depends on the typical pods."""
    state = ClusterState([gpu_node("g0", gpus=2), gpu_node("g1", gpus=2)])
    state.assign("bg", demand(cpu_milli=1000, gpus=1, gpu_milli=300), 0, (0,))
    d = demand(cpu_milli=1000, gpus=1, gpu_milli=300)
    return World(state, context(state, workload), d, np.array([0]), np.array([0, 1]))


WORKLOAD_AWARE = [pytest.param(*p.values, id=f"{kind}-{p.id}")
                  for kind, params in (("score", SCORE_PLUGINS), ("devices", DEVICE_PLUGINS))
                  for p in params if isinstance(p.values[0], WorkloadAware)]


@pytest.mark.parametrize("plugin", WORKLOAD_AWARE)
def test_workload_aware_plugins_read_the_workload(plugin) -> None:
    """The converse of `check_only_workload_aware_plugins_read_the_workload`: a plugin that declares
    WorkloadAware does change its result with the workload (whole-GPU typical pods vs 700-milli ones)."""
    whole = _fragmenting_world(Workload.from_demands([demand(cpu_milli=1000, gpus=1)]))
    shared = _fragmenting_world(Workload.from_demands([demand(cpu_milli=1000, gpus=1, gpu_milli=700)]))
    if isinstance(plugin, ScorePlugin):
        assert not np.array_equal(whole.call(plugin, ALL), shared.call(plugin, ALL))
    else:
        assert whole.picks(plugin) != shared.picks(plugin)


class _PeeksAtOtherRows:
    """A broken score: it min-max scales within the rows it is given, so a one-row refresh gives 0."""

    name, per_node = "peeks", True

    def __call__(self, ctx: CycleContext, demand: Demand, rows) -> np.ndarray:
        free = ctx.state.free[rows, 0].astype(np.float64)
        return free - free.min()

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        return raw


def test_the_row_check_catches_a_plugin_that_looks_at_other_rows() -> None:
    state = ClusterState([cpu_node("a", cpu=8000), cpu_node("b", cpu=16_000)])
    world = World(state, context(state), Demand(), np.array([1]), np.array([0, 1]))
    with pytest.raises(AssertionError):
        check_rows_are_independent(_PeeksAtOtherRows(), world)


class _StaticButCountsPods:
    """A broken filter: declared static, but it rejects nodes that already run a pod (usage)."""

    name, reason, per_node, static = "crowded", "node(s) were busy", True, True

    def __call__(self, ctx: CycleContext, demand: Demand, rows) -> np.ndarray:
        return ctx.state.used[rows, ctx.state.res_index["pods"]] == 0


class _ReadsTheWorkloadUndeclared(_PeeksAtOtherRows):
    """A broken score: it reads ctx.workload without declaring WorkloadAware."""

    def __call__(self, ctx: CycleContext, demand: Demand, rows) -> np.ndarray:
        return np.full(len(ctx.state.unschedulable[rows]), 0.0 if ctx.workload is None else 100.0)


class _NotStatic(_StaticButCountsPods):
    static = False  # what the rule forbids: isinstance would read it as static


def _busy_world() -> World:
    state = ClusterState([cpu_node("a"), cpu_node("b")])
    state.assign("bg", demand(cpu_milli=1000), 0)
    d = demand(cpu_milli=1000)
    return World(state, context(state, Workload.from_demands([d])), d, np.array([1]), np.array([0, 1]), [d])


def test_the_capability_checks_catch_false_declarations() -> None:
    world = _busy_world()
    assert isinstance(_StaticButCountsPods(), StaticFilter)
    with pytest.raises(AssertionError):
        check_static_filters_ignore_usage(_StaticButCountsPods(), world)
    with pytest.raises(AssertionError):
        check_only_workload_aware_plugins_read_the_workload(_ReadsTheWorkloadUndeclared(), world)
    with pytest.raises(AssertionError):
        check_declarations(_NotStatic(), world)
