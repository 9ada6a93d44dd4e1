"""Pod watch streams read as protobuf, translated to the dicts the cache reads.

Why: at 100,000 pods the API server spends 8-11 s of this machine's 2 cores encoding a watch-list stream as
JSON, 3-4x what the same stream costs it as protobuf (benchmarks/README.md, "Restart at scale"). Only pods are
read this way (the one collection that size); custom resources have no protobuf encoding at all.

The stream (`Accept: application/vnd.kubernetes.protobuf;stream=watch`): frames of a 4-byte big-endian length
and a `meta.v1.WatchEvent`, whose object is a protobuf envelope: the magic `k8s\\0`, then a `runtime.Unknown`
holding the kind and the object's own bytes (apimachinery's `runtime/serializer/protobuf`).

`pod_dict` builds a dict shaped as the pod's JSON, of the fields anything here reads (`live.cache`,
`live.translate`, the extender, preemption, events; `tests/test_podproto.py` checks the books come out the
same both ways). Go writes a non-pointer field even when empty, JSON omits it (`omitempty`): empty strings, zeros,
lists and maps are left out as JSON leaves them out; pointer fields that differ from absent when zero
(`priority`) are kept by presence.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from gangsched.live.k8spb import core_v1_pb2, meta_v1_pb2, runtime_pb2

ACCEPT_WATCH = "application/vnd.kubernetes.protobuf;stream=watch"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"
_LENGTH = struct.Struct(">I")


class FrameError(ValueError):
    """A stream or object that is not the protobuf the API server writes."""


def frames(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The length-delimited frames of a stream, whatever the chunks' boundaries."""
    buf = b""
    for chunk in chunks:
        buf = buf + chunk if buf else chunk
        pos, end = 0, len(buf)
        while end - pos >= 4:
            (n,) = _LENGTH.unpack_from(buf, pos)
            if end - pos - 4 < n:
                break
            yield buf[pos + 4:pos + 4 + n]
            pos += 4 + n
        buf = buf[pos:]
    if buf:
        raise FrameError(f"the stream ended inside a frame ({len(buf)} bytes left)")


def event(frame: bytes) -> dict:
    """One frame as a watch event dict: {"type", "object"}, the object a pod dict, or a Status's code, reason
    and message for an ERROR."""
    try:
        ev = meta_v1_pb2.WatchEvent.FromString(frame)
        kind, raw = unwrap(ev.object.raw)
        if kind == "Status":
            return {"type": ev.type, "object": _status(raw)}
        if kind != "Pod":
            raise FrameError(f"a watch event of kind {kind!r} in a pod stream")
        return {"type": ev.type, "object": pod_dict(core_v1_pb2.Pod.FromString(raw))}
    except DecodeError as e:
        raise FrameError(f"not a protobuf watch event: {e}") from None


def status(data: bytes) -> dict:
    """An enveloped meta.v1.Status (an error reply) as its JSON's kind, code, reason and message."""
    kind, raw = unwrap(data)
    if kind != "Status":
        raise FrameError(f"a {kind!r} where a Status was expected")
    try:
        return _status(raw)
    except DecodeError as e:
        raise FrameError(f"not a protobuf Status: {e}") from None


def _status(raw: bytes) -> dict:
    st = meta_v1_pb2.Status.FromString(raw)
    return {"kind": "Status", "code": st.code, "reason": st.reason, "message": st.message}


def unwrap(data: bytes) -> tuple[str, bytes]:
    """The kind and the object's bytes of an API server protobuf envelope."""
    if not data.startswith(MAGIC):
        raise FrameError("an object without the protobuf envelope's k8s\\0 prefix")
    try:
        u = runtime_pb2.Unknown.FromString(data[len(MAGIC):])
    except DecodeError as e:
        raise FrameError(f"not a protobuf envelope: {e}") from None
    return u.typeMeta.kind, u.raw


# ---- pods ------------------------------------------------------------------------------------------------------
def pod_dict(p: Any) -> dict:
    m, s, st = p.metadata, p.spec, p.status
    meta: dict[str, Any] = {"name": m.name, "namespace": m.namespace}
    for f in ("uid", "resourceVersion", "generateName"):
        if v := getattr(m, f):
            meta[f] = v
    if m.labels:
        meta["labels"] = dict(m.labels)
    if m.annotations:
        meta["annotations"] = dict(m.annotations)
    for f in ("creationTimestamp", "deletionTimestamp"):
        if m.HasField(f) and (v := _time(getattr(m, f))):
            meta[f] = v
    if m.ownerReferences:
        meta["ownerReferences"] = [plain(o) for o in m.ownerReferences]
    if m.finalizers:
        meta["finalizers"] = list(m.finalizers)

    spec: dict[str, Any] = {}
    for f in ("nodeName", "schedulerName", "priorityClassName", "preemptionPolicy", "restartPolicy"):
        if v := getattr(s, f):
            spec[f] = v
    if s.HasField("priority"):
        spec["priority"] = s.priority
    spec["containers"] = [_container(c) for c in s.containers]
    if s.initContainers:
        spec["initContainers"] = [_container(c) for c in s.initContainers]
    if s.nodeSelector:
        spec["nodeSelector"] = dict(s.nodeSelector)
    if s.overhead:
        spec["overhead"] = {k: q.string for k, q in s.overhead.items()}
    for f in ("affinity", "resources", "schedulingGroup"):
        if s.HasField(f):
            spec[f] = plain(getattr(s, f))
    if s.tolerations:
        spec["tolerations"] = [plain(t) for t in s.tolerations]
    if s.schedulingGates:
        spec["schedulingGates"] = [plain(g) for g in s.schedulingGates]

    status: dict[str, Any] = {}
    for f in ("phase", "nominatedNodeName", "resize"):
        if v := getattr(st, f):
            status[f] = v
    if st.HasField("startTime") and (v := _time(st.startTime)):
        status["startTime"] = v
    if st.conditions:
        status["conditions"] = [plain(c) for c in st.conditions]
    for f in ("containerStatuses", "initContainerStatuses"):
        if statuses := getattr(st, f):
            status[f] = [_container_status(c) for c in statuses]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def _container(c: Any) -> dict:
    out: dict[str, Any] = {"name": c.name}
    if c.HasField("resources"):
        out["resources"] = plain(c.resources)
    if c.HasField("restartPolicy"):
        out["restartPolicy"] = c.restartPolicy
    return out


def _container_status(c: Any) -> dict:
    out: dict[str, Any] = {"name": c.name}
    if c.allocatedResources:
        out["allocatedResources"] = {k: q.string for k, q in c.allocatedResources.items()}
    if c.HasField("resources"):
        out["resources"] = plain(c.resources)
    return out


def _time(t: Any) -> str | None:
    """meta.v1.Time as its JSON: RFC 3339 in whole seconds; the zero time (an empty message) is JSON's null."""
    if not t.seconds and not t.nanos:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t.seconds))


def _micro_time(t: Any) -> str | None:
    if not t.seconds and not t.nanos:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t.seconds)) + f".{t.nanos // 1000:06d}Z"


def _int_or_string(v: Any) -> int | str:
    return v.strVal if v.type == 1 else v.intVal


# ---- any message, as its JSON would read -----------------------------------------------------------------------
_SPECIAL: dict[str, Callable[[Any], Any]] = {
    "k8s.io.apimachinery.pkg.api.resource.Quantity": lambda q: q.string,
    "k8s.io.apimachinery.pkg.apis.meta.v1.Time": _time,
    "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime": _micro_time,
    "k8s.io.apimachinery.pkg.util.intstr.IntOrString": _int_or_string,
}
_SKIPPED = {"k8s.io.apimachinery.pkg.runtime.RawExtension", "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1"}
_converters: dict[FieldDescriptor, Callable[[Any], Any] | None] = {}


def plain(msg: Message) -> Any:
    """A message as the dict its JSON decodes to (rarer and smaller parts of a pod: affinity, tolerations,
    resources, conditions); the four types with a JSON form of their own as that form."""
    special = _SPECIAL.get(msg.DESCRIPTOR.full_name)
    if special is not None:
        return special(msg)
    out = {}
    for fd, v in msg.ListFields():
        conv = _converters.get(fd, _converters)
        if conv is _converters:
            conv = _converters[fd] = _converter(fd)
        if conv is None:
            continue
        v = conv(v)
        if v:  # Go writes non-pointer zeros, JSON omits them; a pointer's zero or false reads the
            out[fd.name] = v  # same as absent to everything here (tolerationSeconds, controller, ...)
    return out


def _converter(fd: FieldDescriptor) -> Callable[[Any], Any] | None:
    if fd.type != FieldDescriptor.TYPE_MESSAGE:
        if fd.type == FieldDescriptor.TYPE_BYTES:
            return None  # nothing read here is bytes (JSON would show base64)
        return list if fd.is_repeated else _same
    mt: Descriptor = fd.message_type
    if mt.full_name in _SKIPPED:
        return None
    if mt.GetOptions().map_entry:
        value = mt.fields_by_name["value"]
        if value.type != FieldDescriptor.TYPE_MESSAGE:
            return dict
        return lambda m: {k: plain(x) for k, x in m.items()}
    if fd.is_repeated:
        return lambda xs: [plain(x) for x in xs]
    return plain


def _same(v: Any) -> Any:
    return v
