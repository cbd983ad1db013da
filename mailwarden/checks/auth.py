"""auth: reports SMTP AUTH (RFC 4954) in Authentication-Results.

An authenticated submission gets ``auth=pass smtp.auth=USER`` (RFC 8601
§2.7.4), the user name the MTA verified (``{auth_authen}``).  Nothing is
decided here: what an authenticated user may do is the submission check's
business.  Unauthenticated clients get no ``auth`` entry at all.

INI keys (``[check.auth]``):
  enabled             yes
"""

from __future__ import annotations

from . import Check


class AuthCheck(Check):
    name = "auth"
    method = "auth"
    symbols = {"AUTH_PASS": 0.0}

    def on_mail(self, ctx):
        user = ctx.conn.auth_user
        if not user:
            return None
        return self.result("pass", "AUTH_PASS", properties=(("smtp.auth", user),))


CHECKS = (AuthCheck,)
