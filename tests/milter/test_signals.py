"""The main thread's signal flags: no lock in a handler, no lost wake-up.

Each case runs in a child process: it sends itself signals, and a hang (the
deadlock of ``threading.Event.set()`` in a handler that lands while the main
thread holds the event's lock) shows as a timeout instead of a stuck suite.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BURST = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    from mailwarden.daemon import Signals

    signals = Signals()
    signals.install()
    pid = os.getpid()
    # from another process, as an admin's kill: arrivals are independent
    # of this process's GIL, so some land while the main thread holds a lock
    shooter = subprocess.Popen([sys.executable, "-c",
        "import os, signal\\n"
        f"for _ in range(20000): os.kill({pid}, signal.SIGHUP)\\n"
        f"os.kill({pid}, signal.SIGTERM)\\n"])
    reloads = 0
    # the loop of mailwarden.daemon.serve, the reload a short piece of work
    while not signals.stop:
        signals.wait(0.5)
        if signals.take_reload():
            reloads += 1
            sum(range(2000))
    shooter.wait()
    reloads += signals.take_reload()

    # one more SIGHUP after the burst: seen, and it ends the wait at once
    started = time.monotonic()
    os.kill(pid, signal.SIGHUP)
    signals.wait(10)
    waited = time.monotonic() - started
    print(reloads, signals.take_reload(), signals.take_reload(), round(waited, 3))
""")


def _run(script: str, timeout: float = 30) -> str:
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_burst_of_sighups_never_hangs_the_main_loop_and_the_next_one_is_seen():
    reloads, first, second, waited = _run(BURST).split()
    assert int(reloads) >= 1                    # the burst reloaded, folded into few
    assert first == "True"                      # the later SIGHUP is not lost
    assert second == "False"                    # ...and taken once
    assert float(waited) < 5                    # it ended the wait, no timeout ran out


def test_a_wait_with_no_signal_lasts_its_timeout_and_reports_nothing():
    out = _run(textwrap.dedent("""
        import time
        from mailwarden.daemon import Signals
        signals = Signals()
        signals.install()
        started = time.monotonic()
        signals.wait(0.3)
        print(round(time.monotonic() - started, 3), signals.take_reload(), signals.stop)
    """))
    waited, reload, stop = out.split()
    assert 0.25 <= float(waited) < 3
    assert (reload, stop) == ("False", "False")
