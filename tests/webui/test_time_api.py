"""Time-limit endpoints: deadlines and days on the calendar, loading next year's schedule, pauses, extensions."""
from __future__ import annotations

import io

from tests.conftest import REPO, deploy_text

LIMITS = (REPO / "tests" / "fixtures" / "bpmn" / "time_limits.bpmn").read_text(encoding="utf-8")
SCHEDULE_2027 = """\
year: 2027
holidays:
  - {date: 2027-01-01, name: 元旦}
  - {from: 2027-02-06, to: 2027-02-12, name: 春节}
workdays:
  - 2027-02-14
"""


def test_deadline_in_working_days_and_hours(client, auth):
    headers = auth("gaj1")
    days = client.get("/api/calendar/deadline?start=2026-09-30T10:00:00%2B08:00&workdays=1", headers=headers)
    assert days.status_code == 200
    assert days.json == {"deadline": "2026-10-08T17:30:00+08:00", "provisional": False}
    hours = client.get("/api/calendar/deadline?start=2026-02-13T16:00:00%2B08:00&workhours=2", headers=headers)
    assert hours.json["deadline"] == "2026-02-14T09:30:00+08:00"


def test_deadline_rejects_bad_input_naming_the_field(client, auth):
    answer = client.get("/api/calendar/deadline?start=yesterday&workdays=two", headers=auth("gaj1"))
    assert answer.status_code == 422
    assert {e["field"] for e in answer.json["errors"]} == {"start", "workdays"}
    naive = client.get("/api/calendar/deadline?start=2026-09-30T10:00:00&workdays=1", headers=auth("gaj1"))
    assert naive.status_code == 422 and "UTC offset" in naive.json["errors"][0]["message"]


def test_days_and_the_unloaded_year(client, auth):
    headers = auth("gaj1")
    assert client.get("/api/calendar/days/2026-10-10", headers=headers).json == {
        "date": "2026-10-10", "workday": True, "holiday_name": None, "provisional": False}
    national_day = client.get("/api/calendar/days/2026-10-01", headers=headers).json
    assert national_day["workday"] is False and national_day["holiday_name"]
    assert client.get("/api/calendar/days/2027-02-08", headers=headers).json["provisional"] is True
    beyond = client.get("/api/calendar/deadline?start=2026-12-31T10:00:00%2B08:00&workdays=3", headers=headers)
    assert beyond.json["provisional"] is True
    assert 2027 not in client.get("/api/calendar", headers=headers).json["covered_years"]


def test_admin_loads_next_years_schedule(client, auth):
    refused = client.post("/api/calendar/schedules", json={"schedule": SCHEDULE_2027}, headers=auth("gaj1"))
    assert refused.status_code == 403
    loaded = client.post("/api/calendar/schedules", headers=auth("admin"),
                         data={"file": (io.BytesIO(SCHEDULE_2027.encode()), "2027.yaml")})
    assert loaded.status_code == 201 and loaded.json == {"year": 2027, "holidays": 8, "workdays": 1}
    headers = auth("gaj1")
    assert client.get("/api/calendar/days/2027-02-08", headers=headers).json == {
        "date": "2027-02-08", "workday": False, "holiday_name": "春节", "provisional": False}
    assert client.get("/api/calendar/days/2027-02-14", headers=headers).json["workday"] is True
    assert 2027 in client.get("/api/calendar", headers=headers).json["covered_years"]
    bad = client.post("/api/calendar/schedules", json={"schedule": "year: 2027\nholidays: [2026-01-01]"},
                      headers=auth("admin"))
    assert bad.status_code == 422 and "2026-01-01" in bad.json["errors"][0]["message"]


def test_local_adjustment_of_one_day(client, auth):
    changed = client.put("/api/calendar/days/2026-11-26", json={"workday": False, "holiday_name": "台风停工"},
                         headers=auth("admin"))
    assert changed.status_code == 200 and changed.json["workday"] is False
    assert client.get("/api/calendar/deadline?start=2026-11-25T10:00:00%2B08:00&workdays=1",
                      headers=auth("gaj1")).json["deadline"] == "2026-11-27T17:30:00+08:00"
    assert client.put("/api/calendar/days/2026-13-01", json={"workday": True},
                      headers=auth("admin")).status_code == 422


def test_pause_resume_and_extend_through_the_api(client, auth, db):
    deploy_text(db, "time_limits.bpmn", LIMITS)
    answer = client.post("/api/processes/time_limits/instances", json={}, headers=auth("window1"))
    assert answer.status_code == 201, answer.json
    case = answer.json
    path = f"/api/instances/{case['id']}"
    assert client.post(path + "/pause", json={"kind": "特别程序"}, headers=auth("window1")).status_code == 422
    assert client.post(path + "/pause", json={"kind": "特别程序", "reason": "听证"},
                       headers=auth("gaj1")).status_code == 403
    assert client.post(path + "/pause", json={"kind": "特别程序", "reason": "听证", "expected_workdays": 5},
                       headers=auth("window1")).status_code == 200
    assert client.post(path + "/resume", headers=auth("window1")).status_code == 200
    assert client.post(path + "/resume", headers=auth("window1")).status_code == 409
    extended = client.post(path + "/extend", json={"workdays": 2, "reason": "联合办理"}, headers=auth("scjgj1"))
    assert extended.status_code == 200
    assert client.post(path + "/extend", json={"workdays": 2, "reason": "again"},
                       headers=auth("scjgj1")).status_code == 409
    events = [e["type"] for e in client.get(path, headers=auth("window1")).json["events"]]
    assert events.count("clock_paused") == 1 and events.count("limit_extended") == 1
