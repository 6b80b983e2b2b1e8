"""Stored workflows: a head row plus one row per task, written incrementally, read back whole, migrated both ways."""
from __future__ import annotations

import json

from alembic import command
from sqlalchemy import func, select

from engine import runtime, schema, snapshot
from engine.store import workflow_state, workflow_task
from tests.engine.test_runtime import DEPARTMENTS, REVIEWERS, flow, start_and_accept, task_named  # noqa: F401


def stored_rows(db, instance_id: int) -> dict[str, str]:
    with db.read() as conn:
        return dict(conn.execute(select(workflow_task.c.task_guid, workflow_task.c.body)
                                 .where(workflow_task.c.instance_id == instance_id)).all())


def review(db, users, department: str) -> None:
    reviewer = users[REVIEWERS[department]]
    task = task_named(db, reviewer, f"review_{department}")
    runtime.complete(db, task["id"], reviewer, {f"{department}_opinion": "同意", f"{department}_approved": True})


def test_a_save_rewrites_only_the_tasks_that_changed(db, flow):
    case = start_and_accept(db, flow)
    before = stored_rows(db, case["id"])
    review(db, flow, DEPARTMENTS[0])
    after = stored_rows(db, case["id"])
    changed = {guid for guid in before if guid in after and after[guid] != before[guid]}
    untouched = {guid for guid in before if after.get(guid) == before[guid]}
    # The completed review and the branch waiting at the join moved; the other branches did not.
    assert changed and len(untouched) > len(changed)
    assert set(after) >= set(before)


def test_a_case_read_back_cold_after_every_step_matches_the_live_one(db, flow):
    case = start_and_accept(db, flow)
    for department in DEPARTMENTS:
        snapshot.snapshots.clear()          # as if another worker served the previous step
        review(db, flow, department)
        with db.read() as conn:
            stored = snapshot.read_state(conn, case["id"])
        live = snapshot.snapshots.take(case["id"], _revision(db, case["id"]))
        assert live is not None and stored == snapshot.Snapshot(live.workflow, live.revision).state()
    handover = task_named(db, flow["window1"], "handover")
    assert runtime.complete(db, handover["id"], flow["window1"], {})["case_status"] == "completed"
    with db.read() as conn:
        data = snapshot.read_state(conn, case["id"])["data"]
    assert all(data[f"{d}_approved"] for d in DEPARTMENTS)


def test_the_task_rows_migration_splits_and_joins_stored_workflows(db, flow):
    """Migration 0008 both ways on a real database: whole bodies <-> head plus task rows, nothing lost."""
    running = start_and_accept(db, flow)
    review(db, flow, DEPARTMENTS[0])
    with db.read() as conn:
        expected = snapshot.read_state(conn, running["id"])
    config = schema.alembic_config(db)
    try:
        with db.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0008-1")
        with db.read() as conn:
            whole = json.loads(conn.execute(select(workflow_state.c.body)
                                            .where(workflow_state.c.instance_id == running["id"])).scalar())
        assert whole == expected                      # one body again, tasks and all
    finally:
        schema.upgrade(db)
    with db.read() as conn:
        assert snapshot.read_state(conn, running["id"]) == expected
        assert conn.execute(select(func.count()).select_from(workflow_task)).scalar() == len(expected["tasks"])
    snapshot.snapshots.clear()
    for department in DEPARTMENTS[1:]:              # and the case carries on from the split rows
        review(db, flow, department)
    handover = task_named(db, flow["window1"], "handover")
    assert runtime.complete(db, handover["id"], flow["window1"], {})["case_status"] == "completed"


def _revision(db, instance_id: int) -> int:
    from engine.store import process_instance
    with db.read() as conn:
        return conn.execute(select(process_instance.c.revision).where(process_instance.c.id == instance_id)).scalar()
