"""Profiles: which plugin runs at each stage and with what weight, read from YAML like a
KubeSchedulerConfiguration profile. Shipped profiles live in `gangsched/profiles/`; `load_profile` takes
one of their names or a path.

    name: default
    queueSort: priority-fifo          # or {name: ..., args: {...}}
    starvationSeconds: 900            # a gang waiting longer reserves the cluster (no backfill past it)
    filters: [unschedulable, taints, node-affinity, gpu-model, resources]
    scores:
      - {name: fgd, weight: 1}
      - {name: gang-locality, weight: 1, args: {topology_key: topology.kubernetes.io/rack}}
    devices: fgd
    tieBreak: random                  # or first
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gangsched.devices import BestDevice, FgdDevice, RandomDevice, TopologyDevice
from gangsched.filters.gpu_model import GpuModel
from gangsched.filters.node_affinity import NodeAffinity
from gangsched.filters.resources import ResourceFit
from gangsched.filters.taints import TaintToleration
from gangsched.filters.unschedulable import Unschedulable
from gangsched.framework import DevicePicker, FilterPlugin, QueueSortPlugin, ScorePlugin, WorkloadAware
from gangsched.queue import QUEUE_SORTS, GangQueue
from gangsched.scores.allocation import LeastAllocated, MostAllocated
from gangsched.scores.balanced_allocation import BalancedAllocation
from gangsched.scores.best_fit import BestFit
from gangsched.scores.fgd import Fgd
from gangsched.scores.gang_locality import GangLocality
from gangsched.scores.paper_baselines import DotProd, GpuClustering, GpuPacking, RandomScore

FILTERS: dict[str, type] = {c.name: c for c in (Unschedulable, TaintToleration, NodeAffinity, GpuModel, ResourceFit)}
SCORES: dict[str, type] = {c.name: c for c in (LeastAllocated, MostAllocated, BalancedAllocation, BestFit, Fgd,
                                               GangLocality, RandomScore, DotProd, GpuClustering, GpuPacking)}
DEVICES: dict[str, type] = {c.name: c for c in (BestDevice, RandomDevice, TopologyDevice, FgdDevice)}


class ProfileError(ValueError):
    """A profile file that does not describe a valid configuration; the message names the field."""


@dataclass
class Profile:
    name: str
    filters: list[FilterPlugin]
    scores: list[tuple[ScorePlugin, float]]
    devices: DevicePicker
    queue_sort: QueueSortPlugin
    starvation_seconds: float | None = None
    backfill: bool = True
    tie_break: str = "random"
    needs_workload: bool = False

    def new_queue(self) -> GangQueue:
        return GangQueue(self.queue_sort, self.starvation_seconds, self.backfill)


def _make(kind: str, registry: dict[str, type], spec: Any, where: str) -> tuple[Any, dict[str, Any]]:
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ProfileError(f"{where}: expected a {kind} name or a mapping with 'name'")
    name = spec["name"]
    if name not in registry:
        raise ProfileError(f"{where}: unknown {kind} {name!r}; known: {', '.join(sorted(registry))}")
    known = {"name", "args", "weight"} if kind == "score" else {"name", "args"}
    if set(spec) - known:
        raise ProfileError(f"{where}: unknown field(s) {sorted(set(spec) - known)}; known: {sorted(known)}")
    args = spec.get("args") or {}
    try:
        return registry[name](**args), spec
    except TypeError as e:
        raise ProfileError(f"{where}.args: {e}") from None


def parse_profile(doc: dict[str, Any], source: str = "<profile>") -> Profile:
    if not isinstance(doc, dict):
        raise ProfileError(f"{source}: a profile is a mapping")
    known = {"name", "queueSort", "starvationSeconds", "backfill", "filters", "scores", "devices", "tieBreak"}
    unknown = set(doc) - known
    if unknown:
        raise ProfileError(f"{source}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    filters = [_make("filter", FILTERS, f, f"{source}: filters[{i}]")[0]
               for i, f in enumerate(doc.get("filters", list(FILTERS)))]
    scores = []
    for i, s in enumerate(doc.get("scores", [])):
        plugin, spec = _make("score", SCORES, s, f"{source}: scores[{i}]")
        weight = spec.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise ProfileError(f"{source}: scores[{i}].weight={weight!r} must be a number >= 0")
        scores.append((plugin, float(weight)))
    devices = _make("device picker", DEVICES, doc.get("devices", "best"), f"{source}: devices")[0]
    sort_spec = doc.get("queueSort", "priority-fifo")
    queue_sort = _make("queue sort", QUEUE_SORTS, sort_spec, f"{source}: queueSort")[0]
    tie = doc.get("tieBreak", "random")
    if tie not in ("random", "first"):
        raise ProfileError(f"{source}: tieBreak={tie!r} must be 'random' or 'first'")
    starve = doc.get("starvationSeconds")
    if starve is not None and (not isinstance(starve, int | float) or starve < 0):
        raise ProfileError(f"{source}: starvationSeconds={starve!r} must be a number >= 0")
    return Profile(
        name=str(doc.get("name", source)), filters=filters, scores=scores, devices=devices,
        queue_sort=queue_sort, starvation_seconds=starve, backfill=bool(doc.get("backfill", True)),
        tie_break=tie,
        needs_workload=any(isinstance(p, WorkloadAware) for p in [*filters, *(s for s, _ in scores), devices]))


def shipped_profiles() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("gangsched.profiles").iterdir()
                  if p.name.endswith(".yaml"))


def load_profile(name_or_path: str) -> Profile:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text, source = path.read_text(), str(path)
    else:
        res = resources.files("gangsched.profiles").joinpath(f"{name_or_path}.yaml")
        if not res.is_file():
            raise ProfileError(f"no profile {name_or_path!r}: not a file, and shipped profiles are "
                               f"{', '.join(shipped_profiles())}")
        text, source = res.read_text(), f"{name_or_path}.yaml"
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ProfileError(f"{source}: not valid YAML: {e}") from None
    return parse_profile(doc, source)
