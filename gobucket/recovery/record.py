"""RescuedTask: what a rescue sink stores of each rescued task, and how it is encoded.

Two record formats exist (see ``docs/recovery.md``):

* v1 (no ``"v"`` key): ``data`` is base64 msgpack; times are relative to ``rescued_at``.
* v2 (``"v": 2``): absolute wall-clock ``due_at`` and ``deadline_at``; ``data`` is plain
  JSON when it round-trips exactly, else ``data_msgpack`` holds base64 msgpack.

Both are read; only v2 is written.
"""

from __future__ import annotations

import base64
import math
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from gobucket.config import TaskType
from gobucket.errors import InvalidArgumentError

__all__ = ["RECORD_VERSION", "RescuedTask", "check_storable"]

RECORD_VERSION = 2

# Deeper data is not walked (and not stored as plain JSON): json's encoder is recursive
# and msgpack refuses nesting past 512, so such data is refused as a whole.
_MAX_DEPTH = 500


def _is_exact_json(data: Any) -> bool:
    """True when ``json.loads(json.dumps(data)) == data`` holds with the same types.

    A strict type walk (no subclasses): None, bool, int, finite float, str, list,
    and dict with str keys. A tuple would come back as a list, bytes not at all,
    NaN is not JSON: all of those go to msgpack instead. Iterative, so deep or
    cyclic data cannot blow the stack.
    """
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        kind = type(value)
        if value is None or kind is bool or kind is int or kind is str:
            continue
        if kind is float:
            if not math.isfinite(value):
                return False
            continue
        if depth >= _MAX_DEPTH:
            return False
        if kind is list:
            stack.extend((item, depth + 1) for item in value)
        elif kind is dict:
            for key, item in value.items():
                if type(key) is not str:
                    return False
                stack.append((item, depth + 1))
        else:
            return False
    return True


def _pack(data: Any) -> bytes:
    packed: bytes = msgpack.packb(data, use_bin_type=True)
    return packed


def _unpack(packed: bytes) -> Any:
    # strict_map_key=False: int (or bytes) dict keys were packable, so they must read back.
    return msgpack.unpackb(packed, raw=False, strict_map_key=False)


def _unstorable(data: Any, error: BaseException) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"task data of type {type(data).__name__} cannot be stored by a rescue sink "
        f"({error}); use JSON types (dict with str keys, list, str, int, float, bool, "
        "None) or bytes, e.g. an ISO string for a datetime, a list for a set, a str for "
        "a Decimal"
    )


def check_storable(data: Any) -> None:
    """Raise :class:`InvalidArgumentError` unless a rescue sink can store ``data``.

    Storable means plain JSON that round-trips exactly, or anything msgpack packs
    *and* reads back (bytes, tuples — read back as lists —, int keys, NaN...).
    A ``datetime``, ``set``, ``Decimal`` or custom object is refused: at rescue
    time its record could not be written. Cheap for common data: the JSON walk
    is tried first, msgpack only when it fails.
    """
    if _is_exact_json(data):
        return
    try:
        _unpack(_pack(data))
    except Exception as error:  # msgpack raises TypeError, ValueError, OverflowError...
        raise _unstorable(data, error) from error


def _encode_data(data: Any) -> dict[str, Any]:
    """The v2 fields carrying ``data``: ``{"data": ...}`` or ``{"data_msgpack": "<b64>"}``.

    Raises:
        InvalidArgumentError: msgpack cannot pack ``data``.
    """
    if _is_exact_json(data):
        return {"data": data}
    try:
        packed = _pack(data)
    except Exception as error:
        raise _unstorable(data, error) from error
    return {"data_msgpack": base64.b64encode(packed).decode("ascii")}


def _decode_data(raw: dict[str, Any]) -> Any:
    if "data_msgpack" in raw:
        return _unpack(base64.b64decode(raw["data_msgpack"]))
    return raw["data"]


@dataclass(frozen=True, slots=True)
class RescuedTask:
    """A task taken out of a dying process, to be filled again later by :func:`replay`.

    Attributes:
        bucket: the name of the bucket it lived in.
        task_id: its id.
        task_type: immediate or time bomb.
        data: what it was filled with (see :func:`check_storable`).
        remaining_life: seconds of life span it had left when rescued.
        remaining_wait: seconds a time bomb still had to wait (0 once started).
        rescued_at: wall-clock time of the rescue (``time.time()``).
        key: the sink's own handle on the stored record (set when read back).
        due_at: wall-clock time it was due to run; ``rescued_at + remaining_wait``
            when not given.
        deadline_at: wall-clock time its life span runs out; ``rescued_at +
            remaining_life`` when not given.
    """

    bucket: str
    task_id: str
    task_type: TaskType
    data: Any
    remaining_life: float
    remaining_wait: float = 0.0
    rescued_at: float = field(default_factory=time.time)
    key: str = ""
    due_at: float | None = None
    deadline_at: float | None = None

    def __post_init__(self) -> None:
        # Frozen: derived fields are set through object.__setattr__, once, here.
        if self.due_at is None:
            object.__setattr__(self, "due_at", self.rescued_at + self.remaining_wait)
        if self.deadline_at is None:
            object.__setattr__(self, "deadline_at", self.rescued_at + self.remaining_life)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe v2 dict; ``data`` plain when it round-trips exactly.

        Raises:
            InvalidArgumentError: ``data`` cannot be stored (see :func:`check_storable`).
        """
        raw: dict[str, Any] = {
            "v": RECORD_VERSION,
            "bucket": self.bucket,
            "id": self.task_id,
            "type": self.task_type.value,
            "due_at": self.due_at,
            "deadline_at": self.deadline_at,
            "remaining_life": self.remaining_life,
            "remaining_wait": self.remaining_wait,
            "rescued_at": self.rescued_at,
        }
        raw.update(_encode_data(self.data))
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any], key: str = "") -> RescuedTask:
        """Rebuild a record written by :meth:`to_dict` (v2) or by an older version (v1).

        Raises:
            ValueError, KeyError, TypeError: not a record this version can read.
        """
        version = raw.get("v", 1)
        if version == 1:
            data = _unpack(base64.b64decode(raw["data"]))
        elif version == RECORD_VERSION:
            data = _decode_data(raw)
        else:
            raise ValueError(f"unknown record version {version!r}")
        # A record without rescued_at (hand-made) counts no downtime: rescued "now".
        rescued_at = float(raw["rescued_at"]) if "rescued_at" in raw else time.time()
        due_at = raw.get("due_at")
        deadline_at = raw.get("deadline_at")
        return cls(
            bucket=str(raw["bucket"]),
            task_id=str(raw["id"]),
            task_type=TaskType(raw["type"]),
            data=data,
            remaining_life=float(raw["remaining_life"]),
            remaining_wait=float(raw.get("remaining_wait", 0.0)),
            rescued_at=rescued_at,
            key=key,
            due_at=None if due_at is None else float(due_at),
            deadline_at=None if deadline_at is None else float(deadline_at),
        )
