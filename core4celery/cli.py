"""The ``core4celery`` command (also ``celery -A app core4 ...``)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

import click
from celery.app.utils import find_app

from .clock import now
from .core import Core4
from .errors import Core4Error
from .states import State


def load(app_path: str) -> Core4:
    try:
        app = find_app(app_path)
    except Exception as exc:  # Celery raises several kinds for a bad -A
        raise click.ClickException(f"cannot load app {app_path!r}: {exc}") from None
    core4 = getattr(app, "core4celery", None)
    if not isinstance(core4, Core4):
        raise click.ClickException(f"app {app_path!r} has no Core4(app) handle")
    return core4


def age(stamp: datetime | None) -> str:
    if stamp is None:
        return "-"
    seconds = int((now() - stamp).total_seconds())
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def flags(doc: dict[str, Any]) -> str:
    marks = (("zombie_at", "Z"), ("wall_at", "W"), ("removed_at", "R"), ("killed_at", "K"))
    return "".join(char if doc.get(key) else "." for key, char in marks)


@click.group()
@click.option("-A", "--app", "app_path", envvar="CELERY_APP", help="module or module:attr, as celery -A")
@click.pass_context
def main(ctx: click.Context, app_path: str | None) -> None:
    """Inspect and operate core4celery jobs."""
    inherited = getattr(ctx.find_root().obj, "app", None)  # run as `celery -A app core4 ...`
    if app_path is None and inherited is None:
        raise click.UsageError("missing -A/--app (or CELERY_APP)")
    ctx.obj = app_path or inherited


def handle(ctx: click.Context) -> Core4:
    if isinstance(ctx.obj, str):
        core4 = load(ctx.obj)
    else:
        core4 = getattr(ctx.obj, "core4celery", None)
        if not isinstance(core4, Core4):
            raise click.ClickException("the Celery app has no Core4(app) handle")
    try:
        core4.registry.ping()  # also creates the indexes on first use
    except Core4Error as exc:
        raise click.ClickException(str(exc)) from None
    return core4


@main.command("list")
@click.argument("states", nargs=-1, type=click.Choice([s.value for s in State if s is not State.COMPLETE]))
@click.pass_context
def list_jobs(ctx: click.Context, states: tuple[str, ...]) -> None:
    """Live jobs, oldest first."""
    core4 = handle(ctx)
    query = {"state": {"$in": list(states)}} if states else {}
    docs = list(core4.registry.jobs.find(query).sort("_id", 1))
    if not docs:
        click.echo("no jobs.")
        return
    click.echo(f"{'id':24} {'state':8} flag  prog  prio attempt {'age':>9} {'runtime':>8} name")
    for doc in docs:
        prog = doc.get("prog", {}).get("value")
        used = doc["attempts"] - doc["attempts_left"] + (1 if doc["state"] == "running" else 0)
        runtime = age(doc.get("started_at")) if doc["state"] == "running" else f"{doc.get('runtime') or 0:.1f}"
        click.echo(
            f"{doc['_id']!s:24} {doc['state']:8} {flags(doc)} {'-' if prog is None else f'{prog:4.0%}':>5} "
            f"{doc['priority']:4d} {used:>3}/{doc['attempts']:<3} {age(doc['enqueued']['at']):>9} "
            f"{runtime:>8} {doc['name']}"
        )


@main.command()
@click.pass_context
def info(ctx: click.Context) -> None:
    """Counts of live jobs by name and state."""
    core4 = handle(ctx)
    rows = core4.registry.jobs.aggregate(
        [{"$group": {"_id": {"name": "$name", "state": "$state"}, "n": {"$sum": 1}}}]
    )
    counts = sorted((r["_id"]["state"], r["_id"]["name"], r["n"]) for r in rows)
    if not counts:
        click.echo("no jobs.")
        return
    click.echo(f"{'n':>6} {'state':8} name")
    for state, name, n in counts:
        click.echo(f"{n:6d} {state:8} {name}")


@main.command()
@click.argument("job_id")
@click.pass_context
def detail(ctx: click.Context, job_id: str) -> None:
    """The whole job document, live or journaled."""
    core4 = handle(ctx)
    try:
        doc = core4.get(job_id)
    except Core4Error as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(doc, indent=2, default=str, sort_keys=True))


@main.command()
@click.argument("name")
@click.argument("pairs", nargs=-1)
@click.pass_context
def enqueue(ctx: click.Context, name: str, pairs: tuple[str, ...]) -> None:
    """Enqueue NAME with key=value arguments; values are JSON."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.ClickException(f"argument {pair!r} is not key=value")
        try:
            kwargs[key] = json.loads(raw)
        except json.JSONDecodeError:
            raise click.ClickException(f"value of {key!r} is not JSON: {raw!r} (quote strings: '\"text\"')") from None
    core4 = handle(ctx)
    try:
        click.echo(core4.enqueue(name, **kwargs))
    except Core4Error as exc:
        raise click.ClickException(str(exc)) from None


celery_command = main


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
