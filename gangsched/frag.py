"""GPU fragmentation against a workload's typical pods (FGD, Weng et al., ATC'23), vectorised.

A node's fragmentation F is the expected idle GPU milli that a pod drawn from the workload's typical mix
could not use there. For a typical pod t (probability p_t), the node's idle milli L counts as fragmented
unless t fits there (model accessible, enough devices with >= t.milli free, enough cpu); when t fits, only
the idle milli on devices too full for t is fragmented. CPU-only typical pods count all idle GPU milli.
This matches `NodeGpuShareFragAmountScore` of hkust-adsl/kubernetes-scheduler-simulator (memory ignored).

Everything is computed for many nodes at once, and for every "what if this pod took device i of node n"
at once, by updating per-device sums instead of recomputing them.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from gangsched.model import CPU, MILLI_PER_GPU, Demand
from gangsched.state import ClusterState


@dataclass(frozen=True)
class TypicalPod:
    cpu_milli: int
    gpu_milli: int  # per device; 0 for a CPU-only pod
    gpu_count: int
    models: frozenset[str]
    share: float


@dataclass
class Workload:
    """The typical pods of a workload, as arrays ready for broadcasting (K typical GPU pods)."""

    typical: list[TypicalPod]

    def __post_init__(self) -> None:
        gpu = [t for t in self.typical if t.gpu_count > 0]
        self.cpu_only_share = float(sum(t.share for t in self.typical if t.gpu_count == 0))
        self.cpu = np.array([t.cpu_milli for t in gpu], dtype=np.int64)
        self.milli = np.array([t.gpu_milli for t in gpu], dtype=np.int32)
        self.count = np.array([t.gpu_count for t in gpu], dtype=np.int32)
        self.share = np.array([t.share for t in gpu], dtype=np.float64)
        # Whether a device fits a typical pod depends only on its milli, and typical pods share few milli
        # values: per-device work is done once per distinct value, then spread to the K pods by `milli_of`.
        self.milli_values, self.milli_of = np.unique(self.milli, return_inverse=True)
        self._gpu = gpu
        # (state, epoch, mask) of the last state asked about; a weak reference, since a new state may reuse a
        # freed one's id
        self._access: tuple[weakref.ref[ClusterState], int, np.ndarray] | None = None
        # (state, epoch, version, F [N]) of the last state asked about, for `current_fragmentation`
        self._current: tuple[weakref.ref[ClusterState], int, int, np.ndarray] | None = None

    @classmethod
    def from_demands(cls, demands: Iterable[Demand], popularity: float = 0.95) -> Workload:
        """The most frequent pod shapes covering `popularity` of all pods, shares renormalised to 1.
        Ties in frequency go to the larger shape first, as FGD's `GetTypicalPods` sorts them."""
        counts = Counter(
            (d.request(CPU), d.gpu_milli if d.gpu_count else 0, d.gpu_count, tuple(sorted(d.gpu_models)))
            for d in demands)
        total = sum(counts.values())
        if total == 0:
            return cls([])
        ranked = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
        chosen, covered = [], 0
        for shape, n in ranked:
            chosen.append((shape, n))
            covered += n
            if covered >= popularity * total:
                break
        return cls([TypicalPod(cpu, milli, num, frozenset(models), n / covered)
                    for (cpu, milli, num, models), n in chosen])

    def accessible(self, state: ClusterState) -> np.ndarray:
        """bool [N, K]: node's GPU model is one the typical pod accepts (nodes without GPUs: never)."""
        if self._access is not None:
            ref, epoch, acc = self._access
            if ref() is state and epoch == state.epoch:
                return acc
        node_model = state.dev_model[:, 0]
        acc = np.repeat((node_model >= 0)[:, None], len(self._gpu), axis=1)
        for k, t in enumerate(self._gpu):
            if t.models:
                ids = [state.model_index[m] for m in t.models if m in state.model_index]
                acc[:, k] &= np.isin(node_model, ids)
        self._access = (weakref.ref(state), state.epoch, acc)
        return acc

    def current_fragmentation(self, state: ClusterState, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """`node_fragmentation(state, self, rows)`, from F of every node kept between calls. F does not depend
        on the pod being placed, so full evaluations of different demands share it; like the Evaluator's
        cache, it is brought up to date from the state's touch log (the rows changed since)."""
        cached = self._current
        if cached is not None and cached[0]() is state and cached[1] == state.epoch:
            version, f = cached[2], cached[3]
            if version != state.version:
                dirty = state.touched_since(version)
                if dirty is None or len(dirty) * 4 > state.n_nodes:
                    f = node_fragmentation(state, self)
                elif dirty.size:
                    f[dirty] = node_fragmentation(state, self, dirty)
        else:
            f = node_fragmentation(state, self)
        self._current = (weakref.ref(state), state.epoch, state.version, f)
        return f[rows].copy() if isinstance(rows, slice) else f[rows]


def node_fragmentation(state: ClusterState, workload: Workload, rows: np.ndarray | slice = slice(None)
                       ) -> np.ndarray:
    """F [n] in GPU milli for the selected nodes in their current state."""
    left = state.gpu_free[rows].astype(np.int64)  # [n, G]
    return _frag(left, cpu_free(state, rows), workload, workload.accessible(state)[rows])


def cpu_free(state: ClusterState, rows: np.ndarray | slice) -> np.ndarray:
    """`state.free[rows, cpu]` without computing the free matrix of every node."""
    j = state.res_index[CPU]
    return state.allocatable[rows, j] - state.used[rows, j]


def _frag(left: np.ndarray, cpu_left: np.ndarray, wl: Workload, acc: np.ndarray) -> np.ndarray:
    """left [..., G] (integer milli), cpu_left [...], acc [..., K] -> F [...].

    All of it is integer arithmetic up to the final weighted sum, so the formulation only matters for speed:
    sums over devices are einsum reductions (several times faster than `.sum` over a short last axis), and
    masks multiply instead of `np.where`."""
    total = np.einsum("...g->...", left)
    if wl.share.size == 0:
        return wl.cpu_only_share * total
    devices = left[..., None, :]
    fits_dev = devices >= wl.milli_values[:, None]  # [..., M, G] per distinct milli value
    n_fit = np.einsum("...mg->...m", fits_dev.view(np.uint8))  # devices with room, per milli value
    stranded = np.einsum("...mg->...m", devices * ~fits_dev)  # idle milli on devices without room
    hostable = n_fit[..., wl.milli_of] >= wl.count  # [..., K]
    fits = acc & hostable & (cpu_left[..., None] >= wl.cpu)
    everything = total[..., None]
    per_type = _c_order(fits.shape, stranded.dtype)  # stranded milli if the typical pod fits, else all of it
    np.subtract(stranded[..., wl.milli_of], everything, out=per_type)
    per_type *= fits
    per_type += everything
    # einsum, not `per_type @ wl.share`: BLAS rounds a row's dot product differently depending on how many rows
    # share the call and where the row sits, so a node's F depended on which nodes were scored with it (equal
    # nodes could differ in the last bit, and a cached row could differ from a fresh evaluation). einsum's
    # rounding depends on the memory layout instead, hence C order always.
    return np.einsum("...k,k->...", per_type, wl.share) + wl.cpu_only_share * total


def _c_order(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A C-ordered array for the operand of a weighted sum (see `_frag`): numpy may lay out the result of an
    expression otherwise, and einsum's rounding depends on the layout."""
    return np.empty(shape, dtype=dtype, order="C")


def _take_whole_gpus(left: np.ndarray, count: int) -> None:
    """In place: free milli [n, G] after a pod took `count` whole GPUs, the lowest-index fully free devices."""
    if count:
        free = left == MILLI_PER_GPU
        rank = free.cumsum(axis=1)  # the k-th free device gets rank k
        left[free & (rank <= count)] = 0


_SHARED_BEFORE_ROWS = 64  # from this many rows on (a full evaluation), F now comes from current_fragmentation


def fragmentation_change(state: ClusterState, workload: Workload, demand: Demand, rows: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """F of each node in `rows` now and after placing `demand` there: `node_fragmentation` and the first value
    of `fragmentation_after`. For many rows F now is `Workload.current_fragmentation`, shared by all demands;
    for a few (a refresh), both are computed in one pass over both states for CPU-only and whole-GPU pods."""
    cpu_left = cpu_free(state, rows)
    acc = workload.accessible(state)[rows]
    shared = len(cpu_left) >= _SHARED_BEFORE_ROWS
    if demand.gpu_count and demand.gpu_milli < MILLI_PER_GPU:
        left = state.gpu_free[rows]
        per_dev = fragmentation_per_device(left, cpu_left - demand.request(CPU), workload, acc, demand.gpu_milli)
        before = workload.current_fragmentation(state, rows) if shared else _frag(left, cpu_left, workload, acc)
        return before, per_dev.min(axis=1)
    if shared:
        after = np.array(state.gpu_free[rows])  # a copy even when `rows` is a slice
        _take_whole_gpus(after, demand.gpu_count)
        return (workload.current_fragmentation(state, rows),
                _frag(after, cpu_left - demand.request(CPU), workload, acc))
    gpu = state.gpu_free[rows]
    lefts = np.empty((2, *gpu.shape), dtype=gpu.dtype)  # [now, after]
    lefts[0] = gpu
    lefts[1] = gpu
    _take_whole_gpus(lefts[1], demand.gpu_count)
    cpus = np.empty((2, len(cpu_left)), dtype=np.int64)
    cpus[0] = cpu_left
    np.subtract(cpu_left, demand.request(CPU), out=cpus[1])
    both = _frag(lefts, cpus, workload, acc)
    return both[0], both[1]


def fragmentation_after(state: ClusterState, workload: Workload, demand: Demand, rows: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """F of each node in `rows` after placing `demand` there, and the device that gives it.

    For a GPU-sharing pod every device with room is a candidate: returns F for the best device (lowest F,
    first index on ties) and that device's index. For whole-GPU and CPU-only pods the devices taken are the
    lowest-index free ones (which ones does not change F); the device index returned is -1.
    """
    left = state.gpu_free[rows].astype(np.int64)
    cpu_after = cpu_free(state, rows) - demand.request(CPU)
    acc = workload.accessible(state)[rows]
    if demand.gpu_count == 0 or demand.gpu_milli == MILLI_PER_GPU:
        _take_whole_gpus(left, demand.gpu_count)
        return _frag(left, cpu_after, workload, acc), np.full(len(left), -1)
    per_dev = fragmentation_per_device(left, cpu_after, workload, acc, demand.gpu_milli)
    best = np.argmin(per_dev, axis=1)
    return per_dev[np.arange(len(left)), best], best


def fragmentation_per_device(left: np.ndarray, cpu_after: np.ndarray, wl: Workload, acc: np.ndarray,
                             milli: int) -> np.ndarray:
    """F [n, G] if a `milli` GPU-sharing pod took device g of each node (inf where it does not fit).

    Per typical pod, the count of devices that fit it and the milli stranded on devices that don't change
    only in device g, so both are updated from the node's totals instead of recomputed over G. Integer
    arithmetic throughout (as in `_frag`); `left` as the state's int32 keeps the [n, K, G] arrays small."""
    total = np.einsum("ng->n", left)  # [n]
    new_total = total - milli
    after = left - milli  # [n, G]: the device's free milli if the pod took it
    if wl.share.size == 0:
        out = np.broadcast_to((wl.cpu_only_share * new_total)[:, None], left.shape).astype(np.float64)
    else:
        m = wl.milli_values[:, None]  # [M, 1]: per distinct milli value, then spread to the K typical pods
        dev_before, dev_after = left[:, None, :], after[:, None, :]  # [n, 1, G]
        fits_dev, fits_after = dev_before >= m, dev_after >= m  # [n, M, G]
        stranded_dev = dev_before * ~fits_dev  # [n, M, G]
        n_fit = np.einsum("nmg->nm", fits_dev.view(np.uint8))
        stranded = np.einsum("nmg->nm", stranded_dev)
        n_fit_g = (n_fit[:, :, None] - fits_dev.view(np.uint8) + fits_after.view(np.uint8))[:, wl.milli_of]
        stranded_g = (stranded[:, :, None] - stranded_dev + dev_after * ~fits_after)[:, wl.milli_of]  # [n, K, G]
        ok = (acc & (cpu_after[:, None] >= wl.cpu))[:, :, None] & (n_fit_g >= wl.count[:, None])
        per_type = _c_order(ok.shape, stranded_g.dtype)  # stranded milli where the pod fits, else all of it
        np.copyto(per_type, new_total[:, None, None])
        np.copyto(per_type, stranded_g, where=ok)
        out = np.einsum("nkg,k->ng", per_type, wl.share) + (wl.cpu_only_share * new_total)[:, None]
    return np.where(left >= milli, out, np.inf)
