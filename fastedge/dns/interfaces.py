"""The answer policy: which live nodes a geo-routed name answers."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IAnswerPolicy(Interface):
    """Chooses the nodes a geo-routed name answers for a client location.

    The default is nearest-live (:class:`fastedge.dns.policy.NearestLive`).
    Ops replace it with a Twisted plugin: a module in a ``twisted/plugins/``
    directory on the path whose module-level object provides this interface
    and ``twisted.plugin.IPlugin``, selected by ``dns.policy = "<name>"``.

    Answers are computed once per (deployment, address family, location
    cell, node-map version) and served from memory until the node map
    changes, so :meth:`choose` must depend only on its arguments (the nodes
    carry their load, which changes the map when it changes).
    """

    name = Attribute("The name ``dns.policy`` selects this policy by.")

    def choose(nodes, client, count, default_region):  # type: ignore[no-untyped-def]
        """Pick the nodes to answer, best first.

        :param nodes: the live nodes of the name's deployment that have an
            address of the asked family, sorted by node id
            (``Sequence[NodeInfo]``, never empty).
        :param client: the client's location (a ``fastedge.geo.lookup.Location``,
            the centre of its cell), or ``None`` when unknown.
        :param count: how many nodes an answer should hold (``dns.answers``).
        :param default_region: ``dns.default_region`` (may be empty).
        :returns: ``Sequence[NodeInfo]``, a subset of ``nodes``; only the
            first ``count`` are answered.
        """
