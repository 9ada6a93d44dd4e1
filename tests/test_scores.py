"""Score plugins as arithmetic tables, in the style of kube-scheduler's plugin tests: every case spells out the
arithmetic that gives its expected raw (and where it matters, normalised) score."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import context, cpu_node, gpu_node

from gangsched.frag import TypicalPod, Workload, fragmentation_after, node_fragmentation
from gangsched.framework import ALL, minmax
from gangsched.model import CPU, GIB, MEMORY, Demand, demand
from gangsched.scores.allocation import LeastAllocated, MostAllocated
from gangsched.scores.best_fit import BestFit
from gangsched.scores.fgd import Fgd
from gangsched.scores.gang_locality import GangLocality
from gangsched.scores.paper_baselines import DotProd, GpuClustering, GpuPacking, RandomScore
from gangsched.state import ClusterState


def raw(plugin, state: ClusterState, d: Demand, workload: Workload | None = None, gang=None) -> list[float]:
    ctx = context(state, workload)
    ctx.gang_nodes = gang
    return plugin(ctx, d, ALL).tolist()


# ---- least-allocated / most-allocated ------------------------------------------------------------------------------
@pytest.fixture
def alloc_state() -> ClusterState:
    """n0: 10 cores, 10 GiB, 4 GPUs, idle.  n1: same CPU/memory, no GPUs.
    n2: kube-scheduler's own example node, 4000 milli cpu and 10000 bytes, no GPUs."""
    return ClusterState([gpu_node("n0", gpus=4, cpu=10_000, memory=10 * GIB),
                         cpu_node("n1", cpu=10_000, memory=10 * GIB),
                         cpu_node("n2", cpu=4000, memory=10_000)])


@pytest.mark.parametrize(("plugin", "d", "expected"), [
    # pod: 5000 cpu, 1 GiB, 1 GPU.  n0: cpu 5000/10000 = .5, memory 1/10 = .1, GPU 1000/4000 = .25
    #   most = 100 * (.5 + .1 + .25) / 3 = 28.333;  n1 has no GPUs, so GPU is skipped: 100 * (.5 + .1) / 2 = 30
    #   n2: cpu min(5000, 4000)/4000 = 1 (a request beyond capacity is capped), memory min(1 GiB, 10000)/10000 = 1
    (MostAllocated(), demand(cpu_milli=5000, memory=GIB, gpus=1), [85 / 3, 30.0, 100.0]),
    (LeastAllocated(), demand(cpu_milli=5000, memory=GIB, gpus=1), [100 - 85 / 3, 70.0, 0.0]),
    # kube-scheduler's "differently sized nodes" case, 3000 cpu and 5000 bytes of memory:
    #   n2: ((4000 - 3000) / 4000 * 100 + (10000 - 5000) / 10000 * 100) / 2 = (25 + 50) / 2 = 37.5
    #   n0: cpu .3, memory 5000 / 10 GiB, GPU 0 / 4000 -> 100 * (1 - (.3 + 5000 / 10 GiB + 0) / 3)
    #   n1: no GPUs -> 100 * (1 - (.3 + 5000 / 10 GiB) / 2)
    (LeastAllocated(), Demand(requests=((CPU, 3000), (MEMORY, 5000))),
     [100 * (1 - (.3 + 5000 / (10 * GIB)) / 3), 100 * (1 - (.3 + 5000 / (10 * GIB)) / 2), 37.5]),
    # weights {cpu: 3, memory: 1}: n0 = 100 * (3 * .5 + 1 * .1) / 4 = 40 (GPU not weighted)
    (MostAllocated({"cpu": 3, "memory": 1}), demand(cpu_milli=5000, memory=GIB), [40.0, 40.0, 100.0]),
    # a resource no node has is ignored: weights {example.com/nic: 5, cpu: 1} -> cpu alone: 5000/10000 = 50
    (MostAllocated({"example.com/nic": 5, "cpu": 1}), demand(cpu_milli=5000), [50.0, 50.0, 100.0]),
])
def test_allocation_scores(alloc_state: ClusterState, plugin, d: Demand, expected: list[float]) -> None:
    np.testing.assert_allclose(raw(plugin, alloc_state, d), expected, rtol=1e-12)


def test_allocation_counts_current_usage(alloc_state: ClusterState) -> None:
    alloc_state.assign("x", demand(cpu_milli=2500, memory=4 * GIB, gpus=1, gpu_milli=500), 0, (2,))
    # n0 after a 2500 cpu, 1 GiB, 1 GPU pod: cpu (2500 + 2500)/10000 = .5, memory (4 + 1)/10 = .5,
    # GPU (500 + 1000)/4000 = .375 -> most = 100 * 1.375 / 3
    got = raw(MostAllocated(), alloc_state, demand(cpu_milli=2500, memory=GIB, gpus=1))
    assert got[0] == pytest.approx(137.5 / 3)


# ---- best-fit ------------------------------------------------------------------------------------------------------
@pytest.fixture
def fit_state() -> ClusterState:
    s = ClusterState([gpu_node("n0", gpus=8, cpu=96_000),
                      gpu_node("n1", gpus=8, cpu=96_640),
                      gpu_node("n2", gpus=2, cpu=32_000)])
    return s


POD_32C_2G = demand(cpu_milli=32_000, gpus=2)


def test_best_fit_raw_and_normalised(fit_state: ClusterState) -> None:
    # raw = 100 * (1 - (.5 * cpu_left / 128000 + .5 * gpu_left / 8000)), after placing 32 cores and 2 GPUs
    #   n0: cpu_left 64000 -> .25, gpu_left 6000 -> .375: 100 * (1 - .625) = 37.5
    #   n1: cpu_left 64640 -> .2525, gpu_left 6000 -> .375: 100 * (1 - .6275) = 37.25
    #   n2: cpu_left 0, gpu_left 0: 100
    plugin = BestFit()
    got = raw(plugin, fit_state, POD_32C_2G)
    np.testing.assert_allclose(got, [37.5, 37.25, 100.0])
    # min-max: (x - 37.25) * 100 / 62.75 -> n0 = 25 / 62.75 = 0.398...
    np.testing.assert_allclose(plugin.normalize(np.array(got)), [25 / 62.75, 0.0, 100.0])


def test_best_fit_quantize(fit_state: ClusterState) -> None:
    # quantize truncates the raw scores: 37.5 -> 37, 37.25 -> 37, 100 -> 100 (n0 and n1 now tie) ...
    plugin = BestFit(quantize=True)
    got = np.array(raw(plugin, fit_state, POD_32C_2G))
    assert got.tolist() == [37.0, 37.0, 100.0]
    # ... and normalises with integer floors: floor((x - 37) * 100 / 63)
    assert plugin.normalize(got).tolist() == [0.0, 0.0, 100.0]
    assert plugin.normalize(np.array([37.0, 50.0, 100.0])).tolist() == [0.0, 20.0, 100.0]  # 1300 / 63 = 20.6
    assert plugin.normalize(np.array([42.0, 42.0])).tolist() == [0.0, 0.0]  # all equal -> 0


# ---- fgd -----------------------------------------------------------------------------------------------------------
# Typical pods: half want 500 milli of one GPU, half want one whole GPU; neither needs CPU.
TINY = Workload([TypicalPod(0, 500, 1, frozenset(), 0.5), TypicalPod(0, 1000, 1, frozenset(), 0.5)])


@pytest.fixture
def frag_state() -> ClusterState:
    """n0: 2 GPUs with [1000, 300] free.  n1: 2 idle GPUs.  n2: 1 GPU with 200 free."""
    s = ClusterState([gpu_node("n0", gpus=2), gpu_node("n1", gpus=2), gpu_node("n2", gpus=1)])
    s.assign("x", demand(gpus=1, gpu_milli=700), 0, (1,))
    s.assign("y", demand(gpus=1, gpu_milli=800), 2, (0,))
    return s


def test_node_fragmentation_by_hand(frag_state: ClusterState) -> None:
    # F = sum over typical pods of share * (milli it cannot use):
    #   n0 [1000, 300]: the 500-pod fits device 0, strands 300;  the whole-GPU pod fits device 0, strands 300
    #                   F = .5 * 300 + .5 * 300 = 300
    #   n1 [1000, 1000]: both fit, nothing stranded: F = 0
    #   n2 [200]: neither fits: all 200 idle milli count for both: F = 200
    assert node_fragmentation(frag_state, TINY).tolist() == [300.0, 0.0, 200.0]


def test_fgd_gain_by_hand(frag_state: ClusterState) -> None:
    share = demand(gpus=1, gpu_milli=300)
    # a 300-milli pod on n0:  device 1 -> [1000, 0]: nothing stranded, F = 0, gain 300 - 0 = 300
    #                         device 0 -> [700, 300]: 500-pod strands 300, whole pod fits nowhere (1000 idle):
    #                                     F = .5 * 300 + .5 * 1000 = 650, gain -350; so device 1 is chosen
    #                 on n1:  device 0 -> [700, 1000]: 500-pod strands 0, whole pod strands 700: F = 350, gain -350
    #                 on n2:  the pod does not fit (200 < 300): F = inf, gain -inf (the filter never lets it here)
    after, device = fragmentation_after(frag_state, TINY, share, np.arange(2))
    assert after.tolist() == [0.0, 350.0] and device.tolist() == [1, 0]
    assert raw(Fgd(), frag_state, share, TINY)[:2] == [300.0, -350.0]
    assert Fgd().normalize(np.array([300.0, -350.0])).tolist() == [100.0, 0.0]
    # quantize: trunc(100 * sigmoid(gain / 1000)): 100 / (1 + e^-0.3) = 57.44 -> 57;  100 / (1 + e^0.35) = 41.3 -> 41
    assert raw(Fgd(quantize=True), frag_state, share, TINY)[:2] == [57.0, 41.0]
    # a whole GPU: n0 -> [0, 300]: neither fits, F = 300, gain 0;  n1 -> [0, 1000]: both fit, F = 0, gain 0
    assert raw(Fgd(), frag_state, demand(gpus=1), TINY)[:2] == [0.0, 0.0]
    assert raw(Fgd(quantize=True), frag_state, demand(gpus=1), TINY)[:2] == [50.0, 50.0]  # sigmoid(0) = .5


def test_fgd_cpu_only_pod_avoids_stranding_gpus() -> None:
    # typical pod: one whole GPU with 8 cores.  A 4-core CPU-only pod on
    #   n0 (10 cores, 1 GPU): 6 cores left < 8, the GPU becomes unusable: F 0 -> 1000, gain -1000
    #   n1 (20 cores, 1 GPU): 16 cores left, the typical pod still fits: gain 0
    #   n2 (20 cores, no GPU): no idle GPU milli at all: gain 0
    wl = Workload([TypicalPod(8000, 1000, 1, frozenset(), 1.0)])
    s = ClusterState([gpu_node("n0", gpus=1, cpu=10_000), gpu_node("n1", gpus=1, cpu=20_000),
                      cpu_node("n2", cpu=20_000)])
    assert raw(Fgd(), s, demand(cpu_milli=4000), wl) == [-1000.0, 0.0, 0.0]
    assert raw(Fgd(), s, demand(), wl) == [100.0, 100.0, 100.0]  # a pod asking for nothing: no opinion


def test_fgd_typical_pods_of_a_model_count_other_models_as_fragmented() -> None:
    # typical pod: a whole T4.  A100 idle milli can never serve it: F(A100 node, 2 idle) = 2000, F(T4 node) = 0
    wl = Workload([TypicalPod(0, 1000, 1, frozenset({"T4"}), 1.0)])
    s = ClusterState([gpu_node("a100", gpus=2), gpu_node("t4", gpus=2, model="T4")])
    assert node_fragmentation(s, wl).tolist() == [2000.0, 0.0]


def test_fgd_needs_a_workload(frag_state: ClusterState) -> None:
    with pytest.raises(ValueError, match="needs the workload"):
        raw(Fgd(), frag_state, demand(gpus=1))


def test_workload_model_access_is_not_shared_between_states() -> None:
    # one Workload used with a cluster, then (once that state is gone) with another, and so on: CPython often gives
    # a new state a freed one's id, so a cache keyed by id() would answer for the wrong cluster
    wl = Workload([TypicalPod(0, 1000, 1, frozenset({"T4"}), 1.0)])
    clusters = [[gpu_node("a100", gpus=2)], [gpu_node("t4", gpus=2, model="T4"), gpu_node("a100", gpus=2)]]
    expected = [[[False]], [[True], [False]]]
    for k in range(10):
        state = ClusterState(clusters[k % 2])
        assert wl.accessible(state).tolist() == expected[k % 2]
        del state


def test_workload_from_demands() -> None:
    # 6 x (4 cores, 1 GPU), 3 x (1 core, 500 milli), 1 x CPU-only: popularity .9 keeps the two commonest
    # shapes (9 of 10 pods), shares renormalised over them: 6/9 and 3/9
    ds = [demand(cpu_milli=4000, gpus=1)] * 6 + [demand(cpu_milli=1000, gpus=1, gpu_milli=500)] * 3
    wl = Workload.from_demands([*ds, demand(cpu_milli=2000)], popularity=0.9)
    assert [(t.cpu_milli, t.gpu_milli, t.gpu_count) for t in wl.typical] == [(4000, 1000, 1), (1000, 500, 1)]
    assert [t.share for t in wl.typical] == pytest.approx([2 / 3, 1 / 3])
    assert wl.cpu_only_share == 0.0


# ---- gang-locality -------------------------------------------------------------------------------------------------
def test_gang_locality() -> None:
    rack = "topology.kubernetes.io/rack"
    s = ClusterState([cpu_node("m", labels={rack: "r1"}), cpu_node("near", labels={rack: "r1"}),
                      cpu_node("far", labels={rack: "r2"}), cpu_node("unlabelled")])
    gang = np.array([True, False, False, False])
    # 100 where a member already runs, domain_score (50) in the same rack, 0 elsewhere
    assert raw(GangLocality(), s, demand(), gang=gang) == [100.0, 50.0, 0.0, 0.0]
    assert raw(GangLocality(domain_score=30), s, demand(), gang=gang) == [100.0, 30.0, 0.0, 0.0]
    assert raw(GangLocality(topology_key="zone"), s, demand(), gang=gang) == [100.0, 0.0, 0.0, 0.0]
    assert raw(GangLocality(), s, demand(), gang=None) == [0.0] * 4  # no gang being placed
    assert raw(GangLocality(), s, demand(), gang=np.zeros(4, bool)) == [0.0] * 4  # gang has no member yet
    # a member on an unlabelled node gives no rack bonus to other unlabelled nodes
    assert raw(GangLocality(), s, demand(), gang=np.array([False, False, False, True])) == [0.0, 0.0, 0.0, 100.0]


# ---- gpu-packing (FGD paper baseline; integer arithmetic of their getPackingScore) ---------------------------------
@pytest.fixture
def packing_state() -> ClusterState:
    """n0: 4 GPUs with [1000, 300, 600, 1000] free.  n1: 8 idle GPUs.  n2: 4 idle GPUs.  n3: no GPUs."""
    s = ClusterState([gpu_node("n0", gpus=4), gpu_node("n1", gpus=8), gpu_node("n2", gpus=4), cpu_node("n3")])
    s.assign("x", demand(gpus=1, gpu_milli=700), 0, (1,))
    s.assign("y", demand(gpus=1, gpu_milli=400), 0, (2,))
    return s


@pytest.mark.parametrize(("d", "expected"), [
    # n1, n2, n3 are all-free nodes (case 3): max(33 - free GPUs, free GPUs): n1 max(25, 8) = 25, n2 29, n3 33
    # 200 milli on n0 (case 1): fullest device that fits is the 300 one: 100 - (300 * 100 / 1000) / 10 = 97
    (demand(gpus=1, gpu_milli=200), [97.0, 25.0, 29.0, 33.0]),
    # 400 milli: 300 is too small, the 600 device is next: 100 - 60 / 10 = 94
    (demand(gpus=1, gpu_milli=400), [94.0, 25.0, 29.0, 33.0]),
    # 700 milli: only a fully free device fits (case 2): max(50 - 1, 33) = 49
    (demand(gpus=1, gpu_milli=700), [49.0, 25.0, 29.0, 33.0]),
    # two whole GPUs on n0 take its two fully free devices: max(50 - 2, 33) = 48
    (demand(gpus=2), [48.0, 25.0, 29.0, 33.0]),
    # a CPU-only pod: 0 everywhere
    (demand(cpu_milli=1000), [0.0, 0.0, 0.0, 0.0]),
])
def test_gpu_packing(packing_state: ClusterState, d: Demand, expected: list[float]) -> None:
    assert raw(GpuPacking(), packing_state, d) == expected


def test_gpu_packing_case_1_integer_steps() -> None:
    # a shared device with 900 free, pod of 100: 100 - (900 * 100 // 1000) // 10 = 100 - 90 // 10 = 91
    s = ClusterState([gpu_node("n0", gpus=2)])
    s.assign("x", demand(gpus=1, gpu_milli=100), 0, (0,))
    assert raw(GpuPacking(), s, demand(gpus=1, gpu_milli=100)) == [91.0]


# ---- gpu-clustering (FGD paper baseline) ---------------------------------------------------------------------------
def test_gpu_clustering() -> None:
    s = ClusterState([gpu_node("empty8"), gpu_node("one-1gpu"), gpu_node("mixed"), gpu_node("other"),
                      gpu_node("empty4", gpus=4), cpu_node("cpu")])
    s.assign("a", demand(gpus=1), 1, (0,))
    s.assign("b", demand(gpus=1), 2, (0,))
    s.assign("c", demand(gpus=1, gpu_milli=500), 2, (1,))
    s.assign("d", demand(gpus=2), 3, (0, 1))
    # base = 25 * (8000 - free milli) // 8000, bonus by the GPU shapes on the node, for a 1-GPU pod:
    #   empty8: base 0, no GPU pods -> +25 = 25
    #   one-1gpu: 7000 free -> base 25 * 1000 // 8000 = 3, only 1-GPU pods -> +75 = 78
    #   mixed: 6500 free -> 37500 // 8000 = 4, has 1-GPU pods among others -> +50 = 54
    #   other: 6000 free -> 50000 // 8000 = 6, only 2-GPU pods -> +0 = 6
    #   empty4: 4000 free -> 100000 // 8000 = 12, no GPU pods -> +25 = 37
    #   cpu: 0 free -> base 25, no GPU pods -> +25 = 50
    assert raw(GpuClustering(), s, demand(gpus=1)) == [25.0, 78.0, 54.0, 6.0, 37.0, 50.0]
    # a sharing pod (shape 0): mixed has it among others -> 4 + 50 = 54; one-1gpu has others only -> 3 + 0
    assert raw(GpuClustering(), s, demand(gpus=1, gpu_milli=300)) == [25.0, 3.0, 54.0, 6.0, 37.0, 50.0]
    assert raw(GpuClustering(), s, demand(cpu_milli=1000)) == [0.0] * 6  # CPU-only pods: 0


# ---- dotprod (FGD paper baseline) ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("d", "expected"), [
    # dot = cpu_left/128000 * cpu/128000 + gpu_left/8000 * gpu/8000;  score = trunc(100 * (1 - dot / 2))
    # 64 cores + 4 GPUs:  n0 (128 cores, 8 GPUs): 1 * .5 + 1 * .5 = 1 -> 50
    #                     n1 (64 cores, 4 GPUs): .5 * .5 + .5 * .5 = .5 -> 75;  n2 (32 cores): cpu_left < cpu -> 0
    (demand(cpu_milli=64_000, gpus=4), [50.0, 75.0, 0.0]),
    # 16 cores + 1 GPU: n0: 1 * .125 + 1 * .125 = .25 -> 87.5 -> 87;  n1: .5 * .125 + .5 * .125 = .125 -> 93.75 -> 93
    #                   n2: .25 * .125 + 0 (no GPUs) = .03125 -> 98.4375 -> 98
    (demand(cpu_milli=16_000, gpus=1), [87.0, 93.0, 98.0]),
    # 500 milli, no cpu: n0: 1 * .0625 = .0625 -> 96.875 -> 96;  n1: .5 * .0625 -> 98.4375 -> 98;  n2: 100
    (demand(gpus=1, gpu_milli=500), [96.0, 98.0, 100.0]),
])
def test_dotprod(d: Demand, expected: list[float]) -> None:
    s = ClusterState([gpu_node("n0", gpus=8, cpu=128_000), gpu_node("n1", gpus=4, cpu=64_000),
                      cpu_node("n2", cpu=32_000)])
    assert raw(DotProd(), s, d) == expected


def test_paper_baselines_stay_within_0_100_on_nodes_bigger_than_the_papers() -> None:
    # the paper's normalisers are its largest node (128 cores, 8 GPUs); a 192-core, 16-GPU node must not push
    # these Normalized scores below 0
    s = ClusterState([gpu_node("big", gpus=16, cpu=192_000, memory=2048 * GIB), gpu_node("small", gpus=8)])
    for plugin, d in [(DotProd(), demand(cpu_milli=150_000, gpus=12)), (GpuClustering(), demand(gpus=1))]:
        got = np.array(raw(plugin, s, d))
        assert np.all((got >= 0) & (got <= 100)), (plugin.name, got)


# ---- random and minmax ---------------------------------------------------------------------------------------------
def test_random_score_uses_the_cycle_rng() -> None:
    s = ClusterState([cpu_node(f"n{i}") for i in range(5)])
    a = RandomScore()(context(s, seed=7), demand(), ALL)
    b = RandomScore()(context(s, seed=7), demand(), ALL)
    c = RandomScore()(context(s, seed=8), demand(), ALL)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert np.all((a >= 0) & (a < 100))


def test_minmax() -> None:
    # (x - min) * 100 / (max - min)
    assert minmax(np.array([10.0, 20.0, 30.0])).tolist() == [0.0, 50.0, 100.0]
    assert minmax(np.array([-5.0, 15.0])).tolist() == [0.0, 100.0]
    assert minmax(np.array([7.0, 7.0])).tolist() == [0.0, 0.0]
    assert minmax(np.array([])).tolist() == []
