"""Unstorable values are refused before any write, with a message naming the value; storable ones are stored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from core4celery.clock import now
from core4celery.config.options import JobOptions
from core4celery.errors import InvalidArguments
from core4celery.store.document import new_job
from core4celery.store.values import DOCUMENT_MARGIN, MAX_BSON_SIZE, MAX_DEPTH, check_json, check_storable

from .conftest import Registry

LIMIT = MAX_BSON_SIZE - DOCUMENT_MARGIN


def nested(depth: int) -> list[Any]:
    """A list nested ``depth`` levels deep, built without recursion."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def nested_dict(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


CHECKS: dict[str, Callable[[Any, str], None]] = {"check_json": check_json, "check_storable": check_storable}

REFUSED = [
    pytest.param({"n": 2**63}, ["args['n']", "9223372036854775808", "8-byte"], id="int64-max-plus-one"),
    pytest.param({"n": [1, -(2**63) - 1]}, ["args['n'][1]", "-9223372036854775809"], id="int64-min-minus-one"),
    pytest.param(
        {"n": 10**5000}, ["args['n']", "8-byte"], id="huge-int",
    ),
    pytest.param({"a": ["ok", "x\udc80"]}, ["args['a'][1]", "'\\udc80'", "surrogate"], id="lone-surrogate"),
    pytest.param({"k\udc80": 1}, ["args", "surrogate"], id="lone-surrogate-in-key"),
    pytest.param({"outer": {"a\x00b": 1}}, ["args['outer']", "'a\\x00b'", "NUL"], id="nul-in-key"),
    pytest.param({"outer": [{"$where": 1}]}, ["args['outer'][0]", "'$where'", "'$'"], id="dollar-key"),
    pytest.param({"a.b": 1}, ["args", "'a.b'"], id="dot-key"),
    pytest.param({1: "x"}, ["args", "key 1 is a int"], id="int-key"),
    pytest.param({"blob": "x" * (LIMIT + 1)}, ["args:", "bytes exceed the storable size"], id="over-16mb"),
    pytest.param({"deep": nested(100_000)}, ["args['deep'][0][0]", f"nested deeper than {MAX_DEPTH}"],
                 id="100000-deep-list"),
    pytest.param(nested_dict(100_000), ["args['k']['k']", f"nested deeper than {MAX_DEPTH}"], id="100000-deep-dict"),
]


@pytest.mark.parametrize("check", list(CHECKS), ids=list(CHECKS))
@pytest.mark.parametrize(("value", "named"), REFUSED)
def test_unstorable_values_are_refused_naming_the_value(check: str, value: Any, named: list[str]) -> None:
    with pytest.raises(InvalidArguments) as caught:
        CHECKS[check](value, "args")
    message = str(caught.value)
    for part in named:
        assert part in message, f"{part!r} not in {message[:300]!r}"
    assert len(message) < 2000  # names the value, does not dump it


@pytest.mark.parametrize("value", [float("nan"), float("inf"), (1, 2), {"s": {1, 2}}, b"bytes"])
def test_check_json_refuses_what_a_json_round_trip_changes(value: Any) -> None:
    with pytest.raises(InvalidArguments, match=r"^result"):
        check_json(value, "result")


def test_check_storable_accepts_what_bson_stores_but_json_does_not() -> None:
    check_storable(float("nan"), "progress message")
    check_storable("text with \x00 inside", "progress message")  # NUL is fine in a value, only keys refuse it


def test_values_at_the_limits_pass_and_are_stored_by_the_server(reg: Registry) -> None:
    """What the checks accept really is storable: each value goes into a job document on the server."""
    accepted: list[dict[str, Any]] = [
        {"n": 2**63 - 1, "m": -(2**63)},
        {"deep": nested(MAX_DEPTH)},
        {"text": "unicode ✓ \U0001f600", "nul": "a\x00b"},
        {"blob": "x" * (LIMIT - 1024)},
    ]
    for index, args in enumerate(accepted):
        check_json(args, "args")
        check_storable(args, "args")
        doc = new_job("limits", {**args, "i": index}, JobOptions(), query_at=now())
        reg.store.enqueue(doc)
        stored = reg.live(doc["_id"])
        assert stored is not None and stored["args"] == doc["args"]


def test_a_refused_value_was_really_unstorable(reg: Registry) -> None:
    """The server (through the driver) refuses what the checks refuse: the checks are not stricter than needed."""
    from bson.errors import InvalidDocument

    for args in ({"n": 2**63}, {"a\x00b": 1}):
        with pytest.raises(InvalidArguments):
            check_storable(args, "args")
        doc = new_job("refused", args, JobOptions(), query_at=now())
        with pytest.raises((InvalidDocument, OverflowError)):
            reg.store.enqueue(doc)
    assert reg.connection.jobs.count_documents({"name": "refused"}) == 0
