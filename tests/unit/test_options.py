"""Option and argument validation: no network needed."""

from __future__ import annotations

import pytest
from celery import Celery

from core4celery import ConfigurationError, Core4, Core4Task, InvalidArguments, InvalidOption
from core4celery.config.options import JobOptions
from core4celery.config.settings import Settings, mask_url
from core4celery.store.values import args_hash, check_json

URL = "mongodb://127.0.0.1:1/unit?retryWrites=false&serverSelectionTimeoutMS=200"


def make_app() -> Celery:
    app = Celery("unit", broker=URL)
    Core4(app)
    return app


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("max_parallel", 0, "max_parallel must be an int > 0"),
        ("defer_time", -1, "defer_time must be a number > 0"),
        ("attempts", 0, "attempts must be an int > 0"),
        ("priority", "high", "priority must be an int"),
        ("priority", 1.5, "priority must be an int"),
        ("force", "yes", "force must be True or False"),
        ("wall_time", 0, "wall_time must be a number > 0"),
        ("time_limit", -2, "time_limit must be a number > 0"),
        ("acks_late", False, "acks_late=False has no meaning for a core4 job: a ticket is always acknowledged"),
        ("rate_limit", "10/m", "rate_limit='10/m' has no meaning for a core4 job: core4 limits jobs by max_parallel"),
        ("ignore_result", True, "ignore_result=True has no meaning .* result is kept with the job"),
        ("reject_on_worker_lost", False, "reject_on_worker_lost=False has no meaning .* recovered by the registry"),
    ],
)
def test_invalid_options_fail_at_definition(option: str, value: object, message: str) -> None:
    app = make_app()
    with pytest.raises(InvalidOption, match=message):

        @app.task(base=Core4Task, bind=True, shared=False, author="x", **{option: value})
        def job(self: Core4Task) -> None:
            pass


def test_missing_author_fails_at_definition() -> None:
    app = make_app()
    with pytest.raises(InvalidOption, match="needs an author"):

        @app.task(base=Core4Task, bind=True, shared=False)
        def job(self: Core4Task) -> None:
            pass


def test_author_is_not_inherited() -> None:
    class Base(Core4Task):
        abstract = True
        author = "someone"

    with pytest.raises(InvalidOption, match="needs an author"):

        class Job(Base):
            pass


def test_class_options_are_collected() -> None:
    class Job(Core4Task):
        author = "mra"
        max_parallel = 3
        defer_time = 5

    assert Job.core4_options == JobOptions(max_parallel=3, defer_time=5)


def test_core4_defaults() -> None:
    opts = JobOptions()
    assert (opts.attempts, opts.priority, opts.max_parallel, opts.defer_time, opts.defer_max,
            opts.error_time, opts.zombie_time, opts.wall_time, opts.progress_interval, opts.force) == (
        1, 0, 15, 300, 3600, 600, 1800, None, 5, False)


def test_override_rejects_unknown_and_invalid() -> None:
    with pytest.raises(InvalidOption, match="unknown job option"):
        JobOptions().override({"colour": 1})
    with pytest.raises(InvalidOption, match="attempts"):
        JobOptions().override({"attempts": -2})


@pytest.mark.parametrize("value", [{"a": object()}, {"a": (1, 2)}, {"a": {1, 2}}, {"a": float("nan")},
                                   {"$a": 1}, {"a.b": 1}])
def test_non_json_arguments_are_refused(value: dict) -> None:
    with pytest.raises(InvalidArguments):
        check_json(value)


def test_hash_ignores_key_order_and_includes_mother() -> None:
    assert args_hash("n", {"a": 1, "b": 2}, None) == args_hash("n", {"b": 2, "a": 1}, None)
    assert args_hash("n", {"a": 1}, "m1") != args_hash("n", {"a": 1}, "m2")


def test_positional_arguments_are_named() -> None:
    app = make_app()

    @app.task(base=Core4Task, bind=True, shared=False, author="x")
    def job(self: Core4Task, a: int, b: int = 2, **rest: int) -> None:
        pass

    assert job.bind_arguments((1,), {"c": 3}) == {"a": 1, "c": 3}
    with pytest.raises(InvalidArguments, match="missing a required argument"):
        job.bind_arguments((), {})


def test_settings_from_conf_and_env() -> None:
    conf = {"broker_url": "mongodb://u:secret@h:1/brokerdb", "core4celery_ticket_lease": 9}
    s = Settings.from_conf(conf, environ={})
    assert s.database == "brokerdb" and s.ticket_lease == 9
    s = Settings.from_conf(conf, environ={"CORE4CELERY_MONGODB_URL": "mongodb://h:2/other"})
    assert s.database == "other"
    assert "secret" not in mask_url(conf["broker_url"])


def test_settings_refuse_non_mongodb_url() -> None:
    from core4celery import ConfigurationError

    with pytest.raises(ConfigurationError, match="mongodb://"):
        Settings.from_conf({"broker_url": "redis://localhost"}, environ={})
    with pytest.raises(ConfigurationError, match="run_lease"):
        Settings(mongodb_url="mongodb://h/db", heartbeat_interval=5, run_lease=6)


def test_celery_retry_settings_map_onto_attempts_and_error_time_only_when_the_task_sets_them() -> None:
    app = make_app()

    def body() -> None:
        return None

    plain = app.task(base=Core4Task, shared=False, name="u.plain", author="t")(body)
    assert (plain.core4_options.attempts, plain.core4_options.error_time) == (1, 600)  # Celery's max_retries=3 aside
    mapped = app.task(base=Core4Task, shared=False, name="u.mapped", author="t", max_retries=4,
                      default_retry_delay=7)(body)
    assert (mapped.core4_options.attempts, mapped.core4_options.error_time) == (5, 7)
    explicit = app.task(base=Core4Task, shared=False, name="u.explicit", author="t", max_retries=4, attempts=2)(body)
    assert explicit.core4_options.attempts == 2
    with pytest.raises(InvalidOption, match=r"max_retries must be an int >= 0.*got None"):
        app.task(base=Core4Task, shared=False, name="u.forever", author="t", max_retries=None)(body)

def test_time_limit_is_the_workers_to_enforce_not_the_pools() -> None:
    app = make_app()

    def body() -> None:
        return None

    task = app.task(base=Core4Task, shared=False, name="u.limited", author="t", time_limit=30, soft_time_limit=20)(body)
    assert task.core4_options.time_limit == 30
    assert task.time_limit is None  # Celery's pool would kill the process, and the registry would run it again
    assert task.soft_time_limit == 20  # raised inside the run by Celery: a failure under core4's attempts


def test_a_core4_task_without_core4_app_says_what_is_missing() -> None:
    app = Celery("forgot", broker=URL)

    @app.task(base=Core4Task, shared=False, name="u.forgot", author="t")
    def forgot(n: int) -> int:
        return n

    with pytest.raises(ConfigurationError, match=r"call Core4\(app\) before defining tasks"):
        forgot.delay(1)
