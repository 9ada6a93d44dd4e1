"""The simulator's command line as a new user meets it: every mistake is one line naming the option, file, row or
field, with exit code 2 and no traceback; the data folder read is always printed; progress shows in a log.

Runs `gangsched.cli.main` on tiny synthetic traces in tmp_path (and once as a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gangsched.cli import main as cli

NODES = "sn,cpu_milli,memory_mib,gpu,model\n" + "".join(f"n{i},64000,262144,4,V100\n" for i in range(3))
POD_HEADER = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n"
PODS = POD_HEADER + "p0,4000,8192,1,1000,\np1,2000,4096,1,500,\np2,8000,16384,2,1000,V100\np3,1000,1024,0,0,\n"


def make_data(root: Path, pods: dict[str, str] | None = None) -> Path:
    trace = root / "alibaba-gpu-v2023"
    trace.mkdir(parents=True)
    (trace / "openb_node_list_gpu_node.csv").write_text(NODES)
    for name, text in (pods or {"tiny": PODS}).items():
        (trace / f"openb_pod_list_{name}.csv").write_text(text)
    return root


def run(argv: list[str]) -> int:
    """main()'s return code, or argparse's exit code (argparse exits instead of returning)."""
    try:
        return cli(argv)
    except SystemExit as e:
        return int(e.code or 0)


def packing(data: Path, out: Path, *extra: str) -> list[str]:
    return ["simulate", "packing", "--data", str(data), "--out", str(out), "--policies", "paper-bestfit",
            "--seeds", "1", "--jobs", "1", "--workload", "tiny", *extra]


def one_error_line(capsys, *fragments: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err and lines[0].startswith("gangsched")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_a_good_run_prints_the_data_folder_and_progress_lines(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    assert run(packing(data, tmp_path / "out")) == 0
    captured = capsys.readouterr()
    assert f"trace data: {data}" in captured.out
    # stderr is not a terminal here: progress comes as plain lines, at the start and the end
    assert "packing runs: 0/1 runs" in captured.err and "packing runs: 1/1 runs done in" in captured.err
    assert "paper-bestfit" in captured.out
    assert "no " in captured.err and "published columns stay empty" in captured.err  # no fgd-published here
    result = json.loads((tmp_path / "out" / "packing.json").read_text())
    assert result["data"] == str(data) and result["workloads"]["tiny"]["paper-bestfit"]["seeds"] == [1]


def test_missing_data_folder_fails_instead_of_falling_back(tmp_path, capsys):
    assert run(packing(tmp_path / "nowhere", tmp_path / "out")) == 2
    one_error_line(capsys, f"--data {tmp_path / 'nowhere'}: no such directory")


def test_missing_data_folder_from_the_environment_fails(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GANGSCHED_DATA", str(tmp_path / "gone"))
    argv = packing(tmp_path, tmp_path / "out")
    argv = argv[:2] + argv[4:]  # no --data: $GANGSCHED_DATA is used
    assert run(argv) == 2
    one_error_line(capsys, f"$GANGSCHED_DATA {tmp_path / 'gone'}: no such directory")


@pytest.mark.parametrize("value, says", [
    ("-5", "expected seeds >= 0"),
    ("abc", "expected seeds >= 0"),
    ("51-42", "the range 51-42 is empty"),
    ("1,1", "seed(s) [1] given more than once"),
])
def test_bad_seeds(tmp_path, capsys, value, says):
    data = make_data(tmp_path / "data")
    assert run([*packing(data, tmp_path / "out"), "--seeds", value]) == 2
    one_error_line(capsys, "argument --seeds", says)


@pytest.mark.parametrize("option, value, says", [
    ("--tune", "-1", "'-1' must be > 0"),
    ("--tune", "inf", "'inf' must be > 0"),
    ("--tune", "x", "'x' is not a float"),
    ("--jobs", "0", "'0' must be > 0"),
    ("--jobs", "1.5", "'1.5' is not an int"),
    ("--workload", "tiny,", "an empty name in the list"),
])
def test_bad_numbers_and_lists(tmp_path, capsys, option, value, says):
    data = make_data(tmp_path / "data")
    assert run([*packing(data, tmp_path / "out"), option, value]) == 2
    one_error_line(capsys, f"argument {option}", says)


@pytest.mark.parametrize("pods, says", [
    (POD_HEADER, "openb_pod_list_tiny.csv: no pod rows"),
    (POD_HEADER + "p0,inf,8192,1,1000,\n", "openb_pod_list_tiny.csv row 2: field 'cpu_milli'='inf' is not a whole"),
    (POD_HEADER + "p0,1000,8192,1.7,1000,\n", "openb_pod_list_tiny.csv row 2: field 'num_gpu'='1.7' is not a whole"),
    (POD_HEADER + "p0,1000,8192,1,1500,\n", "row 2: field 'gpu_milli'=1500 is out of range (0..1000)"),
    ("name,cpu_milli\np0,1\n", "openb_pod_list_tiny.csv: missing column(s)"),
])
def test_bad_trace_files_name_file_row_and_field(tmp_path, capsys, pods, says):
    data = make_data(tmp_path / "data", {"tiny": pods})
    assert run(packing(data, tmp_path / "out")) == 2
    one_error_line(capsys, says)


def test_header_only_node_list(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    (data / "alibaba-gpu-v2023" / "openb_node_list_gpu_node.csv").write_text(NODES.splitlines()[0] + "\n")
    assert run(packing(data, tmp_path / "out")) == 2
    one_error_line(capsys, "openb_node_list_gpu_node.csv: no GPU node rows")


def test_every_workload_is_checked_before_any_run(tmp_path, capsys):
    data = make_data(tmp_path / "data", {"tiny": PODS, "late": POD_HEADER + "p0,1000,8192,1.7,1000,\n"})
    assert run([*packing(data, tmp_path / "out"), "--workload", "tiny,gpuspec99"]) == 2
    line = one_error_line(capsys, "--workload gpuspec99: no ", "openb_pod_list_gpuspec99.csv",
                          "any openb_pod_list_<name>.csv in", "found: late, tiny")
    assert "packing runs" not in line
    # a bad row in the second workload also stops everything before the first workload runs
    assert run([*packing(data, tmp_path / "out"), "--workload", "tiny,late"]) == 2
    one_error_line(capsys, "openb_pod_list_late.csv row 2: field 'num_gpu'")
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_help_says_any_pod_list_is_a_workload(capsys):
    assert run(["simulate", "packing", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "openb_pod_list_<name>.csv is workload <name>" in text.replace("alibaba- gpu", "alibaba-gpu")
    assert "--skip-bad-rows" in text


def test_packing_skips_bad_rows_when_asked(tmp_path, capsys):
    data = make_data(tmp_path / "data", {"tiny": PODS + "p9,1000,lots,1,1000,\n"})
    assert run(packing(data, tmp_path / "out")) == 2
    one_error_line(capsys, "openb_pod_list_tiny.csv row 6: field 'memory_mib'='lots' is not a number")
    assert run([*packing(data, tmp_path / "out"), "--skip-bad-rows"]) == 0
    captured = capsys.readouterr()
    assert "workload tiny: skipped 1 malformed row(s): openb_pod_list_tiny.csv row 6" in captured.err
    assert json.loads((tmp_path / "out" / "packing.json").read_text())["skipped_bad_rows"] == {"tiny": 1}


def test_unknown_profile_is_found_before_any_run(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    assert run([*packing(data, tmp_path / "out"), "--policies", "paper-bestfit,nope"]) == 2
    one_error_line(capsys, "no profile 'nope'")


# ---- time mode ------------------------------------------------------------------------------------------------

def philly(root: Path, jobs: str = "2017-10-01 00:00:00,60,2,120,a\n2017-10-01 00:00:05,30,8,240,a\n") -> Path:
    (root / "philly").mkdir(parents=True)
    (root / "philly" / "philly_jobs.csv").write_text("timestamp,duration,num_gpus,gpu_time,cluster\n" + jobs)
    (root / "philly" / "helios_vc_nodes.csv").write_text("vc,node num\na,2\n")
    return root


def timed(data: Path, out: Path, *extra: str) -> list[str]:
    return ["simulate", "time", "--data", str(data), "--out", str(out), "--policies", "time-fifo", *extra]


def test_time_mode_prints_data_folder_and_progress_lines(tmp_path, capsys):
    data = philly(tmp_path / "data")
    assert run(timed(data, tmp_path / "out")) == 0
    captured = capsys.readouterr()
    assert f"trace data: {data}" in captured.out
    assert "time-fifo: 0/2 jobs" in captured.err and "time-fifo: 2/2 jobs done in" in captured.err


def test_time_mode_missing_data_folder(tmp_path, capsys):
    assert run(timed(tmp_path / "nowhere", tmp_path / "out")) == 2
    one_error_line(capsys, "--data", "no such directory")


@pytest.mark.parametrize("extra, jobs, says", [
    ((), "", "philly_jobs.csv: no job rows"),
    (("--load", "-1"), None, "argument --load"),
    (("--max-jobs", "0"), None, "argument --max-jobs: '0' must be > 0"),
    (("--start", "2017-12-01", "--end", "2017-11-01"), None, "--end 2017-11-01 is before --start 2017-12-01"),
    (("--start", "2018-01-01", "--end", "2018-02-01"), None, "no job of philly_jobs.csv to replay between --start"),
    ((), "2017-10-01 00:00:00,60,1.5,90,a\n", "philly_jobs.csv row 2: field 'num_gpus'='1.5' is not an integer"),
])
def test_time_mode_mistakes(tmp_path, capsys, extra, jobs, says):
    data = philly(tmp_path / "data", *(() if jobs is None else (jobs,)))
    assert run([*timed(data, tmp_path / "out"), *extra]) == 2
    one_error_line(capsys, says)


def test_subprocess_shows_no_traceback(tmp_path):
    """The installed entry point, as a user runs it: exit code 2 and one line on stderr."""
    data = make_data(tmp_path / "data", {"tiny": POD_HEADER + "p0,inf,8192,1,1000,\n"})
    proc = subprocess.run([sys.executable, "-m", "gangsched.cli", *packing(data, tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "gangsched: error: openb_pod_list_tiny.csv row 2: field 'cpu_milli'='inf' is not a whole number"]
    assert proc.stdout.strip() == f"trace data: {data}"
