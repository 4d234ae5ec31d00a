"""The layout of a local cluster and the config files it writes
(``fastedge.cluster.plan``)."""

from __future__ import annotations

import os
import socket
import tomllib

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fastedge.cluster.plan import Origin, PlanError, node_config, parse_deployment, plan_cluster, to_toml
from fastedge.cluster.processes import ListenCheck, first_taken
from fastedge.config import load_config

#: Every character TOML can hold (no lone surrogates).
_CHARS = st.characters(blacklist_categories=("Cs",))


class PlanTests(SynchronousTestCase):
    def test_default_layout(self) -> None:
        """Two deployments of three nodes, one address each, primaries on
        their own addresses, every address distinct."""
        plan = plan_cluster("/tmp/c")
        self.assertEqual([d.name for d in plan.deployments], ["global", "eu"])
        self.assertEqual([n.address for n in plan.nodes], ["127.0.0.{}".format(i) for i in (11, 12, 13, 21, 22, 23)])
        self.assertEqual([d.db_address for d in plan.deployments], ["127.0.0.10", "127.0.0.20"])
        self.assertEqual(plan.nodes[0].node_id, "global-new-york")
        pairs = [(a, p) for a, p, _ in plan.listeners()]
        self.assertEqual(len(pairs), len(set(pairs)))

    def test_bad_layouts(self) -> None:
        """A prefix outside 127/8, an unknown city, a bad name or too many
        nodes is refused with a line naming it."""
        cases = [
            ({"prefix": "10.0.0"}, "--prefix"),
            ({"prefix": "127.0"}, "--prefix"),
            ({"deployments": [("eu", ("atlantis",))]}, "unknown city 'atlantis'"),
            ({"deployments": [("EU!", ("paris",))]}, "deployment name 'EU!'"),
            ({"deployments": [("eu", ("paris",) * 10)]}, "1 to 9 nodes"),
            ({"deployments": [("eu", ("paris", "paris"))]}, "twice"),
            ({"deployments": [("eu", ("paris",)), ("eu", ("madrid",))]}, "given twice"),
        ]
        for kw, text in cases:
            with self.assertRaises(PlanError, msg=repr(kw)) as caught:
                plan_cluster("/tmp/c", **kw)  # type: ignore[arg-type]
            self.assertIn(text, str(caught.exception))
        with self.assertRaises(PlanError):
            parse_deployment("eu")
        self.assertEqual(parse_deployment("eu=paris, madrid"), ("eu", ("paris", "madrid")))

    def test_configs_load(self) -> None:
        """Every node's file is a valid node config: its own address on
        every listener, the deployment's database (primary first, then every
        standby), its own standby for reads, the deployment's session key,
        and every other node as a seed."""
        directory = self.mktemp()
        plan = plan_cluster(directory, prefix="127.9.9")
        origin = Origin("http://127.9.9.2:9000", os.path.join(directory, "secret"))
        for node in plan.nodes:
            doc = node_config(plan, node, media_tenants={"T1": "eu", "T2": "global"}, origin=origin, mesh_relayed=True)
            path = os.path.join(directory, node.node_id + ".toml")
            os.makedirs(directory, exist_ok=True)
            with open(path, "w") as f:
                f.write(to_toml(doc))
            cfg = load_config(path)
            deployment = plan.deployment(node.deployment)
            self.assertEqual(cfg.node.addresses, (node.address,))
            self.assertEqual(cfg.dns.interface, node.address)
            self.assertEqual(cfg.mesh.advertise, node.mesh_address)
            self.assertEqual(
                cfg.store.postgresql.primaries,
                (deployment.primary_dsn(),) + tuple(n.standby_dsn() for n in deployment.nodes),
            )
            self.assertEqual(cfg.store.postgresql.replica, node.standby_dsn())
            self.assertEqual(cfg.api.secret_file, plan.session_key_path(node.deployment))
            self.assertEqual(len(cfg.mesh.seeds), len(plan.nodes) - 1)
            self.assertEqual(sorted(z.deployment for z in cfg.dns.zones), ["eu", "global"])
            self.assertEqual(list(cfg.cdn.tenants), ["T1" if node.deployment == "eu" else "T2"])

    @given(
        st.dictionaries(
            st.text(_CHARS, min_size=1, max_size=8),
            st.one_of(
                st.text(_CHARS, max_size=20),
                st.integers(-(2**40), 2**40),
                st.booleans(),
                st.lists(st.text(_CHARS, max_size=5)),
            ),
            max_size=5,
        )
    )
    def test_toml_round_trip(self, table: dict[str, object]) -> None:
        """What :func:`to_toml` writes reads back the same (strings with any
        character included)."""
        doc = {"section": table, "outer": {"inner": table}, "list": [{"a": 1}, {"a": 2}]}
        self.assertEqual(tomllib.loads(to_toml(doc)), doc)


class ListenCheckTests(SynchronousTestCase):
    def test_taken(self) -> None:
        """A port something listens on is named, with the reason; free ones
        pass."""
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        self.addCleanup(s.close)
        port = s.getsockname()[1]
        taken = first_taken([ListenCheck("127.0.0.1", port, "HTTP of a")])
        self.assertIsNotNone(taken)
        assert taken is not None
        self.assertEqual((taken[0].what, taken[1]), ("HTTP of a", "in use"))
        self.assertIsNone(first_taken([ListenCheck("127.0.0.1", 0, "any")]))
