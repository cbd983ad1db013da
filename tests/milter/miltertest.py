"""Drive MailwardenMilter through pymilter's callback layer, without an MTA.

``Milter.testctx.TestCtx`` stands in for libmilter's context; this subclass
records what the milter asks the MTA to do (headers added, changed,
quarantine, replies) so tests can assert on the milter actions themselves.
"""

from __future__ import annotations

import io
import socket

import Milter
from Milter.testctx import TestCtx

from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine
from mailwarden.milter import MailwardenMilter
from mailwarden.mime import split_message


class RecordingCtx(TestCtx):
    def __init__(self):
        super().__init__(logfile=None)
        self.added = []        # (name, value, idx)
        self.changed = []      # (name, idx, value)
        self.quarantined = None

    # macros one stage's list may name: Sendmail's MAXFILTERMACROS
    # (sendmail/conf.h); Postfix has no limit and libmilter enforces none.
    # TestCtx refuses more than 5, after a note in the smfi_setsymlist page
    # that no MTA's code bears out (5 there is the number of stages, libmilter's
    # MAX_MACROS_ENTRIES), so this takes its place.
    MAX_MACROS = 50

    def setsymlist(self, stage, macros):
        if self._stage != -1:
            raise RuntimeError("setsymlist may only be called from negotiate")
        names = (macros.encode("utf-8") if isinstance(macros, str) else macros).split()
        if not names:
            raise ValueError(f"setsymlist with an empty list for stage {stage}")
        if len(names) > self.MAX_MACROS:
            raise ValueError(f"setsymlist: more than {self.MAX_MACROS} macros")
        if self._symlist[stage] is not None:
            raise ValueError(f"setsymlist already called for stage {stage}")
        self._symlist[stage] = set(names)

    def addheader(self, field, value, idx):
        self.added.append((field, value, idx))

    def chgheader(self, field, idx, value):
        self.changed.append((field, idx, value))

    def quarantine(self, reason):
        self.quarantined = reason


class LibmilterReplyCtx(RecordingCtx):
    """Refuses a reply as libmilter's smfi_setreply does (libmilter/smfi.c):
    a code that is not 4xx/5xx, an enhanced code of another class, CR or LF
    in the text, a text over 980 characters.  pymilter turns the failure
    into ``milter.error``; under libmilter the callback then tempfails."""

    MAX_TEXT = 980

    def setreply(self, rcode, xcode, *msg):
        import re

        import milter
        if not re.fullmatch(r"[45]\d\d", rcode or ""):
            raise milter.error("cannot set reply")
        if xcode is not None and not re.fullmatch(rf"{rcode[0]}\.\d{{1,3}}\.\d{{1,3}}", xcode):
            raise milter.error("cannot set reply")
        for text in msg:
            if text is not None and (re.search(r"[\r\n]", text) or len(text) > self.MAX_TEXT):
                raise milter.error("cannot set reply")
        super().setreply(rcode, xcode, *msg)


class Session:
    """One SMTP connection through the adapter."""

    def __init__(self, engine: Engine, macros: dict | None = None, ctx_class=None,
                 **milter_args):
        # the factory libmilter calls at connect: set it for each session
        Milter.factory = lambda: MailwardenMilter(engine, **milter_args)
        self.ctx = (ctx_class or RecordingCtx)()
        for name, value in (macros or {}).items():
            self.ctx._setsymval(name, value)

    @property
    def reply(self):
        return self.ctx._reply

    def connect(self, ip: str, host: str = "unknown"):
        rc = self.ctx._negotiate()
        assert rc in (Milter.CONTINUE, Milter.ALL_OPTS)
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        self.ctx._stage = Milter.M_CONNECT
        rc = Milter.connect_callback(self.ctx, host, family, (ip, 25))
        self.ctx._stage = None
        return rc

    def helo(self, name: str):
        # TestCtx._helo closes the context on a reject; libmilter does not
        # (the client may say HELO again), so call the callback directly
        self.ctx._stage = Milter.M_HELO
        rc = self.ctx._priv.hello(name)
        self.ctx._stage = None
        return rc

    def mail(self, sender: str, *params: str):
        return self.ctx._envfrom(f"<{sender}>", *params)

    def rcpt(self, rcpt: str):
        return self.ctx._envrcpt(f"<{rcpt}>")

    def data(self, message: bytes):
        """Headers, body and end of message; returns the eom (or first stop) code."""
        headers, body, _ = split_message(message)
        for name, value in headers:
            rc = self.ctx._priv.header_bytes(name, value)
            if rc not in (Milter.CONTINUE, Milter.NOREPLY):   # @noreply callback
                return rc
        rc = self.ctx._eoh()
        if rc not in (Milter.CONTINUE, Milter.NOREPLY):
            return rc
        # libmilter answers getsymval in the body with every macro sent so
        # far; TestCtx knows no body stage: it answers with the DATA step's
        self.ctx._stage = Milter.M_DATA
        try:
            rc = self.ctx._feed_body(io.BytesIO(body))
        finally:
            self.ctx._stage = None
        if rc != Milter.CONTINUE:
            return rc
        return self.ctx._eom()

    def close(self):
        Milter.close_callback(self.ctx)


def foundation_registry(**extra) -> dict:
    """The first three checks (and any given): adapter tests do not depend on
    what else the project enables by default."""
    from mailwarden.checks import registry
    reg = {name: registry()[name] for name in ("iplist", "iprev", "size")}
    reg.update(extra)
    return reg


def make_engine(config, zone: str = "", registry=None) -> Engine:
    return Engine(config, resolver=Resolver(config.dns, backend=ZoneBackend(zone)),
                  hostname="mx.test.example", registry=registry or foundation_registry())
