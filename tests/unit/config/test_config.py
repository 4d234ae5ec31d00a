"""The configuration loader: defaults, validation, overrides."""

from __future__ import annotations

import os
import string
import typing

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.config import ConfigError, EdgeConfig, load_config, parse_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DEFAULT_FILE = os.path.join(REPO, "etc", "fastedge.toml")


class DefaultsTests(SynchronousTestCase):
    def test_file_documents_the_defaults(self) -> None:
        """etc/fastedge.toml parses to exactly the built-in defaults, so the
        documented file and the code cannot drift apart."""
        self.assertEqual(load_config(DEFAULT_FILE), load_config(None))

    def test_file_lists_every_key(self) -> None:
        """Every key of every section appears in etc/fastedge.toml."""
        import dataclasses
        import tomllib

        with open(DEFAULT_FILE, "rb") as f:
            raw = tomllib.load(f)

        def walk(cls: type, table: dict, prefix: str) -> None:  # type: ignore[type-arg]
            hints = typing.get_type_hints(cls)
            for field in dataclasses.fields(cls):  # type: ignore[arg-type]
                if typing.get_origin(hints[field.name]) is dict:
                    # Tables keyed by name ([cdn.origins.NAME]) are shown as
                    # commented examples: there is no default entry.
                    continue
                self.assertIn(field.name, table, prefix + field.name)
                if dataclasses.is_dataclass(hints[field.name]):
                    walk(hints[field.name], table[field.name], prefix + field.name + ".")

        walk(EdgeConfig, raw, "")

    def test_derived_values(self) -> None:
        """An empty node id comes from the host name; paths default under the
        data directory, made absolute."""
        cfg = parse_config('[node]\ndata_dir = "rel/dir"\n')
        self.assertTrue(cfg.node.id)
        self.assertEqual(cfg.node.data_dir, os.path.abspath("rel/dir"))
        self.assertEqual(cfg.store.sqlite_path, os.path.join(os.path.abspath("rel/dir"), "fastedge.sqlite3"))
        self.assertEqual(cfg.api.secret_file, os.path.join(os.path.abspath("rel/dir"), "session.key"))


class ValidationTests(SynchronousTestCase):
    def assertRefused(self, text: str, message: str) -> None:
        with self.assertRaises(ConfigError) as cm:
            parse_config(text)
        self.assertEqual(str(cm.exception), message)

    def test_unknown_section(self) -> None:
        """An unknown section is named."""
        self.assertRefused("[dsn]\nx = 1\n", "dsn: unknown section")

    def test_unknown_key(self) -> None:
        """An unknown key is named with its section."""
        self.assertRefused("[http]\nport = 8080\n", "http.port: unknown key")
        self.assertRefused("[api.credits]\nfree = 1\n", "api.credits.free: unknown key")

    def test_wrong_types(self) -> None:
        """Wrong types are named, with what was expected."""
        self.assertRefused('[http]\nmax_body_bytes = "big"\n', "http.max_body_bytes: must be an integer, not 'big'")
        self.assertRefused("[api]\ncookie_secure = 1\n", "api.cookie_secure: must be true or false, not 1")
        self.assertRefused("[store]\nthreads = true\n", "store.threads: must be an integer, not True")
        self.assertRefused("[node]\nregion = 5\n", "node.region: must be a string, not 5")
        self.assertRefused("http = 5\n", "http: must be a table ([http])")

    def test_impossible_values(self) -> None:
        """Values out of range are refused with the reason."""
        self.assertRefused("[store]\nthreads = 0\n", "store.threads: must be greater than 0")
        self.assertRefused(
            '[store]\nbackend = "oracle"\n', "store.backend: must be one of 'sqlite', 'postgresql', 'mongodb'"
        )
        self.assertRefused(
            '[node]\nid = "Bad Id"\n', "node.id: must be a lower-case DNS label (a-z, 0-9, '-'; at most 63 characters)"
        )
        self.assertRefused("[api]\npage_size = 500\n", "api.page_size: must not exceed api.max_page_size")

    def test_spam_settings(self) -> None:
        """Spam check names, their order and the timeout are checked by key."""
        self.assertEqual(
            parse_config('[spam]\nchecks = ["held-links", "heuristic"]\n').spam.checks, ("held-links", "heuristic")
        )
        self.assertRefused(
            '[spam]\nchecks = ["Held Links"]\n',
            "spam.checks: 'Held Links' is not a check name (lower-case letters, digits, '-', '_', '.')",
        )
        self.assertRefused('[spam]\nchecks = ["heuristic", "heuristic"]\n', "spam.checks: names a check twice")
        self.assertRefused("[spam]\ntimeout_seconds = 0\n", "spam.timeout_seconds: must be from 0.001 to 60.0")
        self.assertRefused('[spam]\nchecks = "heuristic"\n', "spam.checks: must be a list")

    def test_postgresql_settings(self) -> None:
        """The PostgreSQL backend needs at least one primary candidate; each
        connection string must parse, and a bad one is refused without
        quoting it (it may hold a password)."""
        self.assertRefused(
            '[store]\nbackend = "postgresql"\n',
            "store.postgresql.primaries: must list at least one server when store.backend is 'postgresql'",
        )
        with self.assertRaises(ConfigError) as cm:
            parse_config('[store.postgresql]\nprimaries = ["host=db1 password=se cret"]\n')
        self.assertEqual(
            str(cm.exception), "store.postgresql.primaries: [0] not a libpq connection string or postgresql:// URI"
        )
        self.assertNotIn("cret", str(cm.exception))
        self.assertRefused('[store.postgresql]\nprimaries = "host=db1"\n', "store.postgresql.primaries: must be a list")
        self.assertRefused(
            '[store.postgresql]\nprimaries = [""]\n', "store.postgresql.primaries: [0] must not be empty"
        )
        self.assertRefused(
            "[store.postgresql]\nconnect_timeout_seconds = 1\n",
            "store.postgresql.connect_timeout_seconds: must be at least 2",
        )
        self.assertRefused(
            "[store.postgresql]\ntoken_wait_seconds = -1\n", "store.postgresql.token_wait_seconds: must be 0 or greater"
        )
        self.assertRefused(
            "[store.postgresql]\ntoken_poll_seconds = 0\n",
            "store.postgresql.token_poll_seconds: must be greater than 0",
        )
        self.assertRefused("[store.postgresql]\nreplicas = []\n", "store.postgresql.replicas: unknown key")
        cfg = parse_config(
            '[store]\nbackend = "postgresql"\n[store.postgresql]\n'
            'primaries = ["host=db1 dbname=fe", "postgresql://fe@db2/fe"]\nreplica = "host=127.0.0.1 port=5433"\n'
        )
        self.assertEqual(cfg.store.postgresql.primaries, ("host=db1 dbname=fe", "postgresql://fe@db2/fe"))
        self.assertEqual(cfg.store.postgresql.replica, "host=127.0.0.1 port=5433")

    def test_mongodb_settings(self) -> None:
        """The MongoDB backend needs the replica set's URI; URIs must parse
        (``mongodb+srv://`` is refused: txmongo reads no SRV records) and a
        bad one is refused without quoting it; the write concern is
        ``majority`` or a member count; the URIs stay out of ``repr``."""
        self.assertRefused(
            '[store]\nbackend = "mongodb"\n',
            "store.mongodb.uri: must name the replica set when store.backend is 'mongodb'",
        )
        with self.assertRaises(ConfigError) as cm:
            parse_config('[store.mongodb]\nuri = "mongodb://fe:se%cret@"\n')
        self.assertEqual(str(cm.exception), "store.mongodb.uri: not a valid mongodb:// URI")
        self.assertNotIn("cret", str(cm.exception))
        self.assertRefused(
            '[store.mongodb]\nnearest_uri = "mongodb+srv://db.example"\n',
            "store.mongodb.nearest_uri: mongodb+srv:// is not supported (txmongo resolves no SRV records): "
            "list the members",
        )
        self.assertRefused(
            '[store.mongodb]\nuri = "postgresql://db1"\n', "store.mongodb.uri: not a valid mongodb:// URI"
        )
        self.assertRefused(
            '[store.mongodb]\nuri = "mongodb://db1/?tls=true&tlsCAFile=/nonexistent/ca.pem"\n',
            "store.mongodb.uri: names a TLS file that cannot be read",
        )
        self.assertRefused(
            '[store.mongodb]\nwrite_concern = "all"\n',
            "store.mongodb.write_concern: must be 'majority' or a number of members (1 or more)",
        )
        self.assertRefused(
            '[store.mongodb]\ndatabase = "a.b"\n',
            "store.mongodb.database: must be a MongoDB database name (not empty; no '.', '/', '\\', space, "
            "'\"' or '$')",
        )
        self.assertRefused(
            "[store.mongodb]\ntoken_wait_seconds = -1\n", "store.mongodb.token_wait_seconds: must be 0 or greater"
        )
        self.assertRefused("[store.mongodb]\npool_size = 0\n", "store.mongodb.pool_size: must be greater than 0")
        cfg = parse_config(
            '[store]\nbackend = "mongodb"\n[store.mongodb]\n'
            'uri = "mongodb://fe:hunter2@db1:27017,db2:27017/?replicaSet=rs0"\n'
            'nearest_uri = "mongodb://127.0.0.1:27017/"\nwrite_concern = "2"\n'
        )
        self.assertEqual(cfg.store.mongodb.uri, "mongodb://fe:hunter2@db1:27017,db2:27017/?replicaSet=rs0")
        self.assertEqual(cfg.store.mongodb.write_concern, "2")
        self.assertNotIn("hunter2", repr(cfg))

    def test_mesh_settings(self) -> None:
        """Seeds and the advertised address are host:port (IPv6 in brackets);
        the detector's timeouts must grow heartbeat < suspect < dead; the
        certificate files default under the data directory."""
        cfg = parse_config(
            '[node]\ndata_dir = "/srv/fe"\n[mesh]\nseeds = ["10.0.0.2:7946", "[fd00::2]:7946", "edge-1.example:7946"]\n'
        )
        self.assertEqual(cfg.mesh.seeds, ("10.0.0.2:7946", "[fd00::2]:7946", "edge-1.example:7946"))
        self.assertEqual(
            (cfg.mesh.ca_file, cfg.mesh.cert_file, cfg.mesh.key_file),
            ("/srv/fe/mesh/ca.pem", "/srv/fe/mesh/node.pem", "/srv/fe/mesh/node.key"),
        )
        self.assertRefused('[mesh]\nseeds = ["10.0.0.2"]\n', "mesh.seeds: [0] must be host:port")
        self.assertRefused(
            '[mesh]\nseeds = ["fd00::2:7946"]\n', "mesh.seeds: [0] an IPv6 host must be in brackets: [::1]:7946"
        )
        self.assertRefused('[mesh]\nseeds = ["[nope]:7946"]\n', "mesh.seeds: [0] 'nope' is not an IPv6 address")
        self.assertRefused('[mesh]\nseeds = ["h:0"]\n', "mesh.seeds: [0] the port must be from 1 to 65535")
        self.assertRefused('[mesh]\nseeds = [""]\n', "mesh.seeds: [0] must not be empty")
        self.assertRefused('[mesh]\nadvertise = "a b:1"\n', "mesh.advertise: 'a b' is not a host name or address")
        self.assertRefused(
            "[mesh]\nsuspect_seconds = 0.4\n", "mesh.suspect_seconds: must be longer than mesh.heartbeat_seconds"
        )
        self.assertRefused(
            "[mesh]\ndead_seconds = 1.0\n", "mesh.dead_seconds: must be longer than mesh.suspect_seconds"
        )
        self.assertRefused(
            "[mesh]\nreconnect_max_seconds = 0.05\n",
            "mesh.reconnect_max_seconds: must not be shorter than mesh.reconnect_initial_seconds",
        )
        self.assertRefused("[mesh]\nmax_message_bytes = 1000\n", "mesh.max_message_bytes: must be at least 65536")
        with self.assertRaises(ConfigError) as cm:
            parse_config('[mesh]\nendpoint = "tcp:nope"\n')
        self.assertTrue(str(cm.exception).startswith("mesh.endpoint: not a server endpoint string"))

    def test_bad_endpoint(self) -> None:
        """An endpoint string Twisted cannot parse is refused at load time."""
        with self.assertRaises(ConfigError) as cm:
            parse_config('[http]\nendpoint = "tcp:notaport"\n')
        self.assertTrue(str(cm.exception).startswith("http.endpoint: not a server endpoint string"))

    def test_bad_toml(self) -> None:
        """A syntax error names the file."""
        with self.assertRaises(ConfigError) as cm:
            parse_config("[http\n", source="x.toml")
        self.assertTrue(str(cm.exception).startswith("x.toml: not valid TOML"))

    def test_unreadable_file(self) -> None:
        """A missing file is a config error naming it."""
        with self.assertRaises(ConfigError) as cm:
            load_config("/nonexistent/fastedge.toml")
        self.assertIn("/nonexistent/fastedge.toml: cannot read", str(cm.exception))

    def test_overrides(self) -> None:
        """Command-line overrides win over the file and are validated too."""
        cfg = parse_config('[node]\nid = "file"\n', overrides={"node.id": "cli", "http.endpoint": "tcp:0"})
        self.assertEqual((cfg.node.id, cfg.http.endpoint), ("cli", "tcp:0"))
        with self.assertRaises(ConfigError):
            parse_config("", overrides={"node.id": "NOT OK"})


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(
        section=st.sampled_from(["node", "http", "store", "api", "api.credits", "mesh", "nosuch"]),
        key=st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=20),
        value=st.one_of(
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.floats(allow_nan=False, allow_infinity=False),
            st.booleans(),
            st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=30),
        ),
    )
    def test_any_value_loads_or_names_the_key(self, section: str, key: str, value: object) -> None:
        """Whatever single key and value a file sets, loading either succeeds or
        fails with a ConfigError that names that section (never another error)."""
        import json

        text = "[{}]\n{} = {}\n".format(
            section, key, json.dumps(value, ensure_ascii=False) if not isinstance(value, bool) else str(value).lower()
        )
        try:
            parse_config(text)
        except ConfigError as e:
            self.assertTrue(str(e).startswith(section.split(".")[0]), str(e))
