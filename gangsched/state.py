"""Cluster state as numpy arrays, with O(1) assign/release and trial-and-rollback.

Layout (N nodes, R scalar resources, G = most GPUs on any node):
  allocatable, used     int64 [N, R]   cpu milli, memory bytes, pods, extended resources
  gpu_free              int32 [N, G]   free thousandths per device; padding devices have 0 free, 0 capacity
  gpu_cap               int32 [N, G]   1000 for a real device, 0 for padding
  dev_model, dev_group  int16 [N, G]   GPU model id (-1 padding) and interconnect group per device
  label_codes[key]      int32 [N]      value id of a node label (-1 where the node lacks it)
  taint_matrix          bool  [N, T]   node carries hard taint t (NoSchedule / NoExecute)

Every change to a node's usage is appended to a touch log, so caches of per-node filter and score results
(see `core.Evaluator`) recompute only the rows that changed since they were built.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from gangsched.model import (
    BASE_RESOURCES,
    GPU,
    MILLI_PER_GPU,
    PODS,
    Demand,
    ModelError,
    Node,
    Taint,
    TaintEffect,
)

_TOUCH_LOG_LIMIT = 1 << 16


def count_per_node(mask: np.ndarray) -> np.ndarray:
    """True values per row of a bool [n, k] mask: `mask.sum(axis=1)`, several times faster for a short row."""
    if mask.shape[-1] > np.iinfo(np.uint8).max:
        return mask.sum(axis=-1)
    return np.einsum("...k->...", mask.view(np.uint8))


class CapacityError(RuntimeError):
    """An assignment would over-commit a node or a device; the state refuses it and stays unchanged."""


@dataclass(frozen=True)
class Assignment:
    pod_key: str
    node: int
    node_name: str
    devices: tuple[int, ...]
    gpu_milli: int
    vector: tuple[int, ...]  # scalar requests in `ClusterState.resources` order
    demand: Demand


class ClusterState:
    def __init__(self, nodes: Sequence[Node]):
        self.assignments: dict[str, Assignment] = {}
        self.node_pods: list[set[str]] = []
        self._log: list[tuple[str, Assignment]] = []
        self._depth = 0
        self._touched: list[int] = []
        self._touched_base = 0
        self.epoch = 0  # bumped whenever the node set or node attributes change
        self._vectors: dict[Demand, np.ndarray] = {}
        self._known_vectors: dict[Demand, np.ndarray] = {}
        self._build(list(nodes))

    # ---- construction -------------------------------------------------------------------------------------
    def _build(self, nodes: list[Node]) -> None:
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ModelError(f"node name {dup!r} appears twice")
        self.nodes = nodes
        self.names = names
        self.index = {n: i for i, n in enumerate(names)}
        extended = sorted({r for n in nodes for r in n.allocatable if r not in BASE_RESOURCES and r != GPU})
        self.resources: tuple[str, ...] = BASE_RESOURCES + tuple(extended)
        self.res_index = {r: i for i, r in enumerate(self.resources)}
        n_nodes, n_res = len(nodes), len(self.resources)
        self.max_gpus = max((len(n.gpus) for n in nodes), default=0)
        g = max(self.max_gpus, 1)
        self.allocatable = np.zeros((n_nodes, n_res), dtype=np.int64)
        self.used = np.zeros((n_nodes, n_res), dtype=np.int64)
        self.gpu_cap = np.zeros((n_nodes, g), dtype=np.int32)
        self.dev_model = np.full((n_nodes, g), -1, dtype=np.int16)
        self.dev_group = np.full((n_nodes, g), -1, dtype=np.int16)
        self.models: list[str] = sorted({d.model for n in nodes for d in n.gpus})
        self.model_index = {m: i for i, m in enumerate(self.models)}
        self.unschedulable = np.array([n.unschedulable for n in nodes], dtype=bool)
        for i, node in enumerate(nodes):
            for res, qty in node.allocatable.items():
                if res != GPU:
                    self.allocatable[i, self.res_index[res]] = qty
            if PODS not in node.allocatable:
                self.allocatable[i, self.res_index[PODS]] = 110  # kubelet's default maxPods
            for d, dev in enumerate(node.gpus):
                self.gpu_cap[i, d] = MILLI_PER_GPU if dev.healthy else 0  # unhealthy: like padding
                self.dev_model[i, d] = self.model_index[dev.model]
                self.dev_group[i, d] = dev.group
        self.gpu_free = self.gpu_cap.copy()
        self.gpu_tags = np.zeros((n_nodes, 9), dtype=np.int32)  # GPU pods per node by `Demand.gpu_tag`
        self.gpu_count = (self.gpu_cap > 0).sum(axis=1).astype(np.int32)
        self._build_labels(nodes)
        self._build_taints(nodes)
        self.node_pods = [set() for _ in nodes]
        self._vectors.clear()
        self._known_vectors.clear()
        self.epoch += 1

    def _build_labels(self, nodes: list[Node]) -> None:
        self.label_vocab: dict[str, dict[str, int]] = {}
        self.label_codes: dict[str, np.ndarray] = {}
        for i, node in enumerate(nodes):
            for key, value in node.labels.items():
                codes = self.label_codes.get(key)
                if codes is None:
                    codes = self.label_codes[key] = np.full(len(nodes), -1, dtype=np.int32)
                    self.label_vocab[key] = {}
                vocab = self.label_vocab[key]
                codes[i] = vocab.setdefault(value, len(vocab))

    def _build_taints(self, nodes: list[Node]) -> None:
        hard = (TaintEffect.NO_SCHEDULE, TaintEffect.NO_EXECUTE)
        self.taints: list[Taint] = sorted({t for n in nodes for t in n.taints if t.effect in hard},
                                          key=lambda t: (t.key, t.value, t.effect.value))
        taint_index = {t: j for j, t in enumerate(self.taints)}
        self.taint_matrix = np.zeros((len(nodes), len(self.taints)), dtype=bool)
        for i, node in enumerate(nodes):
            for t in node.taints:
                if t in taint_index:
                    self.taint_matrix[i, taint_index[t]] = True

    def set_nodes(self, nodes: Sequence[Node]) -> list[Assignment]:
        """Replace the node set (a node added, changed or removed). Assignments on surviving nodes are kept,
        even where the node shrank below them (they still hold it: it is over-committed, and offers nothing
        more); those on removed nodes, or on GPUs the node no longer has, are dropped and returned."""
        old = list(self.assignments.values())
        self.assignments.clear()
        self._build(list(nodes))
        lost = []
        for a in old:
            node = self.index.get(a.node_name)
            if node is None:
                lost.append(a)
                continue
            try:
                self._apply(a.pod_key, a.demand, node, a.devices, force=True)
            except CapacityError:  # its GPUs are gone from the node
                lost.append(a)
        self._touched.clear()
        self._touched_base = 0
        return lost

    @property
    def n_nodes(self) -> int:
        return len(self.names)

    # ---- demands -----------------------------------------------------------------------------------------
    def vector(self, demand: Demand) -> np.ndarray:
        """The demand's scalar requests as an int64 [R] vector. Unknown resources raise ModelError."""
        vec = self._vectors.get(demand)
        if vec is None:
            vec = np.zeros(len(self.resources), dtype=np.int64)
            for res, qty in demand.requests:
                j = self.res_index.get(res)
                if j is None:
                    if qty == 0:
                        continue
                    raise ModelError(f"unknown resource {res!r}: no node offers it")
                vec[j] += qty
            vec.setflags(write=False)
            self._vectors[demand] = vec
        return vec

    def _known_vector(self, demand: Demand) -> np.ndarray:
        """`vector` without the resources no node offers."""
        vec = self._known_vectors.get(demand)
        if vec is None:
            vec = np.zeros(len(self.resources), dtype=np.int64)
            for res, qty in demand.requests:
                j = self.res_index.get(res)
                if j is not None:
                    vec[j] += qty
            vec.setflags(write=False)
            self._known_vectors[demand] = vec
        return vec

    def overcommitted(self, node: int) -> bool:
        """The node's usage exceeds what it offers (pods bound by others, or a node that shrank)."""
        return bool((self.used[node] > self.allocatable[node]).any() or (self.gpu_free[node] < 0).any())

    # ---- assign / release ----------------------------------------------------------------------------------
    def assign(self, pod_key: str, demand: Demand, node: int, devices: Sequence[int] = (), *,
               force: bool = False) -> Assignment:
        """Reserve the demand on the node. `force` records a pod that already holds the node whatever it
        asks for (bound by someone else, or a node that shrank): nothing is checked but the devices' indices,
        usage may exceed allocatable (the node then offers nothing more), and resources no node offers are
        left out (nobody can ask for them here)."""
        if pod_key in self.assignments:
            raise CapacityError(f"pod {pod_key} is already assigned to {self.names[self.assignments[pod_key].node]}")
        a = self._apply(pod_key, demand, node, tuple(devices), force)
        if self._depth:
            self._log.append(("assign", a))
        return a

    def release(self, pod_key: str) -> Assignment:
        a = self.assignments[pod_key]
        self._unapply(a)
        if self._depth:
            self._log.append(("release", a))
        return a

    def _apply(self, pod_key: str, demand: Demand, node: int, devices: tuple[int, ...],
               force: bool = False) -> Assignment:
        # Plain Python over the few devices and one node's rows: numpy's per-call overhead dominates here, and
        # preemption's searches put back thousands of pods.
        vec = self._known_vector(demand) if force else self.vector(demand)
        n = len(devices)
        if n != demand.gpu_count or (n > 1 and len(set(devices)) != n):
            raise CapacityError(f"pod {pod_key} needs {demand.gpu_count} distinct GPUs, got {devices}")
        used = self.used[node]
        if not force and (used + vec > self.allocatable[node]).any():
            raise CapacityError(f"pod {pod_key} does not fit on node {self.names[node]}")
        milli = demand.gpu_milli if demand.gpu_count else 0
        if devices:
            cap, free = self.gpu_cap[node], self.gpu_free[node]
            for d in devices:
                if d < 0 or d >= len(cap) or cap[d] == 0:
                    raise CapacityError(f"pod {pod_key}: node {self.names[node]} has no GPUs {devices}")
                if not force and free[d] < milli:
                    raise CapacityError(f"pod {pod_key}: GPUs {devices} of node {self.names[node]} lack {milli} milli")
            for d in devices:
                free[d] -= milli
        used += vec
        if demand.gpu_tag >= 0:
            self.gpu_tags[node, demand.gpu_tag] += 1
        a = Assignment(pod_key, node, self.names[node], devices, milli, tuple(vec.tolist()), demand)
        self.assignments[pod_key] = a
        self.node_pods[node].add(pod_key)
        self._touch(node)
        return a

    def _unapply(self, a: Assignment) -> None:
        self.used[a.node] -= a.vector
        if a.devices:
            free = self.gpu_free[a.node]
            for d in a.devices:
                free[d] += a.gpu_milli
        if a.demand.gpu_tag >= 0:
            self.gpu_tags[a.node, a.demand.gpu_tag] -= 1
        del self.assignments[a.pod_key]
        self.node_pods[a.node].discard(a.pod_key)
        self._touch(a.node)

    # ---- trials --------------------------------------------------------------------------------------------
    @contextmanager
    def trial(self) -> Iterator[Trial]:
        """`with state.trial() as t: ...; t.commit()` — everything done inside is undone unless committed.
        Trials nest: an inner commit keeps its changes only as long as the outer trial is not rolled back."""
        t = Trial(self)
        try:
            yield t
        finally:
            if not t.closed:
                t.rollback()

    def _undo_to(self, mark: int) -> None:
        while len(self._log) > mark:
            op, a = self._log.pop()
            if op == "assign":
                self._unapply(a)
            else:  # put back what was there, over-committed or not
                self._apply(a.pod_key, a.demand, a.node, a.devices, force=True)

    # ---- change tracking -----------------------------------------------------------------------------------
    def _touch(self, node: int) -> None:
        self._touched.append(node)
        if len(self._touched) > _TOUCH_LOG_LIMIT:
            half = len(self._touched) // 2
            del self._touched[:half]
            self._touched_base += half

    @property
    def version(self) -> int:
        return self._touched_base + len(self._touched)

    def touched_since(self, version: int) -> np.ndarray | None:
        """Nodes whose usage changed since `version`, or None if the log no longer reaches back that far."""
        if version < self._touched_base:
            return None
        recent = self._touched[version - self._touched_base:]
        if len(recent) <= 64:  # the usual case: a pod or a gang placed since; cheaper than np.unique
            return np.array(sorted(set(recent)), dtype=np.intp)
        return np.unique(np.asarray(recent, dtype=np.intp))

    # ---- derived views ---------------------------------------------------------------------------------------
    @property
    def free(self) -> np.ndarray:
        return self.allocatable - self.used

    def gpu_milli_total(self) -> int:
        return int(self.gpu_cap.sum())

    def gpu_milli_allocated(self) -> int:
        return int((self.gpu_cap - self.gpu_free).sum())

    def pods_on(self, nodes: Iterable[int]) -> list[str]:
        return [k for i in nodes for k in self.node_pods[i]]

    # ---- queries shared by plugins (filters, scores, device pickers) ---------------------------------------------
    def model_ids(self, demand: Demand) -> list[int]:
        """Ids of the GPU models the demand accepts that some node has."""
        return [self.model_index[m] for m in demand.gpu_models if m in self.model_index]

    def model_match(self, demand: Demand, rows: np.ndarray | slice) -> np.ndarray:
        """bool [n, G]: devices of the selected nodes whose model the demand accepts
        (`np.isin(self.dev_model[rows], self.model_ids(demand))`)."""
        models = self.dev_model[rows]
        ids = self.model_ids(demand)
        if len(ids) == 1:
            return models == ids[0]
        return np.isin(models, ids)

    def usable_devices(self, demand: Demand, rows: np.ndarray | slice) -> np.ndarray:
        """bool [n, G]: devices of the selected nodes with room for one device's share of the demand (and of an
        accepted model, when the demand names models)."""
        ok = self.gpu_free[rows] >= demand.gpu_milli
        if demand.gpu_models:
            ok &= self.model_match(demand, rows)
        return ok


class Trial:
    """A savepoint in the state's operation log: rollback undoes every assign/release done since."""

    def __init__(self, state: ClusterState):
        self.state = state
        self.mark = len(state._log)
        self.closed = False
        state._depth += 1

    def commit(self) -> None:
        self._close()

    def rollback(self) -> None:
        self.state._undo_to(self.mark)
        self._close()

    def _close(self) -> None:
        if self.closed:
            raise RuntimeError("trial already closed")
        self.closed = True
        self.state._depth -= 1
        if self.state._depth == 0:
            self.state._log.clear()


