"""Loading the Alibaba GPU 2023 ("openb") trace into the cluster model, with row-level validation.

A malformed row raises `TraceError` naming the file, row and field; with `skip_bad_rows` it is counted and
left out instead, and the caller reports how many were skipped. Nothing is dropped silently.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from gangsched.model import CPU, MEMORY, MIB, MILLI_PER_GPU, PODS, Demand, GpuDevice, ModelError, Node, Pod

MODEL_LABEL = "alibabacloud.com/gpu-card-model"
NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
MAX_PODS_PER_NODE = 1 << 20  # the trace sets no pod-count limit


class TraceError(ModelError):
    pass


@dataclass
class Loaded:
    items: list
    skipped: list[str] = field(default_factory=list)  # one message per bad row


def _int(row: dict[str, str], col: str, where: str, lo: int = 0, hi: int | None = None) -> int:
    raw = row.get(col)
    if raw is None or raw.strip() == "":
        raise TraceError(f"{where}: field {col!r} is empty")
    try:
        number = float(raw)
    except ValueError:
        raise TraceError(f"{where}: field {col!r}={raw!r} is not a number") from None
    if not math.isfinite(number) or number != int(number):  # 1.7 GPUs is a broken row, not 1 GPU
        raise TraceError(f"{where}: field {col!r}={raw!r} is not a whole number")
    value = int(number)
    if value < lo or (hi is not None and value > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise TraceError(f"{where}: field {col!r}={value} is out of range ({bound})")
    return value


def _rows(path: Path, required: tuple[str, ...]):
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise TraceError(f"{path.name}: missing column(s) {missing}; expected at least {list(required)}")
        for i, row in enumerate(reader, start=2):  # row 1 is the header
            yield f"{path.name} row {i}", row


def load_nodes(path: Path, gpu_only: bool = True, skip_bad_rows: bool = False) -> Loaded:
    out = Loaded([])
    for where, row in _rows(path, NODE_COLUMNS):
        try:
            gpus = _int(row, "gpu", where, 0, 64)
            model = (row.get("model") or "").strip()
            if gpus and not model:
                raise TraceError(f"{where}: field 'model' is empty but the node has {gpus} GPUs")
            if gpu_only and gpus == 0:
                continue
            out.items.append(Node(
                name=row["sn"],
                allocatable={CPU: _int(row, "cpu_milli", where, 1), MEMORY: _int(row, "memory_mib", where, 1) * MIB,
                             PODS: MAX_PODS_PER_NODE},
                labels={MODEL_LABEL: model} if model else {},
                gpus=tuple(GpuDevice(d, model) for d in range(gpus))))
        except ModelError as e:
            if not skip_bad_rows:
                raise TraceError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
            out.skipped.append(str(e))
    return _nonempty(path, out, "GPU node" if gpu_only else "node")


def _nonempty(path: Path, out: Loaded, what: str) -> Loaded:
    if not out.items:
        skipped = f" ({len(out.skipped)} malformed row(s) skipped)" if out.skipped else ""
        raise TraceError(f"{path.name}: no {what} rows{skipped}")
    return out


def load_pods(path: Path, known_models: set[str] | None = None, skip_bad_rows: bool = False) -> Loaded:
    """Pods in file order (the trace is sorted by name). `gpu_spec` lists accepted models, `|`-separated;
    a model no node has is an error (a typo would otherwise make the pod silently unschedulable)."""
    out = Loaded([])
    for where, row in _rows(path, POD_COLUMNS):
        try:
            num = _int(row, "num_gpu", where, 0, 64)
            milli = _int(row, "gpu_milli", where, 0, MILLI_PER_GPU)
            if num and milli == 0:
                raise TraceError(f"{where}: field 'gpu_milli' is 0 but num_gpu={num}")
            if num > 1 and milli != MILLI_PER_GPU:
                raise TraceError(f"{where}: field 'gpu_milli'={milli} with num_gpu={num}: only a single GPU can be "
                                 "shared")
            spec = (row.get("gpu_spec") or "").strip()
            models = frozenset(m for m in spec.split("|") if m) if num else frozenset()
            unknown = sorted(models - known_models) if known_models is not None else []
            if unknown:
                raise TraceError(f"{where}: field 'gpu_spec' names unknown GPU model(s) {unknown}")
            d = Demand(requests=((CPU, _int(row, "cpu_milli", where)), (MEMORY, _int(row, "memory_mib", where) * MIB),
                                 (PODS, 1)),
                       gpu_count=num, gpu_milli=milli if num else MILLI_PER_GPU, gpu_models=models)
            out.items.append(Pod(name=row["name"], demand=d))
        except ModelError as e:
            if not skip_bad_rows:
                raise TraceError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
            out.skipped.append(str(e))
    return _nonempty(path, out, "pod")
