"""The alerting and recording rules in deploy/prometheus pass `promtool check rules` and their own unit tests
(`promtool test rules`); promtool is built from deploy/prombin (cached; the first run builds it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from gangsched.devcluster.binaries import ensure_prometheus

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess:
    tool = ensure_prometheus(progress=print).promtool
    return subprocess.run([str(tool), *args], cwd=RULES, capture_output=True, text=True, timeout=120)


def test_rules_are_valid():
    proc = promtool("check", "rules", "gangsched-rules.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 10 rules found" in proc.stdout + proc.stderr


def test_rule_unit_tests_pass():
    proc = promtool("test", "rules", "gangsched-rules.test.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_a_broken_expectation_fails(tmp_path):
    """The rule tests can fail: the same file with one expected value changed does."""
    text = (RULES / "gangsched-rules.test.yaml").read_text().replace("value: 0.375", "value: 0.5")
    (tmp_path / "gangsched-rules.yaml").write_text((RULES / "gangsched-rules.yaml").read_text())
    (tmp_path / "broken.test.yaml").write_text(text)
    tool = ensure_prometheus(progress=print).promtool
    proc = subprocess.run([str(tool), "test", "rules", "broken.test.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "gangsched:gpu_allocation:ratio" in proc.stdout + proc.stderr
