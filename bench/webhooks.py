"""The body of ``bench/webhooks``: see that script for what it measures.

1. Throughput: COMMENTS comments are written to an SQLite store whose tenant
   has ENDPOINTS endpoints (all at the local receiver), so the outbox holds
   COMMENTS x ENDPOINTS deliveries; then a node starts and its worker drains
   them. Throughput = deliveries / (last received - first received), read
   from the receiver. (An endpoint gets one delivery at a time, in order:
   endpoints are the parallelism.)
2. Post latency: ``bench/post_load.py`` posts comments through the tenant
   API at a fixed rate (open loop, POST_RATE a second for POST_SECONDS),
   against a node with ``[webhooks] enabled = false`` and no endpoint, then
   against a node with one endpoint subscribed to ``comment.created``
   delivering to the receiver as the posts come in.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import benchlib  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from fastedge.api.keys import hash_api_key, new_api_key  # noqa: E402
from fastedge.store.model import CommentStatus, NewComment, ReadPreference, WebhookEvent  # noqa: E402
from fastedge.store.sqlite import SQLiteStore  # noqa: E402
from fastedge.testing.fakes import run_inline  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

COMMENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
ENDPOINTS = int(sys.argv[2]) if len(sys.argv) > 2 else 4
POST_SECONDS = 15
#: Posts a second, open loop: well below what one core takes (about 300 a
#: second closed loop), as a site's traffic is; the question is whether
#: delivering webhooks beside it moves the post's latency.
POST_RATE = 100
PRIMARY = ReadPreference.PRIMARY


def value(d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def config(data_dir: str, port: int, enabled: bool) -> str:
    return "\n".join(
        [
            "[node]",
            'data_dir = "{}"'.format(data_dir),
            "[http]",
            'endpoint = "tcp:{}:interface=127.0.0.1"'.format(port),
            "[tls]",
            "enabled = false",
            "[mesh]",
            'endpoint = "tcp:0:interface=127.0.0.1"',
            "[dns]",
            "port = 0",
            "[log]",
            'access = "off"',
            "[webhooks]",
            "enabled = {}".format("true" if enabled else "false"),
            "allow_private_targets = true",
            "poll_seconds = 0.2",
            "",
        ]
    )


def seed(data_dir: str, receiver: int, *, endpoints: int, comments: int) -> tuple[str, str]:
    """A tenant with an API key, ``endpoints`` endpoints at the receiver and
    ``comments`` comments (so their deliveries wait in the outbox)."""
    os.makedirs(data_dir, exist_ok=True)
    store = SQLiteStore(os.path.join(data_dir, "fastedge.sqlite3"), run=run_inline, clock=Clock())
    value(store.open())
    tenant = value(store.create_tenant("Bench", "global", created_ms=1, read_preference=PRIMARY)).value
    key = new_api_key()
    value(store.add_api_key(tenant.id, hash_api_key(key), created_ms=1, read_preference=PRIMARY))
    for n in range(endpoints):
        value(
            store.create_webhook(
                tenant.id,
                url="http://127.0.0.1:{}/hook/{}".format(receiver, n),
                secret="b" * 40,
                events=[WebhookEvent.COMMENT_CREATED],
                active=True,
                description="",
                created_ms=1,
                read_preference=PRIMARY,
            )
        )
    if comments:
        thread = value(store.upsert_thread(tenant.id, "https://bench/t", created_ms=1, read_preference=PRIMARY)).value
        author = value(store.create_anonymous_session(tenant.id, created_ms=1, read_preference=PRIMARY)).value
        for i in range(comments):
            new = NewComment(
                tenant_id=tenant.id,
                thread_id=thread.id,
                author_id=author.author_id,
                display_name="Bench",
                body_source="comment {}".format(i),
                body_html="<p>comment {}</p>".format(i),
                status=CommentStatus.APPROVED,
                created_ms=2 + i,
            )
            value(store.create_comment(new, read_preference=PRIMARY))
    value(store.close())
    return tenant.id, key


def received(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/count")
    return json.loads(conn.getresponse().read())  # type: ignore[no-any-return]


def start_receiver(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            "taskset",
            "-c",
            benchlib.LOAD_CPU,
            sys.executable,
            os.path.join(REPO, "bench", "webhook_receiver.py"),
            str(port),
        ]
    )
    for _ in range(100):
        try:
            received(port)
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the receiver did not start")


def throughput(work: str) -> None:
    receiver_port = free_port()
    receiver = start_receiver(receiver_port)
    try:
        data_dir = os.path.join(work, "throughput")
        seed(data_dir, receiver_port, endpoints=ENDPOINTS, comments=COMMENTS)
        total = COMMENTS * ENDPOINTS
        port = free_port()
        node = benchlib.start_node(work, config(data_dir, port, True), port)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                got = received(receiver_port)
                if got["count"] >= total:
                    break
                time.sleep(0.2)
            got = received(receiver_port)
        finally:
            benchlib.stop(node)
    finally:
        receiver.terminate()
        receiver.wait()
    seconds = got["last"] - got["first"]
    print(
        "delivery throughput: {} deliveries ({} comments x {} endpoints) in {:.2f} s = {:.0f}/s{}".format(
            int(got["count"]),
            COMMENTS,
            ENDPOINTS,
            seconds,
            got["count"] / seconds if seconds else 0,
            "" if got["count"] >= total else "  (INCOMPLETE: {} expected)".format(total),
        )
    )


def post_latency(work: str, enabled: bool) -> dict[str, float]:
    receiver_port = free_port()
    receiver = start_receiver(receiver_port)
    try:
        data_dir = os.path.join(work, "post-{}".format("on" if enabled else "off"))
        _, key = seed(data_dir, receiver_port, endpoints=1 if enabled else 0, comments=0)
        port = free_port()
        node = benchlib.start_node(work, config(data_dir, port, enabled), port)
        try:
            out = subprocess.run(
                [
                    "taskset",
                    "-c",
                    benchlib.LOAD_CPU,
                    sys.executable,
                    os.path.join(REPO, "bench", "post_load.py"),
                    "http://127.0.0.1:{}/api/v1/manage/comments".format(port),
                    key,
                    str(POST_RATE),
                    str(POST_SECONDS),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            figures = json.loads(out.strip().splitlines()[-1])
            time.sleep(2)
            figures["delivered"] = received(receiver_port)["count"]
        finally:
            benchlib.stop(node)
    finally:
        receiver.terminate()
        receiver.wait()
    return figures


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as work:
        throughput(work)
        for enabled in (False, True):
            f = post_latency(work, enabled)
            print(
                "comment post at {}/s, webhooks {:3}: {} sent, {} ok, p50 {:.2f} ms, p99 {:.2f} ms, max {:.2f} ms, "
                "deliveries received {:.0f}".format(
                    POST_RATE,
                    "on" if enabled else "off",
                    f["sent"],
                    f["ok"],
                    f["p50"],
                    f["p99"],
                    f["max"],
                    f["delivered"],
                )
            )


if __name__ == "__main__":
    main()
