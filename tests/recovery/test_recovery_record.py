"""RescuedTask records: the v2 format (wall-clock times, plain-JSON data when exact), the
v1 format still read, and check_storable() refusing data no sink could store."""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import math
import time
from typing import Any

import msgpack
import pytest

from gobucket import RescuedTask, TaskType
from gobucket.errors import InvalidArgumentError
from gobucket.recovery.record import check_storable


def record(data: Any, **fields: Any) -> RescuedTask:
    fields.setdefault("remaining_life", 30.0)
    fields.setdefault("remaining_wait", 2.5)
    return RescuedTask("mail", "t1", TaskType.TIME_BOMB, data, **fields)


def through_json(task: RescuedTask) -> tuple[dict[str, Any], RescuedTask]:
    """What a sink stores (the dict as JSON text) and what it reads back."""
    stored = json.loads(json.dumps(task.to_dict()))
    return stored, RescuedTask.from_dict(stored, key="k")


EXACT_JSON = [
    None,
    True,
    0,
    -(2**70),  # Python's json keeps big ints exact
    1.5,
    -0.0,
    "ünïcode \u2603 \ud83d",  # even a lone surrogate survives JSON's escaping
    [],
    {},
    {"to": "a@example.com", "n": 3, "tags": ["x", None, 2.25, False], "deep": {"a": [[{}]]}},
]

NOT_JSON = [
    (b"\x00\xffraw", b"\x00\xffraw"),
    ({"blob": b"\x01", "n": 1}, {"blob": b"\x01", "n": 1}),
    ({1: "one", 2: "two"}, {1: "one", 2: "two"}),  # int keys would become strings in JSON
    ((1, "two", None), [1, "two", None]),  # a tuple reads back as a list (as on the wire)
    ([1, (2, 3)], [1, [2, 3]]),
    ({"n": math.inf}, {"n": math.inf}),  # not JSON at all
]


@pytest.mark.parametrize("data", EXACT_JSON, ids=repr)
def test_json_data_is_stored_as_plain_json_in_a_v2_record(data):
    stored, again = through_json(record(data))
    assert stored["v"] == 2
    assert stored["data"] == data and type(stored["data"]) is type(data)
    assert "data_msgpack" not in stored
    assert again.data == data and type(again.data) is type(data)


@pytest.mark.parametrize(("data", "read_back"), NOT_JSON, ids=repr)
def test_other_data_goes_to_data_msgpack_and_round_trips(data, read_back):
    stored, again = through_json(record(data))
    assert stored["v"] == 2
    assert "data" not in stored
    assert msgpack.unpackb(base64.b64decode(stored["data_msgpack"]), strict_map_key=False) == (
        read_back
    )
    assert again.data == read_back


def test_nan_goes_to_msgpack_and_reads_back_as_nan():
    stored, again = through_json(record([math.nan]))
    assert "data_msgpack" in stored
    assert math.isnan(again.data[0])


def test_due_at_and_deadline_at_are_wall_clock_and_derived_from_rescued_at():
    task = record(None, remaining_life=30.0, remaining_wait=2.5, rescued_at=1000.0)
    assert task.due_at == 1002.5
    assert task.deadline_at == 1030.0
    stored, again = through_json(task)
    assert stored["due_at"] == 1002.5 and stored["deadline_at"] == 1030.0
    assert stored["rescued_at"] == 1000.0
    assert stored["remaining_life"] == 30.0 and stored["remaining_wait"] == 2.5
    assert again == RescuedTask(
        "mail", "t1", TaskType.TIME_BOMB, None, 30.0, 2.5, 1000.0, "k", 1002.5, 1030.0
    )


def test_explicit_due_at_and_deadline_at_are_kept():
    task = record(None, rescued_at=1000.0, due_at=5.0, deadline_at=6.0)
    assert (task.due_at, task.deadline_at) == (5.0, 6.0)
    _, again = through_json(task)
    assert (again.due_at, again.deadline_at) == (5.0, 6.0)


def test_rescued_at_defaults_to_now():
    before = time.time()
    task = record(None, remaining_wait=1.0, remaining_life=2.0)
    after = time.time()
    assert before <= task.rescued_at <= after
    assert task.due_at == task.rescued_at + 1.0
    assert task.deadline_at == task.rescued_at + 2.0


# A line as gobucket 0.1 wrote it: no "v", data base64 msgpack, times relative.
V1_DATA = {"i": 7, "blob": b"\x00\x01", "tags": ["x", None]}
V1_LINE = json.dumps(
    {
        "bucket": "mail",
        "id": "old-1",
        "type": "time_bomb",
        "data": base64.b64encode(msgpack.packb(V1_DATA, use_bin_type=True)).decode(),
        "remaining_life": 40.0,
        "remaining_wait": 4.0,
        "rescued_at": 2000.0,
        "key": "abc",
    }
)


def test_an_old_format_record_still_reads():
    task = RescuedTask.from_dict(json.loads(V1_LINE), key="abc")
    assert task.task_id == "old-1" and task.task_type is TaskType.TIME_BOMB
    assert task.data == V1_DATA
    assert (task.remaining_life, task.remaining_wait, task.rescued_at) == (40.0, 4.0, 2000.0)
    assert (task.due_at, task.deadline_at) == (2004.0, 2040.0)  # derived
    assert task.key == "abc"


def test_an_old_format_record_with_int_keys_reads():
    raw = json.loads(V1_LINE)
    raw["data"] = base64.b64encode(msgpack.packb({1: "a"}, use_bin_type=True)).decode()
    assert RescuedTask.from_dict(raw).data == {1: "a"}


def test_an_unknown_record_version_is_refused():
    raw = record(None).to_dict()
    raw["v"] = 3
    with pytest.raises(ValueError, match="version"):
        RescuedTask.from_dict(raw)


class Custom:
    pass


UNSTORABLE = [
    datetime.datetime(2024, 1, 2, 3, 4, 5),
    {"when": datetime.date(2024, 1, 2)},
    {1, 2, 3},
    frozenset({1}),
    decimal.Decimal("1.10"),
    [1, {"price": decimal.Decimal("2")}],
    Custom(),
    1 + 2j,
    {(1, 2): "tuple key"},  # packs, but cannot be read back (a list key is unhashable)
    (2**70,),  # not JSON (a tuple), and beyond msgpack's 64-bit ints
]


@pytest.mark.parametrize("data", UNSTORABLE, ids=lambda d: type(d).__name__)
def test_check_storable_refuses_what_no_sink_can_store(data):
    with pytest.raises(InvalidArgumentError) as caught:
        check_storable(data)
    message = str(caught.value)
    assert type(data).__name__ in message
    assert "rescue sink" in message and "JSON" in message  # says what to use instead
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "data",
    [*EXACT_JSON, *(pair[0] for pair in NOT_JSON), [math.nan], bytearray(b"x")],
    ids=repr,
)
def test_check_storable_accepts_json_and_msgpack_data(data):
    check_storable(data)


def test_to_dict_of_unstorable_data_raises_invalid_argument():
    with pytest.raises(InvalidArgumentError, match="set"):
        record({1, 2}).to_dict()


def test_deep_or_cyclic_data_is_refused_without_blowing_the_stack():
    deep: list[Any] = []
    node = deep
    for _ in range(100_000):
        node.append([])
        node = node[0]
    with pytest.raises(InvalidArgumentError):
        check_storable(deep)
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    with pytest.raises(InvalidArgumentError):
        check_storable(cyclic)
    cyclic_dict: dict[str, Any] = {}
    cyclic_dict["self"] = cyclic_dict
    with pytest.raises(InvalidArgumentError):
        check_storable(cyclic_dict)


def test_moderately_deep_json_is_still_plain():
    data: Any = "leaf"
    for _ in range(200):
        data = {"d": [data]}
    stored, again = through_json(record(data))
    assert "data" in stored and again.data == data
