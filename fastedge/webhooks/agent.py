# -*- test-case-name: tests.integration.test_webhooks -*-
"""The outbound HTTP agent for webhooks: every connection goes to an
address checked when the request is sent, directly or through the
operator's proxy (``[webhooks] proxy``).

- Direct: the endpoint's host is resolved, every address it resolves to is
  checked (:func:`~fastedge.webhooks.targets.refusal`), and the connection
  is made to a checked address (never to a second lookup, which a
  rebinding name could answer differently).
- ``https://`` through the proxy: a ``CONNECT`` tunnel to the checked
  address, then TLS inside it, verified for the endpoint's host name.
- ``http://`` through the proxy: the name is checked the same way first,
  then the request goes to the proxy in absolute form (the proxy connects;
  it should enforce its own egress rules too, as proxy hosts do).

Redirects are never followed (the caller asks treq not to, and nothing
here follows one).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IHostResolution, IProtocolFactory, IResolutionReceiver, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ProxyAgent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from .targets import BadTarget, IPAddress, refusal

#: ``resolve(host, port) -> Deferred[list[address]]``.
Resolve = Callable[[str, int], "Deferred[list[IPAddress]]"]

#: The proxy's answer to a CONNECT, at most (a proxy that sends more is broken).
_MAX_CONNECT_RESPONSE = 16 * 1024


class TargetRefused(ConnectError):
    """The endpoint's address is one webhooks may not reach (the message
    says which and why); counted as a failed attempt, like any connection
    error, so a name pointed back outside later is delivered to."""


class ProxyRefused(ConnectError):
    """The proxy did not open a tunnel (its status line is the message)."""


def resolver_of(reactor: Any) -> Resolve:
    """:data:`Resolve` through the reactor's ``nameResolver`` (the system's
    resolver, off the reactor thread)."""

    def resolve(host: str, port: int) -> Deferred[list[IPAddress]]:
        d: Deferred[list[IPAddress]] = Deferred()
        found: list[IPAddress] = []

        @implementer(IResolutionReceiver)
        class Receiver:
            def resolutionBegan(self, resolution: IHostResolution) -> None:
                pass

            def addressResolved(self, address: Any) -> None:
                try:
                    found.append(ipaddress.ip_address(address.host.split("%")[0]))
                except ValueError:
                    pass

            def resolutionComplete(self) -> None:
                if found:
                    d.callback(found)
                else:
                    d.errback(DNSLookupError(host))

        reactor.nameResolver.resolveHostName(Receiver(), host, port)
        return d

    return resolve


@inlineCallbacks
def checked_addresses(host: str, port: int, resolve: Resolve, allow_private: bool) -> Any:
    """The addresses to connect to for ``host`` (in the resolver's order),
    resolved now.

    :raises TargetRefused: when any address the name has now is refused
        (a name with one inside address among outside ones is refused too).
    """
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = yield resolve(host, port)
    if not allow_private:
        for address in addresses:
            reason = refusal(address)
            if reason is not None:
                raise TargetRefused(string="{} resolves to a {} address ({})".format(host, reason, address))
    return addresses


def _tcp(reactor: Any, address: IPAddress, port: int, timeout: float) -> IStreamClientEndpoint:
    if address.version == 6:
        return TCP6ClientEndpoint(reactor, str(address), port, timeout=timeout)
    return TCP4ClientEndpoint(reactor, str(address), port, timeout=timeout)


@implementer(IStreamClientEndpoint)
class _CheckedEndpoint:
    """Connects to ``host`` at an address checked at connect time, directly
    or through a CONNECT tunnel of ``proxy``."""

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        *,
        resolve: Resolve,
        allow_private: bool,
        timeout: float,
        proxy: IStreamClientEndpoint | None,
    ) -> None:
        self._reactor = reactor
        self._host = host
        self._port = port
        self._resolve = resolve
        self._allow_private = allow_private
        self._timeout = timeout
        self._proxy = proxy

    @inlineCallbacks
    def connect(self, protocolFactory: IProtocolFactory) -> Any:
        addresses = yield checked_addresses(self._host, self._port, self._resolve, self._allow_private)
        if self._proxy is None:
            # Each checked address in turn ("localhost" may be ::1 first
            # while the receiver listens on 127.0.0.1 only).
            for address in addresses[:-1]:
                try:
                    return (yield _tcp(self._reactor, address, self._port, self._timeout).connect(protocolFactory))
                except ConnectError:
                    continue
            return (yield _tcp(self._reactor, addresses[-1], self._port, self._timeout).connect(protocolFactory))
        address = addresses[0]
        authority = (
            "[{}]:{}".format(address, self._port) if address.version == 6 else "{}:{}".format(address, self._port)
        )
        tunnel = _TunnelProtocol(authority, protocolFactory)
        yield self._proxy.connect(Factory.forProtocol(lambda: tunnel))
        return (yield tunnel.ready)


class _TunnelProtocol(Protocol):
    """Asks the proxy for a tunnel, then hands the connection to the
    protocol the agent wanted (TLS, then HTTP, for an https endpoint)."""

    def __init__(self, authority: str, factory: IProtocolFactory) -> None:
        self._authority = authority
        self._factory = factory
        self._buffer = b""
        self._inner: Any = None
        self.ready: Deferred[Any] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write("CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n\r\n".format(a=self._authority).encode("ascii"))

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        self._buffer += data
        head, sep, rest = self._buffer.partition(b"\r\n\r\n")
        if not sep:
            if len(self._buffer) > _MAX_CONNECT_RESPONSE:
                self._refuse("the proxy's answer to CONNECT is too long")
            return
        status_line = head.split(b"\r\n", 1)[0]
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or parts[1] != b"200":
            self._refuse("the proxy refused CONNECT: {}".format(status_line[:200].decode("latin-1")))
            return
        assert self.transport is not None
        inner = self._factory.buildProtocol(self.transport.getPeer())
        if inner is None:
            self._refuse("no protocol for the tunnel")
            return
        self._inner = inner
        inner.makeConnection(self.transport)
        self.ready.callback(inner)
        if rest:
            inner.dataReceived(rest)

    def _refuse(self, message: str) -> None:
        transport: Any = self.transport
        transport.abortConnection()
        if not self.ready.called:
            self.ready.errback(ProxyRefused(string=message))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._inner is not None:
            self._inner.connectionLost(reason)
        elif not self.ready.called:
            self.ready.errback(ProxyRefused(string="the proxy closed the connection before the tunnel opened"))


@implementer(IAgentEndpointFactory)
class _EndpointFactory:
    def __init__(
        self,
        reactor: Any,
        *,
        resolve: Resolve,
        allow_private: bool,
        timeout: float,
        proxy: IStreamClientEndpoint | None,
        tls: IPolicyForHTTPS,
    ) -> None:
        self._reactor = reactor
        self._resolve = resolve
        self._allow_private = allow_private
        self._timeout = timeout
        self._proxy = proxy
        self._tls = tls

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        inner = _CheckedEndpoint(
            self._reactor,
            host,
            uri.port,
            resolve=self._resolve,
            allow_private=self._allow_private,
            timeout=self._timeout,
            proxy=self._proxy,
        )
        if uri.scheme == b"https":
            return wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), inner)
        return inner


@implementer(IAgent)
class WebhookAgent:
    """An ``IAgent`` that only reaches addresses webhooks may reach (see
    the module docstring).

    :param proxy: ``(host, port)`` of the outbound proxy, or ``None``.
    :param pool: shared by every request; bounds idle connections.
    :param tls: trust for https endpoints (default: the system's roots).
    """

    def __init__(
        self,
        reactor: Any,
        *,
        pool: HTTPConnectionPool,
        allow_private: bool,
        connect_timeout: float,
        proxy: tuple[str, int] | None = None,
        resolve: Resolve | None = None,
        tls: IPolicyForHTTPS | None = None,
    ) -> None:
        self._resolve = resolve or resolver_of(reactor)
        self._allow_private = allow_private
        proxy_endpoint = None
        if proxy is not None:
            from twisted.internet.endpoints import HostnameEndpoint

            proxy_endpoint = HostnameEndpoint(reactor, proxy[0], proxy[1], timeout=connect_timeout)
        factory = _EndpointFactory(
            reactor,
            resolve=self._resolve,
            allow_private=allow_private,
            timeout=connect_timeout,
            proxy=proxy_endpoint,
            tls=tls or BrowserLikePolicyForHTTPS(),
        )
        self._direct = Agent.usingEndpointFactory(reactor, factory, pool=pool)
        self._forward = ProxyAgent(proxy_endpoint, reactor, pool=pool) if proxy_endpoint is not None else None

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        parsed = URI.fromBytes(uri)
        if parsed.scheme == b"http" and self._forward is not None:
            forward = self._forward
            d = checked_addresses(parsed.host.decode("ascii"), parsed.port, self._resolve, self._allow_private)
            d.addCallback(lambda _: forward.request(method, uri, headers, bodyProducer))
            return d
        return self._direct.request(method, uri, headers, bodyProducer)


__all__ = ["BadTarget", "ProxyRefused", "TargetRefused", "WebhookAgent", "checked_addresses", "resolver_of"]
