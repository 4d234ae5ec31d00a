# -*- test-case-name: tests.unit.webhooks.test_targets -*-
"""Where a webhook may go: URL rules and the addresses refused to keep the
node from being a server-side request forgery tool (docs/webhooks.md,
"Endpoint URLs").

URLs are checked when registered; addresses are checked when the request is
sent, on every address the name resolves to then (a name may be changed to
point inside after registration), and the connection goes to an address
that was checked, never to a second lookup.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

#: The longest endpoint URL accepted.
MAX_URL_CHARS = 2048

#: Ranges refused besides what :mod:`ipaddress` flags: shared address space
#: (carrier-grade NAT, RFC 6598) is private in all but name.
_ALSO_PRIVATE = (ipaddress.ip_network("100.64.0.0/10"),)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BadTarget(ValueError):
    """A URL or address a webhook may not go to; the message says why."""


def check_url(url: str, *, allow_private: bool) -> str:
    """Check an endpoint URL as registered.

    Refused: anything but ``http``/``https``, no host, credentials
    (``user:pass@``), a fragment, more than :data:`MAX_URL_CHARS`
    characters, characters outside printable ASCII (send IDNs as
    ``xn--``), a bad port, and an address literal that :func:`refusal`
    refuses (names are checked when sending).

    :returns: ``url`` unchanged.
    :raises BadTarget: naming the rule.
    """
    if len(url) > MAX_URL_CHARS:
        raise BadTarget("the URL is longer than {} characters".format(MAX_URL_CHARS))
    if not url.isascii() or not url.isprintable() or " " in url:
        raise BadTarget("the URL must be printable ASCII without spaces (encode international names as xn--)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadTarget("the URL is malformed or its port is not 1-65535") from None
    if parts.scheme not in ("http", "https"):
        raise BadTarget("the URL must be http:// or https://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise BadTarget("the URL must not carry credentials; the request is signed with the secret instead")
    if not parts.hostname:
        raise BadTarget("the URL has no host")
    if parts.fragment or url.endswith("#"):
        raise BadTarget("the URL must not have a fragment")
    if port == 0:
        raise BadTarget("the URL is malformed or its port is not 1-65535")
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        literal = None
    if literal is not None and not allow_private:
        reason = refusal(literal)
        if reason is not None:
            raise BadTarget("the URL's address is {}".format(reason))
    return url


def refusal(address: IPAddress) -> str | None:
    """Why a webhook may not connect to ``address`` (``None``: it may).

    An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) is judged as the
    IPv4 address it carries, and so are NAT64 (``64:ff9b::/96``) ones.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return refusal(address.ipv4_mapped)
        if address in ipaddress.ip_network("64:ff9b::/96"):
            return refusal(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private or any(address in net for net in _ALSO_PRIVATE if net.version == address.version):
        return "private"
    if address.is_reserved or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local):
        return "reserved"
    return None
