"""Smoke test of `benchmarks/core_throughput.py`: a tiny run completes and writes the JSON it documents.
No timing is asserted: absolute numbers depend on the machine."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "core_throughput.py"


def load_script():
    spec = importlib.util.spec_from_file_location("core_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_core_throughput_quick_run_writes_expected_json(tmp_path: Path, capsys) -> None:
    bench = load_script()
    out = tmp_path / "core_throughput.json"
    assert bench.main(["--quick", "--nodes", "200", "--out", str(out)]) == 0
    assert "Scheduling core" in capsys.readouterr().out

    doc = json.loads(out.read_text())
    assert set(doc) == {"meta", "baseline", "results", "targets"}
    assert doc["meta"]["quick"] is True
    assert doc["baseline"]["200"]["numpy_pass_ms"] > 0
    profiles = doc["results"]["200"]
    assert set(profiles) == {"default", "binpack", "spread"}
    for cases in profiles.values():
        assert set(cases) == {"single", "gang8", "gang64"}
        for regimes in cases.values():
            assert set(regimes) == {"identical", "distinct"}
            for s in regimes.values():
                assert {"count", "failed", "decisions_per_s", "p50_ms", "p99_ms", "mean_ms", "cpu_mean_ms",
                        "x_numpy_pass"} <= set(s)
                assert s["count"] > 0 and s["failed"] == 0  # steady state: every timed decision found a node
    assert set(doc["targets"]) == {"single_decisions_per_s", "gang64_latency_ms"}
