"""The widget's live client (fastedge/embed/static/live.js) following a
drain, run by Node.js with a scripted WebSocket and timers: on ``move`` then
the close it reconnects within a second, keeps to WebSocket through refused
connections (a cached address of the drained node), and resubscribes from
its last position with ``since`` and ``epoch``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from twisted.trial.unittest import SkipTest, SynchronousTestCase

import fastedge

LIVE_JS = os.path.join(os.path.dirname(fastedge.__file__), "embed", "static", "live.js")

SCRIPT = r"""
const timers = [];
globalThis.setTimeout = (fn, ms) => { timers.push({ fn, ms }); return timers.length; };
globalThis.clearTimeout = () => {};
globalThis.location = { protocol: "https:", host: "comments.example" };
const sockets = [];
const streams = [];
globalThis.EventSource = class { constructor(url) { streams.push(url); } close() {} };
globalThis.WebSocket = class {
  constructor(url) { this.url = url; this.sent = []; sockets.push(this); }
  send(data) { this.sent.push(JSON.parse(data)); }
  close() {}
};
const { LiveThread } = await import(process.argv[2]);
const events = [];
const live = new LiveThread({
  tenant: "T", urlId: "https://site/a", epoch: "", seq: 0,
  onEvent: (kind, data) => events.push(data.n), onReload: () => events.push("reload"), onState: () => {},
});
// Two failures first: the backoff has grown.
live.start();
sockets[0].onopen(); sockets[0].onclose(); timers.shift().fn();
sockets[1].onopen(); sockets[1].onclose(); timers.shift().fn();
const ws = sockets[2];
ws.onopen();
const msg = (m) => ws.onmessage({ data: JSON.stringify(m) });
msg({ type: "subscribed", channel: "T/1", epoch: "e", seq: 4, reload: false, replayed: 0 });
msg({ type: "event", channel: "T/1", seq: 5, id: "e-5", event: "comment.created", data: { n: 5 } });
msg({ type: "move", node: "edge-2", addresses: ["192.0.2.2"], reason: "drain" });
ws.onclose();
// The browser still has the drained node's address: refused, twice.
const delays = [];
for (let i = 0; i < 3; i++) {
  delays.push(timers[0].ms);
  timers.shift().fn();
  if (i < 2) sockets[sockets.length - 1].onclose();
}
const next = sockets[sockets.length - 1];
next.onopen();
console.log(JSON.stringify({ delays, url: next.url, subscribe: next.sent[0], events, streams }));
"""


class LiveClientDrainTests(SynchronousTestCase):
    def test_move_reconnects_at_once_with_since(self) -> None:
        """After ``move`` and the close, the client reconnects within
        ``MOVE_JITTER_MS`` (1 s) to the same host name -- DNS no longer
        answers the drained node -- retrying refused connections as soon,
        over WebSocket still (not falling back to SSE), and resubscribes with
        the epoch and the last sequence number it had, so the new node
        replays what it missed."""
        node = shutil.which("node")
        if node is None:
            raise SkipTest("Node.js is not installed")
        script = os.path.abspath(self.mktemp()) + ".mjs"
        with open(script, "w") as f:
            f.write(SCRIPT)
        out = subprocess.run(
            [node, script, "file://" + LIVE_JS], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        result = json.loads(out)
        self.assertTrue(all(d < 1000 for d in result["delays"]), result["delays"])
        self.assertEqual(result["streams"], [])
        self.assertEqual(result["url"], "wss://comments.example/live")
        self.assertEqual(
            result["subscribe"],
            {"type": "subscribe", "ref": 1, "tenant": "T", "urlId": "https://site/a", "since": 5, "epoch": "e"},
        )
        self.assertEqual(result["events"], [5])
