"""The live scheduler's books under random sequences of API events, bindings and cycles (hypothesis.stateful).

The machine keeps its own API server (`api`: what is true) and what the scheduler was shown (`seen`: equal to
`api` except while a watch is broken, until that kind is relisted). It drives one `livekit.Live` through:
nodes added, resized (GPUs, cpu) and deleted; pods of ours (alone or in a PodGroup, a few created already bound
as after a restart) and of another scheduler (created bound, with or without `gangsched.io/gpu-devices`, often
asking more than fits; or pending, then bound by their scheduler), relabelled into another group, finished,
gated and ungated, resized in place, marked terminating, deleted and re-created; PodGroups added, changed
(minMember, an invalid 0, a timeout) and deleted; watches broken and relisted; cycles with the clock moved; and
the answers to our bindings as the API server would give them (success, with the watch before or after the
answer; success whose answer is lost; 0, 429, 500, 422; 404 / 409 when the pod is gone, re-created, or bound).

Invariants after every step:
1. the books equal a from-scratch rebuild from what the scheduler was shown (`livekit.rebuilt`): the same
   assignment (node, requests, GPU count; devices unless guessed) for every bound, unfinished pod; assumed
   pods (binding in flight) the only extra ones; the same gangs, group members, shapes, unplaced pods;
2. our placements never over-commit: a pod of ours a cycle placed takes no resource (cpu, memory, pod slots,
   a GPU) the node is over-committed in after that cycle; an over-committed resource is so by the pods bound
   there alone, or held ours before it filled up (a race with another scheduler or a node shrinking); an
   assumed pod holds the GPUs its binding names; no GPU is handed out twice among exact (non-guessed) ones;
3. the state's arrays (used, gpu_free, gpu_tags, node_pods) are the sums over its assignments;
4. no gang stays with 1..minMember-1 members bound for longer than its timeout and two cycles;
and no event handler or gang attempt ever raised.

GANGSCHED_SM_EXAMPLES sets the number of examples (default 1000, ~20-40 s; nightly 10000), GANGSCHED_SM_STEPS
the steps per example (default 30). A failure prints the steps as notes (numbered as the scheduler saw them).
"""

from __future__ import annotations

import copy
import os

import numpy as np
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from livekit import T0, Live, node, pod, podgroup, rebuilt, stamp

from gangsched.live.binder import BIND, BindOutcome, BindRequest, binding_body
from gangsched.live.cache import TERMINAL, Gang
from gangsched.live.informer import SYNC, SYNC_ABORT, SYNC_PART
from gangsched.live.kube import ApiError
from gangsched.live.translate import GPU_DEVICES_ANNOTATION, POD_GROUP_LABEL
from gangsched.model import MILLI_PER_GPU
from gangsched.state import Assignment, ClusterState

EXAMPLES = int(os.environ.get("GANGSCHED_SM_EXAMPLES", "1000"))
STEPS = int(os.environ.get("GANGSCHED_SM_STEPS", "30"))

NS = "default"
NODE_NAMES = ("n0", "n1", "n2", "n3")
POD_NAMES = tuple(f"p{i}" for i in range(12))
GROUP_NAMES = ("g0", "g1", "g2")
KINDS = ("nodes", "podgroups", "pods")
ADVANCE = (0.0, 0.5, 2.0, 5.0)  # seconds the clock moves before a cycle
GANG_TIMEOUT = 10.0  # the give-back's default
GROUP_TIMEOUT = 4  # spec.scheduleTimeoutSeconds of some PodGroups
OURS = "gangsched"
PROFILES = ("default", "binpack", {"queueSort": "priority-fifo", "starvationSeconds": 5, "backfill": False})

# answers to a binding the API server could accept
BINDABLE = ("ok", "ok", "ok-watch-first", "ok-answer-lost", "timeout", "429", "500", "422")
ERRORS = {
    "timeout": ApiError(0, "Timeout", "the request timed out"),
    "429": ApiError(429, "TooManyRequests", "rate limited"),
    "500": ApiError(500, "InternalError", "etcdserver: leader changed"),
    "422": ApiError(422, "Invalid", "denied by an admission webhook"),
    "gated": ApiError(422, "Invalid", "pod has non-empty .spec.schedulingGates"),
    "deleting": ApiError(500, "InternalError", "pod is being deleted, cannot be assigned to a host"),
    "404": ApiError(404, "NotFound", "pods not found"),
    "uid": ApiError(409, "Conflict", "Precondition failed: UID in precondition differs from UID in object meta"),
}


def key_of(obj: dict) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}".lstrip("/")


def bound_to(obj: dict) -> str | None:
    return obj["spec"].get("nodeName") or None


def phase(obj: dict) -> str:
    return obj["status"].get("phase", "Pending")


def group_of(obj: dict) -> str | None:
    return obj["metadata"]["labels"].get(POD_GROUP_LABEL)


def ours(obj: dict) -> bool:
    return obj["spec"].get("schedulerName") == OURS


def devices_st(gpus: int) -> st.SearchStrategy[str | None]:
    """A gpu-devices annotation for a pod bound with `gpus` GPUs: none, the right number of indices (some beyond
    the node's GPUs), or a wrong number."""
    if not gpus:
        return st.none()
    right = st.lists(st.integers(0, max(4, gpus)), min_size=gpus, max_size=gpus, unique=True)
    wrong = st.lists(st.integers(0, 4), min_size=1, max_size=5)
    return st.one_of(st.none(), right.map(lambda d: ",".join(map(str, d))), wrong.map(lambda d: ",".join(map(str, d))))


def takes(a: Assignment) -> set[tuple[str, int]]:
    """What an assignment consumes: ("res", j) for each scalar resource it requests, ("gpu", d) per device."""
    return {("res", j) for j, q in enumerate(a.vector) if q} | {("gpu", d) for d in a.devices}


def over_committed(state: ClusterState, i: int) -> set[tuple[str, int]]:
    res = np.flatnonzero(state.used[i] > state.allocatable[i])
    gpus = np.flatnonzero(state.gpu_free[i] < 0)
    return {("res", int(j)) for j in res} | {("gpu", int(d)) for d in gpus}


class LiveBooks(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.live: Live = None  # type: ignore[assignment]  # made by `start`, with the profile it draws
        self.seen: dict[tuple[str, str], dict] = {}  # what the scheduler was shown
        self.broken: set[str] = set()  # kinds whose watch missed events (until relisted)
        self.inflight: list[BindRequest] = []  # bindings posted, not answered
        self.requested: dict[str, BindRequest] = {}  # the last binding posted per pod
        self.refreshed_nodes: list[dict] = []  # the nodes as the scheduler's state last rebuilt them
        self.min_known: dict[str, int] = {}  # last valid minMember shown per PodGroup
        self.steps = 0
        self.full_since: dict[tuple[str, str, int], int] = {}  # over-committed resource -> since which step
        self.assumed_at: dict[str, int] = {}  # assumed pod -> the step it was placed at
        self.incomplete_since: dict[str, float] = {}  # PodGroup key -> when it was first seen half bound

    # ---- the API server --------------------------------------------------------------------------------------------
    @property
    def api(self) -> dict[tuple[str, str], dict]:
        return self.live.objects

    def objs(self, view: dict, kind: str) -> list[dict]:
        return [o for (k, _), o in view.items() if k == kind]

    def write(self, kind: str, obj: dict) -> None:
        """Create or replace an object; the watch shows it unless broken."""
        self.api[(kind, key_of(obj))] = obj
        if kind not in self.broken:
            self.seen[(kind, key_of(obj))] = obj
            self.live.sched.handle(kind, "MODIFIED", obj)

    def erase(self, kind: str, key: str) -> None:
        obj = self.api.pop((kind, key))
        if kind not in self.broken:
            self.seen.pop((kind, key), None)
            self.live.sched.handle(kind, "DELETED", obj)

    def delete_pod(self, obj: dict) -> bool:
        """The give-back's delete: with the pod's uid as precondition, as `run.delete_pod`."""
        key = key_of(obj)
        current = self.api.get(("pods", key))
        note(f"  give-back deletes {key}" + ("" if current is not None and current["metadata"]["uid"] ==
                                             obj["metadata"]["uid"] else " (already gone)"))
        if current is not None and current["metadata"]["uid"] == obj["metadata"]["uid"]:
            self.erase("pods", key)
        return True

    def pods(self, view: dict | None = None) -> dict[str, dict]:
        return {key: o for (k, key), o in (view if view is not None else self.api).items() if k == "pods"}

    def take_binds(self) -> None:
        for req in self.live.binds.take():
            self.inflight.append(req)
            self.requested[f"{req.namespace}/{req.name}"] = req

    def shown_group(self, obj: dict) -> None:
        mm = obj["spec"].get("minMember")
        if isinstance(mm, int) and mm >= 1:
            self.min_known[key_of(obj)] = mm

    # ---- setup -------------------------------------------------------------------------------------------------------
    @initialize(profile=st.sampled_from(PROFILES),
                nodes=st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["2", "4", "8"])), max_size=4),
                groups=st.lists(st.sampled_from([1, 2, 3]), max_size=len(GROUP_NAMES)),
                pods=st.lists(st.tuples(st.integers(0, 2), st.sampled_from((*GROUP_NAMES, None))), max_size=8))
    def start(self, profile: str | dict, nodes: list[tuple[int, str]], groups: list[int],
              pods: list[tuple[int, str | None]]) -> None:
        """A cluster to start from, with pods of ours waiting (the rules add, change and delete all of them)."""
        self.live = Live(profile, gang_timeout=GANG_TIMEOUT)
        self.live.giveback.delete_pod = self.delete_pod
        note(f"profile {profile}")
        for name, (gpus, cpu) in zip(NODE_NAMES, nodes, strict=False):
            self.put_node(name, gpus, cpu)
        for name, min_member in zip(GROUP_NAMES, groups, strict=False):
            self.put_group(name, min_member, False)
        for name, (gpus, group) in zip(POD_NAMES, pods, strict=False):
            self.new_pod(name, "ours-group" if group else "ours", gpus, "1", group, None, None)

    # ---- nodes -------------------------------------------------------------------------------------------------------
    @rule(name=st.sampled_from(NODE_NAMES), gpus=st.integers(0, 4), cpu=st.sampled_from(["2", "4", "8"]),
          ready=st.sampled_from([True, True, False]))
    def put_node(self, name: str, gpus: int, cpu: str, ready: bool = True) -> None:
        note(f"{self.steps}: node {name} gpus={gpus} cpu={cpu}" + ("" if ready else " NotReady")
             + (" (update)" if ("nodes", name) in self.api else ""))
        self.write("nodes", node(name, gpus=gpus, cpu=cpu, memory="64Gi", ready=ready))

    @precondition(lambda self: self.objs(self.api, "nodes"))
    @rule(data=st.data())
    def delete_node(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(key_of(o) for o in self.objs(self.api, "nodes"))), label="node")
        note(f"{self.steps}: delete node {name}")
        self.erase("nodes", name)

    # ---- pods --------------------------------------------------------------------------------------------------------
    @precondition(lambda self: len(self.pods()) < len(POD_NAMES))
    @rule(data=st.data(), kind=st.sampled_from(["ours", "ours-group", "ours-group", "ours-bound", "foreign-bound",
                                                "foreign-bound", "foreign-pending"]))
    def add_pod(self, data: st.DataObject, kind: str) -> None:
        free = [n for n in POD_NAMES if f"{NS}/{n}" not in self.pods()]
        name = data.draw(st.sampled_from(free), label="name")
        foreign = kind.startswith("foreign")
        gpus = data.draw(st.integers(0, 6) if foreign else st.integers(0, 2), label="gpus")
        cpu = data.draw(st.sampled_from(["1", "4", "12"] if foreign else ["1", "2", "1", "lots"]), label="cpu")
        group = data.draw(st.sampled_from(GROUP_NAMES), label="group") if kind in ("ours-group", "ours-bound") \
            else None
        node_name = data.draw(st.sampled_from(NODE_NAMES), label="node") if kind.endswith("-bound") else None
        devices = data.draw(devices_st(gpus), label="devices") if node_name else None
        self.new_pod(name, kind, gpus, cpu, group, node_name, devices)

    def new_pod(self, name: str, kind: str, gpus: int, cpu: str, group: str | None, node_name: str | None,
                devices: str | None) -> None:
        foreign = kind.startswith("foreign")
        obj = pod(name, gpus=gpus, cpu=cpu, group=group, scheduler="other" if foreign else OURS, node_name=node_name,
                  devices=devices, created=self.live.now - len(self.pods()),
                  phase="Running" if node_name else "Pending")
        note(f"{self.steps}: add pod {name} ({kind}) gpus={gpus} cpu={cpu} group={group} node={node_name} "
             f"devices={devices}")
        self.write("pods", obj)

    def pick_pod(self, data: st.DataObject, which) -> tuple[str, dict]:
        keys = sorted(k for k, o in self.pods().items() if which(o))
        key = data.draw(st.sampled_from(keys), label="pod")
        return key, copy.deepcopy(self.api[("pods", key)])

    def _any_pod(self, which) -> bool:
        return any(which(o) for o in self.pods().values())

    @precondition(lambda self: self._any_pod(ours))
    @rule(data=st.data(), group=st.sampled_from((*GROUP_NAMES, None)))
    def relabel(self, data: st.DataObject, group: str | None) -> None:
        key, obj = self.pick_pod(data, ours)
        obj["metadata"]["labels"].pop(POD_GROUP_LABEL, None)
        if group:
            obj["metadata"]["labels"][POD_GROUP_LABEL] = group
        note(f"{self.steps}: relabel {key} into group {group}")
        self.write("pods", obj)

    @precondition(lambda self: self._any_pod(lambda o: phase(o) not in TERMINAL))
    @rule(data=st.data(), to=st.sampled_from(["Succeeded", "Failed", "Running"]))
    def set_phase(self, data: st.DataObject, to: str) -> None:
        key, obj = self.pick_pod(data, lambda o: phase(o) not in TERMINAL)
        if to == "Running" and not bound_to(obj):
            note(f"{self.steps}: pod {key} is not bound: it does not run")  # only a bound pod runs
            return
        obj["status"]["phase"] = to
        note(f"{self.steps}: pod {key} is {to}")
        self.write("pods", obj)

    @precondition(lambda self: self._any_pod(lambda o: not bound_to(o)))
    @rule(data=st.data())
    def toggle_gate(self, data: st.DataObject) -> None:
        key, obj = self.pick_pod(data, lambda o: not bound_to(o))
        if obj["spec"].get("schedulingGates"):
            del obj["spec"]["schedulingGates"]
            note(f"{self.steps}: ungate {key}")
        else:
            obj["spec"]["schedulingGates"] = [{"name": "example.com/quota"}]
            note(f"{self.steps}: gate {key}")
        self.write("pods", obj)

    @precondition(lambda self: self.pods())
    @rule(data=st.data(), cpu=st.sampled_from(["1", "3", "6"]), done=st.booleans())
    def resize(self, data: st.DataObject, cpu: str, done: bool) -> None:
        key, obj = self.pick_pod(data, lambda o: True)
        obj["spec"]["containers"][0]["resources"]["requests"]["cpu"] = cpu
        if done:  # the kubelet reports the resize done
            obj["status"]["containerStatuses"] = [{"name": "c", "allocatedResources": {"cpu": cpu},
                                                   "resources": {"requests": {"cpu": cpu}}}]
        note(f"{self.steps}: resize {key} to cpu={cpu}" + (" (done)" if done else ""))
        self.write("pods", obj)

    @precondition(lambda self: self.pods())
    @rule(data=st.data(), graceful=st.booleans())
    def delete_pod_rule(self, data: st.DataObject, graceful: bool) -> None:
        key, obj = self.pick_pod(data, lambda o: True)
        if graceful and not obj["metadata"].get("deletionTimestamp"):
            obj["metadata"]["deletionTimestamp"] = stamp(self.live.now)
            note(f"{self.steps}: pod {key} terminating")
            self.write("pods", obj)
        else:
            note(f"{self.steps}: delete pod {key}")
            self.erase("pods", key)

    @precondition(lambda self: self._any_pod(lambda o: not ours(o) and not bound_to(o)))
    @rule(data=st.data(), node_name=st.sampled_from(NODE_NAMES))
    def foreign_binding(self, data: st.DataObject, node_name: str) -> None:
        """Another scheduler binds its pending pod."""
        key, obj = self.pick_pod(data, lambda o: not ours(o) and not bound_to(o))
        gpus = int(obj["spec"]["containers"][0]["resources"]["requests"].get("nvidia.com/gpu", 0))
        devices = data.draw(devices_st(gpus), label="devices")
        obj["spec"]["nodeName"] = node_name
        if devices is not None:
            obj["metadata"]["annotations"][GPU_DEVICES_ANNOTATION] = devices
        note(f"{self.steps}: another scheduler binds {key} to {node_name} devices={devices}")
        self.write("pods", obj)

    # ---- PodGroups ---------------------------------------------------------------------------------------------------
    @rule(name=st.sampled_from(GROUP_NAMES), min_member=st.sampled_from([0, 1, 2, 2, 3]), short=st.booleans())
    def put_group(self, name: str, min_member: int, short: bool) -> None:
        spec = {"scheduleTimeoutSeconds": GROUP_TIMEOUT} if short else {}
        obj = podgroup(name, min_member, **spec)
        note(f"{self.steps}: PodGroup {name} minMember={min_member}" + (f" timeout={GROUP_TIMEOUT}" if short else ""))
        self.write("podgroups", obj)
        if "podgroups" not in self.broken:
            self.shown_group(obj)

    @precondition(lambda self: self.objs(self.api, "podgroups"))
    @rule(data=st.data())
    def delete_group(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(key_of(o) for o in self.objs(self.api, "podgroups"))), label="group")
        note(f"{self.steps}: delete PodGroup {key}")
        self.erase("podgroups", key)

    # ---- watches -----------------------------------------------------------------------------------------------------
    @precondition(lambda self: not self.broken)  # one at a time: a broken watch hides most of what happens
    @rule(kind=st.sampled_from(KINDS))
    def break_watch(self, kind: str) -> None:
        note(f"{self.steps}: the {kind} watch misses events")
        self.broken.add(kind)

    @rule(kind=st.sampled_from((*KINDS, "all")), parts=st.integers(1, 3), cut=st.integers(0, 2))
    def relist(self, kind: str, parts: int, cut: int) -> None:
        """The list comes as `parts` pieces (SYNC_PARTs, then a SYNC), after a list cut `cut` pieces in."""
        note(f"{self.steps}: relist {kind} in {parts} parts" + (f", after one cut {cut} parts in" if cut else ""))
        for k in KINDS if kind == "all" else (kind,):
            self.broken.discard(k)
            items = self.objs(self.api, k)
            for sk in [sk for sk in self.seen if sk[0] == k]:
                del self.seen[sk]
            self.seen.update({(k, key_of(o)): o for o in items})
            if k == "podgroups":
                for o in items:
                    self.shown_group(o)
            pieces = [items[i::parts] for i in range(parts)]
            if cut:
                for piece in pieces[:cut]:
                    self.live.sched.handle(k, SYNC_PART, piece)
                self.live.sched.handle(k, SYNC_ABORT, None)
            for piece in pieces[:-1]:
                self.live.sched.handle(k, SYNC_PART, piece)
            self.live.sched.handle(k, SYNC, pieces[-1])
            if k == "pods":  # a pod list is accounted on the newest nodes
                self.refreshed_nodes = self.objs(self.seen, "nodes")

    # ---- the scheduler -----------------------------------------------------------------------------------------------
    @rule(advance=st.sampled_from(ADVANCE))
    def cycle(self, advance: float) -> None:
        live = self.live
        before = set(live.cache.assumed)
        self.refreshed_nodes = self.objs(self.seen, "nodes")
        live.cycle(advance=advance)
        self.take_binds()
        placed = {k: n for k, n in live.cache.assumed.items() if k not in before}
        note(f"{self.steps}: cycle at T0+{live.now - T0:.1f}: placed {placed or 'nothing'}")
        state = live.state
        for key, node_name in placed.items():
            self.assumed_at[key] = self.steps
            a = state.assignments[key]
            assert a.node_name == node_name
            over = takes(a) & over_committed(state, a.node)
            assert not over, f"the cycle placed {key} on {node_name}, which it over-commits: {over}"

    @rule(advance=st.sampled_from(ADVANCE))
    def cycle_and_bind(self, advance: float) -> None:
        """The common case: a cycle, then every binding posted succeeds (and the watch shows it)."""
        self.cycle(advance)
        reqs, self.inflight = self.inflight, []
        for req in reqs:
            self.answer_one(req, self.outcome_forced(req) or "ok")  # retries stay in flight

    @rule(cycles=st.integers(2, 6))
    def time_passes(self, cycles: int) -> None:
        """Cycles two seconds apart, nothing answered: long enough for a give-back."""
        for _ in range(cycles):
            self.cycle(2.0)

    def answer_one(self, req: BindRequest, outcome: str) -> None:
        live = self.live
        key = f"{req.namespace}/{req.name}"
        note(f"{self.steps}: binding {key} -> {req.node} {req.devices} (attempt {req.attempt}): {outcome}")
        if outcome.startswith("ok"):
            current = self.api[("pods", key)]
            bound = copy.deepcopy(current)
            bound["spec"]["nodeName"] = req.node
            bound["metadata"]["annotations"].update(binding_body(req)["metadata"].get("annotations", {}))
            if outcome == "ok":
                live.sched.handle(BIND, "DONE", BindOutcome(req, None, 0.01))
                self.write("pods", bound)
            elif outcome == "ok-watch-first":
                self.write("pods", bound)
                live.sched.handle(BIND, "DONE", BindOutcome(req, None, 0.01))
            else:  # bound, but the answer was lost: the retry is told "already assigned"
                self.write("pods", bound)
                live.sched.handle(BIND, "DONE", BindOutcome(req, ERRORS["timeout"], 5.0))
        else:
            if outcome == "409":
                node_name = bound_to(self.api[("pods", key)])
                err = ApiError(409, "Conflict", f'pod {req.name} is already assigned to node "{node_name}"')
            else:
                err = ERRORS[outcome]
            live.sched.handle(BIND, "DONE", BindOutcome(req, err, 0.01))
        self.take_binds()

    def outcome_forced(self, req: BindRequest) -> str | None:
        """What the API server answers whatever happens, or None if the binding may succeed."""
        current = self.api.get(("pods", f"{req.namespace}/{req.name}"))
        if current is None:
            return "404"
        if current["metadata"]["uid"] != req.uid:
            return "uid"
        if bound_to(current):
            return "409"
        if current["spec"].get("schedulingGates"):
            return "gated"
        if current["metadata"].get("deletionTimestamp"):
            return "deleting"
        return None

    @precondition(lambda self: self.inflight)
    @rule(data=st.data())
    def answer(self, data: st.DataObject) -> None:
        req = self.inflight.pop(data.draw(st.integers(0, len(self.inflight) - 1), label="binding"))
        outcome = self.outcome_forced(req) or data.draw(st.sampled_from(BINDABLE), label="outcome")
        self.answer_one(req, outcome)

    @precondition(lambda self: self.inflight)
    @rule()
    def answer_all(self) -> None:
        """Every binding in flight succeeds if it can (and retried ones too)."""
        for _ in range(3):
            reqs, self.inflight = self.inflight, []
            for req in reqs:
                self.answer_one(req, self.outcome_forced(req) or "ok")

    # ---- invariants --------------------------------------------------------------------------------------------------
    @invariant()
    def nothing_raised(self) -> None:
        stats = self.live.sched.stats
        assert stats["event_errors"] == 0, "an event handler raised (see the log)"
        assert stats["attempts_error"] == 0, "a gang attempt raised (see the log)"

    @invariant()
    def books_equal_a_rebuild(self) -> None:
        live = self.live
        cache, state = live.cache, live.state
        fresh = rebuilt(self.refreshed_nodes, self.objs(self.seen, "podgroups"), self.objs(self.seen, "pods"))
        seen_pods = self.pods(self.seen)
        assert state.names == fresh.state.names and state.resources == fresh.state.resources
        assumed = cache.assumed
        # assumed pods whose node went away while binding: they wait for the answer with nothing held (the API
        # server accepts a binding to any node name), and hold it again if it comes back
        orphans = {k for k in assumed if k not in state.assignments}
        for key, node_name in assumed.items():
            obj = seen_pods.get(key)
            assert obj is not None, f"{key} is assumed but gone"
            assert not bound_to(obj) and phase(obj) not in TERMINAL, f"{key} is assumed but {phase(obj)}, bound"
            if key in orphans:
                assert node_name not in state.index, f"{key} is assumed on {node_name} with nothing held there"
                continue
            assert state.assignments[key].node_name == node_name
            if key not in cache.guessed:  # on the GPUs its binding names (what the device plugin will use)
                held, named = state.assignments[key].devices, self.requested[key].devices
                assert held == named, f"{key} holds GPUs {held}, its binding names {named}"
            # its binding in flight, or answered (bound) with the watch yet to show it (kube-scheduler's assumed pod)
            assert live.sched.binding.get(key) in self.inflight or "pods" in self.broken, \
                f"{key} is assumed with no binding in flight"
        assert set(state.assignments) == set(fresh.state.assignments) | (set(assumed) - orphans)
        holding = {k for k, o in seen_pods.items() if bound_to(o) in state.index and phase(o) not in TERMINAL}
        assert set(fresh.state.assignments) == holding, "the pods bound and not finished are not the ones held"
        assert not set(fresh.state.assignments) & set(assumed)
        for key, b in fresh.state.assignments.items():
            a = state.assignments[key]
            assert (a.node_name, a.vector, a.demand.gpu_count, a.gpu_milli) == \
                (b.node_name, b.vector, b.demand.gpu_count, b.gpu_milli), f"{key}: {a} != rebuilt {b}"
            if key not in cache.guessed and key not in fresh.guessed:
                assert a.devices == b.devices, f"{key} holds GPUs {a.devices}, rebuilt {b.devices}"
        assert cache.unplaced == fresh.unplaced
        assert cache.groups == fresh.groups
        assert {k: v for k, v in cache.group_members.items() if v} == \
            {k: v for k, v in fresh.group_members.items() if v}
        assert +cache.shapes == +fresh.shapes
        for gkey in set(cache.gangs) | set(fresh.gangs):
            g, f = cache.gangs.get(gkey, Gang()), fresh.gangs.get(gkey, Gang())
            mine = {k for k in assumed if cache.pods[k].gang == gkey}
            assert g.pending - orphans == f.pending - mine, \
                f"{gkey} pending {g.pending}, rebuilt {f.pending}, assumed {mine}"
            assert g.held - orphans == f.held | (mine - orphans if gkey.group else set()), \
                f"{gkey} held {g.held}, rebuilt {f.held}, assumed {mine}"

    @invariant()
    def arrays_are_the_sum_of_assignments(self) -> None:
        state = self.live.state
        used = np.zeros_like(state.used)
        free = state.gpu_cap.astype(np.int64)
        tags = np.zeros_like(state.gpu_tags)
        for key, a in state.assignments.items():
            assert a.node_name == state.names[a.node] and key in state.node_pods[a.node]
            assert len(a.devices) == a.demand.gpu_count == len(set(a.devices))
            used[a.node] += np.asarray(a.vector)
            for d in a.devices:
                assert state.gpu_cap[a.node, d] == MILLI_PER_GPU, f"{key} holds GPU {d} {a.node_name} does not have"
                free[a.node, d] -= a.gpu_milli
            if a.demand.gpu_tag >= 0:
                tags[a.node, a.demand.gpu_tag] += 1
        np.testing.assert_array_equal(state.used, used)
        np.testing.assert_array_equal(state.gpu_free, free)
        np.testing.assert_array_equal(state.gpu_tags, tags)
        assert sum(len(s) for s in state.node_pods) == len(state.assignments)

    @invariant()
    def our_placements_never_over_commit(self) -> None:
        """Over-committed: a scalar resource of a node beyond its allocatable, or a GPU beyond 1000 milli."""
        cache, state = self.live.cache, self.live.state
        step, self.steps = self.steps, self.steps + 1  # this invariant counts the steps
        full: set[tuple[str, str, int]] = set()
        for i, name in enumerate(state.names):
            exact = np.zeros(state.gpu_cap.shape[1], dtype=np.int64)
            for k in state.node_pods[i]:
                if k not in cache.guessed:
                    exact[list(state.assignments[k].devices)] += state.assignments[k].gpu_milli
            assert (exact <= state.gpu_cap[i]).all(), f"a GPU of {name} is handed out twice: {exact}"
            for what, j in over_committed(state, i):
                full.add((name, what, j))
                since = self.full_since.setdefault((name, what, j), step)
                users = [state.assignments[k] for k in state.node_pods[i] if (what, j) in takes(state.assignments[k])]
                bound = [a for a in users if a.pod_key not in cache.assumed]
                if what == "res":
                    alone = sum(a.vector[j] for a in bound) > state.allocatable[i, j]
                else:
                    alone = sum(a.gpu_milli for a in bound) > state.gpu_cap[i, j]
                if alone:
                    continue  # the pods bound there over-commit it by themselves
                late = sorted(a.pod_key for a in users if a.pod_key in cache.assumed
                              and self.assumed_at.get(a.pod_key, -1) >= since)
                label = state.resources[j] if what == "res" else f"GPU {j}"
                assert not late, f"{late} placed on {name}'s {label} after it was over-committed (step {since})"
        self.full_since = {k: v for k, v in self.full_since.items() if k in full}

    @invariant()
    def no_gang_stays_half_bound(self) -> None:
        """Evaluated on the API's view while every watch works (the scheduler cannot know better otherwise)."""
        live = self.live
        if self.broken:
            self.incomplete_since.clear()
            return
        pods = self.pods()
        nodes = {key_of(o) for o in self.objs(self.api, "nodes")}
        now = live.now
        for g in GROUP_NAMES:
            key = f"{NS}/{g}"
            members = {k: o for k, o in pods.items() if group_of(o) == g}
            bound = [k for k, o in members.items() if ours(o) and bound_to(o) in nodes and phase(o) not in TERMINAL]
            have = len(bound) + sum(1 for o in members.values() if phase(o) == "Succeeded")
            obj = self.api.get(("podgroups", key))
            mm = obj["spec"]["minMember"] if obj is not None else 0
            timeout: float = GANG_TIMEOUT
            if mm >= 1:
                incomplete = have < mm
                timeout = obj["spec"].get("scheduleTimeoutSeconds") or GANG_TIMEOUT  # type: ignore[index]
            else:  # deleted or invalid: the last minMember seen, else "while a member waits"
                pending = [k for k, o in members.items() if ours(o) and not bound_to(o) and phase(o) not in TERMINAL
                           and not o["metadata"].get("deletionTimestamp") and k not in live.cache.assumed]
                need = self.min_known.get(key)
                incomplete = (need is not None and have < need) or bool(pending)
            if not bound or not incomplete:
                self.incomplete_since.pop(key, None)
                continue
            since = self.incomplete_since.setdefault(key, now)
            assert now - since <= timeout + 2 * max(ADVANCE), \
                f"gang {key} has had {sorted(bound)} of minMember={mm} bound for {now - since:.1f}s"


LiveBooks.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                                       derandomize=False,
                                       suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestLiveBooks = LiveBooks.TestCase
