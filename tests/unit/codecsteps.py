"""Counting the work a pure-Python codec does, for the tests that bound
the cost of content parsing (tests of urls and uribl)."""

from __future__ import annotations


class OverBudget(BaseException):
    """Raised by the tracer: not an Exception, so no ``except`` in the code
    under test can swallow it."""


def codec_steps(fn, budget: int = 20000) -> int:
    """Python lines run inside the ``encodings`` package while ``fn`` runs:
    the work a pure-Python codec does (C codecs run none).  Stops ``fn``
    when ``budget`` is spent, so a runaway codec fails the test at once."""
    import sys
    steps = 0

    def local(frame, event, arg):
        nonlocal steps
        if event == "line":
            steps += 1
            if steps > budget:
                raise OverBudget(f"over {budget} codec steps")
        return local

    def calls(frame, event, arg):
        return local if "/encodings/" in frame.f_code.co_filename.replace("\\", "/") else None

    old = sys.gettrace()
    sys.settrace(calls)
    try:
        fn()
    finally:
        sys.settrace(old)
    return steps
