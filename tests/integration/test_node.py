"""A whole node on a real loopback socket, with the real reactor, threads
and SQLite file, driven by a real HTTP client and the real admin command."""

from __future__ import annotations

import json
import os
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from fastedge.tap import Options, makeService
from tests.support.nodes import loopback_http_client

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def admin(*args: str):  # type: ignore[no-untyped-def]
    """Run fastedge-admin in a child process; fires with (out, err, code)."""
    env = dict(os.environ, PYTHONPATH=REPO)
    return getProcessOutputAndValue(sys.executable, ("-m", "fastedge.admin", *args), env=env, path=REPO)


class NodeTests(TestCase):
    @inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.data_dir = os.path.abspath(self.mktemp())
        options = Options()
        options.parseOptions(
            [
                "--data-dir",
                self.data_dir,
                "--http",
                "tcp:0:interface=127.0.0.1",
                "--mesh",
                "tcp:0:interface=127.0.0.1",
                "--node-id",
                "it-1",
                "--dns-port",
                "0",
                "--https",
                "tcp:0:interface=127.0.0.1",
            ]
        )
        self.node = makeService(options)
        self.node.privilegedStartService()
        self.node.startService()
        self.addCleanup(self.node.stopService)
        yield self.node.getServiceNamed("store").when_ready()
        listener = self.node.getServiceNamed("http").getServiceNamed("http")
        port = yield listener.when_listening()
        self.base = "http://127.0.0.1:{}".format(port.getHost().port)
        self.http = loopback_http_client(self, listener.factory)

    @inlineCallbacks
    def test_admin_post_read_manage(self):  # type: ignore[no-untyped-def]
        """fastedge-admin creates a tenant while the node runs; a comment
        posted over HTTP reads back with its cookie, and the tenant sees it
        with the printed API key."""
        out, err, code = yield admin("--data-dir", self.data_dir, "tenant", "create", "Acme", "--json")
        self.assertEqual(code, 0, err)
        created = json.loads(out)
        tenant, key = created["tenantId"], created["apiKey"]
        url = "{}/api/v1/{}/comments?urlId=https%3A%2F%2Facme.test%2Fp".format(self.base, tenant)
        posted = yield self.http.post(url, json={"text": "First!", "displayName": "Ann"})
        self.assertEqual(posted.code, 201)
        body = yield posted.json()
        cookie = posted.headers.getRawHeaders("set-cookie")[0].split(";")[0]
        read = yield self.http.get(url, headers={"cookie": cookie})
        page = yield read.json()
        self.assertEqual([(c["id"], c["isMine"]) for c in page["comments"]], [(body["comment"]["id"], True)])
        listed = yield self.http.get(
            self.base + "/api/v1/manage/comments?status=approved", headers={"authorization": "Bearer " + key}
        )
        self.assertEqual([c["text"] for c in (yield listed.json())["comments"]], ["First!"])

    @inlineCallbacks
    def test_health_and_metrics(self):  # type: ignore[no-untyped-def]
        """/healthz is 200 with every child running; /metrics speaks the
        Prometheus text format and counts the health check by route."""
        health = yield self.http.get(self.base + "/healthz")
        self.assertEqual(health.code, 200)
        doc = yield health.json()
        self.assertEqual(doc["nodeId"], "it-1")
        self.assertEqual(
            doc["children"],
            {
                "drain": {"running": True},
                "store": {"running": True},
                "geo": {"running": True},
                "mesh": {"running": True},
                "dns": {"running": True},
                "live": {"running": True},
                "cdn": {"running": True},
                "webhooks": {"running": True},
                "http": {"running": True},
            },
        )
        self.assertEqual(doc["mesh"], {"incarnation": 1, "peers": {"alive": 0, "suspect": 0, "dead": 0, "leaving": 0}})
        metrics = yield self.http.get(self.base + "/metrics")
        text = yield metrics.text()
        self.assertIn('fastedge_http_requests_total{code="200",method="GET",route="/healthz"} 1.0', text)
        self.assertIn("fastedge_store_call_duration_seconds_bucket", text)
        self.assertIn("fastedge_dns_ecs_queries_total 0.0", text)
        self.assertIn("fastedge_geo_index_age_seconds -1.0", text)
        self.assertTrue(metrics.headers.getRawHeaders("content-type")[0].startswith("text/plain; version="))
        openmetrics = yield self.http.get(self.base + "/metrics", headers={"accept": "application/openmetrics-text"})
        self.assertTrue(openmetrics.headers.getRawHeaders("content-type")[0].startswith("application/openmetrics-text"))
        self.assertTrue((yield openmetrics.text()).endswith("# EOF\n"))

    @inlineCallbacks
    def test_admin_bad_tenant(self):  # type: ignore[no-untyped-def]
        """fastedge-admin reports an unknown tenant clearly, exit status 1."""
        out, err, code = yield admin("--data-dir", self.data_dir, "tenant", "add-key", "nosuchtenant")
        self.assertEqual(code, 1)
        self.assertIn(b"tenant not found", err)


class OpsNetworksTests(TestCase):
    """A client outside ``http.ops_networks`` (here: loopback is left out)
    sees no operational endpoint and only the status of /healthz."""

    @inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write('[http]\nops_networks = ["10.0.0.0/8"]\n')
        options = Options()
        options.parseOptions(
            [
                "--config",
                config,
                "--data-dir",
                os.path.abspath(self.mktemp()),
                "--http",
                "tcp:0:interface=127.0.0.1",
                "--mesh",
                "tcp:0:interface=127.0.0.1",
                "--dns-port",
                "0",
                "--https",
                "tcp:0:interface=127.0.0.1",
            ]
        )
        self.node = makeService(options)
        self.node.privilegedStartService()
        self.node.startService()
        self.addCleanup(self.node.stopService)
        yield self.node.getServiceNamed("store").when_ready()
        listener = self.node.getServiceNamed("http").getServiceNamed("http")
        port = yield listener.when_listening()
        self.base = "http://127.0.0.1:{}".format(port.getHost().port)
        self.http = loopback_http_client(self, listener.factory)

    @inlineCallbacks
    def test_outsider(self):  # type: ignore[no-untyped-def]
        for path in ("/metrics", "/api/v1/mesh", "/status"):
            response = yield self.http.get(self.base + path)
            self.assertEqual(response.code, 404, path)
            self.assertEqual((yield response.json())["error"]["code"], "not_found")
        health = yield self.http.get(self.base + "/healthz")
        self.assertEqual(health.code, 200)
        self.assertEqual((yield health.json()), {"status": "ok"})
