"""Operations: kill, restart, remove, halt, pause, resume.

Each job gets one line saying what happened; refusals go to stderr and make
the exit code 1, so scripts notice a partial success.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from ..core import Core4
from ..errors import Core4Error
from . import handle, main
from .jobs import resolve


def each(core4: Core4, targets: tuple[str, ...], action: Callable[[str], str]) -> None:
    ids = list(dict.fromkeys(job_id for target in targets for job_id in resolve(core4, target)))
    refused = 0
    for job_id in ids:
        try:
            click.echo(action(job_id))
        except Core4Error as exc:
            click.echo(f"refused {job_id}: {exc}", err=True)
            refused += 1
    if refused:
        sys.exit(1)


@main.command()
@click.argument("targets", nargs=-1, required=True, metavar="ID|NAME...")
@click.pass_context
def kill(ctx: click.Context, targets: tuple[str, ...]) -> None:
    """Kill jobs: waiting ones at once, running ones by their worker within a heartbeat."""
    core4 = handle(ctx)
    each(core4, targets, lambda job_id: f"{core4.kill(job_id)} {job_id}")


@main.command()
@click.argument("targets", nargs=-1, required=True, metavar="ID|NAME...")
@click.pass_context
def restart(ctx: click.Context, targets: tuple[str, ...]) -> None:
    """Restart deferred/failed jobs now (same id) or error/killed/inactive ones (new id)."""
    core4 = handle(ctx)

    def one(job_id: str) -> str:
        new_id = core4.restart(job_id)
        return f"restarted {job_id}" + ("" if new_id == job_id else f" as {new_id}")

    each(core4, targets, one)


@main.command()
@click.argument("targets", nargs=-1, required=True, metavar="ID|NAME...")
@click.option("--hard", is_flag=True, help="journal and delete at once, even a running job (its process runs on)")
@click.pass_context
def remove(ctx: click.Context, targets: tuple[str, ...], hard: bool) -> None:
    """Remove jobs into the journal; a running job goes when it stops running."""
    core4 = handle(ctx)
    each(core4, targets, lambda job_id: f"{core4.remove(job_id, hard=hard)} {job_id}")


@main.command()
@click.argument("name", required=False)
@click.option("-Q", "--queue", help="only the waiting jobs of this queue")
@click.option("-f", "--force", is_flag=True, help="do not ask for confirmation")
@click.pass_context
def purge(ctx: click.Context, name: str | None, queue: str | None, force: bool) -> None:
    """Remove waiting jobs (of NAME, or of a queue; all without either) into the journal; running jobs run on."""
    core4 = handle(ctx)
    what = " and ".join(filter(None, [f"named {name}" if name else "", f"of queue {queue}" if queue else ""]))
    if not force:
        click.confirm(f"Remove every waiting job{' ' + what if what else ''}? There is no undo", abort=True)
    click.echo(f"removed {core4.purge(name=name, queue=queue)} waiting job(s)")


@main.command()
@click.pass_context
def halt(ctx: click.Context) -> None:
    """Stop every running worker after its running jobs finish."""
    stamp = handle(ctx).halt()
    click.echo(f"halt requested at {stamp:%Y-%m-%d %H:%M:%S} UTC: workers started before exit after their jobs")


@main.command()
@click.argument("project", required=False)
@click.pass_context
def pause(ctx: click.Context, project: str | None) -> None:
    """Stop dispatching cluster-wide, or only jobs named PROJECT.*; running jobs go on, workers stay up."""
    what = f"dispatching of {project}.*" if project else "dispatching"
    click.echo(f"{what} paused" if handle(ctx).pause(project) else f"{what} was paused already")


@main.command()
@click.argument("project", required=False)
@click.pass_context
def resume(ctx: click.Context, project: str | None) -> None:
    """Resume dispatching after pause (of PROJECT, when given)."""
    what = f"dispatching of {project}.*" if project else "dispatching"
    click.echo(f"{what} resumed" if handle(ctx).resume(project) else f"{what} was not paused")
