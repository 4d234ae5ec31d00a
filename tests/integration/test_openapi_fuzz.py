"""docs/openapi.yaml against a whole running node, fuzzed with schemathesis.

tests/unit/test_openapi.py checks that the spec names every route the node
serves; this checks that it tells the truth about each of them. Every
operation is sent a few dozen generated requests, valid ones and invalid
ones, with all of schemathesis's checks: any 5xx, any undocumented status,
content type, header or body, a valid request refused or an invalid one
accepted fails the test, printing schemathesis's report (each failure with
a curl line that reproduces it).

The node runs in this process (:func:`tests.support.nodes.start_node`) on the
trial reactor, on a free loopback port, with two tenants, each with an API
key and media in a real S3 server. Schemathesis runs as a child process
(its CLI, as an operator would run it): its Hypothesis engine, threads and
global hooks stay out of trial's process, and the reactor keeps serving
while it runs. A traceback the node logs fails the test too (trial reports
logged errors). Generation is deterministic (fixed seed, no example
database), so a failure found once is found on every run.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Generator
from typing import Any

import yaml
from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.support.nodes import create_tenants, loopback_http_client, start_node
from tests.support.seaweed import shared_s3

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = os.path.join(REPO, "docs", "openapi.yaml")
#: Examples per operation in the fuzzing phase (the coverage phase adds its
#: boundary cases): a few dozen, which reach the refusals of this small
#: API, few enough to keep the run near half a minute on two shared cores.
MAX_EXAMPLES = 30
SEED = 20261206
#: Operations not fuzzed: a WebSocket upgrade is not a request/response
#: exchange (tests/integration/test_live.py speaks to /live as browsers do).
NOT_FUZZED = {("get", "/live")}


def node_config(endpoint: str, access_key: str, secret_key: str, tenants: list[tuple[str, str]]) -> str:
    """A node on a free loopback port with media for ``(tenant, prefix)``."""
    lines = [
        "[http]",
        'endpoint = "tcp:0:interface=127.0.0.1"',
        "[tls]",
        "enabled = false",
        "[api]",
        # The fuzzer writes far more often than a person: let it reach the
        # handlers (429 is documented, and tested in tests/unit/api).
        "writes_per_minute_per_session = 100000",
        "writes_per_minute_per_ip = 100000",
        # Endpoints the fuzzer registers name made-up hosts: nothing is
        # sent (no name is looked up outside loopback).
        "[webhooks]",
        "enabled = false",
        "[cdn.origins.default]",
        'endpoint = "{}"'.format(endpoint),
        'access_key_id = "{}"'.format(access_key),
        'secret_access_key = "{}"'.format(secret_key),
    ]
    for tenant_id, prefix in tenants:
        lines += ["[cdn.tenants.{}]".format(tenant_id), 'bucket = "media"', 'prefix = "{}"'.format(prefix)]
    return "\n".join(lines) + "\n"


def schemathesis_config(a: str, wfc_path: str) -> str:
    """The run's schemathesis.toml.

    Both tenants are identities of a Web Fuzzing Commons auth file and
    peers: every request of the tenant API is sent with A's key, and every
    object A reads is asked for again with B's key, which must not get it
    (``object_level_authorization``). A is the tenant of the public API's
    paths (a random tenant id only ever reads as 404). (Filters in one
    ``[[operations]]`` entry match if any matches: each names one thing.)
    """
    return "\n".join(
        [
            'hooks = "tests.integration.openapi_fuzz_hooks"',
            "[auth.wfc]",
            'path = "{}"'.format(wfc_path),
            'user = "A"',
            'peers = ["A", "B"]',
            "[parameters]",
            '"path.tenant" = "{}"'.format(a),
            "[[operations]]",
            'include-path = "/live"',
            "enabled = false",
            "[[operations]]",
            'include-path = "/status/events"',
            "max-stream-events = 1",
            "[[operations]]",
            'include-path = "/live/events"',
            "max-stream-events = 1",
            "[operations.parameters]",
            '"query.tenant" = "{}"'.format(a),
            # A Range the object cannot satisfy is a 416 (RFC 9110), not a
            # refusal of the request's form.
            "[[operations]]",
            'include-path = "/media/{tenant}/{key}"',
            "[operations.checks.positive_data_acceptance]",
            'expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "416", "429", "5xx"]',
            # A tenant has at most webhooks.max_endpoints_per_tenant endpoints.
            "[[operations]]",
            'include-name = "POST /api/v1/manage/webhooks"',
            "[operations.checks.positive_data_acceptance]",
            'expected-statuses = ["2xx", "401", "403", "404", "409"]',
            "",
        ]
    )


def wfc_auth(keys: dict[str, str]) -> str:
    """A Web Fuzzing Commons auth file: one identity per ``name -> API key``."""
    users = [
        {"name": name, "fixedHeaders": [{"name": "Authorization", "value": "Bearer " + key}]}
        for name, key in keys.items()
    ]
    return json.dumps({"auth": users})


def exercised(events_path: str) -> set[tuple[str, str]]:
    """``(method, path template)`` of every request in an NDJSON event report."""
    seen = set()
    with open(events_path, encoding="utf-8") as f:
        for line in f:
            event = json.loads(line)
            finished = event.get("ScenarioFinished")
            if finished is None:
                continue
            for case in finished["recorder"].get("cases", {}).values():
                seen.add((case["value"]["method"].lower(), case["value"]["path"]))
    return seen


class OpenApiFuzzTests(TestCase):
    """One bounded schemathesis run over every operation of the spec."""

    timeout = 600

    @defer.inlineCallbacks
    def setUp(self) -> Generator[Any, Any, None]:
        s3 = shared_s3()
        s3.create_bucket("media")
        run = os.urandom(4).hex()
        self.data_dir = os.path.abspath(self.mktemp())
        (self.a, self.a_key), (self.b, self.b_key) = create_tenants(
            os.path.join(self.data_dir, "fastedge.sqlite3"), ["A", "B"]
        )
        config = node_config(s3.endpoint, s3.access_key, s3.secret_key, [(self.a, run + "/a/"), (self.b, run + "/b/")])
        self.node = yield start_node(config, self.data_dir)
        self.addCleanup(self.node.stop)

    @defer.inlineCallbacks
    def key_ids(self, key: str) -> Generator[Any, Any, list[str]]:
        """The ids of the tenant's API keys, read with ``key``."""
        http = loopback_http_client(self)
        response = yield http.get(self.node.http + "/api/v1/manage/keys", headers={"authorization": "Bearer " + key})
        body = yield response.json()
        self.assertEqual(response.code, 200, body)
        return [k["id"] for k in body["keys"]]

    @defer.inlineCallbacks
    def test_every_operation(self) -> Generator[Any, Any, None]:
        """Every operation, fuzzed with all checks: any 5xx, undocumented
        status, content type or body, or any disagreement between what the
        spec allows and what the node accepts, or tenant B getting an object
        of tenant A, fails the test."""
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        wfc_path = os.path.join(work, "wfc-auth.json")
        with open(wfc_path, "w", encoding="utf-8") as f:
            f.write(wfc_auth({"A": self.a_key, "B": self.b_key}))
        config_path = os.path.join(work, "schemathesis.toml")
        with open(config_path, "w", encoding="utf-8") as f:
            f.write(schemathesis_config(self.a, wfc_path))
        # The fuzzer learns key ids from GET /keys; the hooks keep it from
        # revoking the two keys it runs with.
        keep = (yield self.key_ids(self.a_key)) + (yield self.key_ids(self.b_key))
        events = os.path.join(work, "events.ndjson")
        argv = [
            "-m",
            "schemathesis.cli",
            "--config-file",
            config_path,
            "run",
            SPEC,
            "--url",
            self.node.http,
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--generation-deterministic",
            "--workers",
            "1",
            "--no-color",
            "--continue-on-failure",
            "--request-timeout",
            "10",
            "--report",
            "ndjson",
            "--report-ndjson-path",
            events,
        ]
        env = dict(os.environ, PYTHONPATH=REPO, NO_COLOR="1", COLUMNS="120", FASTEDGE_FUZZ_KEEP_KEYS=",".join(keep))
        out, err, code = yield getProcessOutputAndValue(sys.executable, argv, env=env, path=work)
        report = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, "schemathesis found the spec and the node disagreeing:\n" + report[-30000:])
        with open(SPEC, encoding="utf-8") as f:
            paths = yaml.safe_load(f)["paths"]
        documented = {(method, path) for path, item in paths.items() for method in item if method != "parameters"}
        self.assertEqual(sorted(documented - NOT_FUZZED - exercised(events)), [], "operations never requested")
        # Both keys still work (key_ids checks for a 200): the run was not
        # answered with a documented 401 from some point on.
        self.assertIn(keep[0], (yield self.key_ids(self.a_key)))
        self.assertIn(keep[1], (yield self.key_ids(self.b_key)))
