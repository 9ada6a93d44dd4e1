"""One result type for every scheduling outcome, as kube-scheduler's `framework.Status`.

The code says what the caller should do next: SUCCESS binds; UNSCHEDULABLE retries after a backoff or as
soon as capacity is freed; UNRESOLVABLE waits for a change to the gang itself or to the node set (more
capacity elsewhere cannot help); ERROR is a fault of ours, logged, and retried after a backoff.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Code(IntEnum):
    SUCCESS = 0
    UNSCHEDULABLE = 1
    UNRESOLVABLE = 2
    ERROR = 3


@dataclass(frozen=True)
class Status:
    code: Code = Code.SUCCESS
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.code == Code.SUCCESS

    @classmethod
    def unschedulable(cls, message: str) -> Status:
        return cls(Code.UNSCHEDULABLE, message)

    @classmethod
    def unresolvable(cls, message: str) -> Status:
        return cls(Code.UNRESOLVABLE, message)

    @classmethod
    def error(cls, message: str) -> Status:
        return cls(Code.ERROR, message)


SUCCESS = Status()
