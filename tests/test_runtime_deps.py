"""The scheduler's runtime needs none of the simulator's or the devcluster's dependencies."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = {"tqdm": "sim", "matplotlib": "sim", "cryptography": "devcluster"}

# Runs first in the child: these modules (and their submodules) now fail to import, as if not installed.
BLOCK = f"""
import sys
BLOCKED = {sorted(OPTIONAL)!r}
class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Missing())
for _m in [m for m in sys.modules if m.partition(".")[0] in BLOCKED]:
    del sys.modules[_m]
"""


def run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK + code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_the_blocker_works():
    proc = run_blocked("import tqdm")
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr


def test_scheduler_imports_without_the_optional_dependencies():
    proc = run_blocked(
        "import gangsched.live.run, gangsched.cli\n"
        "loaded = sorted(m for m in sys.modules if m.partition('.')[0] in BLOCKED)\n"
        "assert not loaded, loaded\n")
    assert proc.returncode == 0, proc.stderr


def test_run_help_without_the_optional_dependencies():
    proc = run_blocked("from gangsched.cli import main\nmain(['run', '--help'])\n")
    assert proc.returncode == 0, proc.stderr
    assert "--leader-elect" in proc.stdout


@pytest.mark.parametrize(("argv", "extra"), [
    (["simulate", "packing"], "sim"),
    (["simulate", "time"], "sim"),
    (["devcluster", "up", "--dir", "{tmp}"], "devcluster"),
])
def test_a_command_needing_a_missing_extra_says_which(argv: list[str], extra: str, tmp_path: Path):
    argv = [a.replace("{tmp}", str(tmp_path / "state")) for a in argv]
    proc = run_blocked(f"from gangsched.cli import main\nsys.exit(main({argv!r}))\n")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"gangsched[{extra}]" in lines[0], proc.stderr
    assert not (tmp_path / "state").exists()  # failed before touching anything (or building binaries)


def _names(requirements: list[str]) -> set[str]:
    import re

    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requirements}


def test_pyproject_keeps_them_out_of_the_runtime_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not _names(project["dependencies"]) & set(OPTIONAL)
    extras = project["optional-dependencies"]
    for module, extra in OPTIONAL.items():
        assert module in _names(extras[extra])
    # `pip install -e '.[dev]'` (the README's command) still brings all of them.
    assert any(r.replace(" ", "").startswith("gangsched[") and {"sim", "devcluster"} <= set(
        r.replace(" ", "").partition("[")[2].partition("]")[0].split(",")) for r in extras["dev"])
