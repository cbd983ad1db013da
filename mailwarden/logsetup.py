"""Logging to syslog (mail facility) or stderr, as ``[milter] log`` says."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys


def setup_logging(options, force_stderr: bool = False) -> None:
    root = logging.getLogger("mailwarden")
    root.setLevel(getattr(logging, options.log_level.upper()))
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = None
    if options.log == "syslog" and not force_stderr:
        for address in ("/dev/log", "/var/run/syslog"):
            if os.path.exists(address):
                handler = logging.handlers.SysLogHandler(
                    address=address, facility=logging.handlers.SysLogHandler.LOG_MAIL)
                handler.setFormatter(logging.Formatter("mailwarden[%(process)d]: %(message)s"))
                break
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s mailwarden[%(process)d]: %(levelname)s %(message)s"))
    root.addHandler(handler)
