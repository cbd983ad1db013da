"""The daemon around the adapter: start-up, the socket, the privilege drop,
signals and the drain on stop.

Start-up order (:func:`serve`): config is already loaded and validated; the
engine is built (lists and keys read); the callbacks are handed to libmilter
(:func:`mailwarden.milter.install`); the socket is opened and its mode set;
privileges are dropped; then libmilter's main loop runs in a thread of its
own while the main thread waits for signals: SIGHUP reloads (see
:mod:`mailwarden.reload`), SIGTERM and SIGINT let the transactions in flight
finish (:class:`Drain`), then stop.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import select
import signal
import threading

import milter as libmilter   # pymilter's C module

from . import sockopt
from .command import load_config
from .config import Config
from .milter import MailwardenMilter, install

log = logging.getLogger("mailwarden")


class Drain:
    """Transactions in flight, so that a stop can let them finish.

    A transaction runs from MAIL FROM to end of message (or abort, or the
    connection's end).  Once :meth:`drain` is called no new one starts.
    """

    def __init__(self):
        self._idle = threading.Condition()
        self.active = 0
        self.draining = False

    def begin(self) -> bool:
        with self._idle:
            if self.draining:
                return False
            self.active += 1
            return True

    def end(self) -> None:
        with self._idle:
            self.active -= 1
            if self.active <= 0:
                self._idle.notify_all()

    def drain(self, timeout: float) -> int:
        """Refuse new transactions, wait up to ``timeout`` s for the others;
        the number still in flight."""
        with self._idle:
            self.draining = True
            self._idle.wait_for(lambda: self.active <= 0, timeout)
            return self.active


class Signals:
    """SIGHUP, SIGTERM and SIGINT as flags the main thread polls.

    A Python signal handler runs in the main thread between two of its
    bytecodes, possibly while that thread holds a lock, so the handlers here
    take none: ``threading.Event.set()`` in a handler deadlocks when the
    signal lands while the main thread is inside that event's ``wait()`` or
    ``clear()`` (a burst of SIGHUPs did that).  Each handler sets a plain
    attribute and writes one byte to a pipe whose other end :meth:`wait`
    selects on, so a signal ends the wait at once.  The pipe stays open for
    the life of the process: a signal may come at any time until it exits.
    """

    def __init__(self):
        self.reload = False
        self.stop = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def install(self) -> None:
        signal.signal(signal.SIGHUP, self._on_hup)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop)

    def _on_hup(self, signum, frame) -> None:
        self.reload = True
        self._wake()

    def _on_stop(self, signum, frame) -> None:
        self.stop = True
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:         # the pipe is full: a wake-up is pending
            pass

    def wait(self, timeout: float) -> None:
        """Until a signal came (or had come since the last call), at most ``timeout`` s."""
        select.select([self._wake_r], [], [], timeout)
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def take_reload(self) -> bool:
        """Whether a SIGHUP came since the last call.  One landing after this
        returns is seen by the next call; one landing before is folded into
        the reload about to run, which reads the file after it."""
        if not self.reload:
            return False
        self.reload = False
        return True


# --------------------------------------------------------------------------
# start-up


class StartupRefused(SystemExit):
    """Start-up cannot go on safely; the message says why (exit status 1)."""


def _target_ids(options) -> tuple | None:
    """(uid, gid, name) to drop to, or None to keep running as we are.

    Refuses root without an explicit ``allow_root``: a milter parses
    whatever strangers send and must not do it with every privilege.
    """
    if os.getuid() != 0:
        return None
    if not options.user:
        if options.allow_root:
            return None
        raise StartupRefused("mailwarden: started as root with no [milter] user to drop to; "
                             "set user (and group), or allow_root = yes")
    try:
        entry = pwd.getpwnam(options.user)
    except KeyError:
        raise StartupRefused(f"mailwarden: [milter] user: no such user {options.user!r}") from None
    gid = entry.pw_gid
    if options.group:
        try:
            gid = grp.getgrnam(options.group).gr_gid
        except KeyError:
            raise StartupRefused(
                f"mailwarden: [milter] group: no such group {options.group!r}") from None
    if (entry.pw_uid == 0 or gid == 0) and not options.allow_root:
        raise StartupRefused(f"mailwarden: [milter] user {options.user!r} / group is root; "
                             "set allow_root = yes to run so")
    return entry.pw_uid, gid, options.user


def _drop_privileges(target) -> None:
    if target is None:
        return
    uid, gid, name = target
    os.setgroups([gid])
    os.setgid(gid)
    os.setuid(uid)
    if uid != 0:
        # setuid() from root sets all three ids; make sure none came back
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise StartupRefused("mailwarden: could not give up root")
    os.umask(0o077)          # spooled bodies are nobody else's business
    log.info("running as user %s (uid %d), group %d", name, uid, gid)


def _prepare_unix_socket(options, path: str) -> None:
    mode = int(options.socket_mode, 8)
    os.chmod(path, mode)
    if options.group and os.getuid() == 0:
        os.chown(path, -1, grp.getgrnam(options.group).gr_gid)


def run(config_path: str, foreground_log: bool = False) -> int:
    """``mailwarden run``: load the configuration, set up logging, load every
    module the checks need while still root (see :mod:`mailwarden.warmup`),
    then :func:`serve`.  ``foreground_log`` logs to standard error whatever
    ``[milter] log`` says, on a reload too."""
    from .logsetup import setup_logging
    from .warmup import warm_up

    config = load_config(config_path)
    setup_logging(config.milter, force_stderr=foreground_log)
    warm_up(config)
    return serve(config, config_path=config_path,
                 log_setup=lambda options: setup_logging(options, force_stderr=foreground_log))


def serve(config: Config, config_path: str = "", log_setup=None) -> int:
    """Run the milter until libmilter stops (SIGTERM, SIGINT); SIGHUP reloads
    ``config_path`` (see :mod:`mailwarden.reload`).  ``log_setup(options)``
    applies changed log settings on a reload."""
    from .reload import EngineHolder, Reloader, build_engine

    target = _target_ids(config.milter)      # refuse before anything is opened
    metrics = None
    if config.metrics.listen:
        from .metrics import Metrics
        metrics = Metrics()
    holder = EngineHolder(build_engine(config, metrics))
    engine = holder.current

    drain = Drain()

    def factory():
        return MailwardenMilter(holder.acquire(), holder=holder, metrics=metrics, drain=drain)
    install(config.milter.name, factory)

    socket_spec = config.milter.socket
    libmilter.setconn(socket_spec)
    libmilter.settimeout(int(config.milter.timeout))
    libmilter.opensocket(True)
    sockopt.tune_for_tcp(socket_spec, MailwardenMilter)
    if socket_spec.startswith("unix:"):
        _prepare_unix_socket(config.milter, socket_spec[len("unix:"):])
    _drop_privileges(target)

    # libmilter's own signal thread would stop at once on SIGHUP, SIGTERM
    # and SIGINT, cutting the transactions in flight; all three stay with
    # this thread instead (see mailwarden.reload for why that works): HUP
    # reloads, TERM and INT drain the transactions in flight, then stop
    signals = Signals()
    signals.install()
    reloader = Reloader(config_path or config.path, holder, metrics, log_setup)
    server = None
    if metrics is not None:
        server = metrics.serve(config.metrics.listen)
        log.info("metrics on http://%s/metrics", config.metrics.listen)

    stopped = threading.Event()
    failure: list = []

    def run_libmilter() -> None:
        try:
            libmilter.main()
        except libmilter.error as exc:
            failure.append(exc)
        finally:
            stopped.set()

    log.info("mailwarden listening on %s (%d checks: %s)", socket_spec, len(engine.checks),
             ", ".join(c.name for c in engine.checks))
    thread = threading.Thread(target=run_libmilter, name="libmilter")
    thread.start()
    try:
        while not stopped.is_set():
            if signals.stop:
                log.info("stopping: no new transactions, waiting up to %gs for %d in flight",
                         config.milter.stop_timeout, drain.active)
                left = drain.drain(config.milter.stop_timeout)
                if left:
                    log.warning("stopping with %d transactions still in flight (the MTA "
                                "answers them per milter_default_action)", left)
                libmilter.stop()
                break
            # the handlers set the flags and end the wait; the bound on it
            # notices libmilter stopping on its own
            signals.wait(0.5)
            if signals.take_reload():
                reloader.reload()
        thread.join()
    finally:
        if server is not None:
            server.shutdown()
        holder.close()
        log.info("mailwarden stopped")
    if failure:
        log.error("libmilter stopped with an error: %s", failure[0])
        return 1
    return 0
