"""The ``core4celery`` command (also ``celery -A app core4 ...``).

One module per group of commands; this one holds the group, app loading and
the conversion of core4celery errors into one-line messages and exit code 1.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from celery.app.utils import find_app

from ..core import Core4
from ..errors import Core4Error
from ..inspection import hide_secrets


def load(app_path: str) -> Core4:
    try:
        app = find_app(app_path)
    except Exception as exc:  # Celery raises several kinds for a bad -A
        raise click.ClickException(f"cannot load app {app_path!r}: {hide_secrets(str(exc))}") from None
    core4 = getattr(app, "core4celery", None)
    if not isinstance(core4, Core4):
        raise click.ClickException(f"app {app_path!r} has no Core4(app) handle")
    return core4


@contextmanager
def reported() -> Iterator[None]:
    """core4celery errors become click errors: one line on stderr, exit code 1."""
    try:
        yield
    except Core4Error as exc:
        raise click.ClickException(str(exc)) from None


class Core4Group(click.Group):
    """Every failure ends as one ``Error:`` line and exit code 1, never a traceback (unless ``--debug``).

    A core4celery error prints its message; anything else (a bug, or an error
    from a library) prints its type and message, with any URL password masked,
    and points to ``--debug``.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Core4Error as exc:
            raise click.ClickException(str(exc)) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            message = hide_secrets(f"{type(exc).__name__}: {exc}")
            raise click.ClickException(f"{message} (run with --debug for the traceback)") from None


@click.group("core4", cls=Core4Group)  # the name `celery -A app core4` finds it under
@click.option("-A", "--app", "app_path", envvar="CELERY_APP", help="module or module:attr, as celery -A")
@click.option("--debug", is_flag=True, help="show the traceback of an unexpected error")
@click.pass_context
def main(ctx: click.Context, app_path: str | None, debug: bool) -> None:
    """Inspect and operate core4celery jobs."""
    inherited = getattr(ctx.find_root().obj, "app", None)  # run as `celery -A app core4 ...`
    if app_path is None and inherited is None:
        raise click.UsageError("missing -A/--app (or CELERY_APP)")
    ctx.obj = app_path or inherited


def handle(ctx: click.Context) -> Core4:
    obj = ctx.obj  # a path given with -A, or the app of `celery -A app core4`
    if isinstance(obj, str):
        core4 = load(obj)
    else:
        attached = getattr(obj, "core4celery", None)
        if not isinstance(attached, Core4):
            raise click.ClickException("the Celery app has no Core4(app) handle")
        core4 = attached
    with reported():
        core4.ping()  # also creates the indexes on first use
    return core4


celery_command = main

from . import data, jobs, operate, schedules, watch  # noqa: E402,F401  - register the commands

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
