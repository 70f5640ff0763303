"""Hypothesis profiles for the fuzz tests: ``fast`` in the default run (a few dozen cases per
property, well under a minute in all), ``long`` for the ``slow``-marked runs and for a
deliberate soak (``AML_FUZZ_PROFILE=long``). No example database is written (no clutter
in the work tree); a failure prints the example and the seed to reproduce it."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                      HealthCheck.function_scoped_fixture, HealthCheck.large_base_example])
settings.register_profile("fast", max_examples=40, **_COMMON)
settings.register_profile("long", max_examples=1500, **_COMMON)
settings.load_profile(os.environ.get("AML_FUZZ_PROFILE", "fast"))

#: Cases per property of the slow-marked fuzz tests.
LONG_EXAMPLES = settings.get_profile("long").max_examples
