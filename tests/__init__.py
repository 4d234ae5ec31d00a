"""fastedge's test suite.

Hypothesis runs under one profile here: no per-example deadline and no
"too slow" health check. The suite shares 2 cores with whatever else the
machine runs (two trial workers, PostgreSQL, SeaweedFS, Chromium), so
timing is noise; a timing health check made property tests fail on a busy
machine without finding anything. Performance is measured in ``bench/``.
"""

from hypothesis import HealthCheck, settings

settings.register_profile("fastedge", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("fastedge")
