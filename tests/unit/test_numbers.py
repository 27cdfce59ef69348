"""Case 6 of the lifecycle issue: every number is finite, in range and not a bool, refused where it is written."""

from __future__ import annotations

import math

import pytest
from celery import Celery

from core4celery import ConfigurationError, Core4, Core4Task, InvalidArguments, InvalidOption
from core4celery.config.settings import Settings
from core4celery.core import Core4 as Handle

URL = "mongodb://127.0.0.1:1/unit?retryWrites=false&serverSelectionTimeoutMS=200"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("wall_time", math.inf, "wall_time must be a finite number, got inf"),
        ("defer_time", math.nan, "defer_time must be a finite number, got nan"),
        ("defer_time", math.inf, "defer_time must be a finite number, got inf"),
        ("defer_time", 1e12, "defer_time must be at most"),
        ("defer_max", -math.inf, "defer_max must be a finite number"),
        ("error_time", 1e12, "error_time must be at most"),
        ("zombie_time", True, "zombie_time must be a number, got True"),
        ("max_parallel", 2**63, "max_parallel 9223372036854775808 exceeds MongoDB's 8-byte int range"),
        ("priority", -(2**70), "exceeds MongoDB's 8-byte int range"),
        ("attempts", True, "attempts must be an int, got True"),
    ],
)
def test_bad_numbers_fail_at_definition(option: str, value: object, message: str) -> None:
    app = Celery("unit", broker=URL)
    Core4(app)
    with pytest.raises(InvalidOption, match=message.replace("(", r"\(")):
        @app.task(base=Core4Task, shared=False, author="t", **{option: value})
        def job() -> None: ...


@pytest.mark.parametrize("countdown", [math.inf, math.nan, 1e12, -1, True])
def test_bad_countdown_is_refused(countdown: object) -> None:
    with pytest.raises(InvalidArguments, match="countdown"):
        Handle._first_due(countdown, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("dispatch_interval", math.inf, "dispatch_interval must be a finite number"),
        ("worker_timeout", math.inf, "worker_timeout must be a finite number"),
        ("ticket_lease", 1e12, "ticket_lease must be at most"),
        ("heartbeat_interval", True, "heartbeat_interval must be a number, got True"),
        ("outage_timeout", math.nan, "outage_timeout must be a finite number"),
        ("dispatch_scan", 0, "dispatch_scan must be an int >= 1"),
        ("dispatch_scan", -5, "dispatch_scan must be an int >= 1"),
        ("dispatch_scan", "abc", "dispatch_scan must be an int, got 'abc'"),
        ("dispatch_scan", True, "dispatch_scan must be an int, got True"),
        ("collection_prefix", "", "collection_prefix must be 1-64 letters"),
    ],
)
def test_bad_settings_are_refused(setting: str, value: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_conf({"broker_url": URL, f"core4celery_{setting}": value}, environ={})


def test_settings_defaults_are_valid() -> None:
    settings = Settings.from_conf({"broker_url": URL}, environ={})
    assert settings.outage_timeout == 60.0 and settings.dispatch_scan == 200
