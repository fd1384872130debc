"""Steady HTTP traffic for zero-downtime checks (tests and benchmarks).

Two kinds of clients, each a few threads sending one request after another:

- :class:`Load`: a new connection per request (``urllib``), as scripts and health checkers do;
- :class:`KeepAliveLoad`: one persistent ``http.client`` connection per client, as connection pools,
  other proxies and load balancers do. A request that fails (the connection reset or closed while the
  request was sent, an incomplete answer, a time-out, a status other than 200) is counted once, by its
  kind, and the client reconnects for the next request. A server that says ``Connection: close`` on an
  answer (a graceful close) is not a failure: the client reads that answer and reconnects.

Both record every request with its start and end (``time.monotonic()``), so a test can tell which
requests were in flight at a given moment (:meth:`_Clients.in_flight_at`) and which started after
another (:meth:`_Clients.failed_after`).
"""

from __future__ import annotations

import collections
import http.client
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Request:
    started: float  # time.monotonic() when the request was about to be sent
    ended: float  # when its answer was read, or it failed
    ok: bool
    detail: str  # the body (stripped) when ok, else the failure: "<kind>: <message>"
    kind: str = ""  # the failure's kind: an exception's class name or "status 502"; "" when ok
    client: int = 0


class _Clients:
    """What both loads share: the threads, the counts and the record of every request."""

    def __init__(self, url: str, threads: int, limit_seconds: float, pause: float):
        self.url = url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sent = 0
        self.failed: list[str] = []
        self.bodies: list[str] = []
        self.records: list[Request] = []
        self.longest_gap = 0.0
        self.limit = limit_seconds
        self.pause = pause
        self._last_ok = time.monotonic()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _record(self, req: Request) -> None:
        with self.lock:
            self.sent += 1
            self.records.append(req)
            if req.ok:
                self.longest_gap = max(self.longest_gap, req.ended - self._last_ok)
                self._last_ok = max(self._last_ok, req.ended)
                self.bodies.append(req.detail)
            else:
                self.failed.append(req.detail)

    def _run(self, client: int) -> None:
        raise NotImplementedError

    # -- reading the record -----------------------------------------------------------------------
    @property
    def failures_by_kind(self) -> dict[str, int]:
        with self.lock:
            return dict(collections.Counter(r.kind for r in self.records if not r.ok))

    def failed_requests(self) -> list[Request]:
        with self.lock:
            return [r for r in self.records if not r.ok]

    def in_flight_at(self, moment: float) -> list[Request]:
        """The requests sent before ``moment`` that had not ended by then."""
        with self.lock:
            return [r for r in self.records if r.started <= moment < r.ended]

    def failed_after(self, moment: float) -> list[Request]:
        """The failed requests sent at or after ``moment``."""
        with self.lock:
            return [r for r in self.records if not r.ok and r.started >= moment]

    def __enter__(self):
        self._last_ok = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(10)


class Load(_Clients):
    """Steady traffic through the proxy from a few threads, one new connection per request (as
    busybox httpd closes every connection anyway); counts every request that did not get a 200."""

    def __init__(self, url: str, threads: int = 4, limit_seconds: float = 120.0, pause: float = 0.005):
        super().__init__(url, threads, limit_seconds, pause)

    def _run(self, client: int) -> None:
        deadline = time.monotonic() + self.limit
        while not self.stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            kind = ""
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    body = r.read().decode().strip()
                    ok = r.status == 200
                    if not ok:
                        kind = f"status {r.status}"
            except urllib.error.HTTPError as exc:  # an answer other than 2xx/3xx
                body, ok, kind = f"status {exc.code}: {exc}", False, f"status {exc.code}"
            except Exception as exc:  # any failure counts
                body, ok, kind = f"{type(exc).__name__}: {exc}", False, type(exc).__name__
            self._record(Request(started, time.monotonic(), ok, body, kind, client))
            time.sleep(self.pause)


class KeepAliveLoad(_Clients):
    """One persistent connection per client thread (``http.client``, HTTP/1.1 keep-alive).

    ``url`` may be https: the connection then verifies nothing (the tests' certificates are
    self-signed) but sends SNI for ``host`` (default: the URL's host). ``host`` is also the Host
    header, for routes by host name. ``reconnects`` counts the graceful closes (``Connection: close``
    from the server) after which the client reconnected without a failure; ``connections`` every
    connection opened."""

    def __init__(self, url: str, threads: int = 4, limit_seconds: float = 120.0, pause: float = 0.005, *,
                 host: str | None = None, timeout: float = 5.0):
        super().__init__(url, threads, limit_seconds, pause)
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.address = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.host = host or parts.netloc
        self.timeout = timeout
        self.reconnects = 0
        self.connections = 0

    def _connect(self) -> http.client.HTTPConnection:
        with self.lock:
            self.connections += 1
        if self.scheme == "https":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            conn: http.client.HTTPConnection = _SNIConnection(self.address, self.port, timeout=self.timeout,
                                                              context=context, sni=self.host.split(":")[0])
        else:
            conn = http.client.HTTPConnection(self.address, self.port, timeout=self.timeout)
        return conn

    def _run(self, client: int) -> None:
        deadline = time.monotonic() + self.limit
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set() and time.monotonic() < deadline:
            if conn is None:
                conn = self._connect()
            started = time.monotonic()
            try:
                conn.request("GET", self.path, headers={"Host": self.host})
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace").strip()
                closing = resp.will_close  # Connection: close (or HTTP/1.0): graceful, reconnect
                ok, kind = resp.status == 200, "" if resp.status == 200 else f"status {resp.status}"
                detail = body if ok else f"{kind}: {body[:100]}"
            except Exception as exc:  # any failure counts, once; the next request reconnects
                ok, kind, detail, closing = False, type(exc).__name__, f"{type(exc).__name__}: {exc}", True
            self._record(Request(started, time.monotonic(), ok, detail, kind, client))
            if closing:
                if ok:
                    with self.lock:
                        self.reconnects += 1
                conn.close()
                conn = None
            time.sleep(self.pause)
        if conn is not None:
            conn.close()


class _SNIConnection(http.client.HTTPSConnection):
    """HTTPS to an address, with the server name (SNI) of a host route."""

    def __init__(self, address: str, port: int, *, timeout: float, context: ssl.SSLContext, sni: str):
        super().__init__(address, port, timeout=timeout, context=context)
        self._sni = sni
        self._ctx = context

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._ctx.wrap_socket(self.sock, server_hostname=self._sni)
