"""The in-memory GeoIP index built from a MaxMind DB."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from fastedge.geo.lookup import GeoIndexError, Location, build_index
from fastedge.testing.dns import PLACES, write_geo_db

NETWORKS = {
    "81.2.69.0/24": PLACES["london"],
    "203.0.113.0/25": PLACES["tokyo"],
    "2001:db8:1::/48": PLACES["new-york"],
}


class BuildTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = write_geo_db(os.path.abspath(self.mktemp()), NETWORKS)

    def test_locates_known_networks(self) -> None:
        """IPv4 and IPv6 addresses map to their network's coordinates,
        country and continent, with the network's prefix length."""
        index = build_index(self.path)
        self.addCleanup(index.close)
        self.assertEqual(index.locate("81.2.69.142"), (Location(51.5072, -0.1276, "GB", "EU"), 24))
        self.assertEqual(index.locate("203.0.113.5"), (Location(35.6762, 139.6503, "JP", "AS"), 25))
        location, prefix = index.locate("2001:db8:1:2::9")
        self.assertEqual((location.country if location else None, prefix), ("US", 48))

    def test_unknown_address(self) -> None:
        """An address in no network has no location (and a prefix that
        covers the empty space around it)."""
        index = build_index(self.path)
        self.addCleanup(index.close)
        location, prefix = index.locate("127.0.0.1")
        self.assertIsNone(location)
        self.assertGreater(prefix, 0)

    def test_counts_networks(self) -> None:
        """Every network with data is counted once, and the build is timed."""
        index = build_index(self.path)
        self.addCleanup(index.close)
        self.assertEqual(index.networks, 3)
        self.assertGreaterEqual(index.build_seconds, 0.0)
        self.assertEqual(index.database_type, "GeoIP2-City")

    def test_ipv4_database_and_ipv6_client(self) -> None:
        """An IPv4-only database answers IPv6 clients as unknown, not with an error."""
        path = write_geo_db(
            os.path.abspath(self.mktemp()),
            {"81.2.69.0/24": PLACES["london"]},
            ip_version=4,
        )
        index = build_index(path)
        self.addCleanup(index.close)
        self.assertEqual(index.locate("2001:db8::1"), (None, 0))
        self.assertEqual(index.locate("81.2.69.1")[0], Location(51.5072, -0.1276, "GB", "EU"))

    def test_not_an_address(self) -> None:
        """A string that is not an address is a ValueError (callers decide)."""
        index = build_index(self.path)
        self.addCleanup(index.close)
        self.assertRaises(ValueError, index.locate, "not-an-ip")

    def test_file_replaced_in_place(self) -> None:
        """The index is a private copy: rewriting the file under it changes
        nothing until a rebuild."""
        index = build_index(self.path)
        self.addCleanup(index.close)
        with open(self.path, "wb") as f:
            f.write(b"\0" * 100)
        self.assertEqual(index.locate("81.2.69.142")[1], 24)


class BadFileTests(SynchronousTestCase):
    def test_missing_file(self) -> None:
        """A missing file is a GeoIndexError naming the path and the reason."""
        with self.assertRaises(GeoIndexError) as cm:
            build_index("/nonexistent/GeoLite2-City.mmdb")
        self.assertIn("/nonexistent/GeoLite2-City.mmdb", str(cm.exception))
        self.assertIn("No such file", str(cm.exception))

    def test_garbage_file(self) -> None:
        """A file that is not a MaxMind DB is refused."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(os.urandom(4096))
        with self.assertRaises(GeoIndexError) as cm:
            build_index(path)
        self.assertIn("not a MaxMind DB", str(cm.exception))

    def test_truncated_file(self) -> None:
        """A database cut short (a half-copied download) is refused."""
        good = write_geo_db(os.path.abspath(self.mktemp()), NETWORKS)
        with open(good, "rb") as f:
            data = f.read()
        for cut in (len(data) // 3, len(data) // 2, len(data) - 40):
            path = self.mktemp()
            with open(path, "wb") as f:
                f.write(data[:cut])
            self.assertRaises(GeoIndexError, build_index, path)

    def test_corrupt_tree(self) -> None:
        """A search tree pointing outside the file is refused."""
        good = write_geo_db(os.path.abspath(self.mktemp()), NETWORKS)
        with open(good, "rb") as f:
            data = bytearray(f.read())
        data[0:6] = b"\xff" * 6
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(bytes(data))
        self.assertRaises(GeoIndexError, build_index, path)
