"""Smoke test of `benchmarks/request_cpu.py` against the session's dev cluster: both request paths bind every
pod they made and the JSON holds both. No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from gangsched.devcluster import DevCluster

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "request_cpu.py"


def test_request_cpu_tiny_run(devcluster: DevCluster, tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("request_cpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "request_cpu.json"
    assert bench.main(["--kubeconfig", str(devcluster.kubeconfig), "--requests", "5", "--rounds", "1",
                       "--out", str(out)]) == 0
    assert "CPU vs urllib3" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert set(doc["median"]) == {"KubeClient.request (http.client)", "urllib3 pool manager"}
    assert all(len(t) == 1 and t[0]["cpu_us"] > 0 for t in doc["tries"].values())
