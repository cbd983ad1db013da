"""The ``mailwarden`` command: argparse front, no logic of its own.

Core commands live here (``run``, ``check-config``, ``scan``); other
commands are modules listed in ``COMMAND_MODULES``, each with a
``register(subparsers)`` that adds its parser and sets ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys

from . import __version__
from .command import EXIT_CONFIG, EXIT_OK, add_config_argument, load_config

# modules that add subcommands: each has register(subparsers)
COMMAND_MODULES: tuple = (
    "mailwarden.audit.postfix",
    "mailwarden.audit.probe",
    "mailwarden.audit.domain",
    "mailwarden.genkey",
    "mailwarden.dmarc_report",
)


def cmd_check_config(args) -> int:
    config = load_config(args.config)
    print(f"{config.path}: ok ({len([c for c in config.checks.values() if c.enabled])} checks enabled)")
    return EXIT_OK


def cmd_run(args) -> int:
    from .daemon import run
    return run(args.config, foreground_log=args.foreground_log)


def cmd_scan(args) -> int:
    from .dns import Resolver, ZoneBackend
    from .engine import Engine, run_offline

    config = load_config(args.config)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="mailwarden: %(levelname)s %(message)s")
    backend = None
    if args.zone:
        text = ""
        for path in args.zone:
            with open(path, encoding="utf-8") as fh:
                text += fh.read() + "\n"
        backend = ZoneBackend(text)
    try:
        if args.message == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(args.message, "rb") as fh:
                data = fh.read()
    except OSError as exc:
        print(f"mailwarden: cannot read {args.message}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    engine = Engine(config, resolver=Resolver(config.dns, backend=backend))
    try:
        verdict, conn, msg = run_offline(
            engine, client_ip=args.client_ip, client_name=args.client_name or "",
            helo=args.helo or "", mail_from=args.mail_from, rcpts=args.rcpt or [],
            message=data, auth_user=args.auth or "",
            tls_version="TLSv1.3" if args.tls else "", queue_id=args.queue_id or "",
            esmtp_size=args.esmtp_size)
        out = verdict.to_json(config.scores)
        if msg is not None:
            msg.close()
    finally:
        engine.close()
    if args.explain:
        from .explain import explain_table
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        sys.stdout.write(explain_table(verdict, config.scores, config.policy, colour=colour))
        return EXIT_OK
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailwarden", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mailwarden {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", help="run the milter")
    add_config_argument(p)
    p.add_argument("--foreground-log", action="store_true",
                   help="log to stderr whatever [milter] log says")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a configuration file")
    add_config_argument(p)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("scan", help="run the checks on one message offline, print JSON")
    add_config_argument(p)
    p.add_argument("--client-ip", required=True)
    p.add_argument("--client-name", default="")
    p.add_argument("--helo", default="")
    p.add_argument("--mail-from", default="", help="envelope sender ('' for the null sender)")
    p.add_argument("--rcpt", action="append", help="envelope recipient (repeat)")
    p.add_argument("--auth", default="", help="SMTP AUTH user name")
    p.add_argument("--tls", action="store_true", help="the client used TLS")
    p.add_argument("--queue-id", default="")
    p.add_argument("--esmtp-size", type=int, default=None, help="ESMTP SIZE= at MAIL FROM")
    p.add_argument("--zone", action="append",
                   help="answer DNS from this zone file instead of [dns] (repeat)")
    p.add_argument("--explain", action="store_true",
                   help="print a table (check, result, symbol, weight, reason; total, "
                        "thresholds, action) instead of JSON; coloured on a terminal")
    p.add_argument("message", help="the message file (.eml), or - for standard input")
    p.set_defaults(func=cmd_scan)

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
