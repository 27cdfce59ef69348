"""core4celery: core4's job semantics on Celery with a MongoDB registry."""

import logging

from .backend import JobFailed
from .config.settings import Settings
from .core import Core4
from .errors import (
    ConfigurationError,
    Core4Error,
    InvalidArguments,
    InvalidOption,
    JobExists,
    JobNotFound,
    OperationRefused,
    RegistryUnavailable,
    UnknownTask,
)
from .metrics import install_from_env
from .signals import JobDeferred
from .store.states import State
from .task import Core4Task

__all__ = [
    "ConfigurationError", "Core4", "Core4Error", "Core4Task", "InvalidArguments", "InvalidOption",
    "JobDeferred", "JobExists", "JobFailed", "JobNotFound", "OperationRefused", "RegistryUnavailable", "Settings",
    "State", "UnknownTask",
]
__version__ = "0.1.0"

# a library logs, the application decides where to (no "No handlers could be found" line on stderr)
logging.getLogger(__name__).addHandler(logging.NullHandler())
install_from_env()  # opt-in command counting; clients are created lazily, so every one is counted
