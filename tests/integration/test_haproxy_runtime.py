"""HAProxy switches through its runtime API: no reload, no failed request for keep-alive clients.

A switch that changes only which servers a service's backend uses (a new color, more or fewer
instances within the slots) sets the servers on the admin socket and writes the same text to
haproxy.cfg; the master and its worker stay the same processes (no reload). These tests prove it
with the real binary: a whole release under keep-alive load (docker, the CLI), the undo of a
runtime change that failed half-way, restore() whichever way the change went, a long request that
outlives a switch, HTTPS with a certificate and a key kept in separate files, and ``haproxy -c`` on
every new template branch.

Upstreams here are threaded Python servers on loopback (HTTP/1.1 keep-alive), but for the release,
which runs the busybox images of the other flow tests. Every name starts with ``cdlibha``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cdlib.errors import ProxyError
from cdlib.model import Backend, Routes
from cdlib.proxy.haproxy import HaproxyProxy, haproxy_context, parse_config, tls_link
from cdlib.proxy.managed import LOADED_FILE
from cdlib.render import render_template
from tests.integration.conftest import Service
from tests.support.certs import make_pair
from tests.support.images import build_busybox_web_image
from tests.support.load import KeepAliveLoad
from tests.support.registry import free_port
from tests.unit._render_cases import edge_backends

pytestmark = pytest.mark.integration

SERVICE = "cdlibha"
PREFIX = f"/{SERVICE}/"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


# -- upstreams ---------------------------------------------------------------------------------------
class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # HAProxy's TCP checks reset: not news
        pass


class Upstreams:
    """Named HTTP/1.1 servers in threads; each answers its name. ``/hold`` is a long request: it
    streams its name, then waits until the test sets ``go`` (10 s at most), then says "done"."""

    def __init__(self) -> None:
        self.servers: dict[str, ThreadingHTTPServer] = {}
        self.go = threading.Event()

    def start(self, name: str) -> tuple[str, int]:
        go = self.go

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path.endswith("/hold"):
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for chunk in (name.encode() + b"\n", b"done\n"):
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                        self.wfile.flush()
                        go.wait(10)
                    self.wfile.write(b"0\r\n\r\n")
                    return
                body = name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = _Quiet(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, name=f"cdlibha-{name}", daemon=True).start()
        self.servers[name] = server
        return server.server_address[0], server.server_address[1]

    def addr(self, name: str) -> tuple[str, int]:
        host, port = self.servers[name].server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self.go.set()
        for server in self.servers.values():
            server.shutdown()
            server.server_close()


@pytest.fixture
def upstreams() -> Iterator[Upstreams]:
    u = Upstreams()
    yield u
    u.close()


@pytest.fixture
def haproxy(tmp_path) -> Iterator[HaproxyProxy]:
    p = HaproxyProxy(tmp_path / "haproxy", listen=f"127.0.0.1:{free_port()}", drain_timeout=5)
    yield p
    p.stop()


def backend(upstreams: Upstreams, color: str, *names: str, **routes) -> Backend:
    return Backend(SERVICE, color, f"r-{color}", Routes(paths=(PREFIX,), **routes),
                   tuple(upstreams.addr(n) for n in names))


def who(p: HaproxyProxy, path: str = "x") -> str:
    conn = http.client.HTTPConnection(p.host, p.port, timeout=5)
    try:
        conn.request("GET", PREFIX + path)
        resp = conn.getresponse()
        body = resp.read().decode()
        assert resp.status == 200, (resp.status, body)
        return body
    finally:
        conn.close()


def reloads(p: HaproxyProxy) -> int:
    """The master's reload count (``show proc``): the proof that a change did not reload."""
    m = re.search(r"^\s*\d+\s+master\s+(\d+)", p.master_command("show proc"), re.MULTILINE)
    assert m, "show proc names no master"
    return int(m.group(1))


def running_slots(p: HaproxyProxy) -> dict[tuple[str, str], tuple[str, int, bool]]:
    """What the running worker has, in the classifier's terms: (address, port, serving)."""
    return {key: (s["address"], s["port"], not s["admin"] & 0x23) for key, s in p.server_states().items()}


def file_slots(data: bytes) -> dict[tuple[str, str], tuple[str, int, bool]]:
    return parse_config(data.decode()).slots


# -- a whole release under keep-alive load -----------------------------------------------------------
IMAGE = f"{SERVICE}-web"


@pytest.fixture(scope="module")
def ha_images(docker_client) -> Iterator[None]:
    """Images of this module's own name: another session's cleanup of the shared ones cannot
    remove them under a release."""
    for version in ("v1", "v2"):
        build_busybox_web_image(docker_client, f"{IMAGE}:{version}", version)
    yield
    for version in ("v1", "v2"):
        try:
            docker_client.images.remove(f"{IMAGE}:{version}", force=True)
        except Exception:
            pass


@pytest.fixture
def ha_service(tmp_path, docker_client, ha_images) -> Iterator[Service]:
    svc = Service(tmp_path, docker_client, proxy_kind="haproxy")
    svc.name = f"{SERVICE}-{secrets.token_hex(3)}"
    svc.write()
    descriptor = json.loads(svc.file.read_text())
    descriptor["image"]["repository"] = IMAGE
    svc.file.write_text(json.dumps(descriptor, indent=2))
    yield svc
    svc.teardown()


def _wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout:g}s"
        time.sleep(0.02)


def test_a_release_under_keepalive_load_goes_by_the_runtime_api_and_fails_no_request(ha_service):
    svc = ha_service
    code, out = svc.cli_json("release", "--tag", "v1")
    assert code == 0, out
    p = HaproxyProxy(svc.proxy_dir, listen=f"127.0.0.1:{svc.port}")
    master, workers, count = p.master_pid(), p.workers(), reloads(p)
    assert master and workers

    with KeepAliveLoad(svc.url + "version", threads=4, pause=0.02) as load:
        _wait_for(lambda: load.sent >= 40, "40 requests through the proxy before the release")
        code, out = svc.cli_json("release", "--tag", "v2")
        done = time.monotonic()
        _wait_for(lambda: sum(1 for r in list(load.records) if r.started > done) >= 40,
                  "40 requests after the release")
    assert code == 0, out
    assert load.failures_by_kind == {}, load.failed_requests()[:5]
    assert load.bodies[0] == "v1" and load.bodies[-1] == "v2"
    assert load.connections >= 4
    # the switch went by the runtime API: the same master, the same worker, no reload counted
    assert p.master_pid() == master and p.workers() == workers and reloads(p) == count
    # the file says what runs: the new color's slots serve, the old ones are parked
    assert running_slots(p) == file_slots(p.read_config() or b"")
    assert p.plan_apply((p.read_config() or b"").decode())[0] == "none"


# -- the proxy alone: runtime, undo, restore ---------------------------------------------------------
def test_a_color_switch_keeps_the_worker_and_keepalive_clients(haproxy, upstreams):
    p = haproxy
    for name in ("alpha", "beta", "gamma"):
        upstreams.start(name)
    p.apply(p.render([backend(upstreams, "blue", "alpha")]))
    workers, count = p.workers(), reloads(p)
    with KeepAliveLoad(f"{p.url()}{PREFIX}x", threads=4, pause=0.005) as load:
        _wait_for(lambda: load.sent >= 40, "40 requests before the first switch")
        for color, name in (("green", "beta"), ("blue", "gamma"), ("green", "alpha")):
            text = p.render([backend(upstreams, color, name)])
            assert p.plan_apply(text)[0] == "runtime"
            timings = p.apply(text)
            assert "runtime" in timings and timings["reload"] == 0.0
            mark = time.monotonic()
            _wait_for(lambda m=mark: sum(1 for r in list(load.records) if r.started > m) >= 20, "20 requests after it")
            assert load.bodies[-1] == name
    assert load.failures_by_kind == {}, load.failed_requests()[:5]
    assert load.reconnects == 0  # nobody was told to go away
    assert p.workers() == workers and reloads(p) == count
    assert running_slots(p) == file_slots(p.read_config() or b"")


def test_a_route_change_still_reloads_and_says_why(haproxy, upstreams):
    p = haproxy
    upstreams.start("alpha")
    p.apply(p.render([backend(upstreams, "blue", "alpha")]))
    count = reloads(p)
    other = Backend("cdlibha-api", "blue", "r", Routes(paths=("/cdlibha-api/",)), (upstreams.addr("alpha"),))
    text = p.render([backend(upstreams, "blue", "alpha"), other])
    assert p.plan_apply(text) == ("reload", "backend cdlibha-api is new")
    timings = p.apply(text)
    assert "runtime" not in timings and reloads(p) == count + 1


def _fail_on(p: HaproxyProxy, command: str, always_after: bool = False) -> list[str]:
    """Make ``set server`` fail on the first command that contains ``command`` (and, with
    ``always_after``, on every one after it); returns the log of commands sent."""
    real = p._set_server
    sent: list[str] = []
    failing = {"on": False}

    def set_server(be: str, srv: str, what: str) -> None:
        line = f"{be}/{srv} {what}"
        sent.append(line)
        if command in line or (always_after and failing["on"]):
            failing["on"] = True
            raise ProxyError(f"the haproxy runtime API refused 'set server {line}': injected")
        real(be, srv, what)

    p._set_server = set_server  # type: ignore[method-assign]
    return sent


def test_a_failed_runtime_change_puts_the_previous_servers_back_without_a_reload(haproxy, upstreams):
    p = haproxy
    upstreams.start("alpha")
    upstreams.start("beta")
    p.apply(p.render([backend(upstreams, "blue", "alpha")]))
    prior, workers, count, before = p.read_config(), p.workers(), reloads(p), running_slots(p)
    sent = _fail_on(p, f"{SERVICE}/blue_1 state drain")  # after the new server was made ready
    with pytest.raises(ProxyError, match="injected.*the previous haproxy configuration was put back"):
        p.apply(p.render([backend(upstreams, "green", "beta")]))
    assert f"{SERVICE}/green_1 state ready" in sent  # it had gone half-way
    assert p.read_config() == prior and not p.staged_path.exists()
    assert running_slots(p) == before and p.workers() == workers and reloads(p) == count
    assert {who(p) for _ in range(6)} == {"alpha"}
    # the marker says the running worker runs the file again: restoring it is a no-op
    assert json.loads((p.dir / LOADED_FILE).read_text())["pid"] == p.master_pid()
    p.restore(prior)
    assert p.workers() == workers and reloads(p) == count


def test_when_the_runtime_api_cannot_undo_either_the_previous_file_is_reloaded(haproxy, upstreams):
    p = haproxy
    upstreams.start("alpha")
    upstreams.start("beta")
    p.apply(p.render([backend(upstreams, "blue", "alpha")]))
    prior, count = p.read_config(), reloads(p)
    _fail_on(p, f"{SERVICE}/blue_1 state drain", always_after=True)
    with pytest.raises(ProxyError, match="put back"):
        p.apply(p.render([backend(upstreams, "green", "beta")]))
    assert p.read_config() == prior and reloads(p) == count + 1  # the reload of the previous file
    assert running_slots(p) == file_slots(prior or b"")
    assert {who(p) for _ in range(6)} == {"alpha"}


def test_restore_works_whichever_way_the_change_went(haproxy, upstreams):
    p = haproxy
    upstreams.start("alpha")
    upstreams.start("beta")
    blue = p.render([backend(upstreams, "blue", "alpha")])
    green = p.render([backend(upstreams, "green", "beta")])
    p.apply(blue)
    prior, workers, count = p.read_config(), p.workers(), reloads(p)
    p.apply(green)
    p.restore(prior)  # back by the runtime API
    assert p.read_config() == prior and who(p) == "alpha" and p.workers() == workers and reloads(p) == count
    # killed between the runtime change and the rename: the servers are green, the file is blue and
    # there is no marker; restore cannot trust the file, so it reloads it
    p._apply_live(blue.encode(), green.encode())
    (p.dir / LOADED_FILE).unlink()
    assert who(p) == "beta"
    assert p.plan_apply(green)[0] == "reload"
    p.restore(prior)
    assert who(p) == "alpha" and reloads(p) == count + 1
    assert running_slots(p) == file_slots(prior or b"")


def test_a_long_request_outlives_a_runtime_switch(tmp_path, upstreams):
    """A runtime switch drains the old servers for a bounded time (like hard-stop-after), then puts
    them in maintenance, and never cuts what they still serve: a long request (a stream, a
    WebSocket) goes on on the old server; a reload would end it with the old worker."""
    p = HaproxyProxy(tmp_path / "haproxy", listen=f"127.0.0.1:{free_port()}", drain_timeout=0.5)
    try:
        upstreams.start("alpha")
        upstreams.start("beta")
        p.apply(p.render([backend(upstreams, "blue", "alpha")]))
        got: list[object] = []

        def hold() -> None:
            conn = http.client.HTTPConnection(p.host, p.port, timeout=15)
            try:
                conn.request("GET", PREFIX + "hold")
                resp = conn.getresponse()
                got.append((resp.status, resp.read().decode()))
            except OSError as exc:
                got.append(exc)
            finally:
                conn.close()

        t = threading.Thread(target=hold, name="cdlibha-hold")
        t.start()
        _wait_for(lambda: p.server_sessions([(SERVICE, "blue_1")]) == 1, "the long request on blue_1")
        p.apply(p.render([backend(upstreams, "green", "beta")]))
        assert t.is_alive()  # the request waits for the test: it was in flight through the whole switch
        assert p.server_states()[(SERVICE, "blue_1")]["admin"] & 0x01  # its server is in maintenance
        assert who(p) == "beta"
        upstreams.go.set()
        t.join(10)
        assert got == [(200, "alpha\ndone\n")]
    finally:
        upstreams.go.set()
        p.stop()


# -- HTTPS: a certificate and its key in separate files -----------------------------------------------
def test_https_with_separate_certificate_and_key_files(tmp_path, upstreams):
    pair = make_pair(tmp_path / "certs", "cdlibha", hosts=("cdlibha.test",))
    tls_port = free_port()
    p = HaproxyProxy(tmp_path / "haproxy", listen=f"127.0.0.1:{free_port()}", tls_listen=f"127.0.0.1:{tls_port}")
    try:
        upstreams.start("alpha")
        upstreams.start("beta")
        live = backend(upstreams, "blue", "alpha", tls_cert=str(pair.cert), tls_key=str(pair.key),
                       https_redirect=True)
        p.apply(p.render([live]))
        link = Path(tls_link(p.dir, str(pair.cert), str(pair.key)))
        assert os.readlink(link) == str(pair.cert) and os.readlink(f"{link}.key") == str(pair.key)
        assert not any(f.read_bytes() == pair.key.read_bytes() for f in p.dir.rglob("*") if f.is_file()
                       and not f.is_symlink())  # the key is linked, never copied
        context = ssl.create_default_context(cafile=str(pair.cert))
        conn = http.client.HTTPSConnection("127.0.0.1", tls_port, timeout=5, context=context)
        conn.request("GET", PREFIX + "x", headers={"Host": "cdlibha.test"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"alpha")
        conn.close()
        conn = http.client.HTTPConnection(p.host, p.port, timeout=5)
        conn.request("GET", PREFIX + "x?q=1", headers={"Host": "cdlibha.test:80"})
        resp = conn.getresponse()
        assert resp.status == 301 and resp.getheader("location") == f"https://cdlibha.test:{tls_port}{PREFIX}x?q=1"
        conn.close()
        # a color switch with TLS on is still a runtime change
        text = p.render([backend(upstreams, "green", "beta", tls_cert=str(pair.cert), tls_key=str(pair.key),
                                 https_redirect=True)])
        assert p.plan_apply(text)[0] == "runtime"
        count = reloads(p)
        p.apply(text)
        assert reloads(p) == count
    finally:
        p.stop()


# -- haproxy -c accepts every new branch ---------------------------------------------------------------
def _check(text: str, directory: Path) -> None:
    cfg = directory / "haproxy.cfg"
    cfg.write_text(text)
    proc = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "[ALERT]" not in proc.stderr and "[WARNING]" not in proc.stderr, proc.stderr


def test_haproxy_accepts_every_edge_rendering(tmp_path):
    """The edge golden's scenario with real files (the golden names paths that do not exist here),
    HTTPS on port 443 and on another, more instances than four slots, no TLS route with tls_listen."""
    certs = {b.service: make_pair(tmp_path / "certs", b.service, hosts=(f"{b.service}.test",))
             for b in edge_backends() if b.routes.tls_cert}
    real = [Backend(b.service, b.color, b.release, Routes(**{
        **{f: getattr(b.routes, f) for f in b.routes.__dataclass_fields__},
        **({"tls_cert": str(certs[b.service].cert), "tls_key": str(certs[b.service].key)}
           if b.service in certs else {})}), b.servers) for b in edge_backends()]
    many = Backend("cdlibha-many", "green", "r", Routes(paths=("/many/",)),
                   tuple(("127.0.0.1", 32100 + i) for i in range(9)))
    for tls_listen in ("127.0.0.1:8443", "443"):
        directory = tmp_path / f"p{tls_listen.replace(':', '-')}"
        p = HaproxyProxy(directory, listen="127.0.0.1:8880", tls_listen=tls_listen)
        directory.mkdir()
        text = p.render([*real, many])
        p._link_tls(text.encode())
        _check(text, directory)
        ctx = haproxy_context([*real, many], listen="127.0.0.1:8880", directory=directory, tls_listen=tls_listen)
        _check(render_template("haproxy.cfg.j2", ctx), directory)
    plain = tmp_path / "plain"
    plain.mkdir()
    _check(HaproxyProxy(plain, listen="8880", tls_listen="127.0.0.1:8443").render([many]), plain)


def test_a_disabled_slot_is_never_checked_nor_sent_to(haproxy, upstreams):
    """The placeholder address of an unused slot gets no traffic and no health check: the slot is
    in maintenance from the start."""
    p = haproxy
    upstreams.start("alpha")
    p.apply(p.render([backend(upstreams, "blue", "alpha")]))
    states = p.server_states()
    parked = [s for (be, srv), s in states.items() if srv != "blue_1"]
    assert parked and all(s["admin"] & 0x01 and (s["address"], s["port"]) == ("0.0.0.0", 1) for s in parked)
    assert {who(p) for _ in range(6)} == {"alpha"}
    with socket.create_connection((p.host, p.port), timeout=5):
        pass
