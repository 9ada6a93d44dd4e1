"""Typed cluster model: what nodes offer and what pods and gangs ask for.

Everything here is a frozen dataclass with plain values, so the same objects come from a trace row, a test
or a Kubernetes object, and a pod's `Demand` (everything that decides where it may run) is hashable: the
core caches filter and score results per distinct demand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

CPU = "cpu"  # millicores
MEMORY = "memory"  # bytes
PODS = "pods"  # count
GPU = "nvidia.com/gpu"  # whole devices; handled per device, never as a scalar
MILLI_PER_GPU = 1000
MIB = 1 << 20

# The scalar resources every node has; extended ones are appended per cluster.
BASE_RESOURCES: tuple[str, ...] = (CPU, MEMORY, PODS)


class ModelError(ValueError):
    """Input that cannot describe a real node, pod or group; the message names the field."""


@dataclass(frozen=True)
class GpuDevice:
    """One GPU of a node. `group` is its interconnect island (e.g. NVLink domain); devices sharing a group
    talk fast to each other."""

    index: int
    model: str = ""
    memory_mib: int = 0
    group: int = 0
    healthy: bool = True  # an unhealthy device keeps its index but offers nothing (its device plugin said so)


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: TaintEffect = TaintEffect.NO_SCHEDULE


@dataclass(frozen=True)
class Toleration:
    """Kubernetes semantics: empty key with operator Exists tolerates everything; empty effect matches all."""

    key: str = ""
    operator: str = "Equal"  # Equal | Exists
    value: str = ""
    effect: TaintEffect | None = None

    def tolerates(self, taint: Taint) -> bool:
        if self.effect is not None and self.effect != taint.effect:
            return False
        if self.operator == "Exists":
            return self.key in ("", taint.key)
        return self.key == taint.key and self.value == taint.value


SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt")
NODE_NAME_FIELD = "metadata.name"  # the only key Kubernetes accepts in `matchFields`
_INT64 = 1 << 63


@dataclass(frozen=True)
class Requirement:
    """A node-selector requirement of required node affinity: a `matchExpressions` entry (a label), or with
    `field` a `matchFields` entry (the node's name; kept apart because a label may be spelled the same)."""

    key: str
    operator: str
    values: tuple[str, ...] = ()
    field: bool = False

    def __post_init__(self) -> None:
        if self.field:
            self._check_field()
        elif self.operator not in SELECTOR_OPERATORS:
            raise ModelError(f"nodeAffinity operator {self.operator!r} for key {self.key!r}: "
                             f"expected one of {', '.join(SELECTOR_OPERATORS)}")
        elif self.operator in ("In", "NotIn") and not self.values:
            raise ModelError(f"nodeAffinity {self.operator} for key {self.key!r} needs values")
        elif self.operator in ("Gt", "Lt") and (len(self.values) != 1 or self.integer(self.values[0]) is None):
            raise ModelError(f"nodeAffinity {self.operator} for key {self.key!r} needs exactly one integer value, "
                             f"got {list(self.values)}")

    def _check_field(self) -> None:
        # as the API server validates matchFields
        if self.key != NODE_NAME_FIELD:
            raise ModelError(f"matchFields key {self.key!r}: only {NODE_NAME_FIELD} is supported")
        if self.operator not in ("In", "NotIn"):
            raise ModelError(f"matchFields operator {self.operator!r}: only In or NotIn is supported")
        if len(self.values) != 1:
            raise ModelError(f"matchFields {self.operator} for {self.key} needs exactly one value, "
                             f"got {list(self.values)}")

    @staticmethod
    def integer(value: str) -> int | None:
        """`value` as Go's strconv.ParseInt(value, 10, 64) reads it (Gt/Lt operands and node labels), or None.
        Stricter than int(): no spaces, underscores or non-ASCII digits."""
        if not isinstance(value, str):
            return None
        digits = value[1:] if value[:1] in ("+", "-") else value
        if not (digits.isascii() and digits.isdigit()):
            return None
        n = int(value)
        return n if -_INT64 <= n < _INT64 else None


@dataclass(frozen=True)
class Node:
    name: str
    allocatable: dict[str, int] = field(default_factory=dict, hash=False)
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False
    gpus: tuple[GpuDevice, ...] = ()

    def __post_init__(self) -> None:
        for res, qty in self.allocatable.items():
            if qty < 0:
                raise ModelError(f"node {self.name}: allocatable {res}={qty} is negative")
        declared = self.allocatable.get(GPU)
        healthy = sum(d.healthy for d in self.gpus)
        if declared is not None and self.gpus and declared != healthy:
            raise ModelError(f"node {self.name}: allocatable {GPU}={declared} but {healthy} devices listed as healthy")
        if declared and not self.gpus:
            # A device-plugin count without a device list: identical devices of the node's labelled model.
            model = self.labels.get("nvidia.com/gpu.product", "")
            object.__setattr__(self, "gpus", tuple(GpuDevice(i, model) for i in range(declared)))


@dataclass(frozen=True)
class Demand:
    """What a pod needs and where it may run. Two pods with equal demands are interchangeable to the core.

    GPUs: `gpu_count` devices of `gpu_milli` thousandths each. A whole-GPU pod has gpu_milli=1000; a
    GPU-sharing pod (as in the Alibaba trace) has gpu_count=1 and gpu_milli < 1000.
    `affinity` is required node affinity: a list of terms, any one of which must match (each term is an
    AND of requirements), exactly as `requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms`.
    """

    requests: tuple[tuple[str, int], ...] = ()
    gpu_count: int = 0
    gpu_milli: int = MILLI_PER_GPU
    gpu_models: frozenset[str] = frozenset()
    node_selector: tuple[tuple[str, str], ...] = ()
    affinity: tuple[tuple[Requirement, ...], ...] = ()
    tolerations: tuple[Toleration, ...] = ()

    def __post_init__(self) -> None:
        for res, qty in self.requests:
            if res == GPU:
                raise ModelError(f"request {GPU} goes in gpu_count, not requests")
            if qty < 0:
                raise ModelError(f"request {res}={qty} is negative")
        if self.gpu_count < 0:
            raise ModelError(f"gpu_count={self.gpu_count} is negative")
        if not 0 < self.gpu_milli <= MILLI_PER_GPU:
            raise ModelError(f"gpu_milli={self.gpu_milli} must be in 1..{MILLI_PER_GPU}")
        if self.gpu_count > 1 and self.gpu_milli != MILLI_PER_GPU:
            raise ModelError(f"a pod sharing a GPU (gpu_milli={self.gpu_milli}) must ask for one device, "
                             f"not gpu_count={self.gpu_count}")

    @property
    def gpu_total_milli(self) -> int:
        return self.gpu_count * self.gpu_milli

    @property
    def gpu_tag(self) -> int:
        """A GPU shape class: -1 CPU-only, 0 GPU-sharing, k for k whole GPUs (capped at 8)."""
        if self.gpu_count == 0:
            return -1
        return 0 if self.gpu_milli < MILLI_PER_GPU else min(self.gpu_count, 8)

    def request(self, resource: str) -> int:
        return dict(self.requests).get(resource, 0)


def demand(cpu_milli: int = 0, memory: int = 0, gpus: int = 0, gpu_milli: int = MILLI_PER_GPU,
           **kwargs: object) -> Demand:
    """Shorthand for tests and traces: `demand(cpu_milli=4000, memory=8 * GIB, gpus=1)`."""
    extra = kwargs.pop("extended", {})
    requests = [(CPU, cpu_milli), (MEMORY, memory), (PODS, 1)]
    requests += sorted(extra.items())  # type: ignore[attr-defined]
    return Demand(requests=tuple(requests), gpu_count=gpus, gpu_milli=gpu_milli, **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Pod:
    name: str
    demand: Demand
    namespace: str = "default"
    priority: int = 0
    group: str | None = None  # PodGroup name in the same namespace; None: a gang of one
    creation: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PodGroup:
    """A gang (scheduler-plugins `PodGroup`): at least `min_member` pods start together or none does."""

    name: str
    min_member: int
    namespace: str = "default"
    min_resources: tuple[tuple[str, int], ...] = ()
    priority: int = 0
    creation: float = 0.0
    timeout: float | None = None  # scheduleTimeoutSeconds

    def __post_init__(self) -> None:
        if self.min_member < 1:
            raise ModelError(f"PodGroup {self.namespace}/{self.name}: spec.minMember={self.min_member} must be >= 1")

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


GIB = 1 << 30
