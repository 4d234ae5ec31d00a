"""A headless Chromium for tests: Debian's ``/usr/bin/chromium`` driven by
Playwright (its own browser download cannot work here).

Playwright's sync API is bound to the thread that started it, so every
browser call runs in one worker thread (:class:`BrowserThread`) while the
node runs on the reactor; tests wait on Deferreds for the browser's work.
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from twisted.internet import defer, reactor
from twisted.python.failure import Failure

CHROMIUM = "/usr/bin/chromium"


class BrowserThread:
    """One daemon thread that owns Playwright and the browser (launched on
    first use, closed when the test process exits)."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]] | None] = queue.Queue()
        threading.Thread(target=self._work, name="playwright", daemon=True).start()
        self.browser: Any = self.run(self._launch)
        self._blocking: Any = None
        atexit.register(self._close)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, future = job
            try:
                future.set_result(fn(*args))
            except BaseException as e:
                future.set_exception(e)

    def _launch(self) -> Any:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        return self._pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])

    def blocking(self) -> Any:
        """A second browser that refuses third-party cookies (Chromium's
        switch for the third-party cookie phase-out, as a reader who turned
        them off); launched on first use, in the browser thread."""
        if self._blocking is None:
            self._blocking = self._pw.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--test-third-party-cookie-phaseout"]
            )
        return self._blocking

    def _close(self) -> None:
        def close() -> None:
            if self._blocking is not None:
                self._blocking.close()
            self.browser.close()
            self._pw.stop()

        self.run(close)
        self._jobs.put(None)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((fn, args, future))
        return future

    def call(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """``fn(*args)`` in the browser thread; fires on the reactor."""
        d: defer.Deferred[Any] = defer.Deferred()

        def settle(f: Future[Any]) -> None:
            error = f.exception()
            if error is not None:
                d.errback(Failure(error))
            else:
                d.callback(f.result())

        self.submit(fn, *args).add_done_callback(lambda f: reactor.callFromThread(settle, f))
        return d

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` in the browser thread and wait (no reactor needed)."""
        return self.submit(fn, *args).result(timeout=60)


_shared: BrowserThread | None = None


def browser() -> BrowserThread:
    global _shared
    if _shared is None:
        # scripts/run-tests installs it (scripts/debian-packages.txt): missing,
        # the setup is broken, and a skip would hide that.
        if not os.path.exists(CHROMIUM):
            raise AssertionError("Debian's chromium is not installed (scripts/debian-packages installs it)")
        _shared = BrowserThread()
    return _shared
