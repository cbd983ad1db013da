"""The ``mailwarden`` command: argparse front, no logic of its own.

``run`` (handed to :func:`mailwarden.daemon.run`) and ``check-config``
are parsed here; every other command is a module listed in
``COMMAND_MODULES``, with a ``register(subparsers)`` that adds its parser
and sets ``func``.  What they share (default file, exit statuses, loading
the configuration) is :mod:`mailwarden.command`.
"""

from __future__ import annotations

import argparse
import importlib

from . import __version__
from .command import EXIT_OK, add_config_argument, load_config

# modules that add subcommands: each has register(subparsers)
COMMAND_MODULES: tuple = (
    "mailwarden.scan",
    "mailwarden.audit.postfix",
    "mailwarden.audit.probe",
    "mailwarden.audit.host",
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

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
