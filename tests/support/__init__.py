"""Process supervisors, node starters and loopback peers for the tests (not shipped)."""
