"""core4's ``schedule`` option: a five-field cron expression, evaluated in UTC.

Celery's own parser (``celery.schedules.crontab.from_string``) reads and checks
the fields, so no extra dependency is needed and a task's schedule means what
it would mean to ``celery beat``. The next run is computed here from the
parsed sets rather than by Celery's ``remaining_estimate``, which measures
from the wall clock: the scheduler and its tests need "the first run after
this moment" for any moment. Day of month and day of week combine as in cron
(and core4's croniter): either matches when both are restricted, both must
match when one of them is ``*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from celery.schedules import crontab

from ..errors import InvalidOption

# Feb 29 on a given weekday recurs within 28 years; 29 Feb alone within 8 (2096 -> 2104)
SEARCH_DAYS = 366 * 29


@dataclass(frozen=True)
class Cron:
    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]  # 0 = Sunday, as in cron
    day_or: bool  # both day fields restricted: either one matching is enough

    def next_after(self, stamp: datetime) -> datetime:
        """The first whole minute strictly after ``stamp`` (naive UTC) that the expression matches."""
        start = stamp.replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = start.date()
        for _ in range(SEARCH_DAYS):
            if self._day_matches(day):
                found = self._first_time(day, start.time() if day == start.date() else time(0, 0))
                if found is not None:
                    return datetime.combine(day, found)
            day += timedelta(days=1)
        raise InvalidOption(f"schedule {self.expression!r} matches no time within {SEARCH_DAYS // 366} years")

    def _day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        by_month = day.day in self.days_of_month
        by_week = day.isoweekday() % 7 in self.days_of_week
        return (by_month or by_week) if self.day_or else (by_month and by_week)

    def _first_time(self, day: date, earliest: time) -> time | None:
        for hour in self.hours:
            if hour < earliest.hour:
                continue
            for minute in self.minutes:
                if (hour, minute) >= (earliest.hour, earliest.minute):
                    return time(hour, minute)
        return None


def parse_cron(value: object) -> Cron:
    """A cron expression (``"*/5 * * * *"``), checked field by field; InvalidOption names the value."""
    if not isinstance(value, str):
        raise InvalidOption(f"schedule must be a cron expression (a str such as '*/5 * * * *'), got {value!r}")
    fields = value.split()
    if len(fields) != 5:
        raise InvalidOption(f"schedule {value!r} is not a cron expression: it needs 5 fields "
                            f"(minute hour day-of-month month day-of-week), it has {len(fields)}")
    try:
        parsed = crontab.from_string(" ".join(fields))
    except (ValueError, TypeError, IndexError) as exc:
        raise InvalidOption(f"schedule {value!r} is not a valid cron expression: {exc}") from None
    return Cron(
        expression=" ".join(fields), minutes=tuple(sorted(parsed.minute)), hours=tuple(sorted(parsed.hour)),
        days_of_month=frozenset(parsed.day_of_month), months=frozenset(parsed.month_of_year),
        days_of_week=frozenset(parsed.day_of_week),
        day_or=not fields[2].startswith("*") and not fields[4].startswith("*"),
    )


def schedule_of(task_cls: type) -> Cron | None:
    """core4 never inherits a schedule: only the class's own ``schedule`` counts."""
    value = task_cls.__dict__.get("schedule")
    return None if value is None else parse_cron(value)
