"""Steady HTTP traffic for zero-downtime checks (tests and benchmarks)."""

from __future__ import annotations

import threading
import time
import urllib.request


class Load:
    """Steady traffic through the proxy from a few threads, one new connection per request (as
    busybox httpd closes every connection anyway); counts every request that did not get a 200."""

    def __init__(self, url: str, threads: int = 4, limit_seconds: float = 120.0):
        self.url = url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sent = 0
        self.failed: list[str] = []
        self.bodies: list[str] = []
        self.longest_gap = 0.0
        self.limit = limit_seconds
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def _loop(self):
        deadline = time.monotonic() + self.limit
        last_ok = time.monotonic()
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    body = r.read().decode().strip()
                    ok = r.status == 200
            except Exception as exc:  # any failure counts
                body, ok = f"{type(exc).__name__}: {exc}", False
            now = time.monotonic()
            with self.lock:
                self.sent += 1
                if ok:
                    self.longest_gap = max(self.longest_gap, now - last_ok)
                    last_ok = now
                    self.bodies.append(body)
                else:
                    self.failed.append(body)
            time.sleep(0.005)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(10)
