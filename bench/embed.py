"""The body of ``bench/embed``: see that script.

One node on the embedded SQLite store, one 200-comment thread (seeded as
``bench/thread-read`` seeds it), ``api.page_size = 100`` so the JSON page
and the embed page both show the whole thread. Four runs against the same
node, in this order:

- JSON page, anonymous (``GET /api/v1/<tenant>/comments``);
- JSON page, with a session cookie;
- embed page, anonymous (``GET /embed/<tenant>/``): the HTML rendered once
  per cached page, then spliced per request;
- embed page, with a session cookie (the reader's likes, blocks and own
  comments spliced into the same shared rendering);
- then all four again with ``Accept-Encoding: gzip``, as browsers always
  send it (strangers' embed pages are compressed once; a reader's own page,
  and the JSON page, are sent as they are), so the ratios printed compare
  what browsers actually fetch as well as the plain runs.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import tempfile
from urllib.parse import quote

from benchlib import start_node, stop, wrk
from thread_read import COMMENTS, URL_ID, call, free_port, seed

SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
CONNECTIONS = int(sys.argv[2]) if len(sys.argv) > 2 else 64


def main() -> None:
    workdir = tempfile.mkdtemp(prefix="fastedge-bench-embed-")
    data_dir = os.path.join(workdir, "data")
    port = free_port()
    config = (
        '[node]\nid = "bench"\ndata_dir = {}\n'
        '[http]\nendpoint = "tcp:{}:interface=127.0.0.1:backlog=4096"\n'
        "[api]\npage_size = 100\nwrites_per_minute_per_ip = 100000\n"
        "writes_per_minute_per_session = 100000\n"
        # Free ports for the rest: other benches may be running on this machine.
        '[tls]\nendpoint = "tcp:0:interface=127.0.0.1"\n'
        '[mesh]\nendpoint = "tcp:0:interface=127.0.0.1"\n'
        "[dns]\nport = 0\n"
    ).format(json.dumps(data_dir), port)
    node = start_node(workdir, config, port)
    rows = []
    try:
        tenant, cookie = seed(workdir, data_dir, port)
        quoted = quote(URL_ID, safe="")
        api = "/api/v1/{}/comments?urlId={}".format(tenant, quoted)
        embed = "/embed/{}/?urlId={}".format(tenant, quoted)
        gz = {"accept-encoding": "gzip"}
        plain = (
            ("JSON page, anonymous", api, {}),
            ("JSON page, with a session", api, {"cookie": cookie}),
            ("embed page, anonymous", embed, {}),
            ("embed page, with a session", embed, {"cookie": cookie}),
        )
        cases = plain + tuple((label + ", gzip", path, dict(headers, **gz)) for label, path, headers in plain)
        for label, path, headers in cases:
            status, answer, raw = call(port, "GET", path, headers=headers)
            assert status == 200, (status, raw[:200])
            url = "http://127.0.0.1:{}{}".format(port, path)
            wrk(url, connections=CONNECTIONS, seconds=2, headers=headers)  # warm up
            result = wrk(url, connections=CONNECTIONS, seconds=SECONDS, headers=headers)
            encoded = answer.get("content-encoding") == "gzip"
            rows.append((label, result, len(raw), len(raw) if encoded else len(gzip.compress(raw, 6))))
    finally:
        stop(node)
    print()
    print(
        "thread read vs embed page, NEAREST, SQLite; {} comments, all on one page; wrk -c{} -d{}s; "
        "node on CPU 0, wrk on CPU 1".format(COMMENTS, CONNECTIONS, SECONDS)
    )
    print(
        "{:<36} {:>10} {:>9} {:>9} {:>8} {:>9} {:>9}".format(
            "case", "req/s", "p50 ms", "p99 ms", "errors", "sent KB", "gzip KB"
        )
    )
    for label, r, size, gz in rows:
        print(
            "{:<36} {:>10.0f} {:>9.2f} {:>9.2f} {:>8.0f} {:>9.1f} {:>9.1f}".format(
                label, r["rps"], r["p50"], r["p99"], r["errors"] + r["socket_errors"], size / 1024, gz / 1024
            )
        )
    rps = {label: r["rps"] for label, r, _, _ in rows}
    for reader in ("anonymous", "with a session"):
        print(
            "embed / JSON, {}: {:.0%} plain; {:.0%} as browsers fetch (Accept-Encoding: gzip on both)".format(
                reader,
                rps["embed page, " + reader] / rps["JSON page, " + reader],
                rps["embed page, {}, gzip".format(reader)] / rps["JSON page, {}, gzip".format(reader)],
            )
        )
    print("target: anonymous embed at least 80% of the anonymous JSON page")


if __name__ == "__main__":
    main()
