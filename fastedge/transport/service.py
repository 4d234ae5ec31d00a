# -*- test-case-name: tests.unit.test_tap -*-
"""The ``transport`` child: the public HTTP listener and the API's
background work."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort

from ..config import HttpConfig
from .site import EdgeSite


class ListenerService(StreamServerEndpointService):
    """A listener that tells when (and where) it listens."""

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the port once bound (e.g. to learn the port of ``tcp:0``)."""
        d: Deferred[IListeningPort] = Deferred()

        def bound(port: IListeningPort) -> IListeningPort:
            d.callback(port)
            return port

        waiting = self._waitingForPort
        if waiting is None:
            raise RuntimeError("the listener has not been started")
        waiting.addCallback(bound)
        return d


def make_service(cfg: HttpConfig, *, reactor: Any, site: EdgeSite, background: IService) -> MultiService:
    """Listen on ``cfg.endpoint`` with ``site``; run ``background`` alongside.

    The listener binds in ``privilegedStartService`` (so a port below 1024
    works with ``--uid``), and a failure to bind stops the node at start.
    """
    top = MultiService()
    background.setServiceParent(top)
    listener = ListenerService(serverFromString(reactor, cfg.endpoint), site)
    listener._raiseSynchronously = True  # a port in use fails `twistd` loudly
    listener.setName("http")
    listener.setServiceParent(top)
    return top
