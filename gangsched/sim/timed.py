"""Time mode (`gangsched simulate time`): the Philly job table replayed through the scheduling core, per
queue policy (a shipped or given profile), at one or more load factors.

The default slice is the data README's: jobs submitted 2017-10-01 .. 2017-11-30 in the 11 Helios vcs, each
confined to its vc; `--load F` divides the gaps between submissions by F. Per policy it reports JCT,
queueing delay, makespan and GPU utilisation as a terminal table, `time_<load>.json` / `.csv`, and
`utilisation_<load>.png` (utilisation and pending jobs over time). The replay itself is `sim.replay`.
`--preemption-study` instead draws priorities and compares preemption policies (`sim.preemption`; it ignores
`--policies` and `--queue-scope`: it always queues per vc, by priority, with backfill).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from gangsched.model import Node
from gangsched.profile import Profile, ProfileError, load_profile
from gangsched.sim import data_dir
from gangsched.sim.cliargs import fraction, positive
from gangsched.sim.philly import GPUS_PER_NODE, TraceError, TraceSlice, build_nodes, load_jobs, load_vcs, select
from gangsched.sim.replay import Outcome, TimeReplay
from gangsched.sim.report import table, write_csv, write_json


def _pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if a.size else float("nan")


def summarize(out: Outcome) -> dict[str, float]:
    """JCT (finish - submit), queueing delay (start - submit), makespan (last finish - first submit), and
    GPU utilisation: busy GPU-seconds over all GPUs x makespan, and over the submission window alone."""
    done = ~np.isnan(out.finish)
    submit = np.array([j.submit for j in out.jobs])[done]
    gpus = np.array([j.gpus for j in out.jobs], dtype=np.float64)[done]
    jct = out.finish[done] - submit
    wait = out.start[done] - submit
    makespan = float(out.finish[done].max() - submit.min()) if done.any() else 0.0
    busy = float((gpus * (out.finish[done] - out.start[done])).sum())
    window = (float(submit.min()), float(submit.max())) if done.any() else (0.0, 0.0)
    return {"jobs": int(done.sum()), "jct_avg": float(jct.mean()) if jct.size else float("nan"),
            "jct_median": _pct(jct, 50), "jct_p99": _pct(jct, 99),
            "wait_avg": float(wait.mean()) if wait.size else float("nan"),
            "wait_median": _pct(wait, 50), "wait_p99": _pct(wait, 99), "makespan": makespan,
            "gpu_util": busy / (out.total_gpus * makespan) if makespan > 0 else float("nan"),
            "gpu_util_window": _busy_integral(out, *window) / (out.total_gpus * (window[1] - window[0]))
            if window[1] > window[0] else float("nan")}


def per_vc(out: Outcome) -> dict[str, dict[str, float]]:
    """Jobs, mean JCT and mean queueing delay per vc: where the queueing happens."""
    vcs = np.array([j.vc for j in out.jobs])
    submit = np.array([j.submit for j in out.jobs])
    result = {}
    for vc in sorted(set(vcs.tolist())):
        sel = (vcs == vc) & ~np.isnan(out.finish)
        result[vc] = {"jobs": int(sel.sum()), "jct_avg": float((out.finish[sel] - submit[sel]).mean()),
                      "wait_avg": float((out.start[sel] - submit[sel]).mean())} if sel.any() else {"jobs": 0}
    return result


def _busy_integral(out: Outcome, a: float, b: float) -> float:
    """GPU-seconds busy between a and b, from the step function."""
    t = np.array([s[0] for s in out.steps] + [b])
    busy = np.array([s[1] for s in out.steps], dtype=np.float64)
    lo, hi = np.clip(t[:-1], a, b), np.clip(t[1:], a, b)
    return float((busy * (hi - lo)).sum())


def sample(out: Outcome, t0: float, every: float, end: float | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hours since t0, GPU utilisation and pending jobs, sampled every `every` seconds through `end` (default:
    the last finish) and one step past it, so a plot shows the drain to zero."""
    times = np.array([s[0] for s in out.steps])
    if end is None:
        end = float(np.nanmax(out.finish)) if not np.isnan(out.finish).all() else t0
    grid = t0 + np.arange(0.0, end - t0 + every, every)
    k = np.searchsorted(times, grid, side="right") - 1
    busy = np.where(k >= 0, np.array([s[1] for s in out.steps])[np.maximum(k, 0)], 0)
    pending = np.where(k >= 0, np.array([s[2] for s in out.steps])[np.maximum(k, 0)], 0)
    return (grid - t0) / 3600.0, busy / out.total_gpus, pending


# ---- command line ---------------------------------------------------------------------------------------------

DEFAULT_POLICIES = ("time-fifo", "time-fifo-backfill", "time-shortest-first", "time-smallest-first")
METRICS = ("jobs", "jct_avg", "jct_median", "jct_p99", "wait_avg", "wait_median", "wait_p99", "makespan",
           "gpu_util", "gpu_util_window")


def _loads(text: str) -> list[float]:
    try:
        loads = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--load {text!r}: expected numbers like 1 or 1,4") from None
    if not loads or any(not math.isfinite(x) or x <= 0 for x in loads):
        raise argparse.ArgumentTypeError(f"--load {text!r}: load factors must be > 0")
    return loads


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2017-10-01") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="trace data directory (default: $GANGSCHED_DATA or ../shared/data)")
    parser.add_argument("--trace", help="job table (default: <data>/philly/philly_jobs.csv)")
    parser.add_argument("--vcs", help="vc layout, columns vc,node num (default: <data>/philly/helios_vc_nodes.csv)")
    parser.add_argument("--load", type=_loads, default=[1.0],
                        help="load factor(s), comma separated: submission gaps are divided by it (default 1)")
    parser.add_argument("--policies", default=",".join(DEFAULT_POLICIES),
                        help="comma list of profile names or YAML paths (default: %(default)s)")
    parser.add_argument("--start", type=_date, default=date(2017, 10, 1), help="first submission day (2017-10-01)")
    parser.add_argument("--end", type=_date, default=date(2017, 11, 30), help="last submission day, inclusive")
    parser.add_argument("--max-jobs", type=positive(int), help="replay the first N jobs of the slice (quick runs)")
    parser.add_argument("--skip-bad-rows", action="store_true",
                        help="leave out malformed trace rows (counted and reported) instead of stopping")
    parser.add_argument("--queue-scope", choices=("vc", "cluster"), default="vc",
                        help="one queue per vc (default), or one for the whole cluster")
    parser.add_argument("--sample-seconds", type=positive(float), default=3600.0,
                        help="step of the utilisation series (default 3600)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output directory (default: results/time, or results/preemption with "
                        "--preemption-study)")
    parser.add_argument("--preemption-study", action="store_true",
                        help="instead of --policies: draw priorities, replay the jobs under no preemption, "
                        "kube-scheduler's per-pod preemption and gangsched's gang preemption (sim.preemption)")
    parser.add_argument("--high-fraction", type=fraction, default=0.2,
                        help="share of jobs made high priority in the study (default %(default)s)")
    parser.add_argument("--priority-seed", type=int, default=0, help="seed of the priority draw (default 0)")
    parser.add_argument("--partial-timeout", type=float, default=3600.0,
                        help="per-pod policy: a partial job gives its pods back after this many seconds "
                        "(default %(default)s; 0: never)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    import matplotlib  # noqa: F401  (the sim extra, for the plots: fail now, not after the replays)
    import tqdm  # noqa: F401
    root = None if args.trace and args.vcs else data_dir(args.data) / "philly"
    trace_path = Path(args.trace) if args.trace else root / "philly_jobs.csv"
    vcs_path = Path(args.vcs) if args.vcs else root / "helios_vc_nodes.csv"
    print(f"trace data: {root.parent if root else 'not used'} (jobs {trace_path}, vcs {vcs_path})", flush=True)
    if args.end < args.start:
        raise TraceError(f"--end {args.end} is before --start {args.start}")
    vcs = load_vcs(vcs_path)
    table_ = load_jobs(trace_path, skip_bad_rows=args.skip_bad_rows)
    if table_.skipped:
        print(f"skipped {len(table_.skipped)} malformed row(s) of {trace_path.name}:", file=sys.stderr)
        for msg in table_.skipped[:5]:
            print(f"  {msg}", file=sys.stderr)
        if len(table_.skipped) > 5:
            print(f"  ... and {len(table_.skipped) - 5} more", file=sys.stderr)
    profiles = [] if args.preemption_study else [load_profile(p.strip()) for p in args.policies.split(",")
                                                 if p.strip()]
    if not args.preemption_study and not profiles:
        raise ProfileError(f"--policies {args.policies!r}: no profile named")
    nodes = build_nodes(vcs)
    out_dir = Path(args.out or ("results/preemption" if args.preemption_study else "results/time"))
    for load in args.load:
        sl = select(table_, vcs, args.start, args.end, load, args.max_jobs)
        print(f"load x{load:g}: {len(sl.jobs)} jobs on {len(nodes)} nodes ({len(nodes) * GPUS_PER_NODE} GPUs), "
              f"{args.start} .. {args.end}; left out: "
              + (", ".join(f"{n} {why}" for why, n in sl.outside.items()) or "none"))
        if sl.rejected:
            print(f"rejected {len(sl.rejected)} job(s) asking for more GPUs than their whole vc has "
                  f"(e.g. row {sl.rejected[0].id}: {sl.rejected[0].gpus} GPUs in vc {sl.rejected[0].vc})")
        if not sl.jobs:
            raise TraceError(f"no job of {trace_path.name} to replay between --start {args.start} and --end "
                             f"{args.end} in the vcs of {vcs_path.name}")
        if args.preemption_study:
            _run_study(load, sl, nodes, args, out_dir)
        else:
            _run_load(load, sl, nodes, profiles, args, out_dir, len(table_.skipped))
    return 0


def _run_study(load: float, sl: TraceSlice, nodes: list[Node], args: argparse.Namespace, out_dir: Path) -> None:
    from gangsched.sim import preemption
    from gangsched.sim.philly import with_priorities

    jobs = with_priorities(sl.jobs, args.high_fraction, args.priority_seed)
    high = sum(j.priority > 0 for j in jobs)
    timeout = args.partial_timeout or None
    results = preemption.run_study(nodes, jobs, partial_timeout=timeout, seed=args.seed)
    tag = f"{load:g}"
    title = (f"Philly {args.start} .. {args.end}, load x{tag}: {len(jobs)} jobs, {high} high priority "
             f"(fraction {args.high_fraction:g}, seed {args.priority_seed}), queue per vc, priority order + backfill")
    text = preemption.study_table(results, title)
    print(text)
    for policy, (out, _) in results.items():
        for msg in out.errors[:5]:
            print(f"{policy}: {msg}", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"preemption_{tag}.txt").write_text(text + "\n")
    meta = {"load": load, "start": str(args.start), "end": str(args.end), "jobs": len(jobs), "high_jobs": high,
            "high_fraction": args.high_fraction, "priority_seed": args.priority_seed,
            "partial_timeout_s": timeout, "max_jobs": args.max_jobs, "nodes": len(nodes),
            "gpus": len(nodes) * GPUS_PER_NODE, "queue": "per vc, priority then submission, greedy backfill",
            "left_out": dict(sl.outside), "rejected_too_big": len(sl.rejected)}
    write_json(out_dir / f"preemption_{tag}.json", {**meta, "policies": {p: r for p, (_, r) in results.items()}})
    preemption.plot_wait_cdf(out_dir / f"preemption_wait_cdf_{tag}.png", results, title.split(":")[0])
    print(f"wrote {out_dir}/preemption_{tag}.txt, .json, preemption_wait_cdf_{tag}.png")


def _run_load(load: float, sl: TraceSlice, nodes: list[Node], profiles: list[Profile], args: argparse.Namespace,
              out_dir: Path, skipped: int) -> None:
    results: dict[str, dict] = {}
    outcomes: dict[str, Outcome] = {}
    for profile in profiles:
        began = time.perf_counter()
        out = outcomes[profile.name] = TimeReplay(nodes, sl.jobs, profile, scope=args.queue_scope, seed=args.seed,
                                                  progress=not args.no_progress).run()
        results[profile.name] = {**summarize(out), "runtime_s": round(time.perf_counter() - began, 2),
                                 "per_vc": per_vc(out)}
        for msg in out.errors:
            print(f"{profile.name}: {msg}", file=sys.stderr)
    # one time grid for every policy, to the last finish of any
    t0, end = sl.jobs[0].submit, max(float(np.nanmax(o.finish)) for o in outcomes.values())
    series: dict[str, Any] = {}
    for name, out in outcomes.items():
        hours, util, pending = sample(out, t0, args.sample_seconds, end)
        series["hours"] = hours.round(3).tolist()
        series[name] = {"gpu_util": util.round(4).tolist(), "pending_jobs": pending.tolist()}
    tag = f"{load:g}"
    print(table(["policy", "jobs", "JCT avg s", "JCT med s", "JCT p99 s", "wait avg s", "wait med s",
                 "wait p99 s", "makespan h", "GPU util %", "util@submit %", "run s"],
                [[name, r["jobs"], *(_whole(r[m]) for m in METRICS[1:7]), r["makespan"] / 3600,
                  100 * r["gpu_util"], 100 * r["gpu_util_window"], r["runtime_s"]] for name, r in results.items()],
                title=f"Philly time mode, load x{tag}, queue per {args.queue_scope}"))
    meta = {"load": load, "start": str(args.start), "end": str(args.end), "jobs": len(sl.jobs),
            "nodes": len(nodes), "gpus": len(nodes) * GPUS_PER_NODE, "queue_scope": args.queue_scope,
            "left_out": dict(sl.outside), "rejected_too_big": len(sl.rejected), "skipped_bad_rows": skipped}
    write_json(out_dir / f"time_{tag}.json", {**meta, "policies": results, "series": series})
    write_csv(out_dir / f"time_{tag}.csv", ["policy", *METRICS, "runtime_s"],
              [[name, *(r[m] for m in METRICS), r["runtime_s"]] for name, r in results.items()])
    _plot(out_dir / f"utilisation_{tag}.png", series, f"Philly, load x{tag}")
    print(f"wrote {out_dir}/time_{tag}.json, .csv, utilisation_{tag}.png")


def _whole(seconds: float) -> int | float:
    return seconds if math.isnan(seconds) else round(seconds)


def _plot(path: Path, series: dict[str, Any], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    hours = series["hours"]
    for name, s in series.items():
        if name != "hours":
            top.plot(hours, [100 * u for u in s["gpu_util"]], label=name, linewidth=0.8)
            bottom.plot(hours, s["pending_jobs"], label=name, linewidth=0.8)
    top.set_ylabel("GPU utilisation %")
    bottom.set_ylabel("pending jobs")
    bottom.set_xlabel("hours since first submission")
    top.set_title(title)
    top.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
