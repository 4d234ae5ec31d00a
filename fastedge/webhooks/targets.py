# -*- test-case-name: tests.unit.webhooks.test_targets -*-
"""Where a webhook may go: URL rules and the addresses refused to keep the
node from being a server-side request forgery tool (docs/webhooks.md,
"Endpoint URLs").

URLs are checked when registered (a host name, never an address literal);
addresses are checked when the request is sent, on every address the name resolves to then (a name may be changed to
point inside after registration), and the connection goes to an address
that was checked, never to a second lookup.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

#: The longest endpoint URL accepted.
MAX_URL_CHARS = 2048

#: Ranges refused besides what :mod:`ipaddress` flags: shared address space
#: (carrier-grade NAT, RFC 6598) is private in all but name.
_ALSO_PRIVATE = (ipaddress.ip_network("100.64.0.0/10"),)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BadTarget(ValueError):
    """A URL or address a webhook may not go to; the message says why."""


#: What an endpoint URL must look like: ``http`` or ``https``, a host
#: *name* (an address literal names no name to check; a name is checked on
#: every address it has when sending), an optional port from 1 to 65535,
#: then an optional path and query of printable ASCII; no credentials, no
#: fragment. docs/openapi.yaml states the same pattern (a test checks).
URL_PATTERN = (
    r"^https?://"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
    r"(?:[/?][\x21-\x22\x24-\x7e]*)?$"
)
_URL_RE = re.compile(URL_PATTERN)


def check_url(url: str) -> str:
    """Check an endpoint URL as registered (:data:`URL_PATTERN`, at most
    :data:`MAX_URL_CHARS` characters).

    :returns: ``url`` unchanged.
    :raises BadTarget: saying which rule it breaks.
    """
    if len(url) > MAX_URL_CHARS:
        raise BadTarget("the URL is longer than {} characters".format(MAX_URL_CHARS))
    if _URL_RE.fullmatch(url):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https"):
        raise BadTarget("the URL must start with http:// or https://")
    if "@" in parts.netloc:
        raise BadTarget("the URL must not carry credentials; the request is signed with the secret instead")
    if "#" in url:
        raise BadTarget("the URL must not have a fragment")
    raise BadTarget(
        "the URL must be http(s)://NAME[:PORT][/PATH][?QUERY] in printable ASCII: a host name"
        " (not an address; xn-- for international names) and a port from 1 to 65535"
    )


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
