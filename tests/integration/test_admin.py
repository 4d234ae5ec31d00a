"""``fastedge-admin`` as an operator runs it: a child process, from various
working directories, beside a whole node on real loopback sockets."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from fastedge.admin import Refused, endpoint_url, find_config
from fastedge.cdn.cache import DiskCache, ObjectMeta
from fastedge.tap import Options, makeService
from tests.support.nodes import loopback_http_client
from tests.support.seaweed import shared_s3

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = """\
[node]
id = "adm-1"
deployment = "global"
region = "test-region"
data_dir = "./var/fastedge"

[http]
endpoint = "tcp:0:interface=127.0.0.1"

[tls]
endpoint = "tcp:0:interface=127.0.0.1"

[mesh]
endpoint = "tcp:0:interface=127.0.0.1"

[dns]
port = 0
"""


def run_admin(*args: str, cwd: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """Run fastedge-admin in a child process in ``cwd``; fires with (out, err, code)."""
    environ = {k: v for k, v in os.environ.items() if k != "FASTEDGE_CONFIG"}
    environ["PYTHONPATH"] = REPO
    environ.update(env or {})
    return getProcessOutputAndValue(sys.executable, ("-m", "fastedge.admin", *args), env=environ, path=cwd)


def make_project(testcase: Any, extra: str = "") -> str:
    """A directory laid out like a checkout: ``etc/fastedge.toml`` whose
    ``node.data_dir`` is relative (``./var/fastedge``), as the repo's is."""
    root = os.path.abspath(testcase.mktemp())
    os.makedirs(os.path.join(root, "etc"))
    os.makedirs(os.path.join(root, "deep", "er"))
    with open(os.path.join(root, "etc", "fastedge.toml"), "w") as f:
        f.write(_CONFIG + extra)
    return root


def cache_object(cache_dir: str, tenant: str, key: str) -> str:
    """Put one object in a media cache directory (no node running); returns its path."""
    cache = DiskCache(cache_dir, max_bytes=10**8)
    cache.open()
    temp = cache.temp_path()
    with open(temp, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
    entry, _ = cache.commit(temp, tenant, key, ObjectMeta(size=8, content_type="image/png"), 1.0)
    cache.close()
    return cache.path_for(entry.id)


def media_config(*tenants: str, s3: Any = None) -> str:
    """``[cdn]`` tables serving each tenant under the prefix ``<tenant>/``
    of the bucket ``media`` at ``s3`` (a :class:`SeaweedS3`), or at an
    origin nobody listens on."""
    if s3 is None:
        text = '\n[cdn.origins.default]\nendpoint = "http://127.0.0.1:9"\n'
    else:
        s3.create_bucket("media")
        text = '\n[cdn.origins.default]\nendpoint = "{}"\naccess_key_id = "{}"\nsecret_access_key = "{}"\n'.format(
            s3.endpoint, s3.access_key, s3.secret_key
        )
    for tenant in tenants:
        text += '\n[cdn.tenants.{}]\nbucket = "media"\nprefix = "{}/"\n'.format(tenant, tenant.lower())
    return text


def origin_keys(s3: Any, prefix: str) -> list[str]:
    """The keys under ``prefix`` in the bucket ``media``, straight from the origin."""
    listed = s3.client().list_objects_v2(Bucket="media", Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


class FindConfigTests(SynchronousTestCase):
    """:func:`fastedge.admin.find_config`: where the tool looks."""

    def test_order(self) -> None:
        """--config wins over $FASTEDGE_CONFIG, which wins over a file found
        upward; relative paths of a found file start beside its etc/."""
        root = make_project(self)
        deep = os.path.join(root, "deep", "er")
        self.assertEqual(
            find_config("x.toml", deep, {"FASTEDGE_CONFIG": "/e.toml"})[:2], (os.path.abspath("x.toml"), None)
        )
        self.assertEqual(find_config(None, deep, {"FASTEDGE_CONFIG": "/e.toml"})[:2], ("/e.toml", None))
        self.assertEqual(find_config(None, deep, {})[:2], (os.path.join(root, "etc", "fastedge.toml"), root))

    def test_none(self) -> None:
        """Nowhere to look: refused with exit status 2."""
        with self.assertRaises(Refused) as cm:
            find_config(None, "/", {})
        self.assertEqual(cm.exception.code, 2)

    def test_endpoint_url(self) -> None:
        """The URL of http.endpoint: wildcards are reached on loopback;
        non-TCP endpoints have none."""
        self.assertEqual(endpoint_url("tcp:8080:interface=127.0.0.1:backlog=1024"), "http://127.0.0.1:8080")
        self.assertEqual(endpoint_url("tcp:port=9090"), "http://127.0.0.1:9090")
        self.assertEqual(endpoint_url("tcp6:8080:interface=\\:\\:"), "http://[::1]:8080")
        self.assertEqual(endpoint_url("tcp:80:interface=0.0.0.0"), "http://127.0.0.1:80")
        self.assertIsNone(endpoint_url("unix:/run/fastedge.sock"))


class StoreDiscoveryTests(TestCase):
    """The tool opens the store the node uses, or refuses; it never makes
    one silently (issue 16: it used to create ./var/fastedge wherever it ran)."""

    @inlineCallbacks
    def test_elsewhere_without_config(self):  # type: ignore[no-untyped-def]
        """From a directory with no etc/fastedge.toml above it and no
        --config: exit status 2 with one line, and nothing created there."""
        # Outside the checkout (trial's temporary directory is inside it).
        elsewhere = tempfile.mkdtemp(prefix="fastedge-admin-test-")
        self.addCleanup(shutil.rmtree, elsewhere)
        out, err, code = yield run_admin("tenant", "create", "Lost", cwd=elsewhere)
        self.assertEqual(code, 2, err)
        self.assertIn(b"no configuration: give --config FILE", err)
        self.assertEqual(os.listdir(elsewhere), [])

    @inlineCallbacks
    def test_missing_store_is_not_created(self):  # type: ignore[no-untyped-def]
        """A config whose store does not exist: refused (exit 1, naming the
        path) and not created; --init creates it."""
        root = make_project(self)
        store = os.path.join(root, "var", "fastedge", "fastedge.sqlite3")
        out, err, code = yield run_admin("--wait", "0", "tenant", "list", cwd=root)
        self.assertEqual(code, 1, err)
        self.assertIn(("no store at sqlite " + store).encode(), err)
        self.assertFalse(os.path.exists(os.path.join(root, "var")))
        out, err, code = yield run_admin("--init", "tenant", "list", cwd=root)
        self.assertEqual(code, 0, err)
        self.assertIn(("created store sqlite " + store).encode(), err)
        self.assertTrue(os.path.exists(store))

    @inlineCallbacks
    def test_env_config(self):  # type: ignore[no-untyped-def]
        """$FASTEDGE_CONFIG names the config when --config is not given."""
        root = make_project(self)
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        data = os.path.join(root, "data")
        env = {"FASTEDGE_CONFIG": os.path.join(root, "etc", "fastedge.toml")}
        out, err, code = yield run_admin("--data-dir", data, "--init", "tenant", "list", cwd=elsewhere, env=env)
        self.assertEqual(code, 0, err)
        self.assertIn(b"($FASTEDGE_CONFIG)", err)
        self.assertTrue(os.path.exists(os.path.join(data, "fastedge.sqlite3")))


class NodeAdminTests(TestCase):
    """Against a whole running node whose config is a checkout's
    ``etc/fastedge.toml`` (data in ``<root>/var/fastedge``, as
    ``scripts/run-node`` runs it from the repo root)."""

    def start_node(self, root: str) -> Any:
        options = Options()
        options.parseOptions(
            [
                "--config",
                os.path.join(root, "etc", "fastedge.toml"),
                "--data-dir",
                os.path.join(root, "var", "fastedge"),
            ]
        )
        node = makeService(options)
        node.privilegedStartService()
        node.startService()
        self.addCleanup(node.stopService)
        return node

    @inlineCallbacks
    def serve(self, node: Any):  # type: ignore[no-untyped-def]
        yield node.getServiceNamed("store").when_ready()
        listener = node.getServiceNamed("http").getServiceNamed("http")
        port = yield listener.when_listening()
        return "http://127.0.0.1:{}".format(port.getHost().port), loopback_http_client(self, listener.factory)

    @inlineCallbacks
    def test_from_a_subdirectory(self):  # type: ignore[no-untyped-def]
        """Run from a subdirectory of the checkout, the tool finds
        etc/fastedge.toml upward, names the node's store on stderr, and the
        tenant it creates is the node's at once."""
        root = make_project(self)
        node = self.start_node(root)
        base, http = yield self.serve(node)
        out, err, code = yield run_admin("tenant", "create", "My Site", "--json", cwd=os.path.join(root, "deep", "er"))
        self.assertEqual(code, 0, err)
        store = os.path.join(root, "var", "fastedge", "fastedge.sqlite3")
        self.assertIn(("opened store sqlite " + store).encode(), err)
        self.assertFalse(os.path.exists(os.path.join(root, "deep", "er", "var")))
        created = json.loads(out)
        page = yield http.get(
            base + "/api/v1/{}/comments?urlId=https%3A%2F%2Fmy.site%2Fpost".format(created["tenantId"])
        )
        self.assertEqual(page.code, 200, (yield page.text()))
        keyed = yield http.get(
            base + "/api/v1/manage/threads", headers={"authorization": "Bearer " + created["apiKey"]}
        )
        self.assertEqual(keyed.code, 200)

    @inlineCallbacks
    def test_tenant_commands(self):  # type: ignore[no-untyped-def]
        """list, show, add-key and revoke-key with --json: a key added works
        on the node at once, a revoked one is refused at once."""
        root = make_project(self)
        node = self.start_node(root)
        base, http = yield self.serve(node)

        @inlineCallbacks
        def admin(*args: str):  # type: ignore[no-untyped-def]
            out, err, code = yield run_admin(*args, "--json", cwd=root)
            self.assertEqual(code, 0, err)
            return json.loads(out)

        @inlineCallbacks
        def manage(key: str):  # type: ignore[no-untyped-def]
            response = yield http.get(base + "/api/v1/manage/threads", headers={"authorization": "Bearer " + key})
            yield response.text()
            return response.code

        first = yield admin("tenant", "create", "First")
        second = yield admin("tenant", "create", "Second", "--deployment", "eu")
        listed = yield admin("tenant", "list")
        self.assertEqual(
            [(t["tenantId"], t["name"], t["deployment"]) for t in listed["tenants"]],
            [(first["tenantId"], "First", "global"), (second["tenantId"], "Second", "eu")],
        )
        added = yield admin("tenant", "add-key", first["tenantId"])
        self.assertEqual((yield manage(added["apiKey"])), 200)
        shown = yield admin("tenant", "show", first["tenantId"])
        self.assertEqual((shown["name"], shown["settings"]), ("First", {}))
        self.assertEqual([k["apiKeyId"] for k in shown["apiKeys"]], [first["apiKeyId"], added["apiKeyId"]])
        self.assertNotIn(first["apiKey"], json.dumps(shown))
        revoked = yield admin("tenant", "revoke-key", first["tenantId"], added["apiKeyId"])
        self.assertIsInstance(revoked["revokedMs"], int)
        self.assertEqual((yield manage(added["apiKey"])), 401)
        self.assertEqual((yield manage(first["apiKey"])), 200)
        # Another tenant's key id is "not found" in this tenant.
        out, err, code = yield run_admin("tenant", "revoke-key", second["tenantId"], first["apiKeyId"], cwd=root)
        self.assertEqual((code, err.strip().splitlines()[-1]), (1, b"fastedge-admin: API key not found"))

    @inlineCallbacks
    def test_delete_through_the_node(self):  # type: ignore[no-untyped-def]
        """tenant delete needs --yes; then every row of the tenant goes (its
        pages answer tenant_not_found, its key 401), its media objects are
        deleted from the origin and purged from the cache through the
        running node, and the other tenant keeps all."""
        s3 = shared_s3()
        root = make_project(self)
        cache_dir = os.path.join(root, "var", "fastedge", "media-cache")
        out, err, code = yield run_admin("--init", "tenant", "create", "Doomed", "--json", cwd=root)
        doomed = json.loads(out)
        out, err, code = yield run_admin("tenant", "create", "Kept", "--json", cwd=root)
        kept = json.loads(out)
        with open(os.path.join(root, "etc", "fastedge.toml"), "a") as f:
            f.write(media_config(doomed["tenantId"], kept["tenantId"], s3=s3))
        doomed_prefix, kept_prefix = doomed["tenantId"].lower() + "/", kept["tenantId"].lower() + "/"
        for name in ("a.png", "b/c.png", "d.png"):
            s3.put("media", doomed_prefix + name, b"\x89PNG\r\n\x1a\n", "image/png")
            s3.put("media", kept_prefix + name, b"\x89PNG\r\n\x1a\n", "image/png")
        doomed_file = cache_object(cache_dir, doomed["tenantId"], doomed["tenantId"].lower() + "/a.png")
        kept_file = cache_object(cache_dir, kept["tenantId"], kept["tenantId"].lower() + "/b.png")
        node = self.start_node(root)
        base, http = yield self.serve(node)
        posted = yield http.post(
            base + "/api/v1/{}/comments?urlId=https%3A%2F%2Fa.test%2F".format(doomed["tenantId"]),
            json={"text": "bye", "displayName": "Ann"},
        )
        self.assertEqual(posted.code, 201)

        out, err, code = yield run_admin("tenant", "delete", doomed["tenantId"], "--url", base, cwd=root)
        self.assertEqual(code, 1)
        self.assertIn(b"add --yes", err)
        out, err, code = yield run_admin(
            "tenant", "delete", doomed["tenantId"], "--yes", "--json", "--url", base, cwd=root
        )
        self.assertEqual(code, 0, err)
        done = json.loads(out)
        self.assertEqual(done["deleted"]["comments"], 1)
        self.assertEqual(done["deleted"]["tenants"], 1)
        self.assertEqual((done["media"]["how"], done["media"]["deleted"], done["media"]["purged"]), ("node", 3, 1))
        self.assertEqual(origin_keys(s3, doomed_prefix), [])
        self.assertEqual(origin_keys(s3, kept_prefix), [kept_prefix + n for n in ("a.png", "b/c.png", "d.png")])
        cdn = node.getServiceNamed("cdn")
        self.assertEqual(cdn.cache.entries(doomed["tenantId"]), [])
        self.assertFalse(os.path.exists(doomed_file))
        self.assertEqual(len(cdn.cache.entries(kept["tenantId"])), 1)
        self.assertTrue(os.path.exists(kept_file))
        page = yield http.get(base + "/api/v1/{}/comments?urlId=https%3A%2F%2Fa.test%2F".format(doomed["tenantId"]))
        self.assertEqual(page.code, 404)
        self.assertEqual((yield page.json())["error"]["code"], "tenant_not_found")
        keyed = yield http.get(base + "/api/v1/manage/threads", headers={"authorization": "Bearer " + doomed["apiKey"]})
        self.assertEqual(keyed.code, 401)
        yield keyed.text()
        keyed = yield http.get(base + "/api/v1/manage/threads", headers={"authorization": "Bearer " + kept["apiKey"]})
        self.assertEqual(keyed.code, 200)
        yield keyed.text()

    @inlineCallbacks
    def test_delete_without_a_node(self):  # type: ignore[no-untyped-def]
        """With no node answering, tenant delete removes the tenant's
        objects from the origin (with the config's credentials) and from the
        media cache directory itself, and no other tenant's."""
        s3 = shared_s3()
        root = make_project(self)
        cache_dir = os.path.join(root, "var", "fastedge", "media-cache")
        out, err, code = yield run_admin("--init", "tenant", "create", "Doomed", "--json", cwd=root)
        doomed = json.loads(out)["tenantId"]
        other = "Other" + os.urandom(4).hex()
        with open(os.path.join(root, "etc", "fastedge.toml"), "a") as f:
            f.write(media_config(doomed, other, s3=s3))
        s3.put("media", doomed.lower() + "/x/a.png", b"\x89PNG\r\n\x1a\n", "image/png")
        s3.put("media", other.lower() + "/x/a.png", b"\x89PNG\r\n\x1a\n", "image/png")
        doomed_file = cache_object(cache_dir, doomed, "x/a.png")
        kept_file = cache_object(cache_dir, other, "x/a.png")
        out, err, code = yield run_admin(
            "tenant", "delete", doomed, "--yes", "--json", "--url", "http://127.0.0.1:1", cwd=root
        )
        self.assertEqual(code, 0, err)
        media = json.loads(out)["media"]
        self.assertEqual((media["how"], media["deleted"], media["purged"]), ("origin", 1, 1))
        self.assertFalse(os.path.exists(doomed_file))
        self.assertTrue(os.path.exists(kept_file))
        self.assertEqual(origin_keys(s3, doomed.lower() + "/"), [])
        self.assertEqual(origin_keys(s3, other.lower() + "/"), [other.lower() + "/x/a.png"])

    @inlineCallbacks
    def test_delete_refused_when_the_origin_fails(self):  # type: ignore[no-untyped-def]
        """No node and no origin answering: tenant delete exits 1 saying
        so, and deletes nothing (the tenant and its cached media stay, the
        command can be run again; the key it made to ask the node is revoked)."""
        root = make_project(self)
        cache_dir = os.path.join(root, "var", "fastedge", "media-cache")
        out, err, code = yield run_admin("--init", "tenant", "create", "Doomed", "--json", cwd=root)
        doomed = json.loads(out)["tenantId"]
        with open(os.path.join(root, "etc", "fastedge.toml"), "a") as f:
            f.write(media_config(doomed))
        doomed_file = cache_object(cache_dir, doomed, "x/a.png")
        out, err, code = yield run_admin("tenant", "delete", doomed, "--yes", "--url", "http://127.0.0.1:1", cwd=root)
        self.assertEqual(code, 1)
        self.assertIn(b"the origin did not delete the tenant's media", err)
        self.assertIn(b"run the command again", err)
        self.assertTrue(os.path.exists(doomed_file))
        out, err, code = yield run_admin("tenant", "show", doomed, "--json", cwd=root)
        self.assertEqual(code, 0, err)
        keys = json.loads(out)["apiKeys"]
        self.assertEqual([k["revokedMs"] is None for k in keys], [True, False])

    @inlineCallbacks
    def test_status(self):  # type: ignore[no-untyped-def]
        """status shows the node's health and its mesh map as a table, or
        as JSON; no node answering is exit status 1 naming the URL."""
        root = make_project(self)
        node = self.start_node(root)
        base, http = yield self.serve(node)
        out, err, code = yield run_admin("status", "--url", base, cwd=root)
        self.assertEqual(code, 0, err)
        lines = out.decode().splitlines()
        self.assertIn("node adm-1 at {}: ok (HTTP 200), deployment global".format(base), lines[0])
        header = lines.index(next(line for line in lines if line.startswith("NODE")))
        self.assertEqual(lines[header].split(), ["NODE", "STATE", "DEPLOYMENT", "REGION", "LOAD", "RTT"])
        self.assertEqual(lines[header + 1].split()[:5], ["adm-1", "*", "alive", "global", "test-region"])
        out, err, code = yield run_admin("status", "--url", base, "--json", cwd=root)
        doc = json.loads(out)
        self.assertEqual(doc["healthz"]["nodeId"], "adm-1")
        self.assertEqual([n["nodeId"] for n in doc["mesh"]["nodes"]], ["adm-1"])
        out, err, code = yield run_admin("status", "--url", "http://127.0.0.1:1", cwd=root)
        self.assertEqual(code, 1)
        self.assertIn(b"no node answers at http://127.0.0.1:1", err)
