"""What the edge settings of a route do through the real nginx and HAProxy, not only what they render.

An upstream written here (a threaded Python server on loopback) stands in for a service, because
the busybox images of the other tests can neither hold a connection open nor speak anything but
plain HTTP/1.0. Each case starts a private proxy on its own port in a temporary directory, applies a
configuration rendered by the adapter itself, and stops the proxy at the end.

- ``routes.max_body``: a larger body gets 413 from the proxy and never reaches the server;
- ``routes.timeouts.read``: a server that answers later gets 504 from the proxy at that time;
- WebSocket: ``Upgrade``/``Connection: upgrade`` reach the server, its 101 reaches the client, and the
  connection then carries bytes both ways; a later change of the proxy's configuration does not cut it
  on the spot (it is closed by the old worker's end, ``proxy.drain_timeout`` at most).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from cdlib.model import Backend, Routes
from cdlib.proxy.haproxy import HaproxyProxy
from cdlib.proxy.nginx import NginxProxy
from tests.support.registry import free_port

pytestmark = pytest.mark.integration

SERVICE = "cdlibedge"
PREFIX = f"/{SERVICE}/"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class _Upstream(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bodies: list[int] = []  # sizes of the request bodies that reached the server
        self.upgrades: list[dict[str, str]] = []  # headers of the upgrade requests that reached it


class _Handler(socketserver.StreamRequestHandler):
    """Just enough HTTP/1.1: GET /health, GET .../slow?seconds, POST (answers the body's size), and
    an Upgrade request answered with 101, after which every line is echoed back in upper case."""

    def handle(self) -> None:
        try:
            self._serve()
        except OSError:  # the proxy gave up on this connection (a timeout, a refused body): fine
            pass

    def _serve(self) -> None:
        server: _Upstream = self.server  # type: ignore[assignment]
        while True:
            line = self.rfile.readline()
            if not line:
                return
            method, target, _ = line.decode("latin-1").split(" ", 2)
            headers = {}
            while (h := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = h.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if headers.get("upgrade", "").lower() == "websocket":
                server.upgrades.append(headers)
                # the handshake of RFC 6455: HAProxy checks it (a 101 without it is a 502)
                accept = base64.b64encode(hashlib.sha1((headers.get("sec-websocket-key", "") + WS_GUID)
                                                       .encode()).digest())
                self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
                self.wfile.flush()
                while (data := self.rfile.readline()):
                    self.wfile.write(data.upper())
                    self.wfile.flush()
                return
            length = int(headers.get("content-length", "0"))
            if length:
                self.rfile.read(length)
                server.bodies.append(length)
            if "slow" in target:
                time.sleep(float(target.rsplit("?", 1)[1]))
            body = f"{method} {target} {length}\n".encode()
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
            self.wfile.flush()


class _Vanishing(_Handler):
    """Answers its health path, and closes every other request without a word: an instance killed
    while the connection was being accepted."""

    def _serve(self) -> None:
        line = self.rfile.readline()
        if line.split(b" ")[1:2] == [b"/health"]:
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
            return
        self.server.bodies.append(-1)  # type: ignore[attr-defined]  # counts the requests it dropped


@pytest.fixture
def upstream() -> Iterator[_Upstream]:
    server = _Upstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


PROXIES = {"nginx": NginxProxy, "haproxy": HaproxyProxy}


@pytest.fixture(params=sorted(PROXIES))
def proxy(request, tmp_path):
    port = free_port()
    px = PROXIES[request.param](tmp_path / request.param, listen=f"127.0.0.1:{port}", drain_timeout=3)
    yield px
    px.stop()


def _backend(upstream: _Upstream, release: str = "r1", **edge) -> Backend:
    host, port = upstream.server_address[:2]
    return Backend(SERVICE, "blue", release, Routes(paths=(PREFIX,), **edge), ((str(host), int(port)),), "/health")


def _request(proxy, method: str, path: str, body: bytes | None = None, timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_a_body_above_max_body_is_refused_by_the_proxy(proxy, upstream):
    proxy.apply(proxy.render([_backend(upstream, max_body=1024)]))
    status, body = _request(proxy, "POST", PREFIX + "upload", b"x" * 1000)
    assert (status, body.split()[-1]) == (200, b"1000")
    status, _ = _request(proxy, "POST", PREFIX + "upload", b"x" * 4096)
    assert status == 413
    assert upstream.bodies == [1000]  # the large body never reached the server


def test_a_server_slower_than_the_read_timeout_gets_504(proxy, upstream):
    proxy.apply(proxy.render([_backend(upstream, read_timeout=1.0)]))
    assert _request(proxy, "GET", PREFIX + "slow?0.1")[0] == 200
    assert _request(proxy, "GET", PREFIX + "slow?3")[0] == 504


def test_a_get_that_gets_no_answer_is_retried_on_another_server_and_a_post_is_not(proxy, upstream):
    vanishing = _Upstream()
    vanishing.RequestHandlerClass = _Vanishing
    threading.Thread(target=vanishing.serve_forever, daemon=True).start()
    try:
        good, bad = upstream.server_address[:2], vanishing.server_address[:2]
        both = Backend(SERVICE, "blue", "r1", Routes(paths=(PREFIX,)),
                       tuple(sorted(((str(good[0]), int(good[1])), (str(bad[0]), int(bad[1]))))), "/health")
        proxy.apply(proxy.render([both]))
        # a POST is not sent twice: each one that reached the vanishing server failed, every other
        # one was answered (round robin sends some there; how many depends on the balancer)
        posts = [_request(proxy, "POST", PREFIX + f"post-{i}", b"x")[0] for i in range(4)]
        dropped = len(vanishing.bodies)
        assert dropped >= 1 and posts.count(502) == dropped and posts.count(200) == 4 - dropped
        assert [_request(proxy, "GET", PREFIX + f"get-{i}")[0] for i in range(10)] == [200] * 10
        if proxy.kind == "haproxy":  # (nginx may keep the server out after one failure)
            assert len(vanishing.bodies) > dropped  # GETs went there too, and were answered by the other
    finally:
        vanishing.shutdown()
        vanishing.server_close()


def _upgrade(proxy) -> socket.socket:
    sock = socket.create_connection((proxy.host, proxy.port), timeout=10)
    sock.sendall(f"GET {PREFIX}ws HTTP/1.1\r\nHost: edge.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, f"the proxy closed the upgrade: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _echo(sock: socket.socket, text: bytes) -> bytes:
    sock.sendall(text + b"\n")
    got = b""
    while not got.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def _closed(sock: socket.socket) -> bool:
    """The proxy has ended the connection: the next read gives EOF (or a reset)."""
    try:
        sock.sendall(b"anyone?\n")
        return sock.recv(4096) == b""
    except OSError:
        return True


def test_websocket_upgrades_pass_through_and_a_switch_ends_them_only_as_documented(proxy, upstream):
    """Runtime mode (HAProxy's runtime API, nginx's Lua upstreams): an open connection is not cut by a
    switch. Reload mode: the old worker closes it when proxy.drain_timeout ends, which apply waits for."""
    green = _Upstream()
    threading.Thread(target=green.serve_forever, daemon=True).start()
    try:
        proxy.apply(proxy.render([_backend(upstream)]))
        sock = _upgrade(proxy)
        try:
            assert _echo(sock, b"hello") == b"HELLO\n"
            [headers] = upstream.upgrades
            assert headers["upgrade"].lower() == "websocket" and "upgrade" in headers["connection"].lower()
            host, port = green.server_address[:2]
            switched = Backend(SERVICE, "green", "r2", Routes(paths=(PREFIX,)), ((str(host), int(port)),), "/health")
            text = proxy.render([switched])
            mode, why = proxy.plan_apply(text)
            proxy.apply(text)
            if mode == "runtime":
                assert _echo(sock, b"still there") == b"STILL THERE\n", why
            else:
                assert mode == "reload", why
                assert _closed(sock)
        finally:
            sock.close()
        new = _upgrade(proxy)  # a new connection goes to the new color
        new.close()
        assert len(green.upgrades) == 1
    finally:
        green.shutdown()
        green.server_close()
