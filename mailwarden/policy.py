"""Scores and thresholds -> a Verdict.

Checks emit symbols; ``[scores]`` weighs them; ``[policy]`` says what a total
means.  Precedence, strongest first:

1. a hard reply from a check (blocked client, oversized message, ...);
2. a total at or above ``reject_score``;
3. a temperror of a check that may tempfail: ``temperror_action`` for the
   client's trust class (authenticated, trusted, other);
4. a check asking for quarantine (``Result.quarantine``, e.g. DMARC);
5. ``quarantine_score``, then ``add_header_score``; else accept.

``dry_run`` decides and logs everything but only ever accepts, with headers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

from .model import Action, Reply, Result, Stage, Trust

ACTIONS = tuple(Action)


@dataclass(frozen=True)
class Verdict:
    action: Action                     # what the MTA is told to do
    score: float
    results: tuple
    reply: Optional[Reply] = None
    headers_added: tuple = ()          # (name, value)
    headers_removed: tuple = ()        # (name, value, index)
    decided: str = ""                  # the action before dry_run softened it
    stage: Stage = Stage.EOM
    reason: str = ""
    quarantine_reason: str = ""
    symbols: tuple = ()                # (symbol, weight) that made the score

    @property
    def dry_run(self) -> bool:
        return bool(self.decided) and self.decided != self.action

    def to_json(self, scores: Mapping[str, float]) -> dict:
        out = {
            "action": self.action,
            "score": round(self.score, 3),
            "smtp_reply": self.reply.line() if self.reply else None,
            "results": [
                {"check": r.check, "result": r.result, "symbol": r.symbol,
                 "score": scores.get(r.symbol, 0.0) if r.symbol else 0.0,
                 "reason": r.reason}
                for r in self.results
            ],
            "headers_added": [[n, v] for n, v in self.headers_added],
            "headers_removed": [[n, v] for n, v, _ in self.headers_removed],
        }
        if self.dry_run:
            out["dry_run_action"] = self.decided
        return out


class Policy:
    def __init__(self, options, scores: Mapping[str, float]):
        self.options = options
        self.scores = scores

    def score(self, results: Iterable[Result]) -> tuple:
        """Total and the (symbol, weight) pairs; each symbol counts once."""
        seen = {}
        for r in results:
            if r.symbol and r.symbol not in seen:
                seen[r.symbol] = self.scores.get(r.symbol, 0.0)
        return sum(seen.values()), tuple(seen.items())

    def temperror_action(self, trust: str) -> str:
        o = self.options
        return {Trust.AUTHENTICATED: o.temperror_action_authenticated,
                Trust.TRUSTED: o.temperror_action_trusted}.get(trust, o.temperror_action)

    def decide(self, results: Iterable[Result], trust: str, stage: Stage,
               final: bool) -> Optional[Verdict]:
        """A verdict, or None to go on (only when not ``final``)."""
        results = tuple(results)
        total, symbols = self.score(results)
        shown = _options(results)
        hits = ", ".join(s + shown.get(s, "") for s, w in symbols if w > 0)
        o = self.options

        action, reply, reason = None, None, ""
        hard = next((r for r in results if r.reply is not None), None)
        asked = next((r for r in results if r.quarantine), None)
        if hard is not None:
            action, reply = hard.reply.action, hard.reply
            reason = f"{hard.check}: {hard.reason or hard.reply.text}"
        elif final and total >= o.reject_score:
            action = Action.REJECT
            reply = Reply(Action.REJECT, 550, "5.7.1", f"{o.reject_text} (score {total:.1f}: {hits})")
            reason = f"score {total:.2f} >= {o.reject_score:g}"
        else:
            failed = next((r for r in results if r.result == "temperror" and r.tempfail),
                          None) if final else None
            if failed is not None and self.temperror_action(trust) == Action.TEMPFAIL:
                action = Action.TEMPFAIL
                reply = Reply(Action.TEMPFAIL, 451, "4.7.1",
                              f"Temporary failure in {failed.check} checks, please try again later")
                reason = f"{failed.check} temperror: {failed.reason}"
            elif final and asked is not None:
                action, reason = Action.QUARANTINE, f"{asked.check}: {asked.quarantine}"
            elif final and total >= o.quarantine_score:
                action, reason = Action.QUARANTINE, f"score {total:.2f} >= {o.quarantine_score:g}"
            elif final and total >= o.add_header_score:
                action, reason = Action.ADD_HEADER, f"score {total:.2f} >= {o.add_header_score:g}"
            elif final:
                action = Action.ACCEPT

        if action is None:
            return None
        if (final and hard is None and o.outbound_action == "hold"
                and trust in (Trust.AUTHENTICATED, Trust.TRUSTED)
                and action in (Action.REJECT, Action.QUARANTINE, Action.ADD_HEADER)):
            reason = f"outbound {trust} mail held ({action}: {reason})"
            action, reply = Action.QUARANTINE, None
        decided = action
        if o.dry_run and action != Action.ACCEPT:
            if not final:
                return None        # dry run: keep going, decide again at the end
            action = Action.ADD_HEADER if total >= o.add_header_score else Action.ACCEPT
            reply = None
        return Verdict(action=action, score=total, results=results, reply=reply,
                       decided=decided, stage=stage, reason=reason, symbols=symbols,
                       quarantine_reason=reason if action == Action.QUARANTINE else "")

    def status_header(self, verdict_action: str, total: float, symbols: tuple,
                      results: Iterable[Result] = ()) -> tuple:
        flag = "Yes" if verdict_action in (Action.ADD_HEADER, Action.QUARANTINE, Action.REJECT) else "No"
        shown = _options(results)
        listed = ",\n\t".join(f"{s}({w:.2f}){shown.get(s, '')}" for s, w in symbols if w != 0)
        value = f"{flag}, score={total:.2f} required={self.options.add_header_score:.2f}"
        if listed:
            value += f"\n\tsymbols={listed}"
        return (self.options.status_header, value)


_NOT_WORD = re.compile(r"[^A-Za-z0-9._:/-]")


def _word(text) -> str:
    """An option as shown in a header or a reply: options come from the
    message (listed domains), so anything but a plain word is ``?``."""
    return _NOT_WORD.sub("?", str(text))[:64]


def _options(results: Iterable[Result], most: int = 5) -> dict:
    """symbol -> "[a,b]": the options results gave for it, at most ``most``."""
    found: dict = {}
    for r in results:
        if r.symbol and r.options:
            words = found.setdefault(r.symbol, [])
            words.extend(w for w in map(_word, r.options) if w not in words)
    return {s: "[" + ",".join(w[:most]) + (",..." if len(w) > most else "") + "]"
            for s, w in found.items()}
