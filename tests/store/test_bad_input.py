"""Bad input at every entry point: a clear ``Core4Error`` naming the value, and nothing written.

One table of cases across task definitions, enqueue (``core4.enqueue``,
``delay``, ``apply_async``), settings from ``app.conf`` and the environment,
the CLI and job ids. Each case names the error it expects and the words its
message must contain (the offending value or argument); after each, the
registry's jobs and journal and the broker's messages must still be empty.
Job bodies (results, progress) and crafted broker documents need a worker:
see ``tests/integration/test_bad_input.py``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from bson import ObjectId
from celery import Celery
from click.testing import CliRunner

from core4celery import Core4, Core4Task
from core4celery.cli import main
from core4celery.config.settings import Settings
from core4celery.errors import (
    ConfigurationError,
    Core4Error,
    InvalidArguments,
    InvalidOption,
    JobNotFound,
    UnknownTask,
)
from tests.apps.jobs import build

PASSWORD = "s3cr/t@pa:ss"  # '/', '@' and ':' unescaped: the URL cannot be parsed, the message must not show it


@dataclass
class Ctx:
    app: Celery
    core4: Core4
    url: str

    def define(self, **options: Any) -> Any:
        options.setdefault("author", "test")

        def body(n: int = 0) -> int:
            return n

        return self.app.task(base=Core4Task, shared=False, name=f"t.defined_{ObjectId()}", **options)(body)

    def settings(self, **values: Any) -> Settings:
        return Settings(mongodb_url=self.url, **values)

    def conf(self, **conf: Any) -> Settings:
        return Settings.from_conf({"broker_url": self.url, **conf}, environ={})

    def env(self, **variables: str) -> Settings:
        return Settings.from_conf({"broker_url": self.url}, environ=variables)

    def square(self) -> Any:
        return self.app.tasks["t.square"]


@pytest.fixture
def ctx(db_url: str) -> Iterator[Ctx]:
    app, core4 = build(db_url)
    core4.prepare()
    yield Ctx(app, core4, db_url)
    core4.close()
    app.close()


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"k": value}
    return value


Case = tuple[Callable[[Ctx], Any], type[Core4Error], list[str]]

DEFINITION: dict[str, Case] = {
    "max_parallel 0": (lambda c: c.define(max_parallel=0), InvalidOption, ["max_parallel", "0"]),
    "max_parallel -1": (lambda c: c.define(max_parallel=-1), InvalidOption, ["max_parallel", "-1"]),
    "max_parallel 1.5": (lambda c: c.define(max_parallel=1.5), InvalidOption, ["max_parallel", "1.5"]),
    "max_parallel True": (lambda c: c.define(max_parallel=True), InvalidOption, ["max_parallel", "True"]),
    "max_parallel str": (lambda c: c.define(max_parallel="3"), InvalidOption, ["max_parallel", "'3'"]),
    "max_parallel 2**70": (lambda c: c.define(max_parallel=2**70), InvalidOption, ["max_parallel", str(2**70)]),
    "attempts 0": (lambda c: c.define(attempts=0), InvalidOption, ["attempts", "0"]),
    "priority 1.5": (lambda c: c.define(priority=1.5), InvalidOption, ["priority", "1.5"]),
    "priority 2**64": (lambda c: c.define(priority=2**64), InvalidOption, ["priority", str(2**64)]),
    "defer_time inf": (lambda c: c.define(defer_time=math.inf), InvalidOption, ["defer_time", "inf"]),
    "defer_max nan": (lambda c: c.define(defer_max=math.nan), InvalidOption, ["defer_max", "nan"]),
    "error_time 1e12": (lambda c: c.define(error_time=1e12), InvalidOption, ["error_time", "1000000000000"]),
    "wall_time 0": (lambda c: c.define(wall_time=0), InvalidOption, ["wall_time", "0"]),
    "zombie_time -1": (lambda c: c.define(zombie_time=-1), InvalidOption, ["zombie_time", "-1"]),
    "progress_interval str": (lambda c: c.define(progress_interval="5"), InvalidOption, ["progress_interval", "'5'"]),
    "force str": (lambda c: c.define(force="yes"), InvalidOption, ["force", "'yes'"]),
    "worker empty": (lambda c: c.define(worker=""), InvalidOption, ["worker", "''"]),
    "worker int": (lambda c: c.define(worker=5), InvalidOption, ["worker", "5"]),
    "worker empty list": (lambda c: c.define(worker=[]), InvalidOption, ["worker", "[]"]),
    "worker with space": (lambda c: c.define(worker=["w1@host", "w 2"]), InvalidOption, ["worker", "'w 2'"]),
    "max_per_node 0": (lambda c: c.define(max_per_node=0), InvalidOption, ["max_per_node", "0"]),
    "time_limit 0": (lambda c: c.define(time_limit=0), InvalidOption, ["time_limit", "0"]),
    "schedule bad": (lambda c: c.define(schedule="61 * * * *"), InvalidOption, ["schedule", "'61 * * * *'"]),
    "rate_limit": (lambda c: c.define(rate_limit="5/s"), InvalidOption, ["rate_limit", "max_parallel"]),
    "author empty": (lambda c: c.define(author=""), InvalidOption, ["author"]),
    "author None": (lambda c: c.define(author=None), InvalidOption, ["author"]),
}

ARGUMENTS: dict[str, Case] = {
    "int beyond int64": (lambda c: c.core4.enqueue("t.square", n=2**63), InvalidArguments,
                         ["['n']", "9223372036854775808"]),
    "int below int64": (lambda c: c.core4.enqueue("t.square", n=-(2**63) - 1), InvalidArguments,
                        ["['n']", "-9223372036854775809"]),
    "int of 16,610 bits": (lambda c: c.core4.enqueue("t.square", n=10**5000), InvalidArguments, ["['n']", "bits"]),
    "lone surrogate": (lambda c: c.square().delay("x\ud800"), InvalidArguments, ["['n']", "\\ud800"]),
    "surrogate in a key": (lambda c: c.core4.enqueue("t.square", n={"k\udc80": 1}), InvalidArguments,
                           ["['n']", "surrogate"]),
    "NUL in a key": (lambda c: c.core4.enqueue("t.square", n={"a\x00b": 1}), InvalidArguments, ["'a\\x00b'", "NUL"]),
    "$ key": (lambda c: c.core4.enqueue("t.square", n={"$where": 1}), InvalidArguments, ["'$where'"]),
    "dotted key": (lambda c: c.core4.enqueue("t.square", n={"a.b": 1}), InvalidArguments, ["'a.b'"]),
    "int key": (lambda c: c.core4.enqueue("t.square", n={1: 2}), InvalidArguments, ["key 1"]),
    "tuple": (lambda c: c.core4.enqueue("t.square", n=(1, 2)), InvalidArguments, ["round trip"]),
    "set": (lambda c: c.core4.enqueue("t.square", n={1, 2}), InvalidArguments, ["set"]),
    "object": (lambda c: c.core4.enqueue("t.square", n=object()), InvalidArguments, ["object"]),
    "bytes": (lambda c: c.core4.enqueue("t.square", n=b"x"), InvalidArguments, ["bytes"]),
    "nan": (lambda c: c.core4.enqueue("t.square", n=math.nan), InvalidArguments, ["['n']", "nan"]),
    "inf": (lambda c: c.core4.enqueue("t.square", n=math.inf), InvalidArguments, ["['n']", "inf"]),
    "over 16 MB": (lambda c: c.core4.enqueue("t.square", n="x" * (17 * 1024 * 1024)), InvalidArguments,
                   ["exceed the storable size"]),
    "100,000 nested dicts": (lambda c: c.core4.enqueue("t.square", n=nested(100_000)), InvalidArguments,
                             ["nested deeper than"]),
    "missing argument": (lambda c: c.core4.enqueue("t.record"), InvalidArguments, ["tag"]),
    "unexpected argument": (lambda c: c.core4.enqueue("t.square", n=1, colour=2), InvalidArguments, ["colour"]),
    "option typo": (lambda c: c.core4.enqueue("t.square", n=1, max_paralel=2), InvalidArguments,
                    ["max_paralel", "did you mean the option max_parallel"]),
    "explicit args not a dict": (lambda c: c.core4.enqueue("t.square", args=[1]), InvalidArguments, ["args", "list"]),
    "_mid from outside": (lambda c: c.core4.enqueue("t.square", n=1, _mid={"$ne": None}), InvalidArguments, ["_mid"]),
    "_mid not an id": (lambda c: c.core4.enqueue("t.square", n=1, _mid="not-an-id"), InvalidArguments, ["_mid"]),
    "unknown task": (lambda c: c.core4.enqueue("t.nope"), UnknownTask, ["'t.nope'"]),
    "task 123": (lambda c: c.core4.enqueue(123), UnknownTask, ["123", "int"]),
    "task None": (lambda c: c.core4.enqueue(None), UnknownTask, ["None"]),
}

OPTIONS: dict[str, Case] = {
    "worker pattern list of int": (lambda c: c.core4.enqueue("t.square", n=1, worker=[1]), InvalidOption,
                                   ["worker", "1"]),
    "max_per_node str": (lambda c: c.core4.enqueue("t.square", n=1, max_per_node="1"), InvalidOption,
                         ["max_per_node", "'1'"]),
    "dependency not an id": (lambda c: c.core4.enqueue("t.square", n=1, dependency=["nope"]), InvalidArguments,
                             ["dependency", "'nope'"]),
    "dependency unknown": (lambda c: c.core4.enqueue("t.square", n=1, dependency=["5f0000000000000000000000"]),
                           JobNotFound, ["dependency", "5f0000000000000000000000"]),
    "defer_time inf": (lambda c: c.core4.enqueue("t.square", n=1, defer_time=math.inf), InvalidOption,
                       ["defer_time", "inf"]),
    "defer_max nan": (lambda c: c.core4.enqueue("t.square", n=1, defer_max=math.nan), InvalidOption,
                      ["defer_max", "nan"]),
    "error_time 1e12": (lambda c: c.core4.enqueue("t.square", n=1, error_time=1e12), InvalidOption,
                        ["error_time", "1000000000000"]),
    "wall_time -1": (lambda c: c.core4.enqueue("t.square", n=1, wall_time=-1), InvalidOption, ["wall_time", "-1"]),
    "max_parallel 2**70": (lambda c: c.core4.enqueue("t.square", n=1, max_parallel=2**70), InvalidOption,
                           ["max_parallel", str(2**70)]),
    "priority 2**64": (lambda c: c.core4.enqueue("t.square", n=1, priority=2**64), InvalidOption,
                       ["priority", str(2**64)]),
    "priority 1e20": (lambda c: c.core4.enqueue("t.square", n=1, priority=1e20), InvalidOption, ["priority", "1e+20"]),
    "attempts 0": (lambda c: c.core4.enqueue("t.square", n=1, attempts=0), InvalidOption, ["attempts", "0"]),
    "force str": (lambda c: c.core4.enqueue("t.square", n=1, force="x"), InvalidOption, ["force", "'x'"]),
    "countdown 1e12": (lambda c: c.square().apply_async((1,), countdown=1e12), InvalidArguments,
                       ["countdown", "1000000000000"]),
    "countdown inf": (lambda c: c.square().apply_async((1,), countdown=math.inf), InvalidArguments,
                      ["countdown", "inf"]),
    "countdown nan": (lambda c: c.square().apply_async((1,), countdown=math.nan), InvalidArguments,
                      ["countdown", "nan"]),
    "countdown -1": (lambda c: c.square().apply_async((1,), countdown=-1), InvalidArguments, ["countdown", "-1"]),
    "countdown str": (lambda c: c.square().apply_async((1,), countdown="soon"), InvalidArguments,
                      ["countdown", "'soon'"]),
    "eta str": (lambda c: c.square().apply_async((1,), eta="tomorrow"), InvalidArguments, ["eta", "'tomorrow'"]),
    "countdown and eta": (lambda c: c.square().apply_async((1,), countdown=1, eta=math.pi), InvalidArguments,
                          ["countdown or eta"]),
    "args=5": (lambda c: c.square().apply_async(args=5), InvalidArguments, ["args", "5", "int"]),
    "kwargs a list": (lambda c: c.square().apply_async(kwargs=[1]), InvalidArguments, ["kwargs", "[1]"]),
    "too many args": (lambda c: c.square().apply_async((1, 2, 3)), InvalidArguments, ["t.square", "too many"]),
    "link": (lambda c: c.square().apply_async((1,), link="y"), InvalidArguments, ["link"]),
    "queue empty": (lambda c: c.square().apply_async((1,), queue=""), InvalidArguments, ["queue", "''"]),
    "queue 5": (lambda c: c.square().apply_async((1,), queue=5), InvalidArguments, ["queue", "5"]),
}

SETTINGS: dict[str, Case] = {
    "dispatch_scan 0": (lambda c: c.settings(dispatch_scan=0), ConfigurationError, ["dispatch_scan", "0"]),
    "dispatch_scan -5": (lambda c: c.settings(dispatch_scan=-5), ConfigurationError, ["dispatch_scan", "-5"]),
    "dispatch_scan abc": (lambda c: c.settings(dispatch_scan="abc"), ConfigurationError, ["dispatch_scan", "'abc'"]),
    "dispatch_scan 1.5": (lambda c: c.settings(dispatch_scan=1.5), ConfigurationError, ["dispatch_scan", "1.5"]),
    "worker_timeout inf": (lambda c: c.settings(worker_timeout=math.inf), ConfigurationError,
                           ["worker_timeout", "inf"]),
    "run_lease nan": (lambda c: c.settings(run_lease=math.nan), ConfigurationError, ["run_lease", "nan"]),
    "ticket_lease 1e12": (lambda c: c.settings(ticket_lease=1e12), ConfigurationError,
                          ["ticket_lease", "1000000000000"]),
    "heartbeat_interval True": (lambda c: c.settings(heartbeat_interval=True), ConfigurationError,
                                ["heartbeat_interval", "True"]),
    "outage_timeout 0": (lambda c: c.settings(outage_timeout=0), ConfigurationError, ["outage_timeout", "0"]),
    "worker_timeout below 2 heartbeats": (lambda c: c.settings(heartbeat_interval=6.0), ConfigurationError,
                                          ["worker_timeout", "heartbeat_interval"]),
    "collection_prefix empty": (lambda c: c.settings(collection_prefix=""), ConfigurationError,
                                ["collection_prefix", "''"]),
    "collection_prefix 5": (lambda c: c.settings(collection_prefix=5), ConfigurationError, ["collection_prefix", "5"]),
    "collection_prefix a$b": (lambda c: c.settings(collection_prefix="a$b"), ConfigurationError,
                              ["collection_prefix", "'a$b'"]),
    "collection_prefix system.": (lambda c: c.settings(collection_prefix="system."), ConfigurationError,
                                  ["collection_prefix", "'system.'"]),
    "collection_prefix too long": (lambda c: c.settings(collection_prefix="x" * 65), ConfigurationError,
                                   ["collection_prefix", "x" * 65]),
    "url not mongodb": (lambda c: Settings(mongodb_url="http://127.0.0.1/x"), ConfigurationError,
                        ["mongodb://", "'http://127.0.0.1/x'"]),
    "url a number": (lambda c: Settings.from_conf({"core4celery_mongodb_url": 5}, environ={}), ConfigurationError,
                     ["mongodb_url", "int"]),
    "no url": (lambda c: Settings.from_conf({}, environ={}), ConfigurationError, ["CORE4CELERY_MONGODB_URL"]),
    "unescaped password": (lambda c: Settings.from_conf({}, environ={
        "CORE4CELERY_MONGODB_URL": f"mongodb://user:{PASSWORD}@127.0.0.1:1/db"}), ConfigurationError,
        ["invalid MongoDB URL", "user:****@"]),
    "conf key typo": (lambda c: c.conf(core4celery_dispatch_scann=3), ConfigurationError,
                      ["core4celery_dispatch_scann", "did you mean dispatch_scan"]),
    "conf key unknown": (lambda c: c.conf(core4celery_bogus=1), ConfigurationError, ["core4celery_bogus"]),
    "conf dispatch_scan str": (lambda c: c.conf(core4celery_dispatch_scan="abc"), ConfigurationError,
                               ["dispatch_scan", "'abc'"]),
    "env dispatch_scan abc": (lambda c: c.env(CORE4CELERY_DISPATCH_SCAN="abc"), ConfigurationError,
                              ["CORE4CELERY_DISPATCH_SCAN", "'abc'"]),
    "env dispatch_scan 0": (lambda c: c.env(CORE4CELERY_DISPATCH_SCAN="0"), ConfigurationError,
                            ["dispatch_scan", "0"]),
    "env worker_timeout inf": (lambda c: c.env(CORE4CELERY_WORKER_TIMEOUT="inf"), ConfigurationError,
                               ["worker_timeout", "inf"]),
    "env run_lease nan": (lambda c: c.env(CORE4CELERY_RUN_LEASE="nan"), ConfigurationError, ["run_lease", "nan"]),
    "env ticket_lease 1e12": (lambda c: c.env(CORE4CELERY_TICKET_LEASE="1e12"), ConfigurationError,
                              ["ticket_lease", "1000000000000"]),
    "env idle_wait -1": (lambda c: c.env(CORE4CELERY_IDLE_WAIT="-1"), ConfigurationError, ["idle_wait", "-1"]),
    "env prefix a$b": (lambda c: c.env(CORE4CELERY_COLLECTION_PREFIX="a$b"), ConfigurationError,
                       ["collection_prefix", "'a$b'"]),
    "env unknown": (lambda c: c.env(CORE4CELERY_DISPATCH_SCANN="3"), ConfigurationError,
                    ["CORE4CELERY_DISPATCH_SCANN", "did you mean dispatch_scan"]),
}

IDS: dict[str, Case] = {
    "result of a non-id": (lambda c: c.core4.AsyncResult("garbage").get(timeout=5), JobNotFound, ["'garbage'"]),
    "result of an unknown id": (lambda c: c.core4.AsyncResult("0" * 24).get(timeout=5), JobNotFound, ["0" * 24]),
    "state of a non-id": (lambda c: c.core4.AsyncResult("garbage").state, JobNotFound, ["'garbage'"]),
    "kill a non-id": (lambda c: c.core4.kill("garbage"), JobNotFound, ["'garbage'"]),
    "kill an unknown id": (lambda c: c.core4.kill(str(ObjectId())), JobNotFound, ["job"]),
    "restart a non-id": (lambda c: c.core4.restart("x" * 24), JobNotFound, ["x" * 24]),
    "remove a non-id": (lambda c: c.core4.remove("123"), JobNotFound, ["'123'"]),
}

TABLE = {f"{group}: {name}": case for group, cases in
         {"definition": DEFINITION, "arguments": ARGUMENTS, "options": OPTIONS, "settings": SETTINGS, "ids": IDS}.items()
         for name, case in cases.items()}


def untouched(c: Ctx) -> None:
    connection = c.core4.connection
    assert connection.jobs.count_documents({}) == 0
    assert connection.journal.count_documents({}) == 0
    assert connection.db["messages"].count_documents({}) == 0


@pytest.mark.parametrize("case", list(TABLE), ids=list(TABLE))
def test_bad_input_is_a_clear_error_and_writes_nothing(ctx: Ctx, case: str) -> None:
    call, error, named = TABLE[case]
    with pytest.raises(error) as caught:
        call(ctx)
    message = str(caught.value)
    for word in named:
        assert word in message, f"{word!r} not in {message!r}"
    assert PASSWORD not in message
    untouched(ctx)


# -- the CLI: one "Error:" line and exit code 1, never a traceback --------------------------------------------------
CLI: dict[str, tuple[list[str], list[str]]] = {
    "int beyond int64": (["enqueue", "t.square", "n=100000000000000000000"], ["100000000000000000000"]),
    "priority 1e20": (["enqueue", "t.square", "n=1", "priority=1e20"], ["priority", "1e+20"]),
    "lone surrogate": (["enqueue", "t.square", 'n="\\ud800"'], ["\\ud800"]),
    "NaN": (["enqueue", "t.square", "n=NaN"], ["NaN"]),
    "not key=value": (["enqueue", "t.square", "n"], ["'n'", "key=value"]),
    "not JSON": (["enqueue", "t.square", "n={bad"], ["'{bad'", "JSON"]),
    "unknown task": (["enqueue", "t.nope"], ["'t.nope'"]),
    "_mid": (["enqueue", "t.square", "n=1", '_mid="x"'], ["_mid"]),
    "option typo": (["enqueue", "t.square", "n=1", "max_paralel=2"], ["did you mean the option max_parallel"]),
    "watch --interval -1": (["watch", "--interval", "-1"], ["--interval", "-1"]),
    "watch --interval nan": (["watch", "--interval", "nan"], ["--interval", "nan"]),
    "watch --timeout inf": (["watch", "--timeout", "inf"], ["--timeout", "inf"]),
    "kill a non-id": (["kill", "garbage"], ["garbage"]),
    "info a non-id": (["info", "0" * 24], ["0" * 24]),
}


def cli(url: str, *args: str) -> Any:
    sys.modules.pop("tests.apps.jobs", None)  # the app module reads its URL at import
    try:
        return CliRunner().invoke(main, ["-A", "tests.apps.jobs:app", *args], env={"CORE4CELERY_MONGODB_URL": url})
    finally:
        loaded = sys.modules.pop("tests.apps.jobs", None)
        if loaded is not None and hasattr(loaded, "core4"):  # its clients, or the server runs out of connections
            loaded.core4.close()
            loaded.app.close()


@pytest.mark.parametrize("case", list(CLI), ids=list(CLI))
def test_bad_cli_input_is_one_error_line_and_exit_1(ctx: Ctx, case: str) -> None:
    args, named = CLI[case]
    result = cli(ctx.url, *args)
    assert result.exit_code in (1, 2), result.output  # 2: click's usage errors
    assert ("Traceback" not in result.output and result.exception is None) or isinstance(result.exception, SystemExit)
    error = result.stderr
    assert error.startswith("Error:") or "Error: " in error, error
    for word in named:
        assert word in error, f"{word!r} not in {error!r}"
    untouched(ctx)


def test_an_unexpected_error_in_the_cli_is_one_line_pointing_to_debug(ctx: Ctx) -> None:
    """The last-resort handler: a library's own exception, its type and message, the password masked."""
    url = ctx.url.replace("mongodb://", f"mongodb://user:{PASSWORD.replace('/', '%2F')}@")
    result = cli(url, "list")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith("Error:") and PASSWORD.replace("/", "%2F") not in result.output
    assert PASSWORD not in result.output


def test_bad_input_table_has_the_cases_it_claims() -> None:
    assert len(TABLE) + len(CLI) >= 80
