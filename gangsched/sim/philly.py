"""The Philly job table and the Helios virtual-cluster layout, as gangs and nodes for the time mode.

A job of `num_gpus` GPUs in virtual cluster `vc` becomes a gang of ceil(g/8) pods — 8-GPU pods plus one of
the remainder — confined to the vc's nodes by a node selector on `VC_LABEL`. Rows are validated as read: a
malformed one raises `TraceError` naming the file, row (file line, header = row 1) and field; with
`skip_bad_rows` it is left out and its message kept, so the caller can say how many were skipped.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path

from gangsched.model import GPU, Demand, GpuDevice, ModelError, Node, demand

VC_LABEL = "gangsched.io/vc"
RACK_LABEL = "topology.kubernetes.io/rack"
GPUS_PER_NODE = 8
NODES_PER_RACK = 8
JOB_COLUMNS = ("timestamp", "duration", "num_gpus", "cluster")
VC_COLUMNS = ("vc", "node num")
_EPOCH = datetime(1970, 1, 1)


class TraceError(ModelError):
    """A trace row or file that cannot be read as specified; the message names the file, row and field."""


@dataclass(frozen=True)
class Job:
    id: int  # the job's row number in the file
    submit: float  # seconds since 1970 (timestamps taken as UTC); compressed by the load factor
    duration: float
    gpus: int
    vc: str
    priority: int = 0  # the trace has none: `with_priorities` draws them


@dataclass
class JobTable:
    jobs: list[Job]
    skipped: list[str] = field(default_factory=list)  # one message per malformed row left out


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, str, dict[str, str]]]:
    """(row number, "file row N" for messages, row); N is the file line, so blank lines do not shift it."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise TraceError(f"{path.name}: missing column(s) {missing}; expected at least {list(required)}")
        for row in reader:
            yield reader.line_num, f"{path.name} row {reader.line_num}", row


def _field(row: dict[str, str], col: str, where: str) -> str:
    raw = row.get(col)
    if raw is None or not raw.strip():
        raise TraceError(f"{where}: field {col!r} is empty")
    return raw.strip()


def _int(row: dict[str, str], col: str, where: str, lo: int) -> int:
    raw = _field(row, col, where)
    try:
        value = int(raw)
    except ValueError:
        raise TraceError(f"{where}: field {col!r}={raw!r} is not an integer") from None
    if value < lo:
        raise TraceError(f"{where}: field {col!r}={value} must be >= {lo}")
    return value


def _seconds(row: dict[str, str], col: str, where: str) -> float:
    raw = _field(row, col, where)
    try:
        value = float(raw)
    except ValueError:
        raise TraceError(f"{where}: field {col!r}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise TraceError(f"{where}: field {col!r}={raw!r} must be a finite number >= 0")
    return value


def _timestamp(row: dict[str, str], col: str, where: str) -> float:
    raw = _field(row, col, where)
    try:
        return (datetime.fromisoformat(raw) - _EPOCH).total_seconds()
    except (ValueError, TypeError):
        raise TraceError(f"{where}: field {col!r}={raw!r} is not a date-time like 2017-10-09 07:01:55") from None


def load_jobs(path: Path, skip_bad_rows: bool = False) -> JobTable:
    """Every row of philly_jobs.csv, in file order."""
    out = JobTable([])
    for line, where, row in _rows(path, JOB_COLUMNS):
        try:
            if None in row:  # DictReader puts surplus cells under the key None
                raise TraceError(f"{where}: {len(row[None])} more field(s) than the header's {len(row) - 1}")
            job = Job(line, _timestamp(row, "timestamp", where),
                      _seconds(row, "duration", where), _int(row, "num_gpus", where, 1), _field(row, "cluster", where))
        except TraceError as e:
            if not skip_bad_rows:
                raise
            out.skipped.append(str(e))
            continue
        out.jobs.append(job)
    if not out.jobs:
        skipped = f" ({len(out.skipped)} malformed row(s) skipped)" if out.skipped else ""
        raise TraceError(f"{path.name}: no job rows{skipped}")
    return out


def load_vcs(path: Path) -> dict[str, int]:
    """vc -> node count (8 GPUs each). Always strict: a wrong cluster layout invalidates every result."""
    vcs: dict[str, int] = {}
    for _, where, row in _rows(path, VC_COLUMNS):
        vc = _field(row, "vc", where)
        if vc in vcs:
            raise TraceError(f"{where}: vc {vc!r} listed twice")
        vcs[vc] = _int(row, "node num", where, 1)
    if not vcs:
        raise TraceError(f"{path.name}: no vc rows")
    return vcs


def build_nodes(vcs: dict[str, int]) -> list[Node]:
    """One node per Helios node: 8 GPUs in two NVLink islands of 4, labelled with its vc and rack."""
    nodes = []
    for vc, count in vcs.items():
        for i in range(count):
            nodes.append(Node(f"{vc}-n{i:03d}", allocatable={"cpu": 64_000, "memory": 512 << 30, GPU: GPUS_PER_NODE},
                              labels={VC_LABEL: vc, RACK_LABEL: f"{vc}-r{i // NODES_PER_RACK}"},
                              gpus=tuple(GpuDevice(d, "P100", group=d // 4) for d in range(GPUS_PER_NODE))))
    return nodes


def pod_demands(vc: str, gpus: int) -> list[Demand]:
    """The gang's pod shapes: full 8-GPU pods plus one of the remainder. CPU and memory are token amounts
    that never bind (the trace records neither), so GPUs alone decide placement."""
    sizes = [GPUS_PER_NODE] * (gpus // GPUS_PER_NODE) + ([gpus % GPUS_PER_NODE] if gpus % GPUS_PER_NODE else [])
    return [demand(cpu_milli=100 * g, memory=g << 30, gpus=g, node_selector=((VC_LABEL, vc),)) for g in sizes]


@dataclass
class TraceSlice:
    jobs: list[Job]  # sorted by (compressed) submission time
    outside: Counter[str]  # jobs left out, by reason (date range, not a Helios vc, --max-jobs)
    rejected: list[Job]  # larger than their whole vc: they could never run


def select(table: JobTable, vcs: dict[str, int], start: date, end: date, load: float = 1.0,
           max_jobs: int | None = None) -> TraceSlice:
    """Jobs submitted on start..end (inclusive) in the given vcs, first `max_jobs` of them, with submission
    times compressed by `load` around the first one: t' = t0 + (t - t0) / load."""
    lo = (datetime.combine(start, datetime.min.time()) - _EPOCH).total_seconds()
    hi = (datetime.combine(end + timedelta(days=1), datetime.min.time()) - _EPOCH).total_seconds()
    outside: Counter[str] = Counter()
    kept = []
    for job in table.jobs:
        if not lo <= job.submit < hi:
            outside["outside the date range"] += 1
        elif job.vc not in vcs:
            outside["not in a Helios vc"] += 1
        else:
            kept.append(job)
    kept.sort(key=lambda j: (j.submit, j.id))
    if max_jobs is not None and len(kept) > max_jobs:
        outside["beyond --max-jobs"] += len(kept) - max_jobs
        kept = kept[:max_jobs]
    fits = [j for j in kept if j.gpus <= vcs[j.vc] * GPUS_PER_NODE]
    rejected = [j for j in kept if j.gpus > vcs[j.vc] * GPUS_PER_NODE]
    t0 = fits[0].submit if fits else 0.0
    jobs = [Job(j.id, t0 + (j.submit - t0) / load, j.duration, j.gpus, j.vc) for j in fits]
    return TraceSlice(jobs, outside, rejected)


HIGH_PRIORITY = 1000


def with_priorities(jobs: list[Job], high_fraction: float, seed: int, high: int = HIGH_PRIORITY) -> list[Job]:
    """The same jobs, round(high_fraction x len(jobs)) of them (drawn without replacement by a seeded RNG)
    given priority `high`, the rest 0. The draw depends only on the seed and the number of jobs."""
    import numpy as np

    if not 0.0 <= high_fraction <= 1.0:
        raise ValueError(f"high_fraction={high_fraction} must be in 0..1")
    chosen = set(np.random.default_rng(seed).choice(len(jobs), size=round(high_fraction * len(jobs)),
                                                    replace=False).tolist())
    return [replace(j, priority=high if k in chosen else 0) for k, j in enumerate(jobs)]
