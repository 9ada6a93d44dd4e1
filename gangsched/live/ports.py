"""What the live scheduler's loop needs from the outside world, as Protocols: the API-backed implementations
(binder.Binder, events.EventRecorder, podgroups.StatusWriter) in production, plain recorders in unit tests."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gangsched.live.binder import BindRequest


class Recorder(Protocol):
    def record(self, obj: dict, kind: str, reason: str, message: str, warning: bool = True,
               api_version: str = "v1") -> None: ...


class BindSink(Protocol):
    """Posts a binding off the scheduling thread; its outcome comes back as a (BIND, "DONE", BindOutcome)
    event on the loop's queue."""

    def submit(self, req: BindRequest, delay: float = 0.0) -> None: ...

    def shutdown(self) -> None: ...


class StatusSink(Protocol):
    def write(self, key: str, status: dict, api: str = ...) -> None: ...
