"""Working-day calendar: which days are 工作日 and how time limits are counted in office time."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import cached_property
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import chinese_calendar

_US_PER_SECOND = 1_000_000
_PACKAGE_HOLIDAYS: Mapping[date, str] = chinese_calendar.holidays
_PACKAGE_WORKDAYS: Mapping[date, str] = chinese_calendar.workdays
# Same bounds the package itself enforces before raising NotImplementedError.
_PACKAGE_YEARS = range(min(_PACKAGE_HOLIDAYS).year, max(_PACKAGE_HOLIDAYS).year + 1)


def _holiday_label(english: str) -> str:
    try:
        return chinese_calendar.Holiday(english).chinese
    except (ValueError, AttributeError):
        return english


def _micros_of_day(t: time) -> int:
    return ((t.hour * 60 + t.minute) * 60 + t.second) * _US_PER_SECOND + t.microsecond


def _parse_clock(text: str) -> time:
    return datetime.strptime(text.strip(), "%H:%M").time()


@dataclass(frozen=True)
class OfficeHours:
    """Office periods of a working day, as local wall-clock times in `tz`."""

    periods: tuple[tuple[time, time], ...] = ((time(9), time(12)), (time(13, 30), time(17, 30)))
    tz: str = "Asia/Shanghai"

    def __post_init__(self) -> None:
        if not self.periods:
            raise ValueError("office hours need at least one period")
        previous_end: time | None = None
        for start, end in self.periods:
            if start >= end:
                raise ValueError(f"office period {start:%H:%M}-{end:%H:%M} ends before it starts")
            if previous_end is not None and start < previous_end:
                raise ValueError(f"office period {start:%H:%M}-{end:%H:%M} overlaps or is out of order")
            previous_end = end
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {self.tz!r}") from exc

    @classmethod
    def parse(cls, text: str, tz: str = "Asia/Shanghai") -> OfficeHours:
        """Read "09:00-12:00,13:30-17:30"."""
        periods = []
        for part in text.split(","):
            bounds = part.split("-")
            if len(bounds) != 2:
                raise ValueError(f"bad office period {part.strip()!r}: expected HH:MM-HH:MM")
            try:
                periods.append((_parse_clock(bounds[0]), _parse_clock(bounds[1])))
            except ValueError as exc:
                raise ValueError(f"bad office period {part.strip()!r}: {exc}") from exc
        return cls(tuple(periods), tz)

    @property
    def seconds_per_day(self) -> int:
        return self.micros_per_day // _US_PER_SECOND

    @property
    def tzinfo(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    @property
    def close_of_business(self) -> time:
        return self.periods[-1][1]

    @cached_property
    def _spans(self) -> tuple[tuple[int, int], ...]:
        return tuple((_micros_of_day(s), _micros_of_day(e)) for s, e in self.periods)

    @cached_property
    def micros_per_day(self) -> int:
        return sum(end - start for start, end in self._spans)

    def elapsed_before(self, t: time) -> int:
        """Office microseconds of a working day that lie before wall-clock time `t`."""
        moment = _micros_of_day(t)
        return sum(min(max(moment, start), end) - start for start, end in self._spans)

    def wall_time_after(self, elapsed: int) -> timedelta:
        """Earliest offset from midnight at which `elapsed` office microseconds have passed.

        Earliest, so a limit that is used up exactly at 12:00 is due at 12:00, not at 13:30.
        """
        for start, end in self._spans:
            if elapsed <= end - start:
                return timedelta(microseconds=start + elapsed)
            elapsed -= end - start
        raise ValueError("more office time requested than one day holds")


DEFAULT_OFFICE_HOURS = OfficeHours()


@dataclass(frozen=True)
class DayInfo:
    date: date
    workday: bool
    holiday_name: str | None
    provisional: bool


@dataclass(frozen=True)
class Deadline:
    at: datetime
    provisional: bool


class WorkCalendar:
    """Workdays from admin overrides, then the chinese_calendar package, then the weekday rule."""

    def __init__(
        self,
        overrides: Mapping[date, tuple[bool, str | None]] | None = None,
        office_hours: OfficeHours = DEFAULT_OFFICE_HOURS,
        loaded_years: Iterable[int] = (),
    ) -> None:
        """overrides: admin-table rows (date -> (is_workday, holiday_name)); they win over the package.
        loaded_years: years for which the admin table holds a full State Council schedule
        (beyond the package's coverage)."""
        self._overrides: dict[date, tuple[bool, str | None]] = {}
        for day, row in (overrides or {}).items():
            # A datetime key would never match a date lookup and the override would be silently lost.
            if isinstance(day, datetime) or not isinstance(day, date):
                raise TypeError(f"override keys must be dates, got {day!r}")
            self._overrides[day] = (bool(row[0]), row[1])
        self.office_hours = office_hours
        self._tz = office_hours.tzinfo
        self._loaded_years = frozenset(loaded_years)

    # --- days ---------------------------------------------------------------------------

    def day(self, d: date) -> DayInfo:
        if isinstance(d, datetime):
            raise TypeError("day() takes a date; convert the datetime to the calendar time zone first")
        if d in self._overrides:
            workday, name = self._overrides[d]
            return DayInfo(d, workday, name, provisional=False)
        if d.year in _PACKAGE_YEARS:
            english = _PACKAGE_HOLIDAYS.get(d)
            name = _holiday_label(english) if english else None
            return DayInfo(d, self._package_workday(d), name, provisional=False)
        return DayInfo(d, d.weekday() < 5, None, provisional=d.year not in self._loaded_years)

    def is_workday(self, d: date) -> bool:
        return self._status(d)[0]

    def covered_years(self) -> list[int]:
        return sorted(set(_PACKAGE_YEARS) | self._loaded_years)

    def _status(self, d: date) -> tuple[bool, bool]:
        """(workday, provisional) without building a DayInfo: this is the hot path of every count."""
        row = self._overrides.get(d)
        if row is not None:
            return row[0], False
        if d.year in _PACKAGE_YEARS:
            return self._package_workday(d), False
        return d.weekday() < 5, d.year not in self._loaded_years

    @staticmethod
    def _package_workday(d: date) -> bool:
        return d in _PACKAGE_WORKDAYS or (d.weekday() < 5 and d not in _PACKAGE_HOLIDAYS)

    # --- moments ------------------------------------------------------------------------

    def _local(self, moment: datetime) -> datetime:
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"naive datetime {moment.isoformat()} rejected: pass a timezone-aware datetime")
        return moment.astimezone(self._tz)

    def _at(self, d: date, since_midnight: timedelta) -> datetime:
        return datetime.combine(d, time(), tzinfo=self._tz) + since_midnight

    # --- counting -----------------------------------------------------------------------

    def add_workdays(self, start: datetime, n: int) -> Deadline:
        """Close of business of the n-th working day after the start day (民法典 §201: start day not counted)."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"working days must be a whole number, got {n!r}; use add_workhours for half days")
        if n < 0:
            raise ValueError(f"working days must be >= 0, got {n}")
        day = self._local(start).date()
        provisional = False
        if n > 0:
            day += timedelta(days=1)
        while True:
            workday, unsure = self._status(day)
            provisional |= unsure
            if workday:
                if n <= 1:
                    break
                n -= 1
            day += timedelta(days=1)
        due = datetime.combine(day, self.office_hours.close_of_business, tzinfo=self._tz)
        return Deadline(due, provisional)

    def add_workhours(self, start: datetime, hours: float) -> Deadline:
        return self.add_working_seconds(start, hours * 3600)

    def add_working_seconds(self, start: datetime, seconds: float) -> Deadline:
        """Earliest moment by which `seconds` of office time have elapsed since `start`."""
        if seconds < 0:
            raise ValueError(f"working time must be >= 0, got {seconds}")
        local = self._local(start)
        remaining = round(seconds * _US_PER_SECOND)
        day = local.date()
        workday, provisional = self._status(day)
        if remaining == 0:
            return Deadline(local, provisional)
        per_day = self.office_hours.micros_per_day
        used_today = self.office_hours.elapsed_before(local.time())
        while True:
            if workday:
                if remaining <= per_day - used_today:
                    at = self._at(day, self.office_hours.wall_time_after(used_today + remaining))
                    return Deadline(at, provisional)
                remaining -= per_day - used_today
            day += timedelta(days=1)
            used_today = 0
            workday, unsure = self._status(day)
            provisional |= unsure

    def working_seconds_between(self, a: datetime, b: datetime) -> float:
        """Office time between two moments; 0 when b is not after a."""
        first, last = self._local(a), self._local(b)
        if last <= first:
            return 0.0
        hours = self.office_hours
        elapsed_first = hours.elapsed_before(first.time()) if self.is_workday(first.date()) else 0
        elapsed_last = hours.elapsed_before(last.time()) if self.is_workday(last.date()) else 0
        if first.date() == last.date():
            return (elapsed_last - elapsed_first) / _US_PER_SECOND
        # From the start of first's day to the start of last's day, then trim both ends.
        whole_days = self._count_workdays(first.date(), last.date())
        total = whole_days * hours.micros_per_day - elapsed_first + elapsed_last
        return total / _US_PER_SECOND

    def workdays_left(self, now: datetime, due: datetime) -> float:
        """Remaining office time in working days; negative by the overdue office time."""
        now, due = self._local(now), self._local(due)
        per_day = self.office_hours.seconds_per_day
        if due >= now:
            return self.working_seconds_between(now, due) / per_day
        return -self.working_seconds_between(due, now) / per_day

    def _count_workdays(self, first: date, stop: date) -> int:
        """Working days in [first, stop)."""
        count = 0
        day = first
        while day < stop:
            count += self._status(day)[0]
            day += timedelta(days=1)
        return count
