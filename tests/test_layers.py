"""The layers stay one-way: engine/ never imports the web layer; views never import SpiffWorkflow."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_engine_never_imports_flask_or_the_web_layer():
    offenders = {str(p.relative_to(REPO)): sorted(imported_modules(p) & {"flask", "werkzeug", "webui", "jinja2"})
                 for p in (REPO / "engine").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_web_layer_never_touches_spiffworkflow_or_tables():
    offenders = {}
    for path in (REPO / "webui").rglob("*.py"):
        bad = imported_modules(path) & {"SpiffWorkflow", "sqlalchemy"}
        text = path.read_text(encoding="utf-8")
        if ".commit(" in text:
            bad.add("commit")
        tables = [line for line in text.splitlines() if "engine.store import" in line
                  and line.split("import", 1)[1].strip() != "Database"]
        if tables:
            bad.add("engine.store tables")
        if bad:
            offenders[str(path.relative_to(REPO))] = sorted(bad)
    assert offenders == {}


def test_only_the_runtime_steps_workflows():
    steppers = [str(p.relative_to(REPO)) for p in (REPO / "engine").rglob("*.py")
                if any(call in p.read_text(encoding="utf-8")
                       for call in ("do_engine_steps(", "refresh_waiting_tasks(", "refresh_timers("))]
    assert steppers == ["engine/runtime.py"]
