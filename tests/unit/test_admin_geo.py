"""``fastedge-admin geo rebuild``."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from fastedge.admin import main


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
        with self.assertRaises(SystemExit) as cm:
            main(["--data-dir", os.path.abspath(self.mktemp()), "geo", "rebuild"])
        self.assertEqual(cm.exception.code, 1)
