"""The one validated settings object.

Read once from ``app.conf`` and the environment, then passed around frozen, so
a worker, its pool children and the CLI all agree on the same values. Every
setting ``<name>`` is ``app.conf.core4celery_<name>`` or the environment
variable ``CORE4CELERY_<NAME>`` (which wins); both go through the same checks.
The MongoDB URL is never shown: ``repr`` and every message carry it masked.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import quote, unquote

from pymongo.uri_parser import parse_uri

from ..errors import ConfigurationError
from .numbers import check_number, check_seconds

ENV_URL = "CORE4CELERY_MONGODB_URL"
CONF_PREFIX = "core4celery_"
DEFAULT_DATABASE = "core4celery"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAY_BE_ZERO = {"idle_wait"}  # 0 turns the idle wait off
PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
MASK = "****"


def mask_url(url: str) -> str:
    """Hide the password of a MongoDB URL for logs, errors and reprs.

    The user information ends at the *last* ``@`` before the host list, so a
    password holding an unescaped ``/``, ``@`` or ``:`` is masked whole.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, hosts = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':' + MASK if colon else ''}@{hosts}"


def user_of(url: str) -> str | None:
    """The user name a MongoDB URL logs in with (None without credentials)."""
    _, sep, rest = url.partition("://")
    userinfo = rest.rpartition("@")[0] if sep else ""
    return unquote(userinfo.partition(":")[0]) if userinfo else None


def redact(text: str, url: str) -> str:
    """``text`` (an error message, say) without the URL's password, raw or %-encoded."""
    _, sep, rest = url.partition("://")
    userinfo = rest.rpartition("@")[0] if sep else ""
    password = userinfo.partition(":")[2]
    if not password:
        return text
    for secret in {password, unquote(password), quote(unquote(password), safe="")}:
        if secret:
            text = text.replace(secret, MASK)
    return text


@dataclass(frozen=True)
class Settings:
    """Tunable knobs; every duration is in seconds."""

    mongodb_url: str = field(repr=False)
    database: str = DEFAULT_DATABASE
    collection_prefix: str = "core4"
    dispatch_interval: float = 0.25
    heartbeat_interval: float = 1.0
    worker_timeout: float = 10.0
    ticket_lease: float = 30.0
    run_lease: float = 15.0
    dispatch_scan: int = 200
    candidate_ttl: float = 1.0
    outage_timeout: float = 60.0
    idle_wait: float = 1.0
    max_cpu: int = 99  # percent: a worker takes no new non-force job while its least-busy core's mean is above
    min_free_ram: int = 32  # MiB: ... or while its mean free memory is below
    log_max_records: int = 1000  # per run; a chatty job cannot fill the database
    log_level: str = "INFO"  # stored as the run goes; below it, kept only for a failed run
    stdout_max_bytes: int = 64 * 1024  # per run, the tail kept

    def __post_init__(self) -> None:
        if not self.mongodb_url.startswith(("mongodb://", "mongodb+srv://")):
            raise ConfigurationError(
                f"core4celery needs a mongodb:// URL, got {mask_url(self.mongodb_url)!r}"
            )
        if not isinstance(self.database, str) or not self.database:
            raise ConfigurationError(f"setting database must be a non-empty str, got {self.database!r}")
        prefix = self.collection_prefix
        if not isinstance(prefix, str) or not PREFIX_PATTERN.fullmatch(prefix) or prefix.startswith("system"):
            raise ConfigurationError(
                f"setting collection_prefix must be 1-64 letters, digits, '_' or '-' and not start with "
                f"'system', got {prefix!r}"
            )
        for each in fields(self):
            if each.type == "float":
                check_seconds(f"setting {each.name}", getattr(self, each.name), ConfigurationError,
                              zero=each.name in MAY_BE_ZERO)
        check_number("setting dispatch_scan", self.dispatch_scan, ConfigurationError, integer=True, minimum=1,
                     maximum=100_000)
        check_number("setting max_cpu", self.max_cpu, ConfigurationError, integer=True, minimum=1, maximum=100)
        check_number("setting min_free_ram", self.min_free_ram, ConfigurationError, integer=True, minimum=0)
        self._check_job_data()
        if self.heartbeat_interval * 2 > self.worker_timeout:
            raise ConfigurationError("worker_timeout must be at least twice heartbeat_interval")
        if self.heartbeat_interval * 2 > self.run_lease:
            raise ConfigurationError("run_lease must be at least twice heartbeat_interval")

    def _check_job_data(self) -> None:
        """Job logs and stdout are capped per run, so a chatty job cannot fill the database."""
        check_number("setting log_max_records", self.log_max_records, ConfigurationError, integer=True, minimum=1,
                     maximum=1_000_000)
        check_number("setting stdout_max_bytes", self.stdout_max_bytes, ConfigurationError, integer=True, minimum=0,
                     maximum=8 * 1024 * 1024)
        if not isinstance(self.log_level, str) or self.log_level.upper() not in LOG_LEVELS:
            raise ConfigurationError(f"setting log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        object.__setattr__(self, "log_level", self.log_level.upper())  # frozen: normalised once, here

    def __repr__(self) -> str:
        shown = ", ".join(f"{each.name}={getattr(self, each.name)!r}" for each in fields(self) if each.repr)
        return f"Settings(mongodb_url={self.masked_url!r}, {shown})"

    @property
    def masked_url(self) -> str:
        return mask_url(self.mongodb_url)

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
        """Environment wins over ``app.conf``; the broker URL is the last fallback for the MongoDB URL."""
        env = os.environ if environ is None else environ
        check_known(conf, env)
        broker = str(conf.get("broker_url") or "")
        url = env.get(ENV_URL) or conf.get(CONF_PREFIX + "mongodb_url") or broker
        if not url:
            raise ConfigurationError(
                f"no MongoDB URL: set {ENV_URL}, app.conf.core4celery_mongodb_url "
                "or use a mongodb:// broker"
            )
        if not isinstance(url, str):
            raise ConfigurationError(f"setting mongodb_url must be a str, got a {type(url).__name__}")
        values: dict[str, Any] = {}
        for each in fields(cls):
            if each.name in ("mongodb_url", "database"):
                continue
            variable = ENV_PREFIX + each.name.upper()
            if env.get(variable) is not None:
                values[each.name] = from_env(variable, env[variable], str(each.type))
            elif conf.get(CONF_PREFIX + each.name) is not None:
                values[each.name] = conf.get(CONF_PREFIX + each.name)
        return cls(mongodb_url=url, database=database_of(url), **values)


ENV_PREFIX = "CORE4CELERY_"


def setting_names() -> list[str]:
    return [each.name for each in fields(Settings) if each.name != "database"]


def check_known(conf: Mapping[str, Any], env: Mapping[str, str]) -> None:
    """A misspelt setting would silently keep its default: refuse it, suggesting the name meant."""
    names = setting_names()
    keys = [(key, key[len(CONF_PREFIX):], "app.conf") for key in conf if str(key).startswith(CONF_PREFIX)]
    keys += [(key, key[len(ENV_PREFIX):].lower(), "environment variable") for key in env
             if key.startswith(ENV_PREFIX) and key not in IGNORED_ENV]
    for key, name, where in keys:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(names)}"
            raise ConfigurationError(f"unknown core4celery setting {key!r} ({where}){hint}")


# variables of the same prefix that are not settings (tools and tests read them)
IGNORED_ENV = {"CORE4CELERY_COUNT_COMMANDS", "CORE4CELERY_BENCH_CONF", "CORE4CELERY_BENCH_RESULTS",
               "CORE4CELERY_BENCH_PLAIN_URL", "CORE4CELERY_SERVER"}


def from_env(variable: str, text: str, kind: str) -> Any:
    """An environment value parsed as its setting's type (checked like any other value afterwards)."""
    if kind == "str":
        return text
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        raise ConfigurationError(f"{variable} must be {'an int' if kind == 'int' else 'a number'}, got {text!r}") from None


def database_of(url: str) -> str:
    try:
        parsed = parse_uri(url)
    except Exception as exc:  # pymongo raises several types for bad URLs, some quoting the password
        raise ConfigurationError(f"invalid MongoDB URL {mask_url(url)!r}: {redact(str(exc), url)}") from None
    return parsed.get("database") or DEFAULT_DATABASE
