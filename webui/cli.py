"""The `approvals` console command: the engine's sub-commands plus `serve` (web app, API and timer scheduler)."""
from __future__ import annotations

import sys

from engine import cli as engine_cli


def cmd_serve(args, config) -> int:
    from waitress import serve

    from engine import timers

    from . import create_app

    app = create_app({"ENGINE_CONFIG": config})
    scheduler = None if args.no_scheduler else timers.start_scheduler(config)
    print(f"serving the web app, the API and {'no' if scheduler is None else 'the'} timer scheduler "
          f"on http://{args.host}:{args.port}/", flush=True)
    try:
        serve(app, host=args.host, port=args.port, threads=args.threads, ident="approvals")
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=False)
    return 0


def build_parser():
    parser = engine_cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    serve = commands.add_parser("serve", help="serve the web app, the REST API and the timer scheduler")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=5000)
    serve.add_argument("--threads", type=int, default=8)
    serve.add_argument("--no-scheduler", action="store_true", help="when `approvals worker` runs elsewhere")
    serve.set_defaults(run=cmd_serve)
    return parser


def main(argv=None) -> int:
    return engine_cli.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
