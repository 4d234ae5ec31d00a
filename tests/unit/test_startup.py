"""The start-up checks and report (``fastedge.startup``) on their own; the
whole of it runs in a real twistd in ``tests.integration.test_twistd``."""

from __future__ import annotations

import dataclasses
import socket

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from fastedge.config import load_config
from fastedge.startup import ListenerUnavailable, StartupReport, check_listeners


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


class CheckListenersTests(SynchronousTestCase):
    def config(self, http: str, https: str, mesh: str, dns_port: int = 0) -> object:
        cfg = load_config(None, {"http.endpoint": http, "tls.endpoint": https, "mesh.endpoint": mesh})
        return dataclasses.replace(cfg, dns=dataclasses.replace(cfg.dns, port=dns_port))

    def test_free_ports_pass(self) -> None:
        """Free ports (and port 0) pass, and are free again afterwards."""
        port = _free_port()
        cfg = self.config("tcp:{}:interface=127.0.0.1".format(port), "tcp:0", "tcp:0")
        check_listeners(cfg)  # type: ignore[arg-type]
        again = socket.socket()
        self.addCleanup(again.close)
        again.bind(("127.0.0.1", port))

    def test_two_keys_one_port(self) -> None:
        """Two listeners configured on the same port: the second key is named."""
        port = _free_port()
        endpoint = "tcp:{}:interface=127.0.0.1".format(port)
        with self.assertRaises(ListenerUnavailable) as cm:
            check_listeners(self.config(endpoint, "tcp:0", endpoint))  # type: ignore[arg-type]
        self.assertEqual(str(cm.exception), "mesh.endpoint {}: address already in use".format(endpoint))


class ReadyTests(SynchronousTestCase):
    def test_ready_after_every_child(self) -> None:
        """``node ready`` is logged once every readiness Deferred has fired,
        with the time since start on the node's clock."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        clock = Clock()
        report = StartupReport(load_config(None, {}), {})
        later: Deferred[None] = Deferred()
        report.when_ready([succeed(None), later], 0.0, clock)
        self.assertEqual([e for e in events if "node ready" in e["log_format"]], [])
        clock.advance(1.5)
        later.callback(None)
        (ready,) = [e for e in events if "node ready" in e["log_format"]]
        self.assertEqual(ready["seconds"], 1.5)

    def test_not_ready(self) -> None:
        """A child that fails to become ready: an error naming how many and
        why, and no ``node ready``."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        report = StartupReport(load_config(None, {}), {})
        report.when_ready([succeed(None), fail(RuntimeError("database unreachable"))], 0.0, Clock())
        self.assertEqual([e for e in events if "node ready" in e["log_format"]], [])
        (error,) = [e for e in events if "not ready" in e["log_format"]]
        self.assertEqual((error["count"], error["reasons"]), (1, ["database unreachable"]))


class SummaryTests(SynchronousTestCase):
    def test_postgresql_without_credentials(self) -> None:
        """With PostgreSQL, the store line names the primaries and the
        replica by host, port, database and user; never a password."""
        from twisted.application.service import MultiService

        cfg = load_config(
            None,
            {
                "store.backend": "postgresql",
                "store.postgresql.primaries": [
                    "host=db1.example port=5432 dbname=fe user=fe password=hunter2",
                    "postgresql://fe:hunter2@db2.example:5433/fe",
                ],
                "store.postgresql.replica": "host=127.0.0.1 port=5432 dbname=fe user=fe password=hunter2",
            },
        )
        lines = list(StartupReport(cfg, {}).lines(MultiService()))
        (store,) = [(fmt, fields) for fmt, fields in lines if fmt.startswith("store ")]
        text = store[0].format(**store[1])
        self.assertEqual(
            text,
            "store postgresql: primaries host=db1.example port=5432 dbname=fe user=fe,"
            " host=db2.example port=5433 dbname=fe user=fe, replica host=127.0.0.1 port=5432 dbname=fe user=fe",
        )
        self.assertNotIn("hunter2", repr(lines))

    def test_mongodb_without_credentials(self) -> None:
        """With MongoDB, the store line names the replica set's hosts, the
        local member and the database; never a user or password."""
        from twisted.application.service import MultiService

        cfg = load_config(
            None,
            {
                "store.backend": "mongodb",
                "store.mongodb.uri": "mongodb://fe:hunter2@db1.example:27017,db2.example:27018/?replicaSet=rs0",
                "store.mongodb.nearest_uri": "mongodb://fe:hunter2@127.0.0.1:27017/",
            },
        )
        lines = list(StartupReport(cfg, {}).lines(MultiService()))
        (store,) = [(fmt, fields) for fmt, fields in lines if fmt.startswith("store ")]
        self.assertEqual(
            store[0].format(**store[1]),
            "store mongodb: replica set mongodb://db1.example:27017,db2.example:27018/?replicaSet=rs0,"
            " local member mongodb://127.0.0.1:27017/, database fastedge",
        )
        self.assertNotIn("hunter2", repr(lines))
