"""The job-data settings (log cap and level, stdout cap): defaults, the environment, and refusals naming the value."""

from __future__ import annotations

from typing import Any

import pytest

from core4celery.config.settings import Settings
from core4celery.errors import ConfigurationError

URL = "mongodb://h:1/db"


def test_defaults() -> None:
    settings = Settings.from_conf({}, {"CORE4CELERY_MONGODB_URL": URL})
    assert (settings.log_max_records, settings.log_level, settings.stdout_max_bytes) == (1000, "INFO", 64 * 1024)


def test_from_the_environment_and_conf() -> None:
    env = {"CORE4CELERY_MONGODB_URL": URL, "CORE4CELERY_LOG_MAX_RECORDS": "5", "CORE4CELERY_LOG_LEVEL": "debug"}
    settings = Settings.from_conf({"core4celery_stdout_max_bytes": 100, "core4celery_log_level": "ERROR"}, env)
    assert (settings.log_max_records, settings.log_level, settings.stdout_max_bytes) == (5, "DEBUG", 100)


@pytest.mark.parametrize(("name", "value", "shown"), [
    ("log_level", "LOUD", "'LOUD'"),
    ("log_level", 10, "10"),
    ("log_max_records", 0, "0"),
    ("log_max_records", 1.5, "1.5"),
    ("stdout_max_bytes", -1, "-1"),
    ("stdout_max_bytes", True, "True"),
])
def test_bad_values_are_refused_by_name(name: str, value: Any, shown: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{name}.*{shown}"):
        Settings(mongodb_url=URL, **{name: value})


def test_a_bad_number_in_the_environment_is_named() -> None:
    with pytest.raises(ConfigurationError, match=r"CORE4CELERY_LOG_MAX_RECORDS.*'lots'"):
        Settings.from_conf({}, {"CORE4CELERY_MONGODB_URL": URL, "CORE4CELERY_LOG_MAX_RECORDS": "lots"})
