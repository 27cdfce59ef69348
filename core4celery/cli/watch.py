"""``watch``: live progress until the watched jobs finish.

In a terminal the block of bars is redrawn in place; otherwise (a pipe, a
CI log) only lines that changed are printed, each with a time stamp, so the
output stays readable and finite.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import click

from ..clock import now
from ..config.numbers import check_seconds
from ..core import Core4
from ..errors import InvalidArguments
from ..store.document import JobDoc
from ..store.states import FINAL, State
from . import handle, main, reported

BAR_WIDTH = 20
MAX_CHILDREN_SHOWN = 20
ACTIVE = [State.PENDING.value, State.RUNNING.value, State.DEFERRED.value, State.FAILED.value]


@dataclass
class View:
    lines: dict[str, str] = field(default_factory=dict)  # job id -> text, in display order
    done: bool = False
    ok: bool = True


def bar(value: float | None) -> str:
    filled = round((value or 0.0) * BAR_WIDTH)
    shown = "   -" if value is None else f"{value:4.0%}"
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {shown}"


def line(doc: JobDoc, value: float | None, note: str = "", indent: str = "") -> str:
    message = note or (doc.get("prog") or {}).get("message") or ""
    return f"{indent}{doc['_id']!s} {doc['state']:8} {bar(value)} {doc['name']} {message}".rstrip()


def job_view(core4: Core4, job_id: str) -> View:
    """One job; a mother's bar is the share of her children that completed."""
    with reported():
        doc = core4.get(job_id)
    children = core4.queries.children(job_id)
    finished = core4.queries.journaled_children(job_id)
    total = finished + len(children)
    view = View()
    if total:
        value: float | None = finished / total
        note = f"children: {finished}/{total} done"
    else:
        value, note = (doc.get("prog") or {}).get("value"), ""
    if doc.get("journaled") and doc["state"] == State.COMPLETE.value:
        value = 1.0
    view.lines[job_id] = line(doc, value, note)
    for child in children[:MAX_CHILDREN_SHOWN]:
        view.lines[str(child["_id"])] = line(child, (child.get("prog") or {}).get("value"), indent="  ")
    if len(children) > MAX_CHILDREN_SHOWN:
        view.lines["more"] = f"  ... {len(children) - MAX_CHILDREN_SHOWN} more children"
    view.done = bool(doc.get("journaled")) or State(doc["state"]) in FINAL
    view.ok = doc["state"] == State.COMPLETE.value
    return view


def queue_view(core4: Core4) -> View:
    """Every live job that still waits or runs."""
    view = View()
    for doc in core4.queries.live(states=ACTIVE):
        view.lines[str(doc["_id"])] = line(doc, (doc.get("prog") or {}).get("value"))
    view.done = not view.lines
    return view


class Screen:
    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.drawn = 0
        self.last: dict[str, str] = {}

    def show(self, view: View) -> None:
        if self.tty:
            self._redraw(view)
        else:
            self._changes(view)

    def _redraw(self, view: View) -> None:
        width = shutil.get_terminal_size().columns
        block = [text[:width] for text in view.lines.values()]
        if self.drawn:
            click.echo(f"\x1b[{self.drawn}F\x1b[J", nl=False, color=True)  # cursor up, clear below
        if block:
            click.echo("\n".join(block))
        self.drawn = len(block)

    def _changes(self, view: View) -> None:
        stamp = f"{now():%H:%M:%S}"
        for key, text in view.lines.items():
            if self.last.get(key) != text:
                click.echo(f"{stamp} {text}")
        self.last = dict(view.lines)


def seconds(zero: bool) -> Callable[[click.Context, click.Parameter, float], float]:
    """A click callback: a finite duration (> 0, or >= 0 with ``zero``), refused as a usage error."""
    def check(ctx: click.Context, param: click.Parameter, value: float) -> float:
        try:
            check_seconds(f"--{param.name}", value, InvalidArguments, zero=zero)
        except InvalidArguments as exc:
            raise click.BadParameter(str(exc)) from None
        return value
    return check


@main.command()
@click.argument("job_id", required=False, metavar="[ID]")
@click.option("--interval", default=1.0, show_default=True, callback=seconds(zero=False),
              help="seconds between refreshes")
@click.option("--timeout", default=0.0, callback=seconds(zero=True),
              help="give up after this many seconds (0: wait for ever)")
@click.pass_context
def watch(ctx: click.Context, job_id: str | None, interval: float, timeout: float) -> None:
    """Progress bars until the job (and its children), or every active job, finished.

    Exit code 0 when the watched job completed (or the queue drained), 1 when it
    ended in error, inactive or killed, 2 on timeout.
    """
    core4 = handle(ctx)
    screen = Screen(tty=sys.stdout.isatty())
    deadline = time.monotonic() + timeout if timeout > 0 else None
    while True:
        view = job_view(core4, job_id) if job_id else queue_view(core4)
        screen.show(view)
        if view.done:
            if not job_id:
                click.echo("no active jobs left.")
            sys.exit(0 if view.ok else 1)
        if deadline is not None and time.monotonic() > deadline:
            click.echo(f"watch timed out after {timeout:g}s", err=True)
            sys.exit(2)
        time.sleep(interval)
