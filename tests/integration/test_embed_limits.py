"""The embed page's plain form against the transport's body limits, over
real loopback sockets: a too-long comment is refused in the page like any
other bad field, and a body too big to read gets an HTML 413 page, not the
JSON one (docs/embedding.md, "Posting without JavaScript")."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

from twisted.internet import defer, reactor
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.internet.protocol import Factory

from fastedge.config import ApiConfig
from fastedge.embed.resource import form_body_limit
from tests.support.http2 import insecure_tls
from tests.support.nodes import create_tenants

from .test_http_errors import _H2Upload, _NodeCase, _Reply

_HTML = "text/html; charset=utf-8"


class EmbedFormLimitTests(_NodeCase):
    """The form's body limit on a whole node (HTTP/1.1 and HTTP/2)."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        ((self.tenant, _),) = create_tenants(os.path.join(self.data_dir, "fastedge.sqlite3"), ["Host"])
        self.path = "/embed/{}/?urlId={}".format(self.tenant, quote("https://host.test/a", safe="")).encode()

    def post(self, body: bytes, length: int | None = None) -> defer.Deferred[Any]:
        head = (
            b"POST " + self.path + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n"
            % (len(body) if length is None else length)
        )
        return self.send(head + body)

    def test_limit_is_above_the_largest_valid_form(self) -> None:
        """The form's limit holds every field at its longest, each character
        four UTF-8 bytes percent-encoded, and is above ``http.max_body_bytes``
        (64 KiB), which a valid form can outgrow."""
        cfg = ApiConfig()
        largest = (
            "text="
            + "%F0%9F%98%80" * cfg.comment_max_chars
            + "&displayName="
            + "%F0%9F%98%80" * cfg.display_name_max_chars
            + "&pageTitle="
            + "%F0%9F%98%80" * cfg.title_max_chars
            + "&parentId="
            + "A" * 32
        )
        self.assertLess(len(largest), form_body_limit(cfg))
        self.assertGreater(form_body_limit(cfg), 64 * 1024)

    @defer.inlineCallbacks
    def test_long_comment_refused_in_the_page(self) -> Any:
        """A comment longer than allowed, in a body over 64 KiB but under the
        form's limit, is read and refused in the page (the JSON API's 400
        ``text_too_long`` in the form's alert), not with the transport's JSON 413."""
        body = b"text=" + b"x" * 65600 + b"&displayName=Ann"
        self.assertGreater(len(body), 64 * 1024)
        client = yield self.post(body)
        reply = _Reply(client.data)
        self.assertEqual(reply.status, 400, client.data[:300])
        self.assertEqual(reply.headers.get("content-type"), _HTML)
        self.assertIn(b'role="alert"', reply.body)
        self.assertIn(b"(text_too_long)", reply.body)

    @defer.inlineCallbacks
    def test_huge_declared_body_gets_an_html_413(self) -> Any:
        """A form declaring a body far over the limit is refused before it is
        read (413, connection closed) with an HTML page naming the error, under
        the embed page's CSP."""
        client = yield self.post(b"", length=1_000_000_000)
        reply = _Reply(client.data)
        self.assertEqual(reply.status, 413, client.data[:300])
        self.assertEqual(reply.headers.get("content-type"), _HTML)
        self.assertEqual(reply.headers.get("connection"), "close")
        self.assertIn("script-src 'self'", reply.headers.get("content-security-policy", ""))
        self.assertIn(b"(body_too_large)", reply.body)
        self.assertIn(b"<!doctype html>", reply.body)

    @defer.inlineCallbacks
    def test_h2_huge_declared_body_gets_an_html_413(self) -> Any:
        """Over HTTP/2 (how browsers reach a TLS node) the same refusal is the
        HTML page too; the API's stays JSON (test_http_errors)."""
        client = _H2Upload(b"1000000000", path=self.path)
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", self.node.https_port, insecure_tls("localhost", [b"h2"]))
        yield endpoint.connect(Factory.forProtocol(lambda: client))
        yield client.closed
        self.assertEqual(client.headers.get(b":status"), b"413")
        self.assertEqual(client.headers.get(b"content-type"), _HTML.encode())
        self.assertIn(b"(body_too_large)", client.body)
