"""The one validated settings object.

Read once from ``app.conf`` and the environment, then passed around frozen, so
a worker, its pool children and the CLI all agree on the same values.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from pymongo.uri_parser import parse_uri

from ..errors import ConfigurationError
from .numbers import check_number, check_seconds

ENV_URL = "CORE4CELERY_MONGODB_URL"
CONF_PREFIX = "core4celery_"
DEFAULT_DATABASE = "core4celery"


def mask_url(url: str) -> str:
    """Hide the password of a MongoDB URL for logs and error messages."""
    return re.sub(r"(//[^:/@]+:)[^@/]*@", r"\1****@", url)


@dataclass(frozen=True)
class Settings:
    """Tunable knobs; every duration is in seconds."""

    mongodb_url: str
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

    def __post_init__(self) -> None:
        if not self.mongodb_url.startswith(("mongodb://", "mongodb+srv://")):
            raise ConfigurationError(
                f"core4celery needs a mongodb:// URL, got {mask_url(self.mongodb_url)!r}"
            )
        for name in ("database", "collection_prefix"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigurationError(f"setting {name} must be a non-empty str, got {getattr(self, name)!r}")
        for field in fields(self):
            if field.type == "float":
                check_seconds(f"setting {field.name}", getattr(self, field.name), ConfigurationError)
        check_number("setting dispatch_scan", self.dispatch_scan, ConfigurationError, integer=True, minimum=1,
                     maximum=100_000)
        if self.heartbeat_interval * 2 > self.worker_timeout:
            raise ConfigurationError("worker_timeout must be at least twice heartbeat_interval")
        if self.heartbeat_interval * 2 > self.run_lease:
            raise ConfigurationError("run_lease must be at least twice heartbeat_interval")

    @property
    def masked_url(self) -> str:
        return mask_url(self.mongodb_url)

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
        """Environment wins over ``app.conf``; the broker URL is the last fallback."""
        env = os.environ if environ is None else environ
        broker = str(conf.get("broker_url") or "")
        url = env.get(ENV_URL) or conf.get(CONF_PREFIX + "mongodb_url") or broker
        if not url:
            raise ConfigurationError(
                f"no MongoDB URL: set {ENV_URL}, app.conf.core4celery_mongodb_url "
                "or use a mongodb:// broker"
            )
        extra: dict[str, Any] = {}
        for field in fields(cls):
            key = CONF_PREFIX + field.name
            if field.name not in ("mongodb_url", "database") and conf.get(key) is not None:
                extra[field.name] = conf.get(key)
        return cls(mongodb_url=url, database=database_of(url), **extra)


def database_of(url: str) -> str:
    try:
        parsed = parse_uri(url)
    except Exception as exc:  # pymongo raises several types for bad URLs
        raise ConfigurationError(f"invalid MongoDB URL {mask_url(url)!r}: {exc}") from None
    return parsed.get("database") or DEFAULT_DATABASE
