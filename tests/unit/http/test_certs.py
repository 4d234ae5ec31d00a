"""The certificate directory: names by SNI, reloads on a clock, bad files."""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fastedge.http.certs import (
    CertificateLoadError,
    CertificateStore,
    candidates,
    normalize_server_name,
)
from fastedge.http.metrics import TlsMetrics
from fastedge.metrics.registry import new_registry
from fastedge.testing.certs import write_certificate


class NameTests(SynchronousTestCase):
    def test_server_names(self):
        """SNI names are lower-cased; anything that is not a host name is
        ignored (and never becomes a file name)."""
        self.assertEqual(normalize_server_name(b"WWW.Example.COM."), "www.example.com")
        for bad in (
            b"../../etc/passwd",
            b"a/b",
            b"*.x.com",
            b"",
            None,
            b"\xff",
            b"a" * 300,
        ):
            self.assertIsNone(normalize_server_name(bad))

    def test_candidates(self):
        """Exact name, wildcard one level up, default."""
        self.assertEqual(candidates("a.b.c"), ["a.b.c", "*.b.c", "default"])
        self.assertEqual(candidates("b.c"), ["b.c", "default"])
        self.assertEqual(candidates(None), ["default"])


class StoreTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        self.clock = Clock()
        self.built = []

        def build(key, chain):
            self.built.append(chain[0].subject.rfc4514_string())
            return ("context", chain[0].serial_number)

        self.metrics = TlsMetrics(new_registry())
        self.store = CertificateStore(
            self.dir,
            clock=self.clock,
            build_context=build,
            check_seconds=2.0,
            metrics=self.metrics,
        )

    def test_no_default_is_an_error(self):
        """Without a default certificate no context can be chosen."""
        self.assertRaises(CertificateLoadError, self.store.default_context)

    def test_reload_after_check_interval(self):
        """A replaced file is picked up once reload_check_seconds have passed,
        not before; a broken file keeps the previous certificate."""
        write_certificate(self.dir, "default")
        first = self.store.default_context()
        write_certificate(self.dir, "default")
        self.assertEqual(self.store.default_context(), first)
        self.clock.advance(2.0)
        second = self.store.default_context()
        self.assertNotEqual(second, first)
        with open(os.path.join(self.dir, "default.pem"), "wb") as f:
            f.write(b"garbage")
        self.clock.advance(2.0)
        self.assertEqual(self.store.default_context(), second)
        self.assertEqual(self.metrics.cert_load_errors._value.get(), 1)

    def test_crt_and_key_pair(self):
        """NAME.crt with NAME.key is a certificate too; a lone .crt is not."""
        pem = write_certificate(self.dir, "tmp")
        os.unlink(os.path.join(self.dir, "tmp.pem"))
        key_end = pem.index(b"-----END PRIVATE KEY-----") + len(b"-----END PRIVATE KEY-----\n")
        with open(os.path.join(self.dir, "default.key"), "wb") as f:
            f.write(pem[:key_end])
        with open(os.path.join(self.dir, "default.crt"), "wb") as f:
            f.write(pem[key_end:])
        with open(os.path.join(self.dir, "lonely.crt"), "wb") as f:
            f.write(pem[key_end:])
        self.assertEqual(self.store.names(), ["default"])

    def test_mismatched_key_is_refused(self):
        """A key that does not belong to the certificate is not loaded."""
        a = write_certificate(self.dir, "a.test")
        b = write_certificate(self.dir, "b.test")
        split = lambda pem: pem.index(b"-----BEGIN CERTIFICATE-----")  # noqa: E731
        with open(os.path.join(self.dir, "default.pem"), "wb") as f:
            f.write(a[: split(a)] + b[split(b) :])
        self.assertNotIn("default", self.store.names())
        self.flushLoggedErrors()
