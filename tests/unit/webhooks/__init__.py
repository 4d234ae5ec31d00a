"""Tests of :mod:`fastedge.webhooks`."""
