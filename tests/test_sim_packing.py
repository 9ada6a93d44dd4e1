"""Packing mode: FGD's protocol pieces, bad trace input, and a real-trace check against published numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gangsched.cli import main as cli
from gangsched.model import MILLI_PER_GPU, Pod, demand
from gangsched.sim import data_dir
from gangsched.sim.alibaba import TraceError, load_nodes, load_pods
from gangsched.sim.packing import discretise, run_one, tuned_stream

try:
    DATA: Path | None = data_dir()
except FileNotFoundError:  # pragma: no cover - CI always has ../shared beside the checkout
    DATA = None
needs_data = pytest.mark.skipif(DATA is None, reason="../shared/data is not beside the checkout")


def _pods(gpu_millis: list[int]) -> list[Pod]:
    return [Pod(f"p{i}", demand(1000, 1 << 30, gpus=1 if m else 0, gpu_milli=m or MILLI_PER_GPU))
            for i, m in enumerate(gpu_millis)]


def test_tuned_stream_appends_draws_until_target_and_is_seeded():
    pods = _pods([1000, 500, 0, 250])  # 1750 milli
    stream = tuned_stream(pods, seed=3, tune=2.0, capacity_milli=2000)  # target 4000
    total = sum(p.demand.gpu_total_milli for p in stream)
    assert 4000 - 1000 < total <= 4000
    assert sorted(p.name for p in stream[:4]) == ["p0", "p1", "p2", "p3"]  # the originals come first, shuffled
    assert all("-tuned-" in p.name for p in stream[4:])
    assert [p.name for p in tuned_stream(pods, 3, 2.0, 2000)] == [p.name for p in stream]
    assert [p.name for p in tuned_stream(pods, 4, 2.0, 2000)] != [p.name for p in stream]


def test_tuned_stream_trims_when_trace_exceeds_target():
    stream = tuned_stream(_pods([1000] * 10), seed=1, tune=0.5, capacity_milli=10_000)
    assert sum(p.demand.gpu_total_milli for p in stream) == 5000


def test_discretise_averages_rows_per_rounded_percent():
    # 2 GPUs (2000 milli). Arrivals 10, 10, 30 (%) -> rows 0 and 1 average at 10 %, row 2 at 30 %.
    records = np.array([[200.0, 200.0, 100.0], [200.0, 0.0, 100.0], [600.0, 600.0, 0.0]])
    c = discretise(records, n_gpus=2)
    assert c.allocation[10] == pytest.approx(5.0)  # mean(10 %, 0 %)
    assert c.allocation[30] == pytest.approx(30.0)
    assert c.allocation[29] == pytest.approx(30.0)  # empty step: rows within +-1 %
    assert np.isnan(c.allocation[20])
    assert c.frag_amount[10] == pytest.approx(5.0)  # 100 milli of 2000
    assert c.frag_ratio[10] == pytest.approx((100 * 100 / 1800 + 100 * 100 / 2000) / 2)


def _csv(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_malformed_pod_row_names_row_and_field(tmp_path):
    path = _csv(tmp_path, "pods.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n"
                                       "a,1000,1024,1,1000\nb,1000,lots,1,1000\n")
    with pytest.raises(TraceError, match=r"pods.csv row 3: field 'memory_mib'='lots' is not a number"):
        load_pods(path)
    loaded = load_pods(path, skip_bad_rows=True)
    assert [p.name for p in loaded.items] == ["a"] and len(loaded.skipped) == 1


@pytest.mark.parametrize("row, message", [
    ("c,1000,1024,2,500", r"row 2: field 'gpu_milli'=500 with num_gpu=2"),
    ("c,1000,1024,1,1500", r"row 2: field 'gpu_milli'=1500 is out of range"),
    ("c,1000,1024,1,0", r"row 2: field 'gpu_milli' is 0 but num_gpu=1"),
    ("c,-5,1024,0,0", r"row 2: field 'cpu_milli'=-5 is out of range"),
])
def test_bad_pod_values_are_named(tmp_path, row, message):
    path = _csv(tmp_path, "pods.csv", f"name,cpu_milli,memory_mib,num_gpu,gpu_milli\n{row}\n")
    with pytest.raises(TraceError, match=message):
        load_pods(path)


def test_unknown_gpu_model_is_an_error(tmp_path):
    path = _csv(tmp_path, "pods.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\nc,1,1,1,1000,H100|V100\n")
    with pytest.raises(TraceError, match=r"field 'gpu_spec' names unknown GPU model\(s\) \['H100'\]"):
        load_pods(path, known_models={"V100"})


def test_missing_column_and_bad_node_row(tmp_path):
    with pytest.raises(TraceError, match=r"missing column\(s\) \['gpu_milli'\]"):
        load_pods(_csv(tmp_path, "p.csv", "name,cpu_milli,memory_mib,num_gpu\nc,1,1,1\n"))
    nodes = _csv(tmp_path, "n.csv", "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,1024,8,\n")
    with pytest.raises(TraceError, match=r"n.csv row 2: field 'model' is empty but the node has 8 GPUs"):
        load_nodes(nodes)


@needs_data
@pytest.mark.parametrize("policy, published", [("paper-bestfit", 7.09), ("paper-fgd", 4.77)])
def test_reimplemented_baselines_match_published_figures(policy, published):
    """One seed of FGD's protocol on the default trace lands near the published 10-seed median."""
    curves = run_one(str(DATA), "default", policy, seed=42, tune=1.3)
    assert curves.unallocated[100] == pytest.approx(published, abs=1.0)
    assert curves.unallocated[90] == pytest.approx(10.0, abs=0.1)  # at 90 % arrived nothing has failed yet


@needs_data
def test_cli_prints_ours_beside_published(tmp_path, capsys):
    assert cli(["simulate", "packing", "--policies", "paper-bestfit", "--seeds", "42", "--jobs", "1",
                "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "published@100%" in out and "paper-bestfit" in out and "7.09" in out
    assert (tmp_path / "packing.json").exists() and (tmp_path / "packing_default.png").stat().st_size > 1000


def test_cli_names_a_bad_profile(tmp_path, capsys):
    assert cli(["simulate", "packing", "--policies", "no-such-profile", "--out", str(tmp_path)]) == 2
    assert "no profile 'no-such-profile'" in capsys.readouterr().err
