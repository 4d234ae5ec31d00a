# -*- test-case-name: tests.unit.mesh.test_auth -*-
"""Who may log in to the mesh: a peer whose TLS certificate names the node
it claims to be.

By the time a login arrives, TLS has verified the peer's certificate
against the cluster CA (:mod:`fastedge.mesh.tls`). The login says which
node the peer is; :class:`CertificateChecker` accepts it only if the
certificate is for that node id (``service_identity``), so a node with a
valid certificate cannot pass itself off as another. The realm makes a
:class:`~fastedge.mesh.peer.PeerAvatar` for the node, and
:class:`MeshGate` is the PB root object that runs the login.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography import x509
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb
from zope.interface import Attribute, implementer

from .broker import MeshBroker
from .messages import Announcement, Refused
from .tls import name_mismatch, peer_certificate

__all__ = [
    "CertificateChecker",
    "IPeerCertificate",
    "MeshGate",
    "MeshRealm",
    "PeerCertificate",
    "make_portal",
]


class IPeerCertificate(ICredentials):
    """A claim to be a node, backed by the TLS certificate it presented."""

    node_id = Attribute("The node id the peer claims.")
    certificate = Attribute("The verified certificate it presented (cryptography), or None.")


@implementer(IPeerCertificate)
@dataclass(frozen=True)
class PeerCertificate:
    """:class:`IPeerCertificate` of one login."""

    node_id: str
    certificate: x509.Certificate | None


@implementer(ICredentialsChecker)
class CertificateChecker:
    """Accepts a claim when the certificate is for the claimed node id."""

    credentialInterfaces = (IPeerCertificate,)

    def requestAvatarId(self, credentials: IPeerCertificate) -> Deferred[Any]:
        reason = name_mismatch(credentials.certificate, credentials.node_id)
        if reason is not None:
            return fail(UnauthorizedLogin(reason))
        return succeed(credentials.node_id)


@implementer(IRealm)
class MeshRealm:
    """Makes the avatar of a logged-in peer.

    :param avatar_factory: ``(node_id, mind) -> PeerAvatar``.
    """

    def __init__(self, avatar_factory: Any) -> None:
        self._avatar_factory = avatar_factory

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, Any, Any]:
        if pb.IPerspective not in interfaces:
            raise NotImplementedError("the mesh realm only makes PB perspectives")
        avatar = self._avatar_factory(avatarId, mind)
        return pb.IPerspective, avatar, avatar.logout


def make_portal(avatar_factory: Any) -> Portal:
    """The mesh's portal: :class:`MeshRealm` and :class:`CertificateChecker`."""
    return Portal(MeshRealm(avatar_factory), [CertificateChecker()])


class _Gate(pb.Referenceable):
    """The root object of one incoming connection: one ``join`` and done."""

    _log = Logger()

    def __init__(self, portal: Portal, broker: MeshBroker, joined: Any) -> None:
        self._portal = portal
        self._broker = broker
        self._joined = joined
        self._used = False

    def remote_join(self, announcement: Any, mind: Any) -> Deferred[Any]:
        """Log in as the node ``announcement`` describes.

        :returns: ``(session, this node's announcement, member list)``.
        """
        broker = self._broker
        if self._used:
            broker.violation("protocol", "a second login on one connection")
            raise Refused("already logged in")
        self._used = True
        if not isinstance(announcement, Announcement) or not (mind is None or isinstance(mind, pb.RemoteReference)):
            broker.violation("bad_message", "a login must be (announcement, callback reference)")
            raise Refused("bad login")
        credentials = PeerCertificate(announcement.node_id, peer_certificate(broker.transport))
        d = self._portal.login(credentials, mind, pb.IPerspective)
        d.addCallbacks(
            self._logged_in,
            self._refused,
            callbackArgs=(announcement,),
            errbackArgs=(announcement,),
        )
        return d

    def _logged_in(self, result: tuple[Any, Any, Any], announcement: Announcement) -> Any:
        _, avatar, logout = result
        broker = self._broker
        try:
            me, members = self._joined(announcement, avatar, broker)
        except Refused as e:
            logout()
            self._log.info(
                "mesh login of {peer} refused: {reason}",
                peer=announcement.node_id,
                reason=str(e),
            )
            self._close_after_answer()
            raise
        broker.logged_in(announcement.node_id)
        broker.notifyOnDisconnect(logout)
        return pb.AsReferenceable(avatar, "perspective"), me, members

    def _refused(self, failure: Failure, announcement: Announcement) -> None:
        failure.trap(UnauthorizedLogin)
        broker = self._broker
        broker._metrics.refused.labels("name_mismatch").inc()
        self._log.warn(
            "mesh login from {address} as {peer} refused: {reason}",
            address=broker.describe(),
            peer=announcement.node_id,
            reason=failure.getErrorMessage(),
        )
        self._close_after_answer()
        raise Refused("certificate does not match: {}".format(failure.getErrorMessage()))

    def _close_after_answer(self) -> None:
        # loseConnection writes the refusal (queued right after) first.
        broker = self._broker
        transport = broker.transport
        if transport is not None:
            broker.clock.callLater(0, transport.loseConnection)


@implementer(pb.IPBRoot)
class MeshGate:
    """The PB root of the mesh listener: each connection gets a gate that
    allows one login.

    :param joined: ``(announcement, avatar, broker) -> (me, members)``; it
        may raise :class:`~fastedge.mesh.messages.Refused`.
    """

    def __init__(self, portal: Portal, joined: Any) -> None:
        self._portal = portal
        self._joined = joined

    def rootObject(self, broker: MeshBroker) -> _Gate:
        return _Gate(self._portal, broker, self._joined)
