# -*- test-case-name: tests.integration.test_twistd -*-
"""Structured logs: one JSON object a line, for Loki, ELK and the like.

twistd takes a log observer factory with ``--logger``::

    twistd --nodaemon --pidfile= --logger fastedge.logs.json_observer fastedge --config etc/fastedge.toml

Every event becomes one line of JSON (no record separator, so line-based
shippers read it as is): Twisted's ``log_time``, ``log_level``,
``log_namespace``, ``log_format`` and every named field of the event (the
house style logs with constant formats and named fields, so the fields
are the data), plus ``text``, the formatted message. The lines go to
standard output, or to the file named by ``FASTEDGE_LOG_FILE`` (appended;
needed in daemon mode, where twistd sends standard output to
``/dev/null``; twistd's ``--logfile`` does not apply to ``--logger``).
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, eventAsJSON, formatEvent
from zope.interface import implementer

__all__ = ["json_observer", "JsonLines"]

#: The environment variable naming the file :func:`json_observer` appends to.
LOG_FILE_ENV = "FASTEDGE_LOG_FILE"


@implementer(ILogObserver)
class JsonLines:
    """Writes each event as one line of JSON to ``out``, with ``text`` added.

    :param out: a writable text file.
    """

    def __init__(self, out: IO[Any]) -> None:
        self._file = FileLogObserver(out, self._line)

    @staticmethod
    def _line(event: LogEvent) -> str:
        # A copy: the same event goes to every other observer unchanged.
        return eventAsJSON(dict(event, text=formatEvent(event))) + "\n"

    def __call__(self, event: LogEvent) -> None:
        self._file(event)


def json_observer() -> ILogObserver:
    """The factory ``twistd --logger fastedge.logs.json_observer`` calls:
    JSON lines on standard output, or appended to ``$FASTEDGE_LOG_FILE``."""
    path = os.environ.get(LOG_FILE_ENV)
    if path:
        return JsonLines(open(path, "a", encoding="utf-8", buffering=1))
    return JsonLines(sys.stdout)
