"""Read-only commands and enqueue: list, info, detail, enqueue, workers."""

from __future__ import annotations

import json
from typing import Any

import click
from bson import ObjectId

from ..core import Core4
from ..dispatch.capacity import why_waiting
from ..store.document import JobDoc
from ..store.states import State
from . import handle, main, reported
from .table import HEADER, age, row

JOURNAL_DETAIL_LIMIT = 5


def resolve(core4: Core4, target: str) -> list[str]:
    """An id, or a name meaning every live job of that name (core4's ``ID|QUAL_NAME``)."""
    if ObjectId.is_valid(target):
        return [target]
    ids = core4.queries.live_ids(target)
    if not ids:
        raise click.ClickException(f"{target!r} is neither a job id nor the name of a live job")
    return ids


def waiting_notes(core4: Core4, docs: list[JobDoc]) -> list[str]:
    """Why due jobs get no ticket, where their own document cannot tell (no consumer for their queue)."""
    alive = core4.nodes.alive()
    waiting = [State.PENDING.value, State.DEFERRED.value, State.FAILED.value]
    notes: dict[str, list[str]] = {}
    for doc in docs:
        if doc["state"] in waiting and not doc.get("dispatched_until"):
            reason = why_waiting(doc, doc.get("queue") or core4.app.conf.task_default_queue, alive)
            if reason:
                notes.setdefault(reason, []).append(str(doc["_id"]))
    return [f"{len(ids)} waiting: {reason} ({', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''})"
            for reason, ids in sorted(notes.items())]


def paused_note(core4: Core4) -> None:
    since = core4.control.paused()
    if since is not None:
        click.echo(f"dispatching is paused since {since:%Y-%m-%d %H:%M:%S} UTC (core4celery resume)")
    for project, at in sorted(core4.control.paused_projects().items()):
        click.echo(f"dispatching of {project}.* is paused since {at:%Y-%m-%d %H:%M:%S} UTC "
                   f"(core4celery resume {project})")


@main.command("list")
@click.argument("states", nargs=-1, type=click.Choice([s.value for s in State if s is not State.COMPLETE]))
@click.pass_context
def list_jobs(ctx: click.Context, states: tuple[str, ...]) -> None:
    """Live jobs, oldest first. Flags: Z zombie, W wall time, R removing, K killing."""
    core4 = handle(ctx)
    docs = core4.queries.live(states=list(states))
    paused_note(core4)
    if not docs:
        click.echo("no jobs.")
        return
    click.echo(HEADER)
    for doc in docs:
        click.echo(row(doc))
    for note in waiting_notes(core4, docs):
        click.echo(note)


@main.command()
@click.pass_context
def info(ctx: click.Context) -> None:
    """Counts of live jobs by name and state (what Flower's broker tab cannot show for MongoDB)."""
    core4 = handle(ctx)
    counts = core4.queries.counts()
    paused_note(core4)
    if not counts:
        click.echo("no jobs.")
        return
    click.echo(f"{'n':>6} {'state':8} name")
    for state, name, n in counts:
        click.echo(f"{n:6d} {state:8} {name}")
    for note in waiting_notes(core4, core4.queries.live(states=[State.PENDING.value, State.DEFERRED.value,
                                                                 State.FAILED.value])):
        click.echo(note)


def documents(core4: Core4, target: str) -> list[JobDoc]:
    if ObjectId.is_valid(target):
        with reported():
            return [core4.get(target)]
    docs = core4.queries.live(name=target)
    if not docs:
        docs = core4.queries.journaled(target, JOURNAL_DETAIL_LIMIT)
    if not docs:
        raise click.ClickException(f"{target!r} is neither a job id nor the name of a job")
    return docs


@main.command()
@click.argument("target", metavar="ID|NAME")
@click.pass_context
def detail(ctx: click.Context, target: str) -> None:
    """Whole job document(s) as JSON, live or journaled, with the last error.

    A NAME shows every live job of that name, or its latest journaled ones.
    """
    docs = documents(handle(ctx), target)
    shown: Any = docs[0] if len(docs) == 1 else docs
    click.echo(json.dumps(shown, indent=2, default=str, sort_keys=True))
    for doc in docs:
        error = doc.get("last_error")
        if error:
            click.echo(f"last error of {doc['_id']}: {error.get('exception')}", err=True)


@main.command()
@click.argument("name")
@click.argument("pairs", nargs=-1, metavar="KEY=JSON...")
@click.pass_context
def enqueue(ctx: click.Context, name: str, pairs: tuple[str, ...]) -> None:
    """Enqueue NAME with key=value arguments; values are JSON (quote strings: 'tag="x"')."""
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
    with reported():
        click.echo(core4.enqueue(name, **kwargs))


@main.command()
@click.pass_context
def workers(ctx: click.Context) -> None:
    """Alive workers with heartbeat, concurrency and the jobs they run."""
    core4 = handle(ctx)
    alive = core4.workers()
    if not alive:
        click.echo("no workers.")
        return
    click.echo(f"{'worker':40} {'heartbeat':>9} {'slots':>5} {'state':8} {'cpu':>5} {'free MiB':>9} {'gate':6} running")
    for worker in alive:
        state = "draining" if worker.get("draining") else "working"
        gate = worker.get("gate") or {}
        cpu = f"{gate['cpu']:.0f}%" if "cpu" in gate else "-"
        free = f"{gate['free_ram']:.0f}" if "free_ram" in gate else "-"
        shown = "-" if not gate else ("open" if gate.get("open") else "closed")
        click.echo(
            f"{worker['_id'][:40]:40} {age(worker['heartbeat']):>9} {worker.get('slots', worker['concurrency']):5d} "
            f"{state:8} {cpu:>5} {free:>9} {shown:6} {len(worker['running'])} {' '.join(worker['running'])}".rstrip()
        )
