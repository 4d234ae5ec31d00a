"""Tests for :mod:`fastedge.webhooks.targets`: endpoint URLs and refused addresses."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.webhooks.targets import MAX_URL_CHARS, BadTarget, check_url, refusal


class CheckUrlTests(SynchronousTestCase):
    def test_accepted(self) -> None:
        """http(s) URLs with a host name, a port, a path and a query pass."""
        for url in (
            "https://hooks.example.com/in",
            "http://localhost:8080",
            "https://xn--bcher-kva.example/p?a=1&b=%20",
            "https://a.b-c.example:65535/x/y",
        ):
            self.assertEqual(check_url(url), url)

    def test_refused(self) -> None:
        """Another scheme, credentials, a fragment, an address literal, a
        bad port, non-ASCII or spaces, and more than 2,048 characters are
        refused with a reason naming the rule."""
        cases = {
            "ftp://hooks.example/in": "http:// or https://",
            "javascript:alert(1)": "http:// or https://",
            "https://user:pw@hooks.example/in": "credentials",
            "https://user@hooks.example/in": "credentials",
            "https://hooks.example/in#frag": "fragment",
            "https://127.0.0.1/in": "not an address",
            "http://[::1]/in": "not an address",
            "http://10.0.0.1:80/in": "not an address",
            "https://hooks.example:0/in": "port from 1 to 65535",
            "https://hooks.example:65536/in": "port from 1 to 65535",
            "https://hooks.example/a b": "printable ASCII",
            "https://bücher.example/": "printable ASCII",
            "https:///in": "host name",
            "https://" + "a" * MAX_URL_CHARS + ".example/": "longer than 2048",
        }
        for url, reason in cases.items():
            with self.subTest(url=url):
                with self.assertRaises(BadTarget) as caught:
                    check_url(url)
                self.assertIn(reason, str(caught.exception))

    @given(st.text(max_size=80))
    def test_accepted_urls_are_safe(self, text: str) -> None:
        """Whatever string passes is http(s), has a host name that is not
        an address, no credentials and no fragment."""
        for url in (text, "https://" + text, "http://h.example/" + text):
            try:
                check_url(url)
            except BadTarget:
                continue
            parts = urlsplit(url)
            self.assertIn(parts.scheme, ("http", "https"))
            self.assertTrue(parts.hostname)
            self.assertIsNone(parts.username)
            self.assertEqual(parts.fragment, "")
            self.assertRaises(ValueError, ipaddress.ip_address, parts.hostname)


class RefusalTests(SynchronousTestCase):
    def test_refused_addresses(self) -> None:
        """Loopback, private, link-local, multicast, unspecified and
        reserved addresses are refused in IPv4, IPv6, IPv4-mapped IPv6 and
        NAT64 form; the reason names the kind."""
        cases = {
            "127.0.0.1": "loopback",
            "127.9.9.9": "loopback",
            "::1": "loopback",
            "::ffff:127.0.0.1": "loopback",
            "64:ff9b::7f00:1": "loopback",
            "10.1.2.3": "private",
            "172.16.0.1": "private",
            "192.168.1.1": "private",
            "100.64.0.1": "private",
            "fd00::1": "private",
            "::ffff:192.168.1.1": "private",
            "169.254.169.254": "link-local",
            "fe80::1": "link-local",
            "224.0.0.1": "multicast",
            "ff02::1": "multicast",
            "0.0.0.0": "unspecified",
            "::": "unspecified",
            "::ffff:0.0.0.0": "unspecified",
            "240.0.0.1": "private",
        }
        for address, reason in cases.items():
            with self.subTest(address=address):
                self.assertEqual(refusal(ipaddress.ip_address(address)), reason)

    def test_public_addresses(self) -> None:
        """Public addresses are allowed, mapped or not."""
        for address in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:93.184.216.34", "8.8.8.8"):
            self.assertIsNone(refusal(ipaddress.ip_address(address)))
