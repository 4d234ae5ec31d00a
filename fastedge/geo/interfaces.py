"""What other children (DNS) need of the GeoIP index."""

from __future__ import annotations

from zope.interface import Interface


class IGeoLocator(Interface):
    """Locates client addresses with the index in use right now."""

    def locate(address):  # type: ignore[no-untyped-def]
        """Where ``address`` (an IPv4 or IPv6 address string) is.

        :returns: ``(Location | None, prefix_length)``: the location, or
            ``None`` when unknown, and the prefix length of the network of
            the index the answer holds for (0 when there is no index).
        """

    def subscribe(observer):  # type: ignore[no-untyped-def]
        """Call ``observer()`` each time a new index replaces the old one
        (cached locations are stale from then on).

        :returns: a no-argument callable that unsubscribes.
        """
