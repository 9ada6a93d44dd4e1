"""Time mode: tiny Philly-format traces in tmp_path, replayed through the real core with the shipped profiles.

Times below are seconds after 2017-10-01 00:00 (the first day of the default slice)."""

from __future__ import annotations

import argparse
import json
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from gangsched.profile import load_profile
from gangsched.sim import timed
from gangsched.sim.philly import TraceError, build_nodes, load_jobs, load_vcs, pod_demands, select
from gangsched.sim.replay import SimClock, TimeReplay
from gangsched.sim.timed import summarize

T0 = datetime(2017, 10, 1)
EPOCH = (T0 - datetime(1970, 1, 1)).total_seconds()
HEADER = "timestamp,duration,num_gpus,gpu_time,cluster\n"


def row(t: float, duration: float, gpus: int, vc: str = "a") -> str:
    return f"{T0 + timedelta(seconds=t):%Y-%m-%d %H:%M:%S},{duration},{gpus},{duration * gpus},{vc}\n"


def write(tmp_path: Path, rows: list[str], vcs: dict[str, int] | None = None) -> tuple[Path, Path]:
    trace, layout = tmp_path / "philly_jobs.csv", tmp_path / "helios_vc_nodes.csv"
    trace.write_text(HEADER + "".join(rows))
    layout.write_text("vc,node num\n" + "".join(f"{vc},{n}\n" for vc, n in (vcs or {"a": 2}).items()))
    return trace, layout


def replay(tmp_path: Path, rows: list[str], policy: str, vcs: dict[str, int] | None = None, load: float = 1.0,
           **kwargs):
    trace, layout = write(tmp_path, rows, vcs)
    nodes_by_vc = load_vcs(layout)
    sl = select(load_jobs(trace), nodes_by_vc, date(2017, 10, 1), date(2017, 11, 30), load)
    out = TimeReplay(build_nodes(nodes_by_vc), sl.jobs, load_profile(policy), **kwargs).run()
    return sl, out


def rel(values: np.ndarray) -> list[float]:
    return [float(v - EPOCH) for v in values]


# A 12-GPU job fills node 0 and half of node 1; a 16-GPU gang must wait for both nodes; two small jobs fit
# in the 4 GPUs left on node 1.
CONTENDED = [row(0, 100, 12), row(1, 100, 16), row(2, 10, 2), row(3, 5, 1)]


def test_strict_fifo_holds_small_jobs_behind_the_waiting_head(tmp_path):
    _, out = replay(tmp_path, CONTENDED, "time-fifo")
    assert rel(out.start) == [0, 100, 200, 200]
    assert rel(out.finish) == [100, 200, 210, 205]


def test_backfill_starts_small_jobs_in_the_gap(tmp_path):
    _, out = replay(tmp_path, CONTENDED, "time-fifo-backfill")
    assert rel(out.start) == [0, 100, 2, 3]


def test_gang_is_all_or_nothing(tmp_path):
    # one GPU busy until t=50: the 16-GPU gang cannot start on the one free node, and holds nothing meanwhile
    _, out = replay(tmp_path, [row(0, 50, 1), row(1, 10, 16)], "time-fifo")
    assert rel(out.start) == [0, 50]
    assert [(t - EPOCH, busy, pending) for t, busy, pending in out.steps] == [(0, 1, 0), (1, 1, 1), (50, 16, 0),
                                                                               (60, 0, 0)]


def test_completion_frees_gpus_before_an_arrival_at_the_same_time(tmp_path):
    _, out = replay(tmp_path, [row(0, 100, 8), row(100, 30, 8), row(100, 30, 8)], "time-fifo", vcs={"a": 1})
    assert rel(out.start) == [0, 100, 130]
    assert max(busy for _, busy, _ in out.steps) == 8


def test_queue_policies_order_the_backlog(tmp_path):
    # node busy until 100; then an 8-GPU job (submitted first, 100 s) and a 1-GPU job (50 s) compete
    rows = [row(0, 100, 8), row(1, 100, 8), row(2, 50, 1)]
    assert rel(replay(tmp_path, rows, "time-fifo-backfill", vcs={"a": 1})[1].start) == [0, 100, 200]
    assert rel(replay(tmp_path, rows, "time-shortest-first", vcs={"a": 1})[1].start) == [0, 150, 100]
    assert rel(replay(tmp_path, rows, "time-smallest-first", vcs={"a": 1})[1].start) == [0, 150, 100]


def test_starving_gang_goes_first_and_blocks(tmp_path):
    rows = [row(0, 100, 8), row(1, 100, 8), row(2, 50, 1)]
    profile = tmp_path / "starve.yaml"
    profile.write_text("name: starve\nqueueSort: smallest-first\nstarvationSeconds: 50\n"
                       "scores: [{name: most-allocated}]\n")
    for lanes in (True, False):
        _, out = replay(tmp_path, rows, str(profile), vcs={"a": 1}, lanes=lanes)
        assert rel(out.start) == [0, 100, 200]  # both waited > 50 s at t=100: oldest first, the 1-GPU job blocked


def test_vcs_are_separate_queues_and_clusters(tmp_path):
    rows = [row(0, 100, 8, "a"), row(1, 100, 8, "a"), row(2, 10, 8, "b")]
    _, out = replay(tmp_path, rows, "time-fifo", vcs={"a": 1, "b": 1})
    assert rel(out.start) == [0, 100, 2]  # b's job neither waits behind a's queue nor runs on a's node
    _, out = replay(tmp_path, rows, "time-fifo", vcs={"a": 1, "b": 1}, scope="cluster")
    assert rel(out.start) == [0, 100, 100]  # one strict FIFO queue for the whole cluster


def test_load_factor_compresses_submission_times(tmp_path):
    sl, out = replay(tmp_path, [row(0, 10, 1), row(100, 10, 1), row(400, 10, 1)], "time-fifo", load=4)
    assert rel(np.array([j.submit for j in sl.jobs])) == [0, 25, 100]
    assert rel(out.start) == [0, 25, 100]
    assert [j.duration for j in sl.jobs] == [10, 10, 10]


def test_metrics(tmp_path):
    _, out = replay(tmp_path, CONTENDED, "time-fifo")
    m = summarize(out)
    assert m["jobs"] == 4
    assert m["jct_avg"] == pytest.approx((100 + 199 + 208 + 202) / 4)
    assert m["wait_avg"] == pytest.approx((0 + 99 + 198 + 197) / 4)
    assert m["wait_median"] == pytest.approx(148)
    assert m["makespan"] == 210
    assert m["gpu_util"] == pytest.approx((12 * 100 + 16 * 100 + 2 * 10 + 1 * 5) / (16 * 210))
    # submission window 0..3: 12 GPUs busy throughout
    assert m["gpu_util_window"] == pytest.approx(12 / 16)
    hours, util, pending = timed.sample(out, EPOCH, 50)
    assert hours.tolist() == pytest.approx([0, 50 / 3600, 100 / 3600, 150 / 3600, 200 / 3600, 250 / 3600])
    assert util.tolist() == pytest.approx([12 / 16, 12 / 16, 1, 1, 3 / 16, 0])
    assert pending.tolist() == [0, 3, 2, 2, 0, 0]


def test_injected_clock_ends_at_the_last_event(tmp_path):
    clock = SimClock(EPOCH)
    replay(tmp_path, CONTENDED, "time-fifo", clock=clock)
    assert clock.now() - EPOCH == 210
    with pytest.raises(RuntimeError, match="cannot go back"):
        clock.advance(EPOCH)


def test_gang_shapes():
    assert [d.gpu_count for d in pod_demands("a", 20)] == [8, 8, 4]
    assert [d.gpu_count for d in pod_demands("a", 16)] == [8, 8]
    assert pod_demands("a", 3)[0].node_selector == (("gangsched.io/vc", "a"),)


@pytest.mark.parametrize(("cell", "message"), [
    ("abc", "philly_jobs.csv row 3: field 'num_gpus'='abc' is not an integer"),
    ("0", "philly_jobs.csv row 3: field 'num_gpus'=0 must be >= 1"),
    ("", "philly_jobs.csv row 3: field 'num_gpus' is empty"),
])
def test_malformed_row_names_row_and_field(tmp_path, cell, message):
    trace, _ = write(tmp_path, [row(0, 10, 1), row(5, 10, 1).replace(",1,", f",{cell},", 1)])
    with pytest.raises(TraceError) as err:
        load_jobs(trace)
    assert str(err.value) == message


def test_malformed_timestamp_and_duration(tmp_path):
    trace, _ = write(tmp_path, ["2017-13-01 00:00:00,10,1,10,a\n"])
    with pytest.raises(TraceError, match=r"row 2: field 'timestamp'='2017-13-01 00:00:00' is not a date-time"):
        load_jobs(trace)
    trace, _ = write(tmp_path, [row(0, 10, 1), "2017-10-01 00:00:00,-5,1,10,a\n"])
    with pytest.raises(TraceError, match=r"row 3: field 'duration'='-5' must be a finite number >= 0"):
        load_jobs(trace)
    trace.write_text("timestamp,duration,cluster\n")
    with pytest.raises(TraceError, match=r"missing column\(s\) \['num_gpus'\]"):
        load_jobs(trace)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    timed.add_arguments(parser)
    args = parser.parse_args(argv)
    return args.run(args)


def test_cli_stops_on_a_bad_row_unless_told_to_skip(tmp_path, capsys):
    rows = [row(0, 10, 1), row(1, 10, 2).replace(",2,", ",two,"), row(2, 10, 1), "garbage\n", row(3, 10, 24)]
    trace, layout = write(tmp_path, rows)
    argv = ["--trace", str(trace), "--vcs", str(layout), "--out", str(tmp_path / "out"), "--load", "1,2",
            "--policies", "time-fifo,time-shortest-first", "--no-progress"]
    with pytest.raises(TraceError, match=r"row 3: field 'num_gpus'='two' is not an integer"):
        run_cli(argv)
    assert run_cli([*argv, "--skip-bad-rows"]) == 0
    captured = capsys.readouterr()
    assert "skipped 2 malformed row(s) of philly_jobs.csv" in captured.err
    assert "row 3: field 'num_gpus'='two'" in captured.err and "row 5: field" in captured.err
    assert "rejected 1 job(s) asking for more GPUs than their whole vc has (e.g. row 6: 24 GPUs in vc a)" \
        in captured.out
    assert "time-shortest-first" in captured.out
    result = json.loads((tmp_path / "out" / "time_2.json").read_text())
    assert result["skipped_bad_rows"] == 2 and result["rejected_too_big"] == 1 and result["jobs"] == 2
    assert result["policies"]["time-fifo"]["jobs"] == 2
    assert result["policies"]["time-fifo"]["makespan"] == 11  # submitted at 0 and 1 (2 s apart at load x2)
    assert result["series"]["hours"] == [0.0, 1.0]  # hourly from the first submission, one sample past the end
    assert result["series"]["time-fifo"] == {"gpu_util": [0.0625, 0.0], "pending_jobs": [0, 0]}
    for name in ("time_1.json", "time_1.csv", "utilisation_1.png", "time_2.csv", "utilisation_2.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert (tmp_path / "out" / "time_1.csv").read_text().splitlines()[0].startswith("policy,jobs,jct_avg,")


def test_cli_rejects_bad_load():
    with pytest.raises(SystemExit):
        run_cli(["--load", "0"])


@pytest.mark.parametrize("seed", range(6))
def test_lane_passes_match_pop_order_passes(tmp_path, seed):
    """The indexed pass gives exactly the schedule of iterating `GangQueue.pop_order` over every gang."""
    rng = np.random.default_rng(seed)
    rows = [row(int(t), int(d), int(g), str(vc)) for t, d, g, vc in zip(
        np.sort(rng.integers(0, 400, 60)), rng.integers(0, 200, 60), rng.choice([1, 1, 2, 4, 8, 12, 16, 24], 60),
        rng.choice(["a", "b"], 60), strict=True)]
    starve = tmp_path / "starve.yaml"
    starve.write_text("name: starve\nqueueSort: shortest-first\nstarvationSeconds: 120\nbackfill: true\n")
    for policy in ("time-fifo", "time-fifo-backfill", "time-shortest-first", "time-smallest-first", str(starve)):
        for scope in ("vc", "cluster"):
            fast = replay(tmp_path, rows, policy, vcs={"a": 3, "b": 2}, scope=scope, lanes=True)[1]
            ref = replay(tmp_path, rows, policy, vcs={"a": 3, "b": 2}, scope=scope, lanes=False)[1]
            assert np.array_equal(fast.start, ref.start), (policy, scope)
            assert not np.isnan(fast.finish).any()
