"""Demo organisation for a first look: the departments of the shipped flows and one clerk per department."""
from __future__ import annotations

from sqlalchemy import select

from . import accounts
from .store import Database, app_user, department

DEPARTMENTS = [
    ("window", "综合窗口"), ("scjgj", "市场监管局"), ("gaj", "公安局"), ("swj", "税务局"), ("rsj", "人社局"),
    ("ybj", "医保局"), ("gjj", "公积金中心"), ("bank", "开户银行"), ("fgw", "发展改革委"), ("zrzyj", "自然资源局"),
    ("ghj", "规划局"), ("sthjj", "生态环境局"), ("zjj", "住房城乡建设局"), ("xfjg", "消防救援机构"), ("rfb", "人防办"),
    ("swuj", "水务局"), ("jtj", "交通运输局"), ("cgj", "城市管理局"), ("daj", "档案馆"), ("qxj", "气象局"),
]
# Leads of the departments that consolidate a stage may send items back.
LEADS = {"scjgj", "fgw", "ghj", "zjj"}


def demo_password(username: str) -> str:
    return f"{username}-demo"


def seed_demo(db: Database) -> list[tuple[str, str, str]]:
    """Create what is missing; returns (username, password, description) of the users created now."""
    with db.read() as conn:
        known_departments = set(conn.execute(select(department.c.key)).scalars())
        known_users = set(conn.execute(select(app_user.c.username)).scalars())
    for key, name in DEPARTMENTS:
        if key not in known_departments:
            accounts.create_department(db, key, name, actor="seed")
    wanted = [(f"{key}1", name, [key], ["clerk", "window"] if key == "window" else
               ["clerk", "lead"] if key in LEADS else ["clerk"]) for key, name in DEPARTMENTS]
    wanted += [("supervisor1", "电子监察", [], ["supervisor"]), ("designer1", "流程设计", [], ["designer"])]
    created = []
    for username, department_name, departments, roles in wanted:
        if username in known_users:
            continue
        password = demo_password(username)
        accounts.create_user(db, username, password, f"{department_name}·{username}", departments, roles, actor="seed")
        created.append((username, password, f"{department_name} ({', '.join(roles)})"))
    return created
