# -*- test-case-name: tests.unit.test_lifecycle -*-
"""Stopping in order, and being asked to stop.

- :func:`stop_in_order` stops services one after the other, each once the
  one before it has finished stopping (Twisted's ``MultiService`` stops
  every child at once and waits for all together: the store would close
  while the HTTP listener still answers requests that need it).
- :class:`OrderedMultiService` is a ``MultiService`` whose stop first lets
  every child that can announce its departure do so (the mesh tells its
  peers the node is LEAVING, so DNS withdraws it at once), then stops its
  children in reverse order with :func:`stop_in_order`, waiting for each.
- :class:`DrainRequests` watches for the file ``fastedge-admin node drain``
  leaves in the data directory and stops the node (the same stop as
  SIGTERM): ``docs/admin.md``, "Draining a node".
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["DRAIN_REQUEST", "DRAIN_STATE", "DrainRequests", "OrderedMultiService", "fired", "stop_in_order"]

_log = Logger()

#: The file ``fastedge-admin node drain`` creates in ``node.data_dir``.
DRAIN_REQUEST = "drain.request"
#: The file a draining node writes in ``node.data_dir`` (JSON: when the drain
#: started, and why); removed when the next start finds it.
DRAIN_STATE = "draining.json"


def fired(_: object) -> None:
    """A Deferred's result dropped once what it stood for is done: what
    ``stopService`` and other "it is over" Deferreds fire with. (Failures
    are not dropped: this is a callback, never an errback.)"""
    return None


def stop_in_order(services: Iterable[IService]) -> Deferred[None]:
    """Stop ``services`` one at a time, in the order given, each once the
    previous one's ``stopService`` Deferred fired.

    A service whose stop fails is logged and the next one is stopped all the
    same (a failed step must not leave the store open).

    :returns: fires with ``None`` once the last one stopped; never fails.
    """
    pending = [s for s in services if s.running]
    done: Deferred[None] = Deferred()

    def next_one(_: object = None) -> None:
        while pending:
            service = pending.pop(0)
            if not service.running:
                continue
            d = maybeDeferred(service.stopService)
            d.addErrback(_stop_failed, service)
            d.addCallback(next_one)
            return
        done.callback(None)

    next_one()
    return done


def _stop_failed(failure: Failure, service: IService) -> None:
    _log.failure("stopping {name} failed", failure, name=getattr(service, "name", None) or repr(service))


class OrderedMultiService(MultiService):
    """A ``MultiService`` that stops its children in reverse order, waiting
    for each, after letting each child that has ``announce_leaving()``
    announce it (in start order; each is waited for).

    A second ``stopService`` while the first runs returns a Deferred of the
    same stop: stopping is idempotent.
    """

    _stopping: Deferred[None] | None = None

    def stopService(self) -> Deferred[None]:
        if self._stopping is not None:
            return _same(self._stopping)
        Service.stopService(self)
        children = list(self)
        announcers = [c for c in children if c.running and callable(getattr(c, "announce_leaving", None))]
        stopped: Deferred[None] = Deferred()
        self._stopping = stopped

        def announce(_: object = None) -> Any:
            while announcers:
                child = announcers.pop(0)
                d = maybeDeferred(child.announce_leaving)
                d.addErrback(_announce_failed, child)
                return d.addCallback(announce)
            return stop_in_order(reversed(children))

        def finished(_: object) -> None:
            self._stopping = None
            stopped.callback(None)

        succeed(None).addCallback(announce).addCallback(finished)
        return _same(stopped)


def _announce_failed(failure: Failure, service: IService) -> None:
    _log.failure("{name} could not announce that the node leaves", failure, name=getattr(service, "name", None))


def _same(d: Deferred[None]) -> Deferred[None]:
    """Another Deferred firing when ``d`` does (``d`` keeps its result)."""
    out: Deferred[None] = Deferred()

    def fire(result: None) -> None:
        out.callback(None)
        return result

    d.addCallback(fire)
    return out


class DrainRequests(TimerService):
    """Stops the node when ``fastedge-admin node drain`` asks.

    Every ``every`` seconds it looks for :data:`DRAIN_REQUEST` in the data
    directory; when found, it removes it, writes :data:`DRAIN_STATE` (so the
    admin command can tell a drain already runs), and calls ``stop`` (the
    reactor's ``stop`` under twistd: the same ordered stop as SIGTERM).
    A request left from a previous life (no node took it) is removed at
    start, with a log line, never obeyed.

    :param stop: what stops the node.
    :param data_dir: ``node.data_dir``.
    """

    _log = Logger()

    def __init__(self, data_dir: str, *, stop: Callable[[], object], clock: IReactorTime, every: float = 1.0) -> None:
        super().__init__(every, self._check)
        self.clock = clock
        self._stop = stop
        self._request = os.path.join(data_dir, DRAIN_REQUEST)
        self._state = os.path.join(data_dir, DRAIN_STATE)
        self.requested = False

    def startService(self) -> None:
        for path, what in ((self._request, "drain request"), (self._state, "drain state")):
            try:
                os.remove(path)
            except FileNotFoundError:
                continue
            except OSError as e:
                self._log.warn("cannot remove the old {what} {path}: {error}", what=what, path=path, error=e)
                continue
            self._log.info("removed the {what} {path} left from before this start", what=what, path=path)
        super().startService()

    def _check(self) -> None:
        # TimerService stops for good on an exception: none escapes.
        try:
            if not os.path.exists(self._request):
                return
            os.remove(self._request)
        except OSError as e:
            self._log.warn("cannot take the drain request {path}: {error}", path=self._request, error=e)
            return
        if self.requested:
            self._log.info("drain requested again: the drain under way goes on")
            return
        self.requested = True
        try:
            with open(self._state, "w", encoding="utf-8") as f:
                json.dump({"since": self.clock.seconds(), "pid": os.getpid(), "trigger": "admin"}, f)
        except OSError as e:
            self._log.warn("cannot write the drain state {path}: {error}", path=self._state, error=e)
        self._log.info("drain requested (fastedge-admin node drain): the node stops")
        try:
            self._stop()
        except Exception:
            self._log.failure("stopping the node for a drain failed")

    def stopService(self) -> Deferred[None]:
        """Stop watching; a drain's state file goes once the node has
        stopped (this child is the first of the node, so the last stopped)."""
        d: Deferred[Any] = maybeDeferred(super().stopService)

        def forget(_: object) -> None:
            if not self.requested:
                return
            try:
                os.remove(self._state)
            except OSError:
                pass

        d.addCallback(forget)
        return d
