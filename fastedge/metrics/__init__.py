"""Prometheus metrics: one registry per node, exposed at ``/metrics``.

Each child defines its own metric families (``<child>/metrics.py``) on the
registry it is given, with names that start with ``fastedge_<child>_``.
"""
