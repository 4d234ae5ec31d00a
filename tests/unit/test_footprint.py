"""A node imports what its config uses: the default config's node does not
carry PostgreSQL's driver or the HTTP client stack, and no node carries
botocore.

Each check runs in a fresh interpreter (the test process itself has
imported everything), builds the node's service tree from a config, and
reads ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

#: Modules a node loads only when its config asks for what needs them.
HEAVY = {
    "psycopg": "store.backend = postgresql",
    "psycopg_pool": "store.backend = postgresql",
    "txmongo": "store.backend = mongodb",
    "pymongo": "store.backend = mongodb (txmongo's BSON and errors)",
    "botocore": "never: the node signs S3 requests itself (fastedge.cdn.sigv4)",
    "sqlalchemy": "never: the SQL backends' statements are our own text (fastedge.store.db)",
    "urllib3": "botocore's",
    "treq": "the CDN's origin client",
    "twisted.web.client": "the CDN's origin client",
    "twisted.web._newclient": "the CDN's origin client (its ResponseDone, named when a body ends)",
    "maxminddb": "geo.database (the GeoIP index)",
    "puremagic": "the first media upload",
    "jinja2": "the first embed page rendered",
    "markdown_it": "the first comment rendered (a write)",
    "nh3": "the first comment rendered (a write)",
    "xml.etree.ElementTree": "an S3 origin's first listing (a prefix purge)",
}

_PROBE = """
import json, sys
heavy = set(json.loads(sys.stdin.read()))
from twisted.internet.testing import MemoryReactorClock
from fastedge.tap import Options, makeService
options = Options()
options.parseOptions(sys.argv[1:])
makeService(options, reactor=MemoryReactorClock())
print(json.dumps(sorted(m for m in sys.modules if m in heavy)))
"""


def loaded_after_make_service(argv: list[str], modules: list[str] | None = None) -> list[str]:
    """Which of ``modules`` (by default the :data:`HEAVY` ones) a fresh
    interpreter holds after importing ``fastedge.tap`` and building the
    node from ``argv``'s options."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        input=json.dumps(sorted(HEAVY) if modules is None else modules),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if out.returncode != 0:
        raise AssertionError("the probe failed: " + out.stderr[-2000:])
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


class FootprintTests(SynchronousTestCase):
    def test_default_config_imports_no_heavy_module(self) -> None:
        """The default config (embedded store, no S3 origin) builds a node
        without importing psycopg, txmongo, pymongo, botocore, urllib3, treq,
        ``twisted.web.client`` (nor its ``_newclient``), maxminddb, puremagic, jinja2, markdown-it,
        nh3 or ElementTree."""
        data_dir = os.path.abspath(self.mktemp())
        loaded = loaded_after_make_service(["--data-dir", data_dir])
        self.assertEqual(loaded, [], {m: HEAVY[m] for m in loaded})

    def test_a_mongodb_node_imports_no_sql_layer(self) -> None:
        """A node on the MongoDB backend builds without importing the SQL
        backends (fastedge.store.sql, sqlite3, psycopg)."""
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        path = os.path.join(data_dir, "node.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write('[store]\nbackend = "mongodb"\n[store.mongodb]\nuri = "mongodb://127.0.0.1:9/?replicaSet=rs0"\n')
        loaded = loaded_after_make_service(
            ["--config", path, "--data-dir", data_dir], ["fastedge.store.sql", "sqlite3", "psycopg"]
        )
        self.assertEqual(loaded, [])

    def test_an_s3_origin_brings_its_client_not_botocore(self) -> None:
        """With an S3 origin configured the HTTP client is imported (so the
        check above can see modules when they are there), botocore is not:
        the node's own SigV4 signer needs none of its 8 MB."""
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        path = os.path.join(data_dir, "node.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                '[cdn.origins.default]\nendpoint = "http://127.0.0.1:9"\nregion = "us-east-1"\n'
                'access_key_id = "AKIDEXAMPLE"\nsecret_access_key = "secret"\n'
            )
        loaded = loaded_after_make_service(["--config", path, "--data-dir", data_dir])
        self.assertTrue({"treq", "twisted.web.client"} <= set(loaded), loaded)
        self.assertNotIn("botocore", loaded)
