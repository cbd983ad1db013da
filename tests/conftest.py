"""Settings for every test: the hypothesis profiles.

``ci`` (the default): 150 examples a test, derandomized, so that a run is
repeatable; ``dev`` (``MAILWARDEN_HYPOTHESIS=dev``): 5,000 examples, for a
deeper search by hand."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=150, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("dev", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("MAILWARDEN_HYPOTHESIS", "ci"))
