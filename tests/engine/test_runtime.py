"""Runtime: cases start on the latest version, tasks are projected, claimed, completed, audited and persisted."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select, text

from engine import runtime, snapshot, worklist
from engine.errors import Conflict, FormInvalid, NotFound, PermissionDenied
from engine.store import Database, audit_event, human_task, process_instance
from tests.conftest import REPO, deploy_text

PARALLEL = (REPO / "tests" / "fixtures" / "bpmn" / "parallel_review.bpmn").read_text(encoding="utf-8")
DEPARTMENTS = ("scjgj", "gaj", "swj", "rsj")
REVIEWERS = {"scjgj": "scjgj1", "gaj": "gaj1", "swj": "swj1", "rsj": "rsj1"}


@pytest.fixture
def flow(db, org):
    from engine import accounts
    org["rsj1"] = accounts.create_user(db, "rsj1", "rsj-pass-1", "人社一", ["rsj"], ["clerk"])
    deploy_text(db, "parallel_review.bpmn", PARALLEL)
    return org


def task_named(db, user, bpmn_id, instance_id=None):
    tasks = [t for t in worklist.list_tasks(db, user) if t["bpmn_id"] == bpmn_id
             and (instance_id is None or t["instance_id"] == instance_id)]
    assert tasks, f"{user.username} sees no {bpmn_id}"
    return tasks[0]


def start_and_accept(db, users, applicant="某某科技有限公司"):
    case = runtime.start_case(db, "parallel_review", {"applicant": applicant}, "window1")
    intake = task_named(db, users["window1"], "intake", case["id"])
    runtime.complete(db, intake["id"], users["window1"], {"applicant": applicant, "capital": 100, "kind": "llc"})
    return case


def test_case_number_is_date_plus_daily_sequence(db, flow):
    first = runtime.start_case(db, "parallel_review", {}, "window1")
    second = runtime.start_case(db, "parallel_review", {}, "window1")
    assert len(first["case_no"]) == 13 and first["case_no"][:8].isdigit()
    assert int(second["case_no"]) == int(first["case_no"]) + 1
    assert first["version"] == 1 and first["status"] == "running"


def test_running_cases_stay_on_their_version(db, flow):
    old = runtime.start_case(db, "parallel_review", {}, "window1")
    deploy_text(db, "parallel_review.bpmn", PARALLEL.replace("窗口受理", "窗口受理（新版）"))
    new = runtime.start_case(db, "parallel_review", {}, "window1")
    assert (old["version"], new["version"]) == (1, 2)
    names = {t["instance_id"]: t["name"] for t in worklist.list_tasks(db, flow["window1"])}
    assert names[old["id"]] == "窗口受理" and names[new["id"]] == "窗口受理（新版）"


def test_clerks_see_only_their_departments_tasks(db, flow):
    case = start_and_accept(db, flow)
    gaj_tasks = worklist.list_tasks(db, flow["gaj1"])
    assert [t["bpmn_id"] for t in gaj_tasks] == ["review_gaj"]
    assert gaj_tasks[0]["departments"] == ["gaj"] and gaj_tasks[0]["case_no"] == case["case_no"]
    swj_task = task_named(db, flow["swj1"], "review_swj")
    with pytest.raises(PermissionDenied):
        runtime.claim(db, swj_task["id"], flow["gaj1"])
    with pytest.raises(PermissionDenied):
        runtime.complete(db, swj_task["id"], flow["gaj1"], {"swj_opinion": "越权"})
    assert worklist.get_instance(db, case["id"])["tasks"][-1]["status"] == "open"


def test_claim_conflict_and_unclaim(db, flow):
    start_and_accept(db, flow)
    task = task_named(db, flow["gaj1"], "review_gaj")
    runtime.claim(db, task["id"], flow["gaj1"])
    with pytest.raises(Conflict) as refused:
        runtime.claim(db, task["id"], flow["gaj2"])
    assert "gaj1" in refused.value.message
    assert worklist.list_tasks(db, flow["gaj2"]) == []          # a colleague's claimed task leaves the queue
    runtime.unclaim(db, task["id"], flow["gaj1"])
    assert [t["id"] for t in worklist.list_tasks(db, flow["gaj2"])] == [task["id"]]
    types = [e["type"] for e in worklist.get_instance(db, task["instance_id"])["events"]]
    assert types.count("task_claimed") == 1 and types.count("task_unclaimed") == 1


def test_form_is_validated_field_by_field(db, flow):
    case = runtime.start_case(db, "parallel_review", {}, "window1")
    intake = task_named(db, flow["window1"], "intake", case["id"])
    with pytest.raises(FormInvalid) as refused:
        runtime.complete(db, intake["id"], flow["window1"],
                         {"applicant": "x", "capital": "lots", "kind": "plc", "founded": "2026-02-30", "extra": 1})
    fields = {p.field: p.message for p in refused.value.problems}
    assert set(fields) == {"applicant", "capital", "kind", "founded", "extra"}
    assert "at least 2" in fields["applicant"] and "llc" in fields["kind"]
    with pytest.raises(FormInvalid) as missing:
        runtime.complete(db, intake["id"], flow["window1"], {})
    assert [p.field for p in missing.value.problems] == ["applicant"]
    assert worklist.get_instance(db, case["id"])["tasks"][0]["status"] == "open"
    runtime.complete(db, intake["id"], flow["window1"],
                     {"applicant": "某公司", "capital": "250", "kind": "sole", "founded": "2026-11-02"})
    assert len(worklist.get_instance(db, case["id"])["tasks"]) == 5


def test_complete_whole_case_with_audit_trail(db, flow):
    case = start_and_accept(db, flow)
    for department in DEPARTMENTS:
        reviewer = flow[REVIEWERS[department]]
        task = task_named(db, reviewer, f"review_{department}")
        runtime.complete(db, task["id"], reviewer, {f"{department}_opinion": "同意", f"{department}_approved": True})
    handover = task_named(db, flow["window1"], "handover")
    assert runtime.complete(db, handover["id"], flow["window1"], {})["case_status"] == "completed"
    instance = worklist.get_instance(db, case["id"])
    assert instance["status"] == "completed" and instance["ended_at"]
    types = [e["type"] for e in instance["events"]]
    assert types[0] == "case_started" and types[-1] == "case_completed"
    assert types.count("task_completed") == 6
    completed = [e for e in instance["events"] if e["type"] == "task_completed"]
    assert {e["actor"] for e in completed} == {"window1", "scjgj1", "gaj1", "swj1", "rsj1"}
    assert completed[1]["data"]["values"] in ({f"{d}_opinion": "同意", f"{d}_approved": True} for d in DEPARTMENTS)
    with pytest.raises(Conflict):
        runtime.complete(db, handover["id"], flow["window1"], {})


def test_audit_trail_is_append_only(db, flow):
    start_and_accept(db, flow)
    with pytest.raises(Exception) as refused:
        with db.write() as conn:
            conn.execute(text("UPDATE audit_event SET actor = 'mallory'"))
    assert "append-only" in str(refused.value)
    with pytest.raises(Exception):
        with db.write() as conn:
            conn.execute(text("DELETE FROM audit_event"))
    with db.read() as conn:
        assert "mallory" not in set(conn.execute(select(audit_event.c.actor)).scalars())


def test_restart_carries_on_exactly_where_it_was(db_config, flow):
    db = Database(db_config)
    case = start_and_accept(db, flow)
    gaj = task_named(db, flow["gaj1"], "review_gaj")
    runtime.complete(db, gaj["id"], flow["gaj1"], {"gaj_opinion": "同意", "gaj_approved": True})
    db.dispose()
    snapshot.snapshots.clear()                      # a new process: nothing in memory
    restarted = Database(db_config)
    remaining = sorted(t["bpmn_id"] for t in worklist.get_instance(restarted, case["id"])["tasks"]
                       if t["status"] == "open")
    assert remaining == ["review_rsj", "review_scjgj", "review_swj"]
    for department in ("scjgj", "swj", "rsj"):
        reviewer = flow[REVIEWERS[department]]
        task = task_named(restarted, reviewer, f"review_{department}")
        runtime.complete(restarted, task["id"], reviewer, {f"{department}_opinion": "好"})
    handover = task_named(restarted, flow["window1"], "handover")
    assert restarted.run(lambda c: None) is None
    runtime.complete(restarted, handover["id"], flow["window1"], {})
    assert worklist.get_instance(restarted, case["id"])["status"] == "completed"


def test_unknown_process_and_task(db, flow):
    with pytest.raises(NotFound):
        runtime.start_case(db, "no_such_flow", {}, "window1")
    with pytest.raises(NotFound):
        runtime.complete(db, 999999, flow["gaj1"], {})


@pytest.mark.parametrize("round_", range(3))
def test_parallel_branches_completed_at_the_same_moment_all_succeed(db, flow, round_):
    """Four clerks press 办理 at once on four branches of one case; every branch's data reaches the join."""
    cases = [start_and_accept(db, flow, f"并发公司{round_}-{i}") for i in range(2)]
    jobs = []
    for case in cases:
        for department in DEPARTMENTS:
            reviewer = flow[REVIEWERS[department]]
            task = task_named(db, reviewer, f"review_{department}", case["id"])
            jobs.append((task["id"], reviewer, {f"{department}_opinion": f"{department} 同意 {case['id']}",
                                                 f"{department}_approved": True}))
    snapshot.snapshots.clear()
    barrier = threading.Barrier(len(jobs))

    def complete(job):
        task_id, reviewer, data = job
        barrier.wait()
        return runtime.complete(db, task_id, reviewer, data)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(complete, jobs))
    assert all(r["case_status"] == "running" for r in results)
    for case in cases:
        handover = task_named(db, flow["window1"], "handover", case["id"])
        detail = worklist.get_task(db, handover["id"], flow["window1"])
        assert detail["status"] == "open"
        state = _case_data(db, case["id"])
        for department in DEPARTMENTS:
            assert state[f"{department}_opinion"] == f"{department} 同意 {case['id']}"
            assert state[f"{department}_approved"] is True
    with db.read() as conn:
        open_counts = conn.execute(select(human_task.c.instance_id, human_task.c.status)
                                   .where(human_task.c.status == "open")).all()
        assert sorted(r.instance_id for r in open_counts) == sorted(c["id"] for c in cases)


def test_case_numbers_stay_unique_when_started_concurrently(db, flow):
    with ThreadPoolExecutor(max_workers=8) as pool:
        started = list(pool.map(lambda i: runtime.start_case(db, "parallel_review", {}, "window1"), range(24)))
    numbers = [c["case_no"] for c in started]
    assert len(set(numbers)) == 24
    with db.read() as conn:
        assert conn.execute(select(process_instance.c.id)).all().__len__() == 24


def _case_data(db, instance_id):
    """The data the join handed on, read from the stored workflow (a fresh decode, not the cache)."""
    snapshot.snapshots.clear()
    handover = [t for t in worklist.get_instance(db, instance_id)["tasks"] if t["bpmn_id"] == "handover"][0]
    from engine.runtime import _snapshot_for  # the stored state is what matters, so read it as a restart would
    with db.read() as conn:
        row = conn.execute(select(process_instance).where(process_instance.c.id == instance_id)).mappings().first()
        workflow = _snapshot_for(conn, dict(row)).workflow
    task = [t for t in workflow.get_tasks() if t.task_spec.bpmn_id == "handover"][0]
    assert handover["status"] == "open"
    return task.data


def test_applicant_typed_at_intake_becomes_the_cases_applicant(db, flow):
    case = runtime.start_case(db, "parallel_review", {}, "window1")
    assert worklist.get_instance(db, case["id"])["applicant"] is None
    intake = task_named(db, flow["window1"], "intake", case["id"])
    runtime.complete(db, intake["id"], flow["window1"], {"applicant": "杭州某某贸易有限公司"})
    assert worklist.get_instance(db, case["id"])["applicant"] == "杭州某某贸易有限公司"
    assert task_named(db, flow["gaj1"], "review_gaj")["applicant"] == "杭州某某贸易有限公司"


def test_completed_tasks_leave_the_department_queue(db, flow):
    case = start_and_accept(db, flow)
    assert [t for t in worklist.list_tasks(db, flow["window1"]) if t["instance_id"] == case["id"]] == []
    from engine.store import task_queue
    with db.read() as conn:
        queued = conn.execute(select(task_queue.c.department_key)).scalars().all()
    assert sorted(queued) == sorted(DEPARTMENTS)          # only the four open reviews are queued


def test_task_settings_survive_a_reload_from_the_database(db, flow):
    """Candidate groups (and other task properties) must still apply when the case is read back from storage."""
    deploy_text(db, "parallel_review.bpmn", PARALLEL.replace(
        '<bpmn:userTask id="review_rsj" name="人社局审查" camunda:formKey="review">',
        '<bpmn:userTask id="review_rsj" name="人社局审查" camunda:formKey="review" camunda:candidateGroups="ybj">'))
    for _ in range(2):                              # the second decode is the one that used to lose them
        case = runtime.start_case(db, "parallel_review", {}, "window1")
        snapshot.snapshots.clear()
        intake = task_named(db, flow["window1"], "intake", case["id"])
        runtime.complete(db, intake["id"], flow["window1"], {"applicant": "重载测试"})
        reviews = {t["bpmn_id"]: t["departments"] for t in worklist.get_instance(db, case["id"])["tasks"]}
        assert reviews["review_rsj"] == ["ybj"]


def test_opinion_is_kept_with_the_completion(db, flow):
    case = start_and_accept(db, flow)
    task = task_named(db, flow["gaj1"], "review_gaj", case["id"])
    runtime.complete(db, task["id"], flow["gaj1"], {"gaj_opinion": "同意"}, opinion="  材料齐全，同意办理。 ")
    completed = [e for e in worklist.get_instance(db, case["id"])["events"]
                 if e["type"] == "task_completed" and e["task_id"] == task["id"]]
    assert completed[0]["data"]["opinion"] == "材料齐全，同意办理。"
