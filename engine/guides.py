"""Service guides (服务指南): the YAML/TOML file beside a diagram, validated at deploy and stored with the version."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from .errors import DeploymentInvalid, Problem

GUIDE_SUFFIXES = (".guide.yaml", ".guide.yml", ".guide.toml", ".yaml", ".yml", ".toml")
ITEM_TYPES = ("即办件", "承诺件", "联办件")
_LIMIT = re.compile(r"^(workdays\(\d+\)|workhours\(\d+(\.\d+)?\))$")
_REQUIRED_ITEM_FIELDS = ("task", "name", "department", "legal_basis", "statutory_limit", "committed_limit", "type")


def find_beside(diagram: Path) -> Path | None:
    """`x.bpmn` travels with `x.guide.yaml`, `x.yaml` or the TOML equivalents in the same folder."""
    stem = diagram.name.split(".")[0]
    for suffix in GUIDE_SUFFIXES:
        candidate = diagram.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def load(name: str, data: bytes) -> dict:
    """Parse and check a guide; raise DeploymentInvalid naming the file and field that is wrong."""
    try:
        if name.endswith(".toml"):
            guide = tomllib.loads(data.decode("utf-8"))
        else:
            guide = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise DeploymentInvalid(Problem(f"service guide is not valid: {exc}", file=name,
                                        line=line + 1 if line is not None else None)) from None
    problems = _check(guide, name)
    if problems:
        raise DeploymentInvalid(problems)
    return guide


def _check(guide, name: str) -> list[Problem]:
    if not isinstance(guide, dict):
        return [Problem("service guide must be a mapping with an `items` list", file=name)]
    problems = []
    for field in ("committed_limit", "statutory_limit"):
        if field in guide and not _LIMIT.match(str(guide[field])):
            problems.append(_bad(name, field, f"must be workdays(N) or workhours(H), got {guide[field]!r}"))
    items = guide.get("items")
    if not isinstance(items, list) or not items:
        return problems + [_bad(name, "items", "must be a non-empty list of service items")]
    for index, item in enumerate(items):
        where = f"items[{index}]"
        if not isinstance(item, dict):
            problems.append(_bad(name, where, "must be a mapping"))
            continue
        for field in _REQUIRED_ITEM_FIELDS:
            if not item.get(field):
                problems.append(_bad(name, f"{where}.{field}", "is required"))
        for field in ("statutory_limit", "committed_limit"):
            if item.get(field) and not _LIMIT.match(str(item[field])):
                problems.append(_bad(name, f"{where}.{field}", f"must be workdays(N) or workhours(H), got {item[field]!r}"))
        if item.get("type") and item["type"] not in ITEM_TYPES:
            problems.append(_bad(name, f"{where}.type", f"must be one of {', '.join(ITEM_TYPES)}"))
        materials = item.get("materials", [])
        if not isinstance(materials, list):
            problems.append(_bad(name, f"{where}.materials", "must be a list"))
            continue
        keys = set()
        for m_index, material in enumerate(materials):
            m_where = f"{where}.materials[{m_index}]"
            if not isinstance(material, dict) or not material.get("key") or not material.get("name"):
                problems.append(_bad(name, m_where, "needs a key and a name"))
            elif material["key"] in keys:
                problems.append(_bad(name, m_where, f"duplicate material key {material['key']!r}"))
            else:
                keys.add(material["key"])
    return problems


def check_against(guide: dict, specs: list, name: str) -> list[Problem]:
    """Every guide item must name a task of the diagram it travels with (sub-processes included)."""
    task_ids = {s.bpmn_id for spec in specs for s in spec.task_specs.values() if s.bpmn_id}
    return [Problem(f"service item {item.get('name')!r} names task {item.get('task')!r}, "
                    f"which is not in the diagram", file=name)
            for item in guide.get("items", []) if item.get("task") not in task_ids]


def item_for(guide: dict | None, bpmn_id: str) -> dict | None:
    for item in (guide or {}).get("items", []):
        if item.get("task") == bpmn_id:
            return item
    return None


def _bad(name: str, field: str, message: str) -> Problem:
    return Problem(f"{field}: {message}", file=name)
