"""RescuedTask: what a rescue sink stores of each rescued task."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from gobucket.config import TaskType

__all__ = ["RescuedTask"]


@dataclass(frozen=True, slots=True)
class RescuedTask:
    """A task taken out of a dying process, to be filled again later by :func:`replay`.

    Attributes:
        bucket: the name of the bucket it lived in.
        task_id: its id.
        task_type: immediate or time bomb.
        data: what it was filled with (anything msgpack can carry).
        remaining_life: seconds of life span it had left when rescued.
        remaining_wait: seconds a time bomb still had to wait (0 once started).
        rescued_at: wall-clock time of the rescue (``time.time()``).
        key: the sink's own handle on the stored record (set when read back).
    """

    bucket: str
    task_id: str
    task_type: TaskType
    data: Any
    remaining_life: float
    remaining_wait: float = 0.0
    rescued_at: float = field(default_factory=time.time)
    key: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (data as base64 msgpack, so bytes and nesting survive)."""
        return {
            "bucket": self.bucket,
            "id": self.task_id,
            "type": self.task_type.value,
            "data": base64.b64encode(msgpack.packb(self.data, use_bin_type=True)).decode("ascii"),
            "remaining_life": self.remaining_life,
            "remaining_wait": self.remaining_wait,
            "rescued_at": self.rescued_at,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any], key: str = "") -> RescuedTask:
        """Rebuild a record written by :meth:`to_dict`."""
        return cls(
            bucket=str(raw["bucket"]),
            task_id=str(raw["id"]),
            task_type=TaskType(raw["type"]),
            data=msgpack.unpackb(base64.b64decode(raw["data"]), raw=False),
            remaining_life=float(raw["remaining_life"]),
            remaining_wait=float(raw.get("remaining_wait", 0.0)),
            rescued_at=float(raw.get("rescued_at", 0.0)),
            key=key,
        )
