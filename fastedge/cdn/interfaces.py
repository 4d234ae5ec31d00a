"""Interfaces of the CDN: where object bytes come from, and where purges go.

Today the only :class:`IObjectSource` is the tenant's S3 origin, the
:class:`IPeerLocator` finds no peers and the :class:`IPurgeBroadcast` tells
nobody. The mesh (a later issue) plugs in here without touching the cache:
its locator asks the deployment's peers which have an object and returns the
nearest as an :class:`IObjectSource` (the fill then streams from it exactly
as from the origin, and counts its bytes as ``peer``); its broadcaster sends
each purge to every node, which applies it with
:meth:`fastedge.cdn.service.CdnService.apply_purge`.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IBodyReceiver(Interface):
    """Receives an object's bytes from a source."""

    def data(chunk: bytes) -> None:
        """More bytes, in order."""

    def done() -> None:
        """The source says the body is complete (the receiver verifies it)."""

    def failed(reason: object) -> None:
        """The body was cut off (connection lost, timeout)."""


class ISourceResponse(Interface):
    """A source's answer to a fetch."""

    status = Attribute("200 (a body follows), 304 (the copy we hold is current) or 404.")
    meta = Attribute("ObjectMeta for a 200 (and, when given, a 304), else None.")
    checksums = Attribute("Checksums the source vouches for: {'md5': hex, 'crc32': base64, 'sha256': base64}.")

    def deliver(receiver: IBodyReceiver) -> None:
        """Stream the body of a 200 to ``receiver``."""

    def abort() -> None:
        """Stop the body (nobody wants it any more, or it stalled)."""


class IObjectSource(Interface):
    """Somewhere an object can be fetched from: the origin, or a peer node."""

    name = Attribute("'origin' or 'peer' (a metrics label).")

    def fetch(media: object, key: str, *, etag: str | None, last_modified: str | None) -> object:
        """GET an object, conditionally when ``etag``/``last_modified`` are given.

        :param media: the tenant's :class:`~fastedge.cdn.service.TenantMedia`.
        :returns: ``Deferred[ISourceResponse]``; errbacks with
            :class:`~fastedge.cdn.origin.OriginError` when the source fails.
        """


class IPeerLocator(Interface):
    """Finds a peer node that has an object (the mesh provides one)."""

    def locate(tenant: str, key: str) -> object:
        """``Deferred[IObjectSource | None]``: the nearest peer that has it, or None."""


class IPurgeBroadcast(Interface):
    """Sends a purge to the other nodes of the deployment (the mesh provides one)."""

    def broadcast(tenant: str, kind: str, value: str) -> None:
        """``kind`` is ``key`` or ``prefix``; fire and forget (the mesh retries)."""
