"""Tests of the store backends.

The contract suite (:mod:`.contract`) is a mixin: one hypothesis test method
runs once per backend's test class. Hypothesis flags a method called from
several classes ("differing executors") because replaying its example
database could mix them up; here that is the design, and every class draws
its own examples, so that one check is turned off for these tests.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "fastedge-store",
    parent=settings.get_profile("fastedge"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)
settings.load_profile("fastedge-store")
