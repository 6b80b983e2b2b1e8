"""Tests for engine.calendar: working days, office hours and deadline arithmetic.

Dates below were checked against chinesecalendar 1.11.0, whose 2026 data is:
holidays 1/1-3, 2/15-23, 4/4-6, 5/1-5, 6/19-21, 9/25-27 (中秋), 10/1-7 (国庆);
make-up working days (调休) 1/4 Sun, 2/14 Sat, 2/28 Sat, 5/9 Sat, 9/20 Sun, 10/10 Sat.
It has no data for 2027.
"""

import time as clock
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from engine.calendar import DEFAULT_OFFICE_HOURS, DayInfo, Deadline, OfficeHours, WorkCalendar

SH = ZoneInfo("Asia/Shanghai")
HOUR = 3600


def sh(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=SH)


@pytest.fixture
def cal() -> WorkCalendar:
    return WorkCalendar()


# --- office hours ------------------------------------------------------------------------


def test_default_office_day_is_seven_hours():
    # 09:00-12:00 (3 h) + 13:30-17:30 (4 h).
    assert DEFAULT_OFFICE_HOURS.seconds_per_day == 7 * HOUR
    assert DEFAULT_OFFICE_HOURS.periods == ((time(9), time(12)), (time(13, 30), time(17, 30)))
    assert DEFAULT_OFFICE_HOURS.tz == "Asia/Shanghai"


def test_parse_reads_periods_and_accepts_single_digit_hours():
    hours = OfficeHours.parse("8:30-12:00, 14:00-18:00")
    assert hours.periods == ((time(8, 30), time(12)), (time(14), time(18)))
    assert hours.seconds_per_day == int(7.5 * HOUR)
    assert OfficeHours.parse("09:00-12:00,13:30-17:30") == DEFAULT_OFFICE_HOURS


@pytest.mark.parametrize(
    "text, bad_part",
    [
        ("09:00-12:00,13:30", "13:30"),
        ("09:00-12:00,13:30-25:00", "13:30-25:00"),
        ("nine-twelve", "nine-twelve"),
        ("09:00-12:00-13:00", "09:00-12:00-13:00"),
    ],
)
def test_parse_error_names_the_bad_part(text, bad_part):
    with pytest.raises(ValueError, match=bad_part):
        OfficeHours.parse(text)


@pytest.mark.parametrize("text", ["12:00-09:00", "09:00-12:00,11:00-14:00", "13:30-17:30,09:00-12:00"])
def test_parse_rejects_backwards_or_overlapping_periods(text):
    with pytest.raises(ValueError, match="office period"):
        OfficeHours.parse(text)


def test_unknown_time_zone_is_a_value_error():
    with pytest.raises(ValueError, match="Mars/Olympus"):
        OfficeHours.parse("09:00-17:00", tz="Mars/Olympus")


# --- days --------------------------------------------------------------------------------


def test_national_day_is_a_named_holiday(cal):
    assert cal.day(date(2026, 10, 1)) == DayInfo(date(2026, 10, 1), False, "国庆节", False)
    assert cal.day(date(2026, 9, 25)).holiday_name == "中秋"


def test_make_up_saturday_is_a_workday_without_a_name(cal):
    assert cal.day(date(2026, 10, 10)) == DayInfo(date(2026, 10, 10), True, None, False)
    assert cal.is_workday(date(2026, 2, 14))
    assert cal.is_workday(date(2026, 9, 20))  # a Sunday


def test_plain_weekend_and_weekday(cal):
    assert cal.day(date(2026, 3, 7)) == DayInfo(date(2026, 3, 7), False, None, False)
    assert cal.is_workday(date(2026, 3, 9))
    assert not cal.is_workday(date(2026, 10, 5))  # a Monday inside National Day


def test_package_has_no_2027_data_so_2027_is_provisional_weekday_rule(cal):
    # The year-boundary tests below rely on this; upgrading chinesecalendar must revisit them.
    assert cal.covered_years()[-1] == 2026
    assert cal.day(date(2027, 1, 1)) == DayInfo(date(2027, 1, 1), True, None, True)  # a Friday
    assert cal.day(date(2027, 1, 2)) == DayInfo(date(2027, 1, 2), False, None, True)  # a Saturday


def test_covered_years_adds_loaded_years(cal):
    assert cal.covered_years() == list(range(2004, 2027))
    assert WorkCalendar(loaded_years=[2028, 2027]).covered_years() == list(range(2004, 2029))


def test_override_wins_over_package_and_is_never_provisional():
    calendar = WorkCalendar(
        overrides={
            date(2026, 10, 8): (False, "台风停工"),
            date(2026, 10, 3): (True, None),
            date(2027, 1, 1): (False, "元旦"),
        }
    )
    assert calendar.day(date(2026, 10, 8)) == DayInfo(date(2026, 10, 8), False, "台风停工", False)
    assert calendar.is_workday(date(2026, 10, 3))
    assert calendar.day(date(2027, 1, 1)) == DayInfo(date(2027, 1, 1), False, "元旦", False)
    assert calendar.day(date(2027, 1, 4)).provisional  # only the overridden date is certain


def test_loaded_year_uses_weekday_rule_without_being_provisional():
    calendar = WorkCalendar(loaded_years=[2027])
    assert calendar.day(date(2027, 1, 4)) == DayInfo(date(2027, 1, 4), True, None, False)


def test_datetime_override_key_is_rejected():
    with pytest.raises(TypeError):
        WorkCalendar(overrides={datetime(2026, 10, 8): (False, None)})


# --- time zones --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda c, t: c.add_workdays(t, 1),
        lambda c, t: c.add_workhours(t, 1),
        lambda c, t: c.add_working_seconds(t, 60),
        lambda c, t: c.working_seconds_between(t, sh(2026, 10, 9, 10)),
        lambda c, t: c.working_seconds_between(sh(2026, 9, 1, 10), t),
        lambda c, t: c.workdays_left(t, sh(2026, 10, 9, 10)),
    ],
)
def test_naive_datetimes_are_rejected(cal, call):
    with pytest.raises(ValueError, match="naive"):
        call(cal, datetime(2026, 9, 30, 10))


def test_other_time_zones_are_converted_to_the_calendar_zone(cal):
    # 16:30 UTC on 30 September is already 1 October (a holiday) in Shanghai.
    due = cal.add_workdays(datetime(2026, 9, 30, 16, 30, tzinfo=timezone.utc), 0)
    assert due.at == sh(2026, 10, 8, 17, 30)
    assert due.at.utcoffset() == timedelta(hours=8)
    # 01:00 UTC is 09:00 in Shanghai.
    assert cal.add_workhours(datetime(2026, 3, 9, 1, tzinfo=timezone.utc), 1).at == sh(2026, 3, 9, 10)


# --- add_workdays ------------------------------------------------------------------------


def test_one_workday_from_eve_of_national_day_skips_the_holiday(cal):
    assert cal.add_workdays(sh(2026, 9, 30, 10), 1) == Deadline(sh(2026, 10, 8, 17, 30), False)


def test_one_workday_from_friday_lands_on_make_up_saturday(cal):
    assert cal.add_workdays(sh(2026, 10, 9, 10), 1) == Deadline(sh(2026, 10, 10, 17, 30), False)


def test_spring_festival_is_skipped(cal):
    assert cal.add_workdays(sh(2026, 2, 13, 10), 1).at == sh(2026, 2, 14, 17, 30)
    assert cal.add_workdays(sh(2026, 2, 13, 10), 2).at == sh(2026, 2, 24, 17, 30)


def test_start_day_is_not_counted_even_when_started_before_office_hours(cal):
    assert cal.add_workdays(sh(2026, 3, 9, 7), 1).at == sh(2026, 3, 10, 17, 30)


def test_zero_workdays_is_close_of_business_of_start_or_next_workday(cal):
    assert cal.add_workdays(sh(2026, 3, 9, 10), 0).at == sh(2026, 3, 9, 17, 30)
    assert cal.add_workdays(sh(2026, 10, 3, 10), 0).at == sh(2026, 10, 8, 17, 30)
    assert cal.add_workdays(sh(2026, 10, 10, 10), 0).at == sh(2026, 10, 10, 17, 30)


def test_close_of_business_follows_custom_office_hours():
    calendar = WorkCalendar(office_hours=OfficeHours.parse("08:30-12:00,14:00-18:00"))
    assert calendar.add_workdays(sh(2026, 3, 9, 10), 1).at == sh(2026, 3, 10, 18)


def test_invalid_workday_counts_are_rejected(cal):
    with pytest.raises(ValueError):
        cal.add_workdays(sh(2026, 3, 9, 10), -1)
    with pytest.raises(TypeError, match="add_workhours"):
        cal.add_workdays(sh(2026, 3, 9, 10), 0.5)


# --- add_workhours -----------------------------------------------------------------------


def test_two_hours_from_friday_afternoon_run_into_make_up_saturday(cal):
    assert cal.add_workhours(sh(2026, 2, 13, 16), 2) == Deadline(sh(2026, 2, 14, 9, 30), False)


def test_half_day_from_nine_crosses_lunch(cal):
    assert cal.add_workhours(sh(2026, 3, 9, 9), 4).at == sh(2026, 3, 9, 14, 30)


def test_deadline_at_end_of_period_stays_there(cal):
    assert cal.add_workhours(sh(2026, 3, 9, 9), 3).at == sh(2026, 3, 9, 12)
    assert cal.add_workhours(sh(2026, 3, 9, 9), 7).at == sh(2026, 3, 9, 17, 30)
    assert cal.add_workhours(sh(2026, 3, 9, 9), 8).at == sh(2026, 3, 10, 10)
    assert cal.add_workhours(sh(2026, 3, 9, 17, 30), 7).at == sh(2026, 3, 10, 17, 30)


@pytest.mark.parametrize(
    "start, expected",
    [
        (sh(2026, 3, 9, 7), sh(2026, 3, 9, 10)),  # before office hours
        (sh(2026, 3, 9, 12, 30), sh(2026, 3, 9, 14, 30)),  # lunch break
        (sh(2026, 3, 9, 19), sh(2026, 3, 10, 10)),  # evening
        (sh(2026, 3, 7, 10), sh(2026, 3, 9, 10)),  # Saturday
        (sh(2026, 9, 30, 17), sh(2026, 10, 8, 9, 30)),  # into National Day
    ],
)
def test_counting_outside_office_hours_starts_at_next_period(cal, start, expected):
    assert cal.add_workhours(start, 1).at == expected


def test_fractional_hours(cal):
    assert cal.add_workhours(sh(2026, 3, 9, 11, 45), 0.5).at == sh(2026, 3, 9, 13, 45)


def test_negative_working_time_is_rejected(cal):
    with pytest.raises(ValueError):
        cal.add_workhours(sh(2026, 3, 9, 9), -1)


# --- pauses ------------------------------------------------------------------------------


def test_pause_across_national_day_counts_only_office_time(cal):
    # 09-30 15:00-17:30 = 2.5 h; 10-01..10-07 holiday; 10-08 (Thu) full day = 7 h;
    # 10-09 09:00-10:00 = 1 h. No 调休 day falls inside (9/20 is before, 10/10 after).
    expected = (2.5 + 7 + 1) * HOUR
    assert cal.working_seconds_between(sh(2026, 9, 30, 15), sh(2026, 10, 9, 10)) == expected


def test_resumed_clock_moves_deadline_by_paused_office_time(cal):
    paused = cal.working_seconds_between(sh(2026, 9, 30, 15), sh(2026, 10, 9, 10))
    # 10.5 h after 09-30 17:30: 10-08 takes 7 h, 10-09 09:00-12:00 takes 3 h, then 30 min after 13:30.
    assert cal.add_working_seconds(sh(2026, 9, 30, 17, 30), paused).at == sh(2026, 10, 9, 14)


def test_no_office_time_between_moments_out_of_order_or_off_hours(cal):
    assert cal.working_seconds_between(sh(2026, 10, 9, 10), sh(2026, 9, 30, 15)) == 0
    assert cal.working_seconds_between(sh(2026, 3, 9, 12, 5), sh(2026, 3, 9, 13, 25)) == 0
    assert cal.working_seconds_between(sh(2026, 10, 2, 10), sh(2026, 10, 6, 16)) == 0
    assert cal.working_seconds_between(sh(2026, 3, 9, 11), sh(2026, 3, 9, 14)) == 1.5 * HOUR


def _moments(first: datetime, last: datetime, step: timedelta) -> list[datetime]:
    moments = []
    while first <= last:
        moments.append(first)
        first += step
    return moments


# Odd step so the grid hits period edges, lunch, nights, weekends, 调休 and holidays.
GRID = _moments(sh(2026, 9, 18, 8), sh(2026, 10, 12, 19), timedelta(minutes=137)) + _moments(
    sh(2026, 12, 29, 8), sh(2027, 1, 6, 19), timedelta(minutes=211)
)


def test_add_working_seconds_inverts_working_seconds_between(cal):
    for a in GRID[::7]:
        for b in GRID:
            spent = cal.working_seconds_between(a, b)
            reached = cal.add_working_seconds(a, spent).at
            assert cal.working_seconds_between(a, reached) == spent
            if b > a:
                # Earliest moment with that much office time: nothing between it and b.
                assert reached <= b
                assert cal.working_seconds_between(reached, b) == 0


def test_working_seconds_between_inverts_add_working_seconds(cal):
    for a in GRID[::5]:
        for seconds in (1, 1800, 3 * HOUR, 7 * HOUR, 7 * HOUR + 1, 37 * HOUR, 130 * HOUR):
            reached = cal.add_working_seconds(a, seconds).at
            assert cal.working_seconds_between(a, reached) == seconds


# --- year boundary -----------------------------------------------------------------------


def test_deadline_into_uncovered_year_uses_weekday_rule_and_is_provisional(cal):
    # 2027-01-01 is a Friday; without a schedule the weekday rule calls it a workday.
    assert cal.add_workdays(sh(2026, 12, 31, 10), 1) == Deadline(sh(2027, 1, 1, 17, 30), True)
    assert cal.add_workhours(sh(2026, 12, 31, 17), 1) == Deadline(sh(2027, 1, 1, 9, 30), True)


def test_deadline_inside_covered_year_is_not_provisional(cal):
    assert not cal.add_workdays(sh(2026, 12, 30, 10), 1).provisional
    assert not cal.add_workhours(sh(2026, 12, 31, 16), 1).provisional


def test_loaded_next_year_schedule_makes_deadline_certain():
    calendar = WorkCalendar(overrides={date(2027, 1, 1): (False, "元旦")}, loaded_years=[2027])
    assert calendar.add_workdays(sh(2026, 12, 31, 10), 1) == Deadline(sh(2027, 1, 4, 17, 30), False)


def test_override_alone_does_not_make_rest_of_year_certain():
    calendar = WorkCalendar(overrides={date(2027, 1, 1): (False, "元旦")})
    due = calendar.add_workdays(sh(2026, 12, 31, 10), 1)
    assert due == Deadline(sh(2027, 1, 4, 17, 30), True)


# --- workdays_left -----------------------------------------------------------------------


def test_workdays_left_counts_office_time_in_days(cal):
    assert cal.workdays_left(sh(2026, 3, 10, 9), sh(2026, 3, 11, 17, 30)) == 2.0
    # 09-30 13:30-17:30 is 4 of 7 office hours, then 10-08 is a full day after the holiday.
    assert cal.workdays_left(sh(2026, 9, 30, 13, 30), sh(2026, 10, 8, 17, 30)) == pytest.approx(1 + 4 / 7)


def test_workdays_left_is_negative_when_overdue(cal):
    # Overdue by 03-11 09:00-11:00, i.e. 2 of 7 office hours.
    assert cal.workdays_left(sh(2026, 3, 11, 11), sh(2026, 3, 10, 17, 30)) == pytest.approx(-2 / 7)
    assert cal.workdays_left(sh(2026, 10, 8, 9), sh(2026, 9, 30, 17, 30)) == 0


# --- speed -------------------------------------------------------------------------------


def test_long_limits_are_computed_arithmetically(cal):
    start = sh(2026, 1, 5, 10)
    began = clock.perf_counter()
    for _ in range(200):
        due = cal.add_workdays(start, 120)
        cal.add_workhours(start, 120 * 7)
        cal.working_seconds_between(start, due.at)
    per_call = (clock.perf_counter() - began) / 600
    assert per_call < 0.002
    # Rest of 01-05 (10:00-12:00, 13:30-17:30) plus 120 full working days.
    assert cal.working_seconds_between(start, due.at) == (6 + 120 * 7) * HOUR
