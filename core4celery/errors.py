"""Errors raised by core4celery.

Every error derives from :class:`Core4Error`, so callers can catch one root::

    Core4Error
     ├── ConfigurationError   settings or the registry connection are unusable
     ├── RegistryUnavailable  the server stayed unreachable for longer than outage_timeout
     ├── InvalidOption        a task option is invalid (raised when the task is defined)
     ├── InvalidArguments     job arguments are not JSON-safe or do not fit the task
     ├── UnknownTask          no core4 task is registered under that name
     ├── JobExists            a live job with the same name and arguments exists
     ├── JobNotFound          no live or journaled job has that id
     ├── OperationRefused     an operation is not allowed in the job's current state
     └── DependencyFailed     a job a waiting job depends on ended without completing

Deferring is not an error; see :mod:`core4celery.signals`.
"""

from __future__ import annotations


class Core4Error(Exception):
    """Root of every error core4celery raises."""


class ConfigurationError(Core4Error):
    """Settings are missing or invalid, or MongoDB cannot be reached."""


class RegistryUnavailable(Core4Error):
    """MongoDB could not be reached within ``outage_timeout``; nothing was decided."""


class InvalidOption(Core4Error, ValueError):
    """A core4 task option has a wrong type or value."""


class InvalidArguments(Core4Error, ValueError):
    """Job arguments cannot be stored as JSON or do not match the task."""


class UnknownTask(Core4Error, LookupError):
    """The task name is not a registered core4 task."""


class JobExists(Core4Error):
    """core4 allows one live job per (name, arguments)."""

    def __init__(self, name: str, job_id: str | None) -> None:
        self.name = name
        self.job_id = job_id
        super().__init__(f"job {name} with these arguments exists already (id {job_id})")

    def __reduce__(self) -> tuple[type, tuple[str, str | None]]:
        """Rebuilt from its fields, so it survives the copy Celery makes of an eager run's exception."""
        return type(self), (self.name, self.job_id)


class JobNotFound(Core4Error, LookupError):
    """Neither the live registry nor the journal holds the id."""


class OperationRefused(Core4Error):
    """The job's state does not allow the requested operation."""


class DependencyFailed(Core4Error):
    """A job this one waited for (``dependency``, a chain's previous step) ended in error, killed or inactive."""
