"""The `approvals` command's engine sub-commands: init, deploy, seed-demo, calendar, user, worker."""
from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from sqlalchemy import select

from . import accounts, deploy, schema, seed, timekeeping
from .config import Config
from .errors import ApprovalsError, InvalidInput, Problem
from .store import Database, app_user


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="approvals", description="Parallel-approval BPMN engine (并联审批)")
    parser.add_argument("--database-url", help="overrides DATABASE_URL (default: SQLite file instance/approvals.sqlite3)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("init", help="create or upgrade the schema and the admin user").set_defaults(run=cmd_init)
    deploy_cmd = commands.add_parser("deploy", help="deploy BPMN files or folders")
    deploy_cmd.add_argument("paths", nargs="+")
    deploy_cmd.add_argument("--by", default="cli", help="who deploys (recorded in the audit trail)")
    deploy_cmd.set_defaults(run=cmd_deploy)
    commands.add_parser("seed-demo", help="create demo departments and users").set_defaults(run=cmd_seed)
    calendar_cmd = commands.add_parser("calendar", help="working-day calendar")
    calendar_sub = calendar_cmd.add_subparsers(dest="calendar_command", required=True)
    load = calendar_sub.add_parser("load", help="load a year's State Council schedule (YAML)")
    load.add_argument("file")
    load.set_defaults(run=cmd_calendar_load)
    years = calendar_sub.add_parser("years", help="which years the calendar covers")
    years.set_defaults(run=cmd_calendar_years)
    user_cmd = commands.add_parser("create-user", help="create a user")
    user_cmd.add_argument("username")
    user_cmd.add_argument("--name")
    user_cmd.add_argument("--departments", default="")
    user_cmd.add_argument("--roles", default="clerk")
    user_cmd.add_argument("--password", help="default: read APPROVALS_NEW_PASSWORD or generate one")
    user_cmd.set_defaults(run=cmd_create_user)
    commands.add_parser("worker", help="run the timer sweep (for extra nodes)").set_defaults(run=cmd_worker)
    return parser


def config_from(args) -> Config:
    return Config.from_env(**({"database_url": args.database_url} if args.database_url else {}))


def cmd_init(args, config: Config) -> int:
    db = Database(config)
    schema.upgrade(db)
    print(f"schema is up to date ({_where(config)})")
    with db.read() as conn:
        has_admin = conn.execute(select(app_user.c.id).where(app_user.c.username == "admin")).first()
    if not has_admin:
        password = os.environ.get("APPROVALS_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        accounts.create_user(db, "admin", password, "系统管理员", [], ["admin", "designer", "supervisor"], actor="init")
        if os.environ.get("APPROVALS_ADMIN_PASSWORD"):
            print("created user admin with the password from APPROVALS_ADMIN_PASSWORD")
        else:
            print(f"created user admin with password: {password}   (shown once; change it)")
    return 0


def cmd_deploy(args, config: Config) -> int:
    db = Database(config)
    results = deploy.deploy(db, deploy.read_paths(args.paths), args.by)
    for result in results:
        state = "deployed" if result.created else "unchanged"
        print(f"{state}: {result.key} version {result.version} ({result.name or ''})")
        for warning in result.warnings:
            print(f"  warning: {warning['file']}:{warning['line']} {warning['element_id']}: {warning['message']}")
    return 0


def cmd_seed(args, config: Config) -> int:
    created = seed.seed_demo(Database(config))
    if created:
        print("demo users (change these passwords before real use):")
        for username, password, description in created:
            print(f"  {username:<14} {password:<20} {description}")
    else:
        print("demo departments and users already exist; passwords are <username>-demo")
    return 0


def cmd_calendar_load(args, config: Config) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise InvalidInput(Problem(f"no such file: {path}", file=str(path)))
    result = timekeeping.load_schedule(Database(config), path.read_text(encoding="utf-8"), str(path), actor="cli")
    print(f"loaded {result['year']}: {result['holidays']} holidays, {result['workdays']} make-up working days")
    return 0


def cmd_calendar_years(args, config: Config) -> int:
    calendar = timekeeping.calendar_for(Database(config))
    print("covered years: " + ", ".join(map(str, calendar.covered_years())))
    return 0


def cmd_create_user(args, config: Config) -> int:
    password = args.password or os.environ.get("APPROVALS_NEW_PASSWORD") or secrets.token_urlsafe(12)
    user = accounts.create_user(Database(config), args.username, password, args.name,
                                [d for d in args.departments.split(",") if d], [r for r in args.roles.split(",") if r],
                                actor="cli")
    print(f"created {user.username} ({', '.join(user.roles)}) password: {password}")
    return 0


def cmd_worker(args, config: Config) -> int:
    from . import timers
    timers.run_worker(config)
    return 0


def run(parser: argparse.ArgumentParser, argv=None) -> int:
    args = parser.parse_args(argv)
    try:
        return args.run(args, config_from(args))
    except ApprovalsError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        for problem in getattr(exc, "problems", []):
            where = ":".join(str(p) for p in (problem.file, problem.line) if p)
            element = f" [{problem.element_id}]" if problem.element_id else ""
            print(f"  {where}{element} {problem.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def main(argv=None) -> int:
    return run(build_parser(), argv)


def _where(config: Config) -> str:
    url = config.database_url
    return url if url.startswith("sqlite") else url.split("@")[-1]


if __name__ == "__main__":
    sys.exit(main())
