"""Logging to syslog (mail facility) or stderr, as ``[milter] log`` says.

``[milter] log_format``: ``text`` (``QUEUEID: action=... score=...``) or
``json``: one JSON object per line, for log pipelines.  A verdict line
carries the fields of :func:`mailwarden.explain.verdict_fields` as keys;
any other line carries ``message``.  Both add ``time``, ``level`` and
``logger``.  Through syslog the line keeps the ``mailwarden[PID]:`` tag so
that the syslog daemon can still route it by program name.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time

# the attribute of a LogRecord that carries a verdict's fields (``extra=``)
VERDICT_ATTR = "mailwarden_verdict"




class JsonFormatter(logging.Formatter):
    """One JSON object per record; a verdict's fields become keys."""

    def __init__(self, prefix: str = ""):
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, VERDICT_ATTR, None)
        if fields:
            out.update(fields)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        line = json.dumps(out, ensure_ascii=False, separators=(",", ":"))
        return (self.prefix % {"process": record.process}) + line if self.prefix else line


def setup_logging(options, force_stderr: bool = False) -> None:
    root = logging.getLogger("mailwarden")
    root.setLevel(getattr(logging, options.log_level.upper()))
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    as_json = getattr(options, "log_format", "text") == "json"
    handler = None
    if options.log == "syslog" and not force_stderr:
        for address in ("/dev/log", "/var/run/syslog"):
            if os.path.exists(address):
                handler = logging.handlers.SysLogHandler(
                    address=address, facility=logging.handlers.SysLogHandler.LOG_MAIL)
                handler.setFormatter(JsonFormatter("mailwarden[%(process)d]: ") if as_json
                                     else logging.Formatter("mailwarden[%(process)d]: %(message)s"))
                break
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(
            "%(asctime)s mailwarden[%(process)d]: %(levelname)s %(message)s"))
    root.addHandler(handler)
