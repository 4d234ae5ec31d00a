"""fastedge: one edge node of a globally distributed, live comment service."""

__version__ = "0.1.0"
