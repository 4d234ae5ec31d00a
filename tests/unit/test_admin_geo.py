"""``fastedge-admin geo rebuild`` and ``geo lookup``."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stdout

from twisted.trial.unittest import SynchronousTestCase

from fastedge.admin import main
from fastedge.testing.dns import write_geo_db


class GeoRebuildTests(SynchronousTestCase):
    def test_leaves_the_request(self) -> None:
        """The command creates the request file the geo child watches."""
        data_dir = os.path.abspath(self.mktemp())
        config = self.mktemp()
        with open(config, "w") as f:
            f.write('[geo]\ndatabase = "/srv/GeoLite2-City.mmdb"\n')
        main(["--config", config, "--data-dir", data_dir, "geo", "rebuild"])
        self.assertTrue(os.path.exists(os.path.join(data_dir, "geo-rebuild.request")))

    def test_without_database(self) -> None:
        """With no geo.database there is nothing to rebuild: exit status 1."""
        config = self.mktemp()
        with open(config, "w") as f:
            f.write("[geo]\n")
        with self.assertRaises(SystemExit) as cm:
            main(["--config", config, "--data-dir", os.path.abspath(self.mktemp()), "geo", "rebuild"])
        self.assertEqual(cm.exception.code, 1)


class GeoLookupTests(SynchronousTestCase):
    """``fastedge-admin geo lookup ADDRESS`` reads a real MaxMind DB."""

    def setUp(self) -> None:
        self.db = write_geo_db(
            os.path.abspath(self.mktemp()),
            {"81.2.69.0/24": (51.5, -0.12, "GB", "EU"), "2a02:c7f::/32": (52.4, 4.9, "NL", "EU")},
        )
        self.config = self.mktemp()
        with open(self.config, "w") as f:
            f.write('[geo]\ndatabase = "{}"\n'.format(self.db))
        self.data_dir = os.path.abspath(self.mktemp())

    def lookup(self, address: str) -> str:
        out = io.StringIO()
        with redirect_stdout(out):
            main(["--config", self.config, "--data-dir", self.data_dir, "geo", "lookup", address])
        return out.getvalue()

    def test_city_record_and_node_index(self) -> None:
        """geoip2's record and the node's own answer, both printed."""
        out = self.lookup("81.2.69.160")
        self.assertIn("network:     81.2.69.0/24", out)
        self.assertIn("country:     GB", out)
        self.assertIn("coordinates: 51.5, -0.12", out)
        self.assertIn("node index:  Location(latitude=51.5, longitude=-0.12, country='GB', continent='EU')", out)
        self.assertIn("country:     NL", self.lookup("2a02:c7f:1::1"))

    def test_unknown_address(self) -> None:
        out = self.lookup("192.0.2.1")
        self.assertIn("192.0.2.1: not in", out)
        self.assertIn("node index:  no location", out)

    def test_bad_address(self) -> None:
        with self.assertRaises(SystemExit) as cm:
            self.lookup("not-an-ip")
        self.assertEqual(cm.exception.code, 2)

    def test_without_database(self) -> None:
        config = self.mktemp()
        with open(config, "w") as f:
            f.write("[geo]\n")
        with self.assertRaises(SystemExit) as cm:
            main(["--config", config, "--data-dir", self.data_dir, "geo", "lookup", "192.0.2.1"])
        self.assertEqual(cm.exception.code, 1)
