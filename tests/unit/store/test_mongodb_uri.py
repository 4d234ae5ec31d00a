"""Tests for :mod:`fastedge.store.mongodb.uri`: what a log line may show of
a MongoDB URI, and the NEAREST pool's URI."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.store.mongodb.txmongo_gaps import nearest_pool_uri
from fastedge.store.mongodb.uri import redact_uri, with_options


class RedactTests(SynchronousTestCase):
    def test_shown(self) -> None:
        """Hosts, database, ``replicaSet`` and ``authSource`` are shown; the
        user, the password and every other option are not."""
        uri = (
            "mongodb://fe:pa%40ss@db1:27017,db2:27018/edge?replicaSet=rs0&authSource=admin&tlsCertificateKeyFile=/k.pem"
        )
        self.assertEqual(redact_uri(uri), "mongodb://db1:27017,db2:27018/edge?replicaSet=rs0&authSource=admin")

    def test_unparsable(self) -> None:
        """A URI that does not parse is not shown at all."""
        self.assertEqual(redact_uri("mongodb://fe:secret@"), "<unparsable MongoDB URI>")

    @given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=20))
    def test_never_the_credentials(self, password: str, user: str) -> None:
        """Whatever the user name and password, neither appears in the redacted form."""
        uri = "mongodb://{}:{}@db1.example:27017/?replicaSet=rs0".format(quote(user, safe=""), quote(password, safe=""))
        shown = redact_uri(uri)
        self.assertEqual(shown, "mongodb://db1.example:27017/?replicaSet=rs0")


class NearestUriTests(SynchronousTestCase):
    def test_read_preference_added(self) -> None:
        """The NEAREST pool's URI asks txmongo for ``readPreference=nearest``
        (so it keeps a connection to a secondary), replacing any given."""
        self.assertEqual(
            nearest_pool_uri("mongodb://127.0.0.1:27017"), "mongodb://127.0.0.1:27017/?readPreference=nearest"
        )
        self.assertEqual(
            nearest_pool_uri("mongodb://h:1/?readPreference=primary&w=1"), "mongodb://h:1/?w=1&readPreference=nearest"
        )
        self.assertEqual(with_options("mongodb://h:1/db", a="b c"), "mongodb://h:1/db?a=b%20c")
