"""``mailwarden scan``: run every stage on one message offline, as the
milter would, and print the verdict as JSON (or, with ``--explain``, as a
table).  Exit 0 whenever a verdict was reached, whatever it is."""

from __future__ import annotations

import json
import logging
import os
import sys

from .command import EXIT_CONFIG, EXIT_OK, add_config_argument, load_config


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
            tls_version=args.tls_version or ("TLSv1.3" if args.tls else ""),
            tls_cipher=args.cipher or "", tls_bits=args.cipher_bits or "",
            queue_id=args.queue_id or "",
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


def register(subparsers) -> None:
    p = subparsers.add_parser("scan", help="run the checks on one message offline, print JSON")
    add_config_argument(p)
    p.add_argument("--client-ip", required=True)
    p.add_argument("--client-name", default="")
    p.add_argument("--helo", default="")
    p.add_argument("--mail-from", default="", help="envelope sender ('' for the null sender)")
    p.add_argument("--rcpt", action="append", help="envelope recipient (repeat)")
    p.add_argument("--auth", default="", help="SMTP AUTH user name")
    p.add_argument("--tls", action="store_true",
                   help="the client used TLS (TLSv1.3 unless --tls-version says)")
    p.add_argument("--tls-version", default="",
                   help="{tls_version} as the MTA passes it, e.g. TLSv1.2 (implies --tls)")
    p.add_argument("--cipher", default="", help="{cipher}, e.g. TLS_AES_256_GCM_SHA384")
    p.add_argument("--cipher-bits", default="", help="{cipher_bits}, e.g. 256")
    p.add_argument("--queue-id", default="")
    p.add_argument("--esmtp-size", type=int, default=None, help="ESMTP SIZE= at MAIL FROM")
    p.add_argument("--zone", action="append",
                   help="answer DNS from this zone file instead of [dns] (repeat)")
    p.add_argument("--explain", action="store_true",
                   help="print a table (check, result, symbol, weight, reason; total, "
                        "thresholds, action) instead of JSON; coloured on a terminal")
    p.add_argument("message", help="the message file (.eml), or - for standard input")
    p.set_defaults(func=cmd_scan)
