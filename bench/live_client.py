"""Raw-socket WebSocket load client for the live fan-out benchmark.

One process, one epoll loop, non-blocking sockets, no WebSocket library:
it opens N connections (handshake, and for fastedge a subscribe message),
then asks the server to publish and times, for every publish, the first and
the last of the N subscribers to hold the whole message. Each message
carries the server's CLOCK_MONOTONIC time of its publish (``data.t``), the
same clock this process reads, so latency is publish -> fully received.

It also reads the server's RSS (``/proc/PID/status``) before and after the
connections (memory per idle subscribed connection) and its CPU time
(``/proc/PID/stat``) over the publishes. Prints one JSON object.

The publishing POSTs are made by a child process, and each answer is timed
to when the kernel took it in (``SO_TIMESTAMPNS``, i.e. when the server
sent it), beside when the child read it: on CPU 1 the child waits behind
the main process reading thousands of sockets, which is not the server's
doing. The child also notes the server's run-queue wait over each POST
(``/proc/PID/task/*/schedstat``): on a shared machine, most of an answer's
time can be the server waiting for its core.
"""

from __future__ import annotations

import argparse
import base64
import errno
import json
import os
import re
import select
import socket
import struct
import time

_T_RE = re.compile(rb'"t":(\d+)')


def rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    else:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


class Conn:
    __slots__ = ("sock", "fd", "state", "buf", "count", "ready")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.state = 0  # 0 connecting, 1 handshake sent, 2 open
        self.buf = b""
        self.count = 0
        self.ready = False


def frames(conn: Conn, data: bytes, want_payload: bool) -> tuple[int, bytes | None]:
    """Count complete text frames in ``conn``'s buffer; returns (new, a payload)."""
    buf = conn.buf + data if conn.buf else data
    new = 0
    payload = None
    pos = 0
    end = len(buf)
    while end - pos >= 2:
        b1 = buf[pos + 1] & 0x7F
        if b1 < 126:
            hl = 2
            ln = b1
        elif b1 == 126:
            if end - pos < 4:
                break
            hl = 4
            ln = (buf[pos + 2] << 8) | buf[pos + 3]
        else:
            if end - pos < 10:
                break
            hl = 10
            ln = int.from_bytes(buf[pos + 2 : pos + 10], "big")
        if end - pos < hl + ln:
            break
        if buf[pos] & 0x0F == 1:
            new += 1
            if want_payload and payload is None:
                payload = buf[pos + hl : pos + hl + ln]
        pos += hl + ln
    conn.buf = buf[pos:] if pos < end else b""
    return new, payload


#: Linux's SO_TIMESTAMPNS (not exported by the socket module): the kernel
#: stamps each received segment with CLOCK_REALTIME when it takes it in.
SO_TIMESTAMPNS = 35


def answer_stamp(s: socket.socket) -> tuple[bytes, int | None]:
    """Read an answer and the kernel's receive time of it (realtime ns)."""
    data, ancillary, _, _ = s.recvmsg(4096, 64)
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
            sec, nsec = struct.unpack("@qq", value[:16])
            return data, sec * 1_000_000_000 + nsec
    return data, None


def runqueue_ns(pid: int) -> int:
    """How long ``pid``'s threads have waited for a CPU, in total (ns)."""
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[1])
        except OSError:
            pass  # a thread that ended
    return total


def cpu_softirq_ticks(cpu: int) -> int:
    """Clock ticks CPU ``cpu`` has spent in softirq (``/proc/stat``).

    On loopback a send's receive processing (the readers' TCP) runs in
    softirq on the sending CPU, i.e. the server's; the kernel charges the
    ticks that land there to softirq, not to the process, so the server's
    own CPU time (``/proc/PID/stat``) does not include it. (Anything else
    on that CPU's network counts too: read on a quiet machine.)
    """
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu%d " % cpu):
                return int(line.split()[7])
    return 0


_HANDLED_RE = re.compile(rb"\r\n\r\nok (\d+)$")


def handled_at(answer: bytes) -> int:
    """The server's CLOCK_MONOTONIC time of the publish, from fastedge's
    bench answer (``ok <ns>``); 0 when the answer does not say."""
    m = _HANDLED_RE.search(answer)
    return int(m.group(1)) if m else 0


def closed(s: socket.socket) -> bool:
    """Whether the peer has closed ``s`` (an idle keep-alive connection)."""
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        s.setblocking(True)


def poster(addr: tuple[str, int], post: bytes, quiet_post: bytes, cmd: socket.socket, server: int) -> None:
    """A child process that makes the publishing POSTs on request and
    reports each answer's time twice: when this process read it, and when
    the kernel received it (the server sent it). The second does not count
    this process's wait for CPU 1, which it shares with the main process
    while that reads thousands of sockets; the first does."""

    def connect() -> socket.socket:
        s = socket.create_connection(addr)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        return s

    s = connect()
    other = connect() if quiet_post else None
    try:
        while True:
            what = cmd.recv(1)
            if not what:
                break
            if what == b"q":
                # During a fan-out: wait the given ms, then time one POST on
                # the quiet thread (the publish that started the fan-out was
                # answered already).
                (delay_us,) = struct.unpack("!I", cmd.recv(4))
                assert other is not None
                if closed(other):
                    # The server ended the idle keep-alive connection;
                    # reconnect before the delay, so the timed POST does
                    # not include the server's accept.
                    other.close()
                    other = connect()
                time.sleep(delay_us / 1e6)
                t = time.monotonic_ns()
                wall = time.time_ns()
                other.sendall(quiet_post)
                answer, stamp = answer_stamp(other)
                read = time.monotonic_ns() - t
                kernel = stamp - wall if stamp is not None else read
                cmd.sendall(struct.pack("!QQQQQ", read, max(0, kernel), t, 0, handled_at(answer)))
                continue
            # "p": the publishing POST on the thread the readers follow;
            # "n": the same POST on a thread nobody reads, on the same
            # connection (the baseline made beside it).
            body = post if what == b"p" else quiet_post
            queued = runqueue_ns(server)
            t = time.monotonic_ns()
            wall = time.time_ns()
            try:
                s.sendall(body)
                answer, stamp = answer_stamp(s)
            except OSError:
                answer, stamp = b"", None
            if not answer:
                # The server closed the idle keep-alive connection (Node's
                # http server does after 5 s): the POST went nowhere. Send
                # it again on a new connection, timed from the new send.
                s.close()
                s = connect()
                t = time.monotonic_ns()
                wall = time.time_ns()
                s.sendall(body)
                answer, stamp = answer_stamp(s)
            read = time.monotonic_ns() - t
            kernel = stamp - wall if stamp is not None else read
            queued = runqueue_ns(server) - queued
            cmd.sendall(struct.pack("!QQQQQ", read, max(0, kernel), t, queued, handled_at(answer)))
    except OSError:
        pass  # the main process is gone (it failed, and says why)
    os._exit(0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--publishes", type=int, default=40)
    ap.add_argument("--burst", type=int, default=20)
    ap.add_argument("--publish-path", default="/publish")
    ap.add_argument(
        "--subscribe",
        default="",
        help="JSON subscribe message to send after the handshake",
    )
    ap.add_argument(
        "--quiet-path",
        default="",
        help="a publishing POST on a thread with no readers, timed while the first thread's fan-out runs",
    )
    ap.add_argument("--batch", type=int, default=500, help="handshakes in flight at once")
    ap.add_argument(
        "--connect-only",
        action="store_true",
        help="stop after connecting N (and the probes during it); print only those figures",
    )
    ap.add_argument(
        "--posts",
        type=int,
        default=200,
        help="publishing POSTs timed with N readers on their thread, each paired with one on a thread nobody reads",
    )
    ap.add_argument(
        "--post-seconds",
        type=float,
        default=60.0,
        help="stop the paired POSTs after this long (but not before --publishes of them)",
    )
    ap.add_argument("--server-cpu", type=int, default=0, help="the CPU the server is pinned to (its softirq time)")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    deadline = time.monotonic() + args.timeout
    addr = ("127.0.0.1", args.port)
    post = ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" % args.publish_path).encode()
    quiet_post = (
        ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" % args.quiet_path).encode()
        if args.quiet_path
        else b""
    )
    cmd, child_end = socket.socketpair()
    if os.fork() == 0:
        cmd.close()
        poster(addr, post, quiet_post, child_end, args.pid)
    child_end.close()

    def answer_times() -> tuple[float, float]:
        """The poster's report of one POST: (read by it, sent by the server), ms."""
        got = b""
        while len(got) < 40:
            got += cmd.recv(40 - len(got))
        read, kernel, sent_at, queued, handled = struct.unpack("!QQQQQ", got)
        last_sent_at[0] = sent_at
        last_sent_at[1] = queued
        last_sent_at[2] = handled
        return read / 1e6, kernel / 1e6

    last_sent_at = [0, 0, 0]

    def posted() -> tuple[float, float]:
        """Ask the poster for one publishing POST; its answer times (ms)."""
        cmd.sendall(b"p")
        return answer_times()

    ep = select.epoll()
    conns: dict[int, Conn] = {}
    sub_frame = masked_text(args.subscribe.encode()) if args.subscribe else b""
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = (
        "GET /live HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (args.port, key)
    ).encode()

    # A warm-up publish with no subscribers, so one-time costs are not counted.
    trigger = socket.create_connection(addr)
    trigger.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    trigger.sendall(post)
    trigger.recv(4096)
    time.sleep(0.5)
    rss_before = rss_kib(args.pid)

    # The publishing POST's own answer time with no live readers, to set
    # beside the same POST with N readers on its thread (below).
    phases = {"idle_posts": time.monotonic_ns()}
    answer_idle_ms: list[float] = []
    sent_idle_ms: list[float] = []
    runq_idle_ms: list[float] = []
    wake_idle_ms: list[float] = []
    after_idle_ms: list[float] = []
    for _ in range(max(args.posts, args.publishes)):
        read_ms, sent_ms = posted()
        answer_idle_ms.append(read_ms)
        sent_idle_ms.append(sent_ms)
        runq_idle_ms.append(last_sent_at[1] / 1e6)
        if last_sent_at[2]:
            wake_idle_ms.append((last_sent_at[2] - last_sent_at[0]) / 1e6)
            after_idle_ms.append(sent_ms - wake_idle_ms[-1])
        time.sleep(0.01)

    # While the herd connects, another client asks for a cheap page (a 404)
    # every 10 ms on a fresh connection: how long do other requests wait?
    probe_request = b"GET /probe-during-connects HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    probe: list = []  # [socket, started_ns, state]
    probe_ms: list[float] = []
    next_probe = time.monotonic()

    def probe_step(fd: int | None) -> None:
        nonlocal next_probe
        if not probe:
            if time.monotonic() >= next_probe:
                ps = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                ps.setblocking(False)
                ps.connect_ex(addr)
                ep.register(ps.fileno(), select.EPOLLOUT)
                probe[:] = [ps, time.monotonic_ns(), 0]
            return
        ps, started, state = probe
        if fd != ps.fileno():
            return
        if state == 0:
            ps.send(probe_request)
            ep.modify(ps.fileno(), select.EPOLLIN)
            probe[2] = 1
            return
        if ps.recv(65536):
            return  # read on until the server closes
        probe_ms.append((time.monotonic_ns() - started) / 1e6)
        ep.unregister(ps.fileno())
        ps.close()
        probe.clear()
        next_probe = time.monotonic() + 0.01

    # Connect N clients, `batch` handshakes in flight at a time.
    opened = 0
    ready = 0
    in_flight = 0
    t_connect = time.monotonic()
    cpu_connect = cpu_seconds(args.pid)
    while ready < args.connections:
        if time.monotonic() > deadline:
            raise SystemExit("timed out connecting: %d ready" % ready)
        while opened < args.connections and in_flight < args.batch:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rc = s.connect_ex(addr)
            if rc not in (0, errno.EINPROGRESS):
                raise SystemExit("connect failed: %s" % os.strerror(rc))
            c = Conn(s)
            conns[c.fd] = c
            ep.register(c.fd, select.EPOLLOUT)
            opened += 1
            in_flight += 1
        probe_step(None)
        for fd, _ in ep.poll(0.01):
            c = conns.get(fd)
            if c is None:
                probe_step(fd)
                continue
            if c.state == 0:
                c.sock.send(upgrade)
                c.state = 1
                ep.modify(fd, select.EPOLLIN)
                continue
            data = c.sock.recv(65536)
            if not data:
                raise SystemExit("server closed a connection during setup")
            if c.state == 1:
                c.buf += data
                head, sep, rest = c.buf.partition(b"\r\n\r\n")
                if not sep:
                    continue
                if not head.startswith(b"HTTP/1.1 101"):
                    raise SystemExit("handshake refused: %r" % head[:80])
                c.state = 2
                c.buf = b""
                if sub_frame:
                    c.sock.send(sub_frame)
                else:
                    c.ready = True
                    ready += 1
                    in_flight -= 1
                data = rest
                if not data:
                    continue
            if not c.ready:
                c.buf += data
                if b'"subscribed"' in c.buf:
                    c.ready = True
                    ready += 1
                    in_flight -= 1
                    c.buf = b""
    connect_seconds = time.monotonic() - t_connect
    connect_cpu = cpu_seconds(args.pid) - cpu_connect
    if probe:
        ep.unregister(probe[0].fileno())
        probe[0].close()
    if args.connect_only:
        for c in conns.values():
            c.sock.close()
        trigger.close()
        cmd.close()
        os.wait()
        ordered = sorted(probe_ms)
        print(
            json.dumps(
                {
                    "connections": args.connections,
                    "connect_seconds": round(connect_seconds, 2),
                    "connect_cpu_seconds": round(connect_cpu, 2),
                    "probes_during_connects": len(probe_ms),
                    "probe_p50_ms": round(ordered[len(ordered) // 2], 2) if probe_ms else None,
                    "probe_max_ms": round(ordered[-1], 2) if probe_ms else None,
                }
            )
        )
        return
    time.sleep(2.0)
    rss_after = rss_kib(args.pid)
    # Drain anything left over from setup.
    for fd, _ in ep.poll(0.2):
        conns[fd].sock.recv(65536)
    for c in conns.values():
        c.buf = b""
        c.count = 0

    n = args.connections

    def wait_for(target: int, first_of: int | None) -> tuple[int, int, int | None]:
        """Read until every connection holds `target` messages.

        :returns: (first arrival ns of message `first_of`, last arrival ns, its server t)
        """
        done = 0
        first = 0
        t_pub = None
        poll = ep.poll
        while done < n:
            if time.monotonic() > deadline:
                raise SystemExit("timed out waiting for messages: %d of %d" % (done, n))
            for fd, _ in poll(1.0):
                c = conns[fd]
                data = c.sock.recv(262144)
                if not data:
                    raise SystemExit("server closed a connection")
                want = t_pub is None
                got, payload = frames(c, data, want)
                if not got:
                    continue
                if want and payload is not None:
                    now = time.monotonic_ns()
                    first = now
                    m = _T_RE.search(payload)
                    t_pub = int(m.group(1)) if m else None
                before = c.count
                c.count = before + got
                if before < target <= c.count:
                    done += 1
        return first, time.monotonic_ns(), t_pub

    # Latency: one publish at a time, each one timed from the publish to
    # its first and last reader, and its POST's answer. Each is paired with
    # the same POST on a thread nobody reads, made on the same connection
    # 50 ms later (and 50 ms before the next): the same schedule and the
    # same server (its N connections, its caches), without the readers.
    # Enough of them that p99 is not a maximum, within --post-seconds.
    firsts: list[float] = []
    lasts: list[float] = []
    cpu_fanouts = 0.0  # the server's CPU over each publish and its fan-out
    softirq_fanouts = 0  # CPU 0's softirq ticks over the same spans
    wall_fanouts = 0.0
    phases["reader_posts"] = time.monotonic_ns()
    answer_busy_ms: list[float] = []
    sent_busy_ms: list[float] = []
    wake_busy_ms: list[float] = []
    runq_busy_ms: list[float] = []
    after_busy_ms: list[float] = []
    sent_none_ms: list[float] = []
    answer_none_ms: list[float] = []
    runq_none_ms: list[float] = []
    posts_until = time.monotonic() + args.post_seconds
    posts = max(args.posts, args.publishes)
    published = 0
    for i in range(posts):
        if i >= args.publishes and time.monotonic() > posts_until:
            break
        cpu_a = cpu_seconds(args.pid)
        irq_a = cpu_softirq_ticks(args.server_cpu)
        wall_a = time.monotonic()
        cmd.sendall(b"p")
        first, last, t_pub = wait_for(i + 1, i + 1)
        cpu_fanouts += cpu_seconds(args.pid) - cpu_a
        softirq_fanouts += cpu_softirq_ticks(args.server_cpu) - irq_a
        wall_fanouts += time.monotonic() - wall_a
        published += 1
        read_ms, sent_ms = answer_times()
        answer_busy_ms.append(read_ms)
        sent_busy_ms.append(sent_ms)
        runq_busy_ms.append(last_sent_at[1] / 1e6)
        if t_pub is not None:
            # From the POST's send to the server's publish (its wake-up and
            # parsing), and from there to the answer's send.
            wake_busy_ms.append((t_pub - last_sent_at[0]) / 1e6)
            after_busy_ms.append(sent_ms - wake_busy_ms[-1])
        if t_pub is None:
            raise SystemExit("message without a publish time")
        firsts.append((first - t_pub) / 1e6)
        lasts.append((last - t_pub) / 1e6)
        time.sleep(0.05)
        if quiet_post:
            cmd.sendall(b"n")
            read_ms, sent_ms = answer_times()
            answer_none_ms.append(read_ms)
            sent_none_ms.append(sent_ms)
            runq_none_ms.append(last_sent_at[1] / 1e6)
            time.sleep(0.05)

    # Another writer during the fan-out: a publishing POST on a thread with
    # no readers, made 0-20 ms after the fan-out's publish was answered.
    phases["during_fanout"] = time.monotonic_ns()
    sent_during_ms: list[float] = []
    before_during_ms: list[float] = []
    after_during_ms: list[float] = []
    read_during_ms: list[float] = []
    done_publishes = published
    if quiet_post:
        for i in range(args.publishes):
            cmd.sendall(b"p")
            answer_times()
            cmd.sendall(b"q" + struct.pack("!I", (i * 997) % 20_000))
            read_ms, sent_ms = answer_times()
            read_during_ms.append(read_ms)
            sent_during_ms.append(sent_ms)
            if last_sent_at[2]:
                # Before: until the server handled the POST (the slice under
                # way); after: from there until the answer was sent.
                before = (last_sent_at[2] - last_sent_at[0]) / 1e6
                before_during_ms.append(before)
                after_during_ms.append(sent_ms - before)
            done_publishes += 1
            wait_for(done_publishes, None)
            time.sleep(0.05)

    phases["burst"] = time.monotonic_ns()
    # Throughput: a burst of publishes, pipelined.
    base = done_publishes
    t0 = time.monotonic_ns()
    cpu2 = cpu_seconds(args.pid)
    # A fresh connection: the warm-up's has been idle for the whole run,
    # longer than a server's idle timeout on a busy machine (its burst
    # then went nowhere and the client waited out its bound).
    trigger.close()
    trigger = socket.create_connection(addr)
    trigger.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    trigger.sendall(post * args.burst)
    _, last, _ = wait_for(base + args.burst, None)
    burst_seconds = (last - t0) / 1e9
    phases["end"] = time.monotonic_ns()
    cpu3 = cpu_seconds(args.pid)
    for c in conns.values():
        c.sock.close()
    trigger.close()
    cmd.close()
    os.wait()

    def pct(values: list[float], p: float) -> float:
        s = sorted(values)
        return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))]

    print(
        json.dumps(
            {
                "connections": n,
                "connect_seconds": round(connect_seconds, 2),
                "connect_cpu_seconds": round(connect_cpu, 2),
                "rss_before_kib": rss_before,
                "rss_after_kib": rss_after,
                "kib_per_connection": round((rss_after - rss_before) / n, 2),
                "probes_during_connects": len(probe_ms),
                "probe_p50_ms": round(pct(probe_ms, 50), 2) if probe_ms else None,
                "probe_max_ms": round(max(probe_ms), 2) if probe_ms else None,
                "post_idle_p50_ms": round(pct(answer_idle_ms, 50), 2),
                "post_idle_p99_ms": round(pct(answer_idle_ms, 99), 2),
                "post_readers_p50_ms": round(pct(answer_busy_ms, 50), 2),
                "post_readers_p99_ms": round(pct(answer_busy_ms, 99), 2),
                "post_sent_idle_p50_ms": round(pct(sent_idle_ms, 50), 2),
                "post_sent_idle_p99_ms": round(pct(sent_idle_ms, 99), 2),
                "post_sent_readers_p50_ms": round(pct(sent_busy_ms, 50), 2),
                "post_sent_readers_p99_ms": round(pct(sent_busy_ms, 99), 2),
                "post_sent_idle_p90_ms": round(pct(sent_idle_ms, 90), 2),
                "post_sent_readers_p90_ms": round(pct(sent_busy_ms, 90), 2),
                "posts_paired": len(sent_busy_ms),
                "post_sent_none_p50_ms": round(pct(sent_none_ms, 50), 2) if sent_none_ms else None,
                "post_sent_none_p90_ms": round(pct(sent_none_ms, 90), 2) if sent_none_ms else None,
                "post_sent_none_p99_ms": round(pct(sent_none_ms, 99), 2) if sent_none_ms else None,
                "post_none_p50_ms": round(pct(answer_none_ms, 50), 2) if answer_none_ms else None,
                "post_none_p99_ms": round(pct(answer_none_ms, 99), 2) if answer_none_ms else None,
                "post_runqueue_none_p50_ms": round(pct(runq_none_ms, 50), 2) if runq_none_ms else None,
                "post_runqueue_readers_p99_ms": round(pct(runq_busy_ms, 99), 2),
                "post_runqueue_none_p99_ms": round(pct(runq_none_ms, 99), 2) if runq_none_ms else None,
                # Each answer's time less the server's wait for its CPU in it
                # (on a shared machine, most of a tail is that wait).
                "post_oncpu_readers_p99_ms": round(
                    pct([a - q for a, q in zip(sent_busy_ms, runq_busy_ms, strict=True)], 99), 2
                ),
                "post_oncpu_none_p99_ms": (
                    round(pct([a - q for a, q in zip(sent_none_ms, runq_none_ms, strict=True)], 99), 2)
                    if sent_none_ms
                    else None
                ),
                "post_runqueue_idle_p50_ms": round(pct(runq_idle_ms, 50), 2),
                "post_runqueue_readers_p50_ms": round(pct(runq_busy_ms, 50), 2),
                "post_idle_wake_p50_ms": round(pct(wake_idle_ms, 50), 2) if wake_idle_ms else None,
                "post_idle_after_p50_ms": round(pct(after_idle_ms, 50), 2) if after_idle_ms else None,
                "post_readers_wake_p50_ms": round(pct(wake_busy_ms, 50), 2) if wake_busy_ms else None,
                "post_readers_wake_p99_ms": round(pct(wake_busy_ms, 99), 2) if wake_busy_ms else None,
                "post_readers_after_p50_ms": round(pct(after_busy_ms, 50), 2) if after_busy_ms else None,
                "post_readers_after_p99_ms": round(pct(after_busy_ms, 99), 2) if after_busy_ms else None,
                "post_during_fanout_p50_ms": round(pct(sent_during_ms, 50), 2) if sent_during_ms else None,
                "post_during_fanout_p99_ms": round(pct(sent_during_ms, 99), 2) if sent_during_ms else None,
                "post_during_fanout_before_p50_ms": round(pct(before_during_ms, 50), 2) if before_during_ms else None,
                "post_during_fanout_after_p50_ms": round(pct(after_during_ms, 50), 2) if after_during_ms else None,
                "post_during_fanout_after_p99_ms": round(pct(after_during_ms, 99), 2) if after_during_ms else None,
                "post_during_fanout_read_p50_ms": round(pct(read_during_ms, 50), 2) if read_during_ms else None,
                "post_during_fanout_read_p99_ms": round(pct(read_during_ms, 99), 2) if read_during_ms else None,
                "first_p50_ms": round(pct(firsts, 50), 2),
                "first_p99_ms": round(pct(firsts, 99), 2),
                "last_p50_ms": round(pct(lasts, 50), 2),
                "last_p99_ms": round(pct(lasts, 99), 2),
                "cpu_percent_during_publishes": round(100.0 * cpu_fanouts / wall_fanouts, 1),
                "cpu_ms_per_publish": round(1000.0 * cpu_fanouts / published, 1),
                "softirq_ms_per_publish": round(1000.0 * softirq_fanouts / os.sysconf("SC_CLK_TCK") / published, 1),
                "burst_broadcasts_per_second": round(args.burst / burst_seconds, 1),
                "burst_messages_per_second": round(args.burst * n / burst_seconds),
                "burst_cpu_percent": round(100.0 * (cpu3 - cpu2) / burst_seconds, 1),
                # What the server sent per second of CPU it got: on a shared
                # machine, where it may get a fraction of its core, this
                # compares servers where the wall-clock rate cannot.
                "burst_messages_per_cpu_second": round(args.burst * n / (cpu3 - cpu2)) if cpu3 > cpu2 else None,
                "phases": phases,
                "post_sent_readers_ms": [round(x, 2) for x in sent_busy_ms],
                "post_sent_none_ms": [round(x, 2) for x in sent_none_ms],
                "post_during_fanout_ms": [round(x, 2) for x in sent_during_ms],
            }
        )
    )


if __name__ == "__main__":
    main()
