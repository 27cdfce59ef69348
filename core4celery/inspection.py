"""What ``celery inspect``, ``celery report`` and Flower get from a worker, with passwords masked.

Celery masks a setting only when its name matches a fixed pattern (``PASS``,
``KEY``, ``SECRET``, ...) or is its own broker or backend URL, so
``core4celery_mongodb_url`` and any URL a user keeps under another name went
out in clear; and kombu's MongoDB transport keeps the whole broker URI as the
connection's hostname, which ``stats`` (Flower's worker page) reports.
Celery's remote-control registry takes the last command registered under a
name, so the ``conf``, ``stats`` and ``report`` commands are registered again
here around Celery's own (:func:`mask_remote_inspection`), masking every URL
in their replies.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from celery.worker.control import Panel

from .config.settings import mask_url

URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


def hide_secrets(value: Any) -> Any:
    """``value`` with the password of every URL in it masked (strings, and inside lists and mappings)."""
    if isinstance(value, str):
        return URL.sub(lambda found: mask_url(found.group(0)), value) if "://" in value else value
    if isinstance(value, dict):
        return {key: hide_secrets(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(hide_secrets(item) for item in value)
    return value


def _masked(name: str) -> None:
    """Register Celery's command ``name`` again, its reply passed through :func:`hide_secrets`."""
    original: Callable[..., Any] = Panel.data[name]
    if getattr(original, "masks_secrets", False):
        return  # registered already (the module was imported again)
    meta = Panel.meta[name]

    def command(state: Any, *args: Any, **kwargs: Any) -> Any:
        return hide_secrets(original(state, *args, **kwargs))

    command.__doc__ = original.__doc__
    command.masks_secrets = True  # type: ignore[attr-defined]
    Panel.register(command, name=name, alias=meta.alias, type=meta.type, visible=meta.visible,
                   default_timeout=meta.default_timeout, help=meta.help, signature=meta.signature,
                   args=meta.args, variadic=meta.variadic)


def mask_remote_inspection() -> None:
    """Idempotent; ``Core4(app)`` calls it, so every worker of a core4celery app answers masked."""
    for name in ("conf", "stats", "report"):
        _masked(name)
