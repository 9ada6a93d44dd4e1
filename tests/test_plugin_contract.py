"""The contract every filter and score plugin must keep, checked for each registered plugin in turn (like
scikit-learn's estimator checks). Each check runs on random clusters left in a random state of use.

Each check is a function `check_*(plugin, world)`; `test_plugin_contract` runs them all on each random world.
The core's incremental cache (`core.Evaluator`) evaluates plugins on all feasible nodes once, then only on the rows
whose usage changed; that is only correct if evaluating a subset of rows gives exactly the slice of evaluating all
rows (`check_rows_are_independent`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from conftest import Ledger, Snapshot, context, cpu_node, demands_st, nodes_st, random_fill
from hypothesis import given, settings
from hypothesis import strategies as st

from gangsched.frag import Workload
from gangsched.framework import ALL, CycleContext, FilterPlugin, Normalized, ScorePlugin
from gangsched.model import Demand
from gangsched.profile import FILTERS, SCORES
from gangsched.scores.best_fit import BestFit
from gangsched.scores.fgd import Fgd
from gangsched.state import ClusterState

FILTER_PLUGINS = [pytest.param(cls(), id=name) for name, cls in FILTERS.items()]
SCORE_PLUGINS = [pytest.param(cls(), id=name) for name, cls in SCORES.items()] + [
    pytest.param(BestFit(quantize=True), id="best-fit-quantize"),
    pytest.param(Fgd(quantize=True), id="fgd-quantize"),
]
PLUGINS = FILTER_PLUGINS + SCORE_PLUGINS


@dataclass
class World:
    state: ClusterState
    ctx: CycleContext
    demand: Demand
    rows: np.ndarray  # a random subset of nodes, ascending
    feasible: np.ndarray  # nodes every registered filter admits the demand to

    def call(self, plugin, rows, seed: int = 0) -> np.ndarray:
        ctx = CycleContext(self.state, np.random.default_rng(seed), self.ctx.workload, self.ctx.gang_nodes)
        return plugin(ctx, self.demand, rows)


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
    return World(state, ctx, d, np.array(sorted(subset), dtype=np.intp), np.flatnonzero(mask))


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
    # the plugins that depend on more than a node's own row say so
    assert not SCORES["gang-locality"]().per_node and not SCORES["random"]().per_node


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


CHECKS = [check_one_result_per_row, check_filters_return_bool, check_deterministic, check_rows_are_independent,
          check_leaves_the_state_alone, check_normalized_scores_lie_in_0_100]


@pytest.mark.parametrize("plugin", PLUGINS)
@settings(max_examples=20)
@given(world=worlds())
def test_plugin_contract(plugin, world: World) -> None:
    for check in CHECKS:  # a failure's traceback names the check
        check(plugin, world)


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
