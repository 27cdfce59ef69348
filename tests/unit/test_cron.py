"""The ``schedule`` option: checked when the task is defined, never inherited, next runs in UTC."""

from __future__ import annotations

from datetime import datetime

import pytest

from core4celery import Core4Task, InvalidOption
from core4celery.config.cron import parse_cron
from core4celery.config.options import ENQUEUE_OPTIONS

from .test_options import make_app


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("61 * * * *", "schedule '61 \\* \\* \\* \\*' is not a valid cron expression: Invalid end range: 61 > 59"),
        ("* * *", "schedule '\\* \\* \\*' is not a cron expression: it needs 5 fields"),
        ("* * * * * *", "it has 6"),
        ("*/0 * * * *", "schedule '\\*/0 \\* \\* \\* \\*' is not a valid cron expression"),
        ("* * 31 2 *", "never occurs"),
        ("every minute", "schedule 'every minute' is not a cron expression"),
        ("", "schedule '' is not a cron expression"),
        (5, "schedule must be a cron expression \\(a str such as '\\*/5 \\* \\* \\* \\*'\\), got 5"),
        (["* * * * *"], "got \\['\\* \\* \\* \\* \\*'\\]"),
    ],
)
def test_a_bad_schedule_fails_at_definition_naming_the_value(value: object, message: str) -> None:
    app = make_app()
    with pytest.raises(InvalidOption, match=f"task [^ ]+: .*{message}"):

        @app.task(base=Core4Task, bind=True, shared=False, author="x", schedule=value)
        def job(self: Core4Task) -> None:
            pass


def test_a_schedule_is_kept_in_its_normal_form() -> None:
    app = make_app()

    @app.task(base=Core4Task, bind=True, shared=False, author="x", schedule=" */5  *  * * mon-fri ")
    def job(self: Core4Task) -> None:
        pass

    assert job.schedule == "*/5 * * * mon-fri"
    assert job.core4_schedule is not None and job.core4_schedule.expression == "*/5 * * * mon-fri"


def test_a_task_without_schedule_has_none() -> None:
    app = make_app()

    @app.task(base=Core4Task, bind=True, shared=False, author="x")
    def job(self: Core4Task) -> None:
        pass

    assert job.schedule is None and job.core4_schedule is None


def test_a_schedule_is_not_inherited() -> None:
    class Nightly(Core4Task):
        name = "unit.nightly"
        author = "x"
        schedule = "0 3 * * *"

    class Variant(Nightly):
        name = "unit.variant"
        author = "x"

    class Hourly(Nightly):
        name = "unit.hourly"
        author = "x"
        schedule = "0 * * * *"

    assert Nightly.core4_schedule is not None and Nightly.schedule == "0 3 * * *"
    assert Variant.core4_schedule is None and Variant.schedule is None
    assert Hourly.core4_schedule is not None and Hourly.core4_schedule.expression == "0 * * * *"


def test_an_abstract_base_may_carry_a_schedule_its_tasks_do_not_inherit() -> None:
    class Base(Core4Task):
        abstract = True
        schedule = "*/5 * * * *"

    class Job(Base):
        name = "unit.job_of_base"
        author = "x"

    assert Job.core4_schedule is None


def test_schedule_is_not_an_enqueue_option() -> None:
    assert "schedule" not in ENQUEUE_OPTIONS
    app = make_app()

    @app.task(base=Core4Task, bind=True, shared=False, author="x")
    def job(self: Core4Task) -> None:
        pass

    with pytest.raises(InvalidOption, match="unknown job option"):
        job.core4_options.override({"schedule": "* * * * *"})


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("*/5 * * * *", datetime(2026, 3, 1, 10, 2, 30), datetime(2026, 3, 1, 10, 5)),
        ("*/5 * * * *", datetime(2026, 3, 1, 10, 5), datetime(2026, 3, 1, 10, 10)),  # strictly after
        ("* * * * *", datetime(2026, 3, 1, 10, 5, 59, 999000), datetime(2026, 3, 1, 10, 6)),
        ("0 3 * * *", datetime(2026, 3, 1, 3, 0, 1), datetime(2026, 3, 2, 3, 0)),
        ("30 23 31 12 *", datetime(2026, 6, 1), datetime(2026, 12, 31, 23, 30)),
        ("0 0 * * mon", datetime(2026, 12, 1, 12), datetime(2026, 12, 7)),  # 1 Dec 2026 is a Tuesday
        ("0 0 * * sun", datetime(2026, 12, 1, 12), datetime(2026, 12, 6)),
        ("0 0 29 2 *", datetime(2026, 1, 1), datetime(2028, 2, 29)),
        ("0 12 1 * fri", datetime(2026, 12, 1, 13), datetime(2026, 12, 4, 12)),  # day fields: either one
        ("0 12 */10 * *", datetime(2026, 12, 1, 13), datetime(2026, 12, 11, 12)),
        ("0 12 * * fri", datetime(2026, 12, 1, 13), datetime(2026, 12, 4, 12)),
        ("15 8-9 * jan *", datetime(2026, 12, 31, 23, 59), datetime(2027, 1, 1, 8, 15)),
    ],
)
def test_next_run_is_the_first_matching_minute_after(expression: str, after: datetime, expected: datetime) -> None:
    assert parse_cron(expression).next_after(after) == expected
