"""Job logs, stdout and cookies against the real server: the writers' caps, buffers and atomicity."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from bson import ObjectId

from core4celery.clock import now
from core4celery.config.settings import Settings
from core4celery.errors import InvalidArguments
from core4celery.store.connection import Connection
from core4celery.store.cookies import CookieStore
from core4celery.store.logs import LogStore, RunLog
from core4celery.store.stdout import StdoutStore, tail
from core4celery.worker.jobdata import JobData
from core4celery.worker.stdout import StreamCapture, Tail
from tests.store.conftest import race


@pytest.fixture
def connection(settings: Settings) -> Iterator[Connection]:
    conn = Connection(settings)
    conn.ensure_indexes()
    yield conn
    conn.close()


def entry(levelno: int, message: str) -> dict[str, Any]:
    return {"level": logging.getLevelName(levelno), "levelno": levelno, "created": now(), "logger": "job.test",
            "message": message}


def run_log(connection: Connection, max_records: int = 1000, level: str = "INFO", batch: int = 100,
            trial: int = 1, job_id: ObjectId | None = None) -> tuple[RunLog, LogStore, ObjectId]:
    store = LogStore(connection)
    oid = job_id or ObjectId()
    return RunLog(store, oid, trial, "host-a", level, max_records, batch=batch), store, oid


# -- logs --------------------------------------------------------------------------
def test_records_are_written_in_batches_and_read_in_order(connection: Connection) -> None:
    log, store, oid = run_log(connection, batch=3)
    assert not log.add(entry(logging.INFO, "one"))
    assert not log.add(entry(logging.WARNING, "two"))
    assert store.read(oid) == []  # nothing written per record
    assert log.add(entry(logging.ERROR, "three"))  # a batch is due
    assert log.flush() == 3
    log.add(entry(logging.INFO, "four"))
    assert log.close(failed=False) == 1
    found = store.read(oid)
    assert [doc["message"] for doc in found] == ["one", "two", "three", "four"]
    assert {(doc["job_id"], doc["trial"], doc["hostname"]) for doc in found} == {(oid, 1, "host-a")}
    assert [doc["level"] for doc in found] == ["INFO", "WARNING", "ERROR", "INFO"]
    assert [doc["message"] for doc in store.read(oid, levelno=logging.WARNING)] == ["two", "three"]
    assert [doc["message"] for doc in store.read(oid, after=(1, 1))] == ["three", "four"]


def test_cap_stores_at_most_max_records_and_one_dropped_record(connection: Connection) -> None:
    log, store, oid = run_log(connection, max_records=5, batch=2)
    for n in range(12):
        if log.add(entry(logging.INFO, f"m{n}")):
            log.flush()
    log.close(failed=False)
    found = store.read(oid)
    assert [doc["message"] for doc in found[:5]] == [f"m{n}" for n in range(5)]
    assert len(found) == 6
    assert found[-1]["message"].startswith("7 records dropped")
    assert found[-1]["level"] == "WARNING"


def test_debug_trail_is_dropped_for_a_run_that_did_not_fail(connection: Connection) -> None:
    log, store, oid = run_log(connection)
    log.add(entry(logging.DEBUG, "detail"))
    log.add(entry(logging.INFO, "step"))
    log.close(failed=False)
    assert [doc["message"] for doc in store.read(oid)] == ["step"]


def test_debug_trail_is_flushed_for_a_failed_run_in_order(connection: Connection) -> None:
    log, store, oid = run_log(connection, trial=2)
    log.add(entry(logging.DEBUG, "detail 1"))
    log.add(entry(logging.INFO, "step"))
    log.add(entry(logging.DEBUG, "detail 2"))
    log.add(entry(logging.ERROR, "boom"))
    log.close(failed=True)
    assert [doc["message"] for doc in store.read(oid)] == ["detail 1", "step", "detail 2", "boom"]
    assert store.read(oid, trial=1) == []
    assert len(store.read(oid, trial=2)) == 4


def test_debug_buffer_is_bounded_and_its_overflow_counted_on_failure(connection: Connection) -> None:
    log, store, oid = run_log(connection, max_records=3)
    for n in range(5):
        log.add(entry(logging.DEBUG, f"d{n}"))
    log.close(failed=True)
    found = store.read(oid)
    assert [doc["message"] for doc in found[:3]] == ["d2", "d3", "d4"]  # the tail of the trail
    assert found[3]["message"].startswith("2 records dropped")


def test_stored_level_debug_keeps_everything(connection: Connection) -> None:
    log, store, oid = run_log(connection, level="DEBUG")
    log.add(entry(logging.DEBUG, "detail"))
    log.close(failed=False)
    assert [doc["message"] for doc in store.read(oid)] == ["detail"]


def test_log_queries_use_the_index(connection: Connection) -> None:
    oid = ObjectId()
    plan = connection.logs.find({"job_id": oid, "trial": {"$gte": 0}}).sort([("trial", 1), ("seq", 1)]).explain()
    assert "COLLSCAN" not in str(plan["queryPlanner"]["winningPlan"])


# -- stdout ------------------------------------------------------------------------
def test_tail_keeps_the_end_within_the_cap() -> None:
    text = "".join(f"line {n}\n" for n in range(1000))
    kept, cut = tail(text, 100)
    assert text.endswith(kept) and len(kept.encode()) <= 100
    assert cut == len(text.encode()) - len(kept.encode())
    assert tail("äöü", 4) == ("öü", 2)  # never half a character
    assert tail("short", 100) == ("short", 0)


def test_tail_buffer_drops_the_front_while_writing() -> None:
    buffer = Tail(50)
    for n in range(100):
        buffer.keep(f"{n:03d}\n")
    kept = buffer.text()
    assert kept.endswith("099\n") and len(kept.encode()) <= 50
    assert buffer.cut + len(kept.encode()) == 400


def test_stdout_is_stored_per_run_with_the_tail_kept(connection: Connection) -> None:
    store = StdoutStore(connection)
    oid = ObjectId()
    assert not store.save(oid, 1, "", "h", 100)  # nothing written: nothing stored
    assert store.read(oid) is None
    assert store.save(oid, 1, "first run\n", "h", 100)
    assert store.save(oid, 2, "x" * 150 + "END\n", "h", 100, cut=10)
    latest = store.read(oid)
    assert latest is not None and latest["trial"] == 2
    assert latest["text"].endswith("END\n") and len(latest["text"]) == 100
    assert latest["cut"] == 10 + 54
    first = store.read(oid, trial=1)
    assert first is not None and first["text"] == "first run\n" and first["cut"] == 0
    assert store.save(oid, 1, "again\n", "h", 100)  # the same run stored twice replaces it
    again = store.read(oid, trial=1)
    assert again is not None and again["text"] == "again\n"
    assert connection.stdout.count_documents({"job_id": oid}) == 2


# -- cookies -----------------------------------------------------------------------
def test_cookie_set_get_delete(connection: Connection) -> None:
    cookie = CookieStore(connection).cookie("proj.job")
    assert cookie.get("since") is None and cookie.get("since", 5) == 5
    assert "since" not in cookie
    cookie.set("since", 10)
    cookie.set(a=[1, 2], b={"x": "y"})
    assert cookie.get("since") == 10 and cookie.get("a") == [1, 2] and cookie.get("b") == {"x": "y"}
    assert cookie.has_key("a") and "b" in cookie
    assert cookie.delete("a")
    assert not cookie.delete("a")
    assert cookie.get("a") is None
    other = CookieStore(connection).cookie("proj.other")
    assert other.get("since") is None  # one document per job name


def test_cookie_counters(connection: Connection) -> None:
    cookie = CookieStore(connection).cookie("proj.job")
    assert cookie.inc("n") == 1
    assert cookie.inc("n", 4) == 5
    assert cookie.dec("n", 2) == 3
    assert cookie.max("n", 10) == 10 and cookie.max("n", 2) == 10
    assert cookie.min("n", 7) == 7
    cookie.set("text", "abc")
    with pytest.raises(InvalidArguments, match="'text'"):
        cookie.inc("text")


def test_cookie_inc_from_two_threads_loses_nothing(connection: Connection, settings: Settings) -> None:
    second = Connection(settings)  # another process's client
    try:
        cookies = [CookieStore(connection).cookie("proj.count"), CookieStore(second).cookie("proj.count")]

        def bump(cookie: Any) -> None:
            for _ in range(50):
                cookie.inc("n")

        race(lambda: bump(cookies[0]), lambda: bump(cookies[1]))
        assert cookies[0].get("n") == 100
    finally:
        second.close()


@pytest.mark.parametrize("key", ["", "a.b", "$set", "x$", "nul\x00", 3, None])
def test_cookie_refuses_bad_keys(connection: Connection, key: Any) -> None:
    cookie = CookieStore(connection).cookie("proj.job")
    with pytest.raises(InvalidArguments, match="key"):
        cookie.set(key, 1)
    with pytest.raises(InvalidArguments, match="key"):
        cookie.get(key)
    with pytest.raises(InvalidArguments, match="key"):
        cookie.inc(key)
    assert connection.cookies.count_documents({}) == 0


@pytest.mark.parametrize("value", [{1, 2}, (1, 2), float("nan"), 2**70, "lone \ud800", datetime(2020, 1, 1),
                                   {"a.b": 1}])
def test_cookie_refuses_values_that_are_not_json(connection: Connection, value: Any) -> None:
    cookie = CookieStore(connection).cookie("proj.job")
    with pytest.raises(InvalidArguments, match="'bad'"):
        cookie.set("bad", value)
    with pytest.raises(InvalidArguments, match="'bad'"):
        cookie.set(good=1, bad=value)  # nothing of a refused set is written
    assert connection.cookies.count_documents({}) == 0


def test_cookie_counters_refuse_non_numbers(connection: Connection) -> None:
    cookie = CookieStore(connection).cookie("proj.job")
    for bad in (True, "1", None, float("inf")):
        with pytest.raises(InvalidArguments, match="'n'"):
            cookie.inc("n", bad)
    with pytest.raises(InvalidArguments):
        cookie.set("a", 1, 2)
    with pytest.raises(InvalidArguments):
        cookie.set()


def test_last_runtime_is_the_completion_time(connection: Connection) -> None:
    store = CookieStore(connection)
    stamp = now().replace(microsecond=0)
    store.completed("proj.job", stamp)
    assert store.cookie("proj.job").get("last_runtime") == stamp


# -- a run's capture in this process (what a pool process does around a job's body) ----------
def test_capture_restores_streams_and_loggers_when_the_body_raises(connection: Connection, settings: Settings) -> None:
    data = JobData(settings, LogStore(connection), StdoutStore(connection), CookieStore(connection))
    job_logger = logging.getLogger("capture.job")
    job_logger.setLevel(logging.WARNING)
    streams = (sys.stdout, sys.stderr)
    oid = ObjectId()
    with pytest.raises(RuntimeError, match="body failed"), data.capture(oid, 1, "host-a", ["capture.job"]) as capture:
        assert sys.stdout is not streams[0]
        job_logger.debug("debug while running")  # passes although the logger is at WARNING
        job_logger.warning("warning while running")
        logging.getLogger("core4celery.something").warning("not the job's")
        print("printed")
        capture.failed = True
        raise RuntimeError("body failed")
    assert (sys.stdout, sys.stderr) == streams
    assert job_logger.level == logging.WARNING and not job_logger.filters
    assert all(type(handler).__name__ != "_Handler" for handler in logging.getLogger().handlers)
    assert [doc["message"] for doc in data.logs.read(oid)] == ["debug while running", "warning while running"]
    stored = data.stdout.read(oid)
    assert stored is not None and stored["text"] == "printed\n"
    job_logger.warning("after the run")  # no capture: nothing stored
    assert len(data.logs.read(oid)) == 2


def test_runs_in_two_threads_keep_their_own_output_and_the_streams_come_back() -> None:
    """A thread pool runs two jobs in one process: each run's prints are its own, whichever ends first."""
    streams = (sys.stdout, sys.stderr)
    step = threading.Barrier(2)
    kept: dict[str, str] = {}

    def run(tag: str, ends_first: bool) -> None:
        capture = StreamCapture(1000).start()
        step.wait(10)
        print(f"from {tag}")
        step.wait(10)
        if ends_first:
            capture.stop()
        step.wait(10)
        if not ends_first:
            print(f"{tag} after the other ended", file=sys.stderr)
            capture.stop()
        kept[tag] = capture.tail.text()

    race(lambda: run("a", True), lambda: run("b", False))
    assert kept == {"a": "from a\n", "b": "from b\nb after the other ended\n"}
    assert (sys.stdout, sys.stderr) == streams
