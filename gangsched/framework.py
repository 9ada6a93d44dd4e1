"""The plugin contracts of each scheduling stage, and the context a cycle hands them.

Stages: queue-sort (order gangs), pre-filter (reject a demand outright), filter (bool mask over nodes),
score (raw array over nodes, normalised to 0..100 and weighted), device picking (which GPUs on the chosen
node; the reserve stage), and bind (done by the adapter: the simulator, the live scheduler or the extender).

Filters and scores take `rows`, an index array or `slice(None)`, and return one value per selected node, so
the core can re-evaluate just the rows whose usage changed (see `core.Evaluator`). A plugin is a pure
function of the state's rows and the demand unless it sets `per_node = False`.

What a plugin is, beyond its stage, it declares through the capability protocols below, which the core and the
profile check with `isinstance` and tests/test_plugin_contract.py checks against what the plugin does:

  StaticFilter     `static: Final = True`           reads node attributes only (labels, taints, models, cordons),
                                                    so its result changes only with the state's epoch
  ExplainingFilter `def explain(ctx, demand, rows)`  counts the reasons of the rejected rows, for FailedScheduling
  WorkloadAware    `reads_workload: Final = True`   reads `ctx.workload` (a score, device picker or filter)

The rule: a runtime-checkable Protocol's isinstance only asks whether the member exists, so a plugin declares a
capability by having the member and denies it by not having it, never by `static = False` (which isinstance
would read as static; the contract test rejects a marker whose value is not True). `Final` keeps a subclass
from overriding a marker: a plugin that inherits one has the capability.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from gangsched.model import Demand, Pod, PodGroup

if TYPE_CHECKING:
    from gangsched.frag import Workload
    from gangsched.state import Assignment, ClusterState

Rows = np.ndarray | slice
ALL: slice = slice(None)


@dataclass
class CycleContext:
    """What a plugin may read besides the demand: the state, a seeded RNG, the workload's typical pod mix
    (for fragmentation-aware scoring) and the nodes already holding members of the gang being placed."""

    state: ClusterState
    rng: np.random.Generator
    workload: Workload | None = None
    gang_nodes: np.ndarray | None = None  # bool [N]


@runtime_checkable
class FilterPlugin(Protocol):
    name: str
    reason: str  # what FailedScheduling says about a node this filter rejects
    per_node: bool

    def __call__(self, ctx: CycleContext, demand: Demand, rows: Rows) -> np.ndarray: ...


@runtime_checkable
class ScorePlugin(Protocol):
    name: str
    per_node: bool

    def __call__(self, ctx: CycleContext, demand: Demand, rows: Rows) -> np.ndarray: ...

    def normalize(self, raw: np.ndarray) -> np.ndarray: ...


class PreFilterPlugin(Protocol):
    name: str

    def __call__(self, ctx: CycleContext, demand: Demand) -> str | None:
        """None if the demand can be considered at all, else the reason it never fits."""


@runtime_checkable
class DevicePicker(Protocol):
    name: str

    def __call__(self, ctx: CycleContext, demand: Demand, node: int) -> tuple[int, ...]: ...


# ---- capabilities (see the module docstring for how a plugin declares one) -------------------------------------
@runtime_checkable
class StaticFilter(FilterPlugin, Protocol):
    """A filter that reads node attributes only (labels, taints, GPU models, cordons), never usage: its result
    changes only when the state's epoch does, so `core.Evaluator` skips it when refreshing rows whose usage changed."""

    @property
    def static(self) -> Literal[True]: ...


@runtime_checkable
class ExplainingFilter(FilterPlugin, Protocol):
    """A filter that says more than its one `reason` about the nodes it rejects."""

    def explain(self, ctx: CycleContext, demand: Demand, rows: np.ndarray) -> Counter[str]:
        """Reason -> number of the given (rejected) rows it applies to; every row counts under at least one."""


@runtime_checkable
class WorkloadAware(Protocol):
    """A plugin (typically a score or device picker) that reads `ctx.workload`, the workload's typical pod mix
    (FGD); a profile with one `needs_workload`. Every other plugin gives the same result whatever the workload."""

    @property
    def reads_workload(self) -> Literal[True]: ...


class QueueSortPlugin(Protocol):
    name: str

    def key(self, gang: GangInfo, now: float) -> tuple[Any, ...]:
        """Smaller sorts first."""


@dataclass
class GangInfo:
    """A gang as the queue sees it: its group (a synthetic one of min_member 1 for a lone pod), the members
    waiting for a node (`pods`) and those already holding one (`bound`: running, or being bound).
    `key` identifies it in the queue; by default the group's key."""

    group: PodGroup
    pods: list[Pod]
    enqueued: float = 0.0
    duration: float | None = None  # known run time, for shortest-first policies in simulation
    attempts: int = 0
    bound: Sequence[Assignment] = ()
    key: Hashable = None

    def __post_init__(self) -> None:
        if self.key is None:
            self.key = self.group.key

    @property
    def priority(self) -> int:
        return max([self.group.priority, *(p.priority for p in self.pods)])

    @property
    def gpu_milli(self) -> int:
        return sum(p.demand.gpu_total_milli for p in self.pods)


def minmax(raw: np.ndarray) -> np.ndarray:
    """Map scores to 0..100 over the candidate nodes (kube-scheduler's DefaultNormalizeScore, as floats)."""
    if raw.size == 0:
        return raw
    lo, hi = raw.min(), raw.max()
    if hi == lo:
        return np.zeros_like(raw, dtype=np.float64)
    # clip: (x - lo) * (100 / (hi - lo)) can round to 100.00000000000001 at the top
    return np.minimum((raw - lo) * (100.0 / (hi - lo)), 100.0)


class Normalized:
    """Mixin for scores that already return 0..100."""

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        return raw


class MinMax:
    """Mixin for scores whose raw values have no fixed range."""

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        return minmax(raw)


@dataclass
class Diagnosis:
    """Why a pod found no node: number of nodes rejected per reason, as in kube-scheduler's
    `0/5000 nodes are available: 3000 Insufficient nvidia.com/gpu, 2000 node(s) had untolerated taint`."""

    total_nodes: int
    reasons: Counter[str] = field(default_factory=Counter)
    unschedulable: str | None = None  # set when pre-filter rejected the demand outright

    def message(self) -> str:
        if self.unschedulable:
            return self.unschedulable
        parts = ", ".join(f"{n} {r}" for r, n in sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0])))
        return f"0/{self.total_nodes} nodes are available: {parts}."
