"""Supervision figures on a 2026 history driven through the real engine: hand-computed and equal to the audit trail."""
from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import time_machine
from sqlalchemy import delete, select, text, update

from engine import (accounts, lights, migration, ratings, rollup, runtime, statistics, supervision, timers,
                    violations, worklist)
from engine.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from engine.store import (audit_event, case_duration, human_task, process_instance, supervision_day, supervision_roll,
                          violation, violation_note)
from tests.conftest import REPO, deploy_text

CST = ZoneInfo("Asia/Shanghai")
LIMITS = (REPO / "tests" / "fixtures" / "bpmn" / "time_limits.bpmn").read_text(encoding="utf-8")
HOUR = 3600


def at(moment: str) -> datetime:
    return datetime.fromisoformat(moment).replace(tzinfo=CST)


def only_task(db, user, bpmn_id, instance_id):
    tasks = [t for t in worklist.list_tasks(db, user, limit=500)
             if t["bpmn_id"] == bpmn_id and t["instance_id"] == instance_id]
    assert len(tasks) == 1, f"{user.username} should see one {bpmn_id} of case {instance_id}, sees {tasks}"
    return tasks[0]


def complete(db, user, bpmn_id, case, when, data=None):
    with time_machine.travel(at(when), tick=False):
        runtime.complete(db, only_task(db, user, bpmn_id, case["id"])["id"], user, data or {})


def accept(db, users, when: str, clerk: str = "window1"):
    with time_machine.travel(at(when), tick=False):
        case = runtime.start_case(db, "time_limits", {"applicant": "测试公司"}, clerk)
    complete(db, users[clerk], "intake", case, when, {"decision": "accept"})
    return case


@pytest.fixture
def people(db, org):
    deploy_text(db, "time_limits.bpmn", LIMITS)
    return {**org,
            "window2": accounts.create_user(db, "window2", "window-pass-2", "窗口二", ["window"], ["clerk", "window"]),
            "swjlead": accounts.create_user(db, "swjlead", "swj-lead-1", "税务科长", ["swj"], ["clerk", "lead"]),
            "supervisor": accounts.create_user(db, "supervisor", "super-pass-1", "监察", [], ["supervisor"])}


@pytest.fixture
def history(db, people):
    """Five cases of 2026 around 清明, 劳动节 (调休 Sat 05-09) and 国庆 (调休 Sat 10-10); see the figures below."""
    p = people
    # A: Thu 04-02 10:00, before 清明 (04-04..06). Due: 04-03, 04-07..10 → 04-10 17:30.
    a = accept(db, p, "2026-04-02 10:00")
    complete(db, p["gaj1"], "review_gaj", a, "2026-04-03 09:00", {"gaj_approved": True})
    complete(db, p["swj1"], "review_swj", a, "2026-04-07 10:00", {"swj_approved": True})
    # B: Wed 04-29 10:00, before 劳动节 (05-01..05). gaj's 2 working days end 05-06 17:30 → deemed consent.
    b = accept(db, p, "2026-04-29 10:00")
    with time_machine.travel(at("2026-05-06 09:00"), tick=False):
        lights.sweep_lights(db)          # gaj: 7 h left of 20 → yellow; swj (urge due 04-29 15:30) → red
    complete(db, p["swj1"], "review_swj", b, "2026-05-06 09:30", {"swj_approved": True})
    with time_machine.travel(at("2026-05-06 17:31"), tick=False):
        assert timers.sweep(db) == 1     # 超时默许; the case completes
    # C: Wed 09-30 10:00; 补正 pauses 09-30 11:00 → 10-09 10:00 (13 working hours); committed due → 10-15 16:30.
    with time_machine.travel(at("2026-09-30 10:00"), tick=False):
        c = runtime.start_case(db, "time_limits", {"applicant": "补正公司"}, "window1")
    complete(db, p["window1"], "intake", c, "2026-09-30 11:00", {"decision": "supplement"})
    complete(db, p["window1"], "supplement", c, "2026-10-09 10:00")
    complete(db, p["window1"], "intake", c, "2026-10-09 10:30", {"decision": "accept"})
    complete(db, p["gaj1"], "review_gaj", c, "2026-10-12 10:00", {"gaj_approved": True})
    with time_machine.travel(at("2026-10-15 17:00"), tick=False):
        lights.sweep_lights(db)          # case past 10-15 16:30 → red; swj (urge due 10-09 16:00) → red
    complete(db, p["swj1"], "review_swj", c, "2026-10-16 10:00", {"swj_approved": True})
    # D: Mon 10-19 10:00, sent back to intake by the tax lead; still running.
    d = accept(db, p, "2026-10-19 10:00")
    complete(db, p["gaj1"], "review_gaj", d, "2026-10-19 11:00", {"gaj_approved": True})
    with time_machine.travel(at("2026-10-20 10:00"), tick=False):
        swj = only_task(db, p["swjlead"], "review_swj", d["id"])
        target = next(t for t in runtime.send_back_targets(db, swj["id"]) if t["bpmn_id"] == "review_gaj")
        runtime.send_back(db, swj["id"], p["swjlead"], target["id"], "材料有误")
    # E: Mon 11-02 09:00 received by window2; one working day.
    e = accept(db, p, "2026-11-02 09:00", clerk="window2")
    complete(db, p["gaj1"], "review_gaj", e, "2026-11-02 10:00", {"gaj_approved": True})
    complete(db, p["swj1"], "review_swj", e, "2026-11-03 09:00", {"swj_approved": True})
    return {"A": a, "B": b, "C": c, "D": d, "E": e}


def year(db, user, **filters):
    with time_machine.travel(at("2026-11-23 12:00"), tick=False):
        return statistics.statistics(db, user, "2026-01-01", "2026-12-31", **filters)


def test_statistics_match_hand_computed_figures(db, people, history):
    result = year(db, people["admin"])
    f = result["figures"]
    assert (f["received"], f["completed"], f["terminated"]) == (5, 4, 0)
    assert f["completion_rate"] == 0.8
    # On time: A, B (deemed consent 05-06 17:31 < due 05-09 17:30), E; C ended 10-16 10:00 after 10-15 16:30.
    assert (f["on_time"], f["on_time_rate"]) == (3, 0.75)
    assert (f["early"], f["early_rate"]) == (3, 0.75)
    # Office time taken, pauses excluded: A 6+7+1 = 14 h; B 6+7+7 = 20 h (05-01..05 are holidays);
    # C 6 + 7×7 (10-08, 09, Sat 10, 12..15) + 1 − 13 paused = 43 h; E 7 h.  7 h a working day.
    assert f["average_working_days"] == round((14 + 20 + 43 + 7) / 4 / 7, 2) == 3.0
    assert f["median_working_days"] == round((14 + 20) / 2 / 7, 2) == 2.43
    # Committed limits: 41 h each for A, B, C (C's after the pause), E from 09:00 has 7 + 35 = 42 h.
    assert f["speed_up_committed"] == round(1 - 84 / (41 * 3 + 42), 4) == 0.4909
    # Statutory (20 working days): 146 h each for A, B, C; 147 h for E.
    assert f["speed_up_statutory"] == round(1 - 84 / (146 * 3 + 147), 4) == 0.8564
    assert (f["pauses"], f["deemed_consents"], f["send_backs"]) == (1, 1, 1)
    assert (f["task_warnings"], f["case_warnings"], f["warnings"]) == (1, 0, 1)
    assert (f["tasks_overdue"], f["cases_overdue"], f["overdue"]) == (2, 1, 3)
    assert f["statutory_exceeded"] == 0
    assert f["satisfaction"] is None
    trend = {row["month"]: row for row in result["trend"]}
    assert [m for m in trend] == [f"2026-{m:02d}" for m in range(1, 13)]
    assert {m: (r["received"], r["completed"], r["on_time"], r["cases_overdue"])
            for m, r in trend.items() if any((r["received"], r["completed"]))} == {
        "2026-04": (2, 1, 1, 0), "2026-05": (0, 1, 1, 0), "2026-09": (1, 0, 0, 0),
        "2026-10": (1, 1, 0, 1), "2026-11": (1, 1, 1, 0)}
    departments = {row["department"]: row for row in result["departments"]}
    # gaj: A, C, D, E on time; B's step was closed by deemed consent.  swj's due is its 4-hour urge timer.
    assert {k: (v["completed"], v["on_time"], v["late"], v["closed_without_decision"])
            for k, v in departments.items()} == {"window": (7, 7, 0, 0), "gaj": (4, 4, 0, 1), "swj": (4, 0, 4, 0)}
    assert result["lights"] == {"tasks": {"green": 13, "yellow": 0, "red": 2},
                                "cases": {"green": 3, "yellow": 0, "red": 1}}


def test_statistics_equal_a_direct_count_of_the_audit_trail(db, people, history):
    f = year(db, people["admin"])["figures"]
    with db.read() as conn:
        events = conn.execute(select(audit_event.c.type, audit_event.c.at, audit_event.c.instance_id)).all()
    lo, hi = at("2026-01-01 00:00"), at("2027-01-01 00:00")
    counted = Counter(e.type for e in events if lo <= e.at < hi)
    assert f["received"] == counted["case_started"]
    assert f["completed"] == counted["case_completed"]
    assert f["pauses"] == counted["clock_paused"]
    assert f["deemed_consents"] == counted["deemed_consent"]
    assert f["send_backs"] == counted["task_sent_back"]
    assert f["warnings"] == counted["task_yellow"] + counted["case_yellow"]
    assert f["overdue"] == counted["task_red"] + counted["case_red"]
    assert f["tasks_completed"] == counted["task_completed"]
    assert f["completion_rate"] == round(counted["case_completed"] / counted["case_started"], 4)
    # And the monthly trend adds up to the same totals.
    trend = year(db, people["admin"])["trend"]
    assert sum(r["received"] for r in trend) == counted["case_started"]
    assert sum(r["completed"] for r in trend) == counted["case_completed"]


def test_filters_narrow_the_figures(db, people, history):
    by_clerk = year(db, people["admin"], clerk="window2")["figures"]
    assert (by_clerk["received"], by_clerk["completed"], by_clerk["average_working_days"]) == (1, 1, 1.0)
    gaj = year(db, people["admin"], department_key="gaj")["figures"]
    # Every case has a gaj step; step-level figures count gaj's own steps only.
    assert (gaj["received"], gaj["deemed_consents"], gaj["tasks_overdue"], gaj["task_warnings"]) == (5, 1, 0, 1)
    swj = year(db, people["admin"], item="review_swj")["figures"]
    assert (swj["tasks_overdue"], swj["send_backs"], swj["deemed_consents"]) == (2, 1, 0)
    none = year(db, people["admin"], flow="no_such_flow")["figures"]
    assert (none["received"], none["completion_rate"], none["average_working_days"]) == (0, None, None)
    autumn = statistics.statistics(db, people["admin"], "2026-10-01", "2026-10-31")["figures"]
    assert (autumn["received"], autumn["completed"], autumn["on_time"]) == (1, 1, 0)


def test_statistics_refuse_bad_periods_and_strangers(db, people):
    with pytest.raises(InvalidInput) as bad:
        statistics.statistics(db, people["admin"], "2026-13-01", "2026-12-31")
    assert bad.value.problems[0].field == "start"
    with pytest.raises(InvalidInput):
        statistics.statistics(db, people["admin"], "2026-12-31", "2026-01-01")
    with pytest.raises(PermissionDenied):
        statistics.statistics(db, people["gaj1"], "2026-01-01", "2026-12-31")
    with pytest.raises(PermissionDenied):
        supervision.board(db, people["window1"])
    with pytest.raises(PermissionDenied):
        statistics.statistics(db, people["scjgj1"], "2026-01-01", "2026-12-31", department_key="gaj")


def test_csv_export_carries_a_bom_and_the_same_numbers(db, people, history):
    result = year(db, people["admin"])
    exported = statistics.statistics_csv(result)
    assert exported.startswith("\ufeff")
    assert "received,5" in exported and "on_time_rate,0.75" in exported and "2026-10,1,1,0,0.0,1" in exported


def test_satisfaction_reads_the_ratings(db, people, history):
    with time_machine.travel(at("2026-04-08 10:00"), tick=False):
        ratings.rate(db, history["A"]["id"], 5, "办事快")
    with time_machine.travel(at("2026-11-04 10:00"), tick=False):
        ratings.rate(db, history["E"]["id"], 2, "材料被要求交了两次", department_key="swj")
    f = year(db, people["admin"])["figures"]
    assert f["satisfaction"] == {"ratings": 2, "average_score": 3.5, "satisfied_rate": 0.5}
    assert year(db, people["admin"], clerk="window2")["figures"]["satisfaction"]["average_score"] == 2.0


def test_board_counts_lights_and_lists_red_items_with_their_holders(db, people, history):
    p = people
    with time_machine.travel(at("2026-11-23 09:00"), tick=False):
        f = accept(db, p, "2026-11-23 09:00")
    with time_machine.travel(at("2026-11-23 09:30"), tick=False):
        runtime.claim(db, only_task(db, p["gaj1"], "review_gaj", f["id"])["id"], p["gaj1"])
    with time_machine.travel(at("2026-11-26 10:00"), tick=False):
        lights.sweep_lights(db)
        board = supervision.board(db, p["supervisor"])
    reds = {(r["kind"], r["case_no"], r["bpmn_id"]): r for r in board["red"]}
    # F's gaj step: due 11-25 17:30 (workdays(2)), so at 11-26 10:00 one office hour late, held by gaj1.
    gaj = reds[("task", f["case_no"], "review_gaj")]
    assert (gaj["holder"], gaj["overdue_working_hours"], gaj["departments"][0]["key"]) == ("gaj1", 1.0, "gaj")
    # F's swj step: due with its 4-hour urge at 11-23 14:30; late 3 h + 7 + 7 + 1 = 18 h, nobody holds it.
    swj = reds[("task", f["case_no"], "review_swj")]
    assert (swj["overdue_working_hours"], swj["holder"]) == (18.0, None)
    # D, sent back to gaj on 10-20 10:00: the redo was due 10-22 17:30, 24 working days + 1 h ago
    # (10-23, 10-26..30, 11-02..06, 09..13, 16..20, 23..25), and the case (due 10-26 17:30) is red with it.
    d = history["D"]["case_no"]
    assert reds[("task", d, "review_gaj")]["overdue_working_hours"] == 24 * 7 + 1
    assert reds[("case", d, None)]["departments"] == [{"key": "gaj", "name": "公安局"}]
    assert reds[("case", d, None)]["overdue_working_hours"] == 22 * 7 + 1
    assert board["totals"] == {"tasks": {"green": 0, "yellow": 0, "red": 3},
                               "cases": {"green": 1, "yellow": 0, "red": 1}}
    flows = {row["key"]: row for row in board["flows"]}
    assert flows["time_limits"]["cases"] == {"green": 1, "yellow": 0, "red": 1}
    assert {row["key"]: row["red"] for row in board["departments"]} == {"gaj": 2, "swj": 1}
    assert [r["overdue_working_days"] for r in board["red"]] == sorted(
        (r["overdue_working_days"] for r in board["red"]), reverse=True)


def test_a_lead_sees_only_their_departments_on_the_board(db, people, history):
    with time_machine.travel(at("2026-11-23 09:00"), tick=False):
        accept(db, people, "2026-11-23 09:00")
    with time_machine.travel(at("2026-11-26 10:00"), tick=False):
        lights.sweep_lights(db)
        board = supervision.board(db, people["swjlead"])
    assert board["scope"] == ["swj"]
    assert [row["key"] for row in board["departments"]] == ["swj"]
    assert {r["bpmn_id"] for r in board["red"] if r["kind"] == "task"} == {"review_swj"}
    with time_machine.travel(at("2026-11-26 10:00"), tick=False):
        own = statistics.statistics(db, people["swjlead"], "2026-01-01", "2026-12-31")
    assert own["filters"]["department"] == "swj"


# --- violations ----------------------------------------------------------------------------------

def test_each_red_event_is_recorded_once_as_a_violation(db, people, history):
    with time_machine.travel(at("2026-11-23 12:00"), tick=False):
        listed = violations.list_violations(db, people["supervisor"])
        again = violations.list_violations(db, people["supervisor"])
    assert listed["total"] == again["total"] == 4
    found = sorted((v["kind"], v["case_no"], v["department"], v["bpmn_id"]) for v in listed["items"])
    b, c = history["B"]["case_no"], history["C"]["case_no"]
    assert found == sorted([("step_late", b, "swj", "review_swj"), ("deemed_consent", b, "gaj", "review_gaj"),
                            ("case_late", c, "swj", None), ("step_late", c, "swj", "review_swj")])
    case_late = next(v for v in listed["items"] if v["kind"] == "case_late")
    assert datetime.fromisoformat(case_late["occurred_at"]) == at("2026-10-15 17:00")
    assert datetime.fromisoformat(case_late["due_at"]) == at("2026-10-15 16:30")
    # The sweep path records them itself; catching up from the audit trail adds nothing new for red events.
    with db.read() as conn:
        assert conn.execute(select(violation.c.kind).where(violation.c.kind == "step_late")).all() != []


def test_supervisors_annotate_and_close_but_never_delete(db, people, history):
    sup = people["supervisor"]
    with time_machine.travel(at("2026-11-23 12:00"), tick=False):
        item = violations.list_violations(db, sup, kind="deemed_consent")["items"][0]
        noted = violations.annotate(db, item["id"], sup, "已约谈公安局")
        assert noted["status"] == "open" and [n["text"] for n in noted["notes"]] == ["已约谈公安局"]
        closed = violations.close(db, item["id"], sup, "已整改")
        assert closed["status"] == "closed" and closed["closed_by"] == "supervisor"
        with pytest.raises(Conflict):
            violations.close(db, item["id"], sup, "again")
        with pytest.raises(InvalidInput):
            violations.annotate(db, item["id"], sup, "   ")
        with pytest.raises(NotFound):
            violations.annotate(db, 99999, sup, "x")
        with pytest.raises(PermissionDenied):
            violations.annotate(db, item["id"], people["scjgj1"], "x")
        assert violations.list_violations(db, sup, status="closed")["total"] == 1
        assert violations.list_violations(db, sup, status="open")["total"] == 3
    for statement in (delete(violation).where(violation.c.id == item["id"]),
                      update(violation).where(violation.c.id == item["id"]).values(department="window"),
                      update(violation).where(violation.c.id == item["id"]).values(closed_at=None),
                      delete(violation_note), update(violation_note).values(text="rewritten")):
        with pytest.raises(Exception, match="never deleted|cannot be changed|stays closed|append-only"):
            with db.write() as conn:
                conn.execute(statement)
    assert violations.get_violation(db, item["id"], sup)["notes"][0]["text"] == "已约谈公安局"


def test_facts_of_an_open_violation_cannot_be_rewritten(db, people, history):
    with time_machine.travel(at("2026-11-23 12:00"), tick=False):
        item = violations.list_violations(db, people["supervisor"], kind="step_late")["items"][0]
    with pytest.raises(Exception, match="cannot be changed"):
        with db.write() as conn:
            conn.execute(update(violation).where(violation.c.id == item["id"]).values(clerk="someone"))


def test_monthly_ranking_orders_departments_and_windows(db, people, history):
    ranking = violations.ranking(db, people["supervisor"], "2026-11")
    assert ranking["month"] == "2026-11"
    departments = {row["department"]: row for row in ranking["departments"]}
    assert departments["gaj"]["on_time_rate"] == 1.0 and departments["swj"]["on_time_rate"] == 0.0
    assert departments["gaj"]["rank"] < departments["swj"]["rank"]
    # gaj: 11-02 09:00 → 10:00 = 1 h; swj: 11-02 09:00 → 11-03 09:00 = 7 h.
    assert departments["gaj"]["average_working_days"] == round(1 / 7, 2)
    assert departments["swj"]["average_working_days"] == 1.0
    windows = {row["clerk"]: row for row in ranking["windows"]}
    assert windows == {"window2": {"clerk": "window2", "completed": 1, "on_time_rate": 1.0,
                                   "average_working_days": 1.0, "ratings": 0, "satisfaction": None,
                                   "rank": 1, "red_flag": True}}
    october = violations.ranking(db, people["supervisor"], "2026-10")
    assert {row["clerk"]: row["on_time_rate"] for row in october["windows"]} == {"window1": 0.0}
    with pytest.raises(InvalidInput):
        violations.ranking(db, people["supervisor"], "October")
    with pytest.raises(PermissionDenied):
        violations.ranking(db, people["swjlead"], "2026-10")


def test_record_violations_ignores_other_events_and_duplicates(db, people, history):
    with db.write() as conn:
        row = conn.execute(select(human_task.c.id, human_task.c.instance_id)
                           .where(human_task.c.bpmn_id == "review_swj")).first()
        event = {"type": "task_red", "at": datetime(2026, 11, 1, tzinfo=timezone.utc), "instance_id": row.instance_id,
                 "task_id": row.id, "data": {"departments": ["swj"], "assignee": None}}
        first = violations.record_violations(conn, [event, {"type": "task_claimed", "instance_id": 1}])
        second = violations.record_violations(conn, [event])
    assert (first, second) == (1, 0)
    with db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM violation")).scalar() >= 1
        assert conn.execute(select(process_instance.c.id)).all()


def test_rolled_up_days_give_the_same_figures_as_counting_live(db, people, history):
    # "Now" before the history: no day is finished yet, so everything is counted live from the trail.
    live = statistics.statistics(db, people["admin"], "2026-01-01", "2026-12-31", now=at("2026-01-05 12:00"))
    with db.read() as conn:
        assert rollup.rolled_until(conn) is None
    rollup.roll_up(db, at("2026-11-23 12:00"))      # as the worker does: every finished day
    rolled = year(db, people["admin"])
    with db.read() as conn:
        assert rollup.rolled_until(conn).isoformat() == "2026-11-23"
    assert rolled == live
    assert year(db, people["admin"], flow="time_limits") == {**live, "filters": {**live["filters"],
                                                                                 "flow": "time_limits"}}


def test_a_request_rolls_up_a_bounded_number_of_days_and_counts_the_rest_live(db, people, history):
    live = statistics.statistics(db, people["admin"], "2026-01-01", "2026-12-31", now=at("2026-01-05 12:00"))
    # The first request after the history rolls up two months from the first case (04-02); the rest is live.
    partial = statistics.statistics(db, people["admin"], "2026-01-01", "2026-12-31", now=at("2026-11-23 12:00"))
    with db.read() as conn:
        assert rollup.rolled_until(conn).isoformat() == "2026-06-03"
    assert partial == live
    assert rollup.roll_up(db, at("2026-11-23 12:00")) == (date(2026, 11, 23) - date(2026, 6, 3)).days
    assert rollup.roll_up(db, at("2026-11-23 12:00")) == 0


# --- every filter from the roll-up, equal to counting live -----------------------------------------

# Each filter the statistics page offers, alone and combined; the lead's own statistics are forced to swj.
FILTERS = [
    {}, {"flow": "time_limits"}, {"department_key": "gaj"}, {"department_key": "swj"}, {"department_key": "window"},
    {"item": "review_swj"}, {"item": "intake"}, {"item": "supplement"}, {"clerk": "window1"}, {"clerk": "window2"},
    {"department_key": "gaj", "clerk": "window1"}, {"department_key": "gaj", "item": "review_gaj"},
    {"department_key": "swj", "item": "review_gaj"}, {"flow": "time_limits", "clerk": "window1", "item": "review_swj"},
    {"flow": "no_such_flow", "department_key": "gaj"},
]
MONTHS = ("2026-04", "2026-05", "2026-09", "2026-10", "2026-11")


def forget_roll_up(db):
    """Empty the roll-up, so the next figures are counted live from the audit trail."""
    with db.write() as conn:
        conn.execute(delete(supervision_day))
        conn.execute(delete(supervision_roll))


def every_reading(db, people, now: datetime) -> dict:
    """Statistics for every filter (and the lead's), and the rankings of the history's months, as of `now`."""
    found = {repr(f): statistics.statistics(db, people["admin"], "2026-01-01", "2026-12-31", now=now, **f)
             for f in FILTERS}
    found["lead"] = statistics.statistics(db, people["swjlead"], "2026-01-01", "2026-12-31", now=now)
    found["lead gaj step"] = statistics.statistics(db, people["swjlead"], "2026-01-01", "2026-12-31", now=now,
                                                   item="review_gaj", clerk="window1")
    found["autumn"] = statistics.statistics(db, people["admin"], "2026-09-15", "2026-10-20", now=now,
                                            department_key="gaj")
    for month in MONTHS:
        found[month] = violations.ranking(db, people["supervisor"], month, now=now)
    return found


def rolled_until(db) -> str | None:
    with db.read() as conn:
        found = rollup.rolled_until(conn)
    return found.isoformat() if found else None


def test_every_filter_reads_the_same_figures_rolled_up_live_or_straddling(db, people, history):
    # Nothing rolled up: every figure is counted live from the trail.
    live = every_reading(db, people, at("2026-01-05 12:00"))
    assert rolled_until(db) is None
    # Rolled up to a day, then counted live from it: the boundaries cut through every case of the history.
    # 10-01: C received and paused (09-30), its departments' steps only come 10-09, after the boundary.
    # 10-20: D's gaj step done, its swj step sent back that day; 05-01: B's steps still open.
    for boundary in ("2026-04-03", "2026-05-01", "2026-10-01", "2026-10-10", "2026-10-20", "2026-11-03",
                     "2026-11-23"):
        now = at(f"{boundary} 12:00")
        rollup.roll_up(db, now)
        assert rolled_until(db) == boundary
        assert every_reading(db, people, now) == live, f"rolled up to {boundary}"
    # Rolled up in one go: the same.
    forget_roll_up(db)
    rollup.roll_up(db, at("2026-11-23 12:00"))
    assert every_reading(db, people, at("2026-11-23 12:00")) == live


def test_a_case_gaining_a_department_after_its_days_were_rolled_up_counts_under_it(db, people):
    # Received and sent to 补正 on 09-30; the departments' steps come on 10-09, once the applicant supplied.
    with time_machine.travel(at("2026-09-30 10:00"), tick=False):
        case = runtime.start_case(db, "time_limits", {"applicant": "补正公司"}, "window1")
    complete(db, people["window1"], "intake", case, "2026-09-30 11:00", {"decision": "supplement"})
    rollup.roll_up(db, at("2026-10-05 12:00"))                # 09-30 .. 10-04 rolled up without gaj
    gaj = {"department_key": "gaj"}
    assert statistics.statistics(db, people["admin"], "2026-09-01", "2026-10-31", now=at("2026-10-05 12:00"),
                                 **gaj)["figures"]["received"] == 0
    complete(db, people["window1"], "supplement", case, "2026-10-09 10:00")
    complete(db, people["window1"], "intake", case, "2026-10-09 10:30", {"decision": "accept"})
    # Read as of 10-05 (nothing more rolled up), the query adds the case's earlier figures itself; read on
    # 10-12, the request's roll-up has moved them under gaj.
    for now in ("2026-10-05 12:00", "2026-10-12 12:00"):
        f = statistics.statistics(db, people["admin"], "2026-09-01", "2026-10-31", now=at(now), **gaj)["figures"]
        assert (f["received"], f["pauses"]) == (1, 1), now
    assert rolled_until(db) == "2026-10-12"


def test_hand_computed_figures_for_more_filters(db, people, history):
    rollup.roll_up(db, at("2026-10-20 12:00"))      # part rolled up, part live: the same figures

    def year(db, user, **filters):
        return statistics.statistics(db, user, "2026-01-01", "2026-12-31", now=at("2026-10-20 12:00"), **filters)
    window = year(db, people["admin"], department_key="window")["figures"]
    # Every case has window steps (intake; C also 补正); no window step was late, warned or deemed.
    assert (window["received"], window["completed"], window["tasks_overdue"], window["pauses"]) == (5, 4, 0, 1)
    assert window["tasks_completed"] == 7
    swj = year(db, people["admin"], department_key="swj")["figures"]
    # swj steps: B's and C's red, D's sent back; their cases: all five.
    assert (swj["received"], swj["tasks_overdue"], swj["send_backs"], swj["task_warnings"]) == (5, 2, 1, 0)
    both = year(db, people["admin"], department_key="gaj", clerk="window2")["figures"]
    assert (both["received"], both["completed"], both["median_working_days"]) == (1, 1, 1.0)
    nothing = year(db, people["admin"], department_key="swj", item="review_gaj")["figures"]
    assert (nothing["received"], nothing["completion_rate"], nothing["median_working_days"]) == (0, None, None)
    supplement = year(db, people["admin"], item="supplement")
    # Only C went through 补正: received 09-30, completed late 10-16 after 43 office hours.
    f = supplement["figures"]
    assert (f["received"], f["completed"], f["on_time"], f["pauses"], f["cases_overdue"]) == (1, 1, 0, 1, 1)
    assert f["average_working_days"] == f["median_working_days"] == round(43 / 7, 2)
    assert [d["department"] for d in supplement["departments"]] == ["window"]
    assert year(db, people["swjlead"])["figures"] == year(db, people["admin"], department_key="swj")["figures"]
    assert rolled_until(db) == "2026-10-20"


def test_migrating_a_running_case_counts_its_days_again(db, people, history):
    rollup.roll_up(db, at("2026-11-23 12:00"))
    # Version 2 moves the gaj review to 人社局's lane; D's open redo of it moves with the case.
    deploy_text(db, "time_limits.bpmn", LIMITS.replace('<bpmn:lane id="lane_gaj" name="公安局">',
                                                       '<bpmn:lane id="lane_gaj" name="人社局">'))
    with time_machine.travel(at("2026-11-23 13:00"), tick=False):
        migration.migrate_case(db, history["D"]["id"], 2, people["admin"])
    assert rolled_until(db) == "2026-10-19"      # D's days count live until they are rolled up again
    now = at("2026-11-23 14:00")
    rolled = {k: statistics.statistics(db, people["admin"], "2026-01-01", "2026-12-31", now=now, department_key=k)
              for k in ("gaj", "rsj")}
    assert rolled["rsj"]["figures"]["received"] == 1           # D, received 10-19, now has an rsj step
    assert rolled_until(db) == "2026-11-23"                      # the request rolled them up again
    rollup.roll_up(db, at("2026-11-24 12:00"))
    assert rolled_until(db) == "2026-11-24"
    again = {k: statistics.statistics(db, people["admin"], "2026-01-01", "2026-12-31", now=now, department_key=k)
             for k in ("gaj", "rsj")}
    forget_roll_up(db)
    live = {k: statistics.statistics(db, people["admin"], "2026-01-01", "2026-12-31", now=at("2026-01-05 12:00"),
                                     department_key=k) for k in ("gaj", "rsj")}
    assert rolled == again == live
    assert rollup.roll_up(db, at("2026-11-24 12:00")) > 0 and rolled_until(db) == "2026-11-24"


def test_two_roll_ups_at_once_roll_each_day_once(db, people, history):
    import threading
    results, errors = [], []

    def roll():
        try:
            results.append(rollup.roll_up(db, at("2026-11-23 12:00")))
        except Exception as exc:       # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=roll) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(results) == (date(2026, 11, 23) - date(2026, 4, 2)).days
    rolled = year(db, people["admin"], department_key="gaj")
    forget_roll_up(db)
    assert statistics.statistics(db, people["admin"], "2026-01-01", "2026-12-31", now=at("2026-01-05 12:00"),
                                 department_key="gaj") == rolled


def test_the_median_is_exact_for_every_filter_and_period(db, people):
    """Sixty completed cases crowded into a few histogram buckets, checked against sorting their office times."""
    import random
    rng = random.Random(7)
    items = {"review_a": ["gaj"], "review_b": ["swj"], "review_c": ["gaj", "swj"], "review_d": []}
    with db.write() as conn:
        definition = conn.execute(select(process_instance.c.definition_id)).scalar() or conn.execute(
            text("SELECT id FROM process_definition")).scalar()
        cases = []
        for n in range(60):
            started = datetime(2026, 3, 2, 1, 0, tzinfo=timezone.utc) + timedelta(days=rng.randint(0, 70))
            ended = started + timedelta(days=rng.randint(0, 5), hours=rng.randint(0, 8))
            net = rng.choice((30000, 31500, 60000, 90000)) + rng.randint(0, 2400)
            steps = rng.sample(sorted(items), rng.randint(1, 3))
            clerk = rng.choice(("c1", "c2", "c3"))
            instance = conn.execute(process_instance.insert().values(
                definition_id=definition, case_no=f"M{n:04d}", status="completed", revision=1, started_by=clerk,
                started_at=started, ended_at=ended)).inserted_primary_key[0]
            conn.execute(case_duration.insert().values(
                instance_id=instance, ended_at=ended, taken_seconds=net, paused_seconds=0, net_seconds=net,
                committed_seconds=None, statutory_seconds=None, on_time=True, early=False))
            for step in steps:
                conn.execute(human_task.insert().values(
                    instance_id=instance, task_guid=f"g{n}-{step}", bpmn_id=step, departments=items[step],
                    status="completed", created_at=started, completed_at=ended))
            cases.append((ended, clerk, net, {(d, step) for step in steps for d in (items[step] or ["window"])}))

    def expected(first, last, department_key=None, item=None, clerk=None):
        values = sorted(net for ended, by, net, pairs in cases
                        if first <= ended.astimezone(CST).date() <= last and clerk in (None, by)
                        and any(department_key in (None, d) and item in (None, i) for d, i in pairs))
        if not values:
            return None
        middle = len(values) // 2
        value = values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2
        return round(value / (7 * HOUR), 2)

    filters = [{}, {"department_key": "gaj"}, {"department_key": "swj"}, {"department_key": "window"},
               {"item": "review_c"}, {"item": "review_d"}, {"clerk": "c2"}, {"department_key": "gaj", "clerk": "c1"},
               {"department_key": "swj", "item": "review_b"}]
    periods = [(date(2026, 3, 1), date(2026, 6, 30)), (date(2026, 3, 10), date(2026, 4, 20)),
               (date(2026, 4, 1), date(2026, 4, 30)), (date(2026, 5, 3), date(2026, 5, 9))]
    checked = 0
    for now in (at("2026-01-05 12:00"), at("2026-04-12 12:00"), at("2026-07-01 12:00")):   # live, half, rolled
        rollup.roll_up(db, now)
        for first, last in periods:
            for f in filters:
                found = statistics.statistics(db, people["admin"], first, last, now=now, **f)["figures"]
                assert found["median_working_days"] == expected(first, last, **f), (now, first, last, f)
                checked += found["median_working_days"] is not None
    assert checked > 80


@pytest.mark.postgres_only
def test_a_request_does_not_wait_for_a_roll_up_in_progress(db, people, history):
    live = statistics.statistics(db, people["admin"], "2026-01-01", "2026-12-31", now=at("2026-01-05 12:00"),
                                 department_key="gaj")
    db.run(lambda conn: rollup._roll_state(conn, lock=True))
    with db.write() as conn:               # as the worker holds it while it rolls a month up
        rollup._roll_state(conn, lock=True)
        during = statistics.statistics(db, people["admin"], "2026-01-01", "2026-12-31",
                                       now=at("2026-11-23 12:00"), department_key="gaj")
    assert during == live
    assert rolled_until(db) is None
    assert rollup.roll_up(db, at("2026-11-23 12:00")) == (date(2026, 11, 23) - date(2026, 4, 2)).days


def test_the_workers_hourly_job_rolls_up_every_finished_day(db, db_config, people, history):
    with time_machine.travel(at("2026-11-23 12:00"), tick=False):
        worker = timers.TimerScheduler(db_config)
        try:
            worker._run_statistics()          # what the "statistics" job runs every hour
        finally:
            worker.db.dispose()
    assert worker.get_job("statistics") is not None
    assert rolled_until(db) == "2026-11-23"
    rolled = year(db, people["admin"], department_key="swj", clerk="window1")
    forget_roll_up(db)
    assert statistics.statistics(db, people["admin"], "2026-01-01", "2026-12-31", now=at("2026-01-05 12:00"),
                                 department_key="swj", clerk="window1") == rolled
