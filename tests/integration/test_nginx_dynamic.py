"""nginx with Debian's Lua module: a switch of color goes through the Lua balancer's admin socket,
without a reload, and keep-alive clients lose no request; a failed live change and restore() put
the previous servers back; a restart loads the servers the file records; nginx -t accepts every
nginx golden file.

The proxies run in short private directories (the admin socket's path must fit a unix socket), on
free ports; the services are named cdlibnx-…; everything started is stopped and removed.
"""

from __future__ import annotations

import http.client
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cdlib.errors import ProxyError
from cdlib.model import Backend, Routes
from cdlib.proxy.nginx import NginxProxy, lua_available
from tests.support.certs import make_pair
from tests.support.load import KeepAliveLoad
from tests.support.registry import free_port
from tests.unit import _render_cases as cases

pytestmark = pytest.mark.integration

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def test_the_lua_module_is_installed_here():
    """scripts/setup installs libnginx-mod-http-lua: every test below runs the dynamic mode."""
    assert lua_available(NGINX)


# -- small keep-alive servers standing for the instances of a color ---------------------------------
class _Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as most application servers

    def do_GET(self):  # noqa: N802 - the http.server API
        if self.path.endswith("/slow"):
            self.server.slow_started.set()  # type: ignore[attr-defined]
            self.server.release_slow.wait(10)  # type: ignore[attr-defined]
        body = f"{self.server.label}\n".encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Servers:
    """``count`` HTTP servers on free ports answering ``label``."""

    def __init__(self, label: str, count: int = 2):
        self.servers = []
        for _ in range(count):
            srv = ThreadingHTTPServer(("127.0.0.1", free_port()), _Answer)
            srv.label = label  # type: ignore[attr-defined]
            srv.slow_started = threading.Event()  # type: ignore[attr-defined]
            srv.release_slow = threading.Event()  # type: ignore[attr-defined]
            srv.daemon_threads = True
            threading.Thread(target=srv.serve_forever, daemon=True).start()
            self.servers.append(srv)

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        return tuple(("127.0.0.1", s.server_address[1]) for s in self.servers)

    def close(self) -> None:
        for s in self.servers:
            s.release_slow.set()  # type: ignore[attr-defined]
            s.shutdown()
            s.server_close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cdlibnx-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def colors() -> Iterator[dict[str, Servers]]:
    made = {"blue": Servers("blue"), "green": Servers("green")}
    yield made
    for s in made.values():
        s.close()


@pytest.fixture
def nginx(short_dir) -> Iterator[NginxProxy]:
    proxy = NginxProxy(short_dir / "nginx", listen=f"127.0.0.1:{free_port()}", drain_timeout=5)
    assert proxy.dynamic
    yield proxy
    proxy.stop()


NAME = f"cdlibnx-{secrets.token_hex(3)}"


def backend(color: str, colors: dict[str, Servers], release: str = "r-1") -> Backend:
    return Backend(NAME, color, release, Routes(paths=(f"/{NAME}/",)), colors[color].addresses)


def answer(proxy: NginxProxy) -> tuple[str, str]:
    """(body, X-Cdlib-Upstream) of one probe request through the proxy."""
    status, headers, body = proxy.request(f"/{NAME}/", {"X-Cdlib-Probe": "1"})
    assert status == 200, (status, body)
    return body.decode().strip(), headers.get("X-Cdlib-Upstream", "")


def processes(proxy: NginxProxy) -> tuple[int | None, set[int]]:
    return proxy.master_pid(), proxy.workers()


# -- a switch under keep-alive load -------------------------------------------------------------------
def test_a_switch_under_keep_alive_load_goes_live_without_a_reload_and_drops_nothing(nginx, colors):
    blue, green = backend("blue", colors), backend("green", colors, "r-2")
    nginx.apply(nginx.render([blue]))
    before = processes(nginx)
    text = nginx.render([green])
    assert nginx.plan_apply(text)[0] == "runtime"
    with KeepAliveLoad(f"{nginx.url()}/{NAME}/", threads=4, pause=0.002) as load:
        _wait_for(load, 200)
        timings = nginx.apply(text)
        _wait_for(load, load.sent + 200)
    assert load.failed == [], load.failures_by_kind
    assert timings["reload"] == 0.0 and "runtime" in timings
    assert processes(nginx) == before  # the same master and the same workers: no reload
    assert {"blue", "green"} <= set(load.bodies) and load.bodies[-1] == "green"
    # every answer after the switch came from green; the probe names a green server
    body, upstream = answer(nginx)
    assert body == "green" and upstream in {f"{a}:{p}" for a, p in colors["green"].addresses}
    # the file holds the same servers and is marked loaded: nothing left to apply, a restart keeps them
    assert nginx.read_config() == text.encode() and nginx.plan_apply(text)[0] == "none"
    assert nginx.live_servers()[0] == {NAME: "green r-2 " + " ".join(
        sorted(f"{a}:{p}" for a, p in colors["green"].addresses))}


def _wait_for(load: KeepAliveLoad, count: int) -> None:
    """Until the load has sent ``count`` requests (bounded: the load stops by itself)."""
    done = threading.Event()
    while not done.wait(0.01):
        with load.lock:
            if load.sent >= count:
                return
        if not any(t.is_alive() for t in load.threads):
            raise AssertionError(f"the load stopped after {load.sent} requests: {load.failures_by_kind}")


def test_a_release_through_cdlib_takes_the_runtime_path(tmp_path, docker_client, web_images, short_dir):
    """A whole release (deploy, probe, switch, cleanup) of a second version, through the CLI, under
    keep-alive load: 0 failed requests, and the nginx master and workers are those of the first."""
    from tests.integration.conftest import Service

    svc = Service(tmp_path, docker_client)
    svc.name = f"cdlibnx-{secrets.token_hex(3)}"
    svc.proxy_dir = short_dir / "nginx"
    svc.write()
    try:
        svc.cli("release", "--tag", "v1", check=True)
        proxy = NginxProxy(svc.proxy_dir, listen=f"127.0.0.1:{svc.port}")
        before = processes(proxy)
        assert before[0] is not None and proxy.dynamic
        with KeepAliveLoad(svc.url + "version", threads=4, pause=0.005) as load:
            _wait_for(load, 100)
            svc.cli("release", "--tag", "v2", check=True)
            _wait_for(load, load.sent + 100)
        assert load.failed == [], load.failures_by_kind
        assert processes(proxy) == before
        assert load.bodies[-1] == "v2" and "v1" in load.bodies
        assert svc.get() == (200, "v2")
    finally:
        svc.teardown()


def test_a_live_switch_returns_once_no_request_is_in_flight_to_the_old_servers(nginx, colors):
    """The drain: cleanup stops the old color right after the switch, so the switch waits until
    the requests the old servers still serve have ended (counted by the balancer)."""
    nginx.apply(nginx.render([backend("blue", colors)]))
    out: list = []
    slow = threading.Thread(target=lambda: out.append(nginx.request(f"/{NAME}/slow", timeout=15)))
    slow.start()
    blue = colors["blue"].servers
    for _ in range(500):  # until one of the blue servers holds the request
        if any(s.slow_started.wait(0.01) for s in blue):  # type: ignore[attr-defined]
            break
    assert sum(nginx.live_servers()[1].values()) == 1
    done = threading.Event()
    result: list = []

    def switch() -> None:
        result.append(nginx.apply(nginx.render([backend("green", colors)])))
        done.set()

    switcher = threading.Thread(target=switch)
    switcher.start()
    assert not done.wait(1.0), result  # still waiting for the request on blue
    assert answer(nginx)[0] == "green"  # while new requests already go to green
    for s in blue:
        s.release_slow.set()  # type: ignore[attr-defined]
    switcher.join(10)
    slow.join(10)
    assert done.is_set() and result[0]["reload"] == 0.0 and result[0]["drain"] > 0
    assert out[0][0] == 200 and out[0][2] == b"blue\n"  # and that request succeeded
    assert nginx.live_servers()[1] == {}


# -- failures and undo ------------------------------------------------------------------------------
def test_a_failed_live_change_puts_the_previous_servers_and_bytes_back(nginx, colors, monkeypatch):
    blue_text = nginx.render([backend("blue", colors)])
    nginx.apply(blue_text)
    before, live = processes(nginx), nginx.live_servers()[0]

    def fail() -> None:
        raise ProxyError("cannot rename nginx.conf.staged (injected)")

    monkeypatch.setattr(nginx, "_swap_in", fail)  # after the servers went live, before the file
    with pytest.raises(ProxyError, match="injected.*put back"):
        nginx.apply(nginx.render([backend("green", colors)]))
    monkeypatch.undo()
    assert nginx.live_servers()[0] == live
    assert nginx.read_config() == blue_text.encode() and nginx.plan_apply(blue_text)[0] == "none"
    assert processes(nginx) == before
    assert {answer(nginx)[0] for _ in range(4)} == {"blue"}


def test_restore_after_a_live_switch_goes_live_too(nginx, colors):
    blue_text = nginx.render([backend("blue", colors)])
    nginx.apply(blue_text)
    before, prior = processes(nginx), nginx.read_config()
    nginx.apply(nginx.render([backend("green", colors)]))
    assert answer(nginx)[0] == "green"
    nginx.restore(prior)  # as the switch's undo does after a failed probe
    assert nginx.read_config() == prior and processes(nginx) == before
    assert {answer(nginx)[0] for _ in range(4)} == {"blue"}
    nginx.restore(prior)  # idempotent
    assert processes(nginx) == before


def test_a_refused_configuration_changes_no_server(nginx, colors, tmp_path):
    nginx.apply(nginx.render([backend("blue", colors)]))
    live = nginx.live_servers()[0]
    broken = nginx.render([backend("green", colors)]).replace("keepalive 16;", "keepalive_nonsense 16;")
    with pytest.raises(ProxyError, match="refused"):
        nginx.apply(broken)
    assert nginx.live_servers()[0] == live and answer(nginx)[0] == "blue"


@pytest.mark.parametrize("line", [
    "cdlibnx-unknown green r-2 127.0.0.1:1",  # a service the file does not route: a reload's job
    f"{NAME} green r-2 127.0.0.1:1;proxy_pass",  # not an address
    f"{NAME} green r-2",  # no server
    f"{NAME} green r-2 127.0.0.1:1\nbad line",  # one bad line refuses them all
])
def test_the_admin_socket_refuses_what_is_not_a_servers_line_and_changes_nothing(nginx, colors, line):
    nginx.apply(nginx.render([backend("blue", colors)]))
    live = nginx.live_servers()[0]
    with pytest.raises(ProxyError, match="refused the servers"):
        nginx._admin("POST", line + "\n")
    assert nginx.live_servers()[0] == live and answer(nginx)[0] == "blue"


def test_the_admin_socket_is_its_owners_only(nginx, colors):
    nginx.apply(nginx.render([backend("blue", colors)]))
    assert (nginx.dir / "admin").stat().st_mode & 0o777 == 0o700
    assert nginx.admin_socket.is_socket()


def test_a_restart_and_a_reload_load_the_servers_the_file_records(nginx, colors):
    nginx.apply(nginx.render([backend("blue", colors)]))
    nginx.apply(nginx.render([backend("green", colors)]))  # live
    nginx.stop()
    nginx.ensure_running()
    assert {answer(nginx)[0] for _ in range(4)} == {"green"}
    # a route change reloads; the servers stay those of the file
    more = Backend(NAME, "green", "r-1", Routes(paths=(f"/{NAME}/", "/cdlibnx-more/")), colors["green"].addresses)
    text = nginx.render([more])
    mode, why = nginx.plan_apply(text)
    assert mode == "reload" and "routes" in why
    old_workers = nginx.workers()
    nginx.apply(text)
    assert not (nginx.workers() & old_workers)
    assert {answer(nginx)[0] for _ in range(4)} == {"green"}


def test_a_server_that_refuses_connections_is_retried_on_the_next(nginx, colors):
    dead = ("127.0.0.1", free_port())  # nothing listens there
    b = Backend(NAME, "blue", "r-1", Routes(paths=(f"/{NAME}/",)), (dead, *colors["blue"].addresses))
    nginx.apply(nginx.render([b]))
    conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=5)
    try:
        for _ in range(9):
            conn.request("GET", f"/{NAME}/")
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"blue\n")
    finally:
        conn.close()


# -- the edge: HTTPS per host, the redirect, and the probe --------------------------------------------
def _get(port: int, host: str, headers: dict | None = None, tls: bool = False) -> tuple[int, dict, bytes]:
    import ssl

    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection("127.0.0.1", port, timeout=5,
                                                                       context=context)
        conn.server_hostname = host  # type: ignore[attr-defined]  # SNI chooses the server block
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/x", headers={"Host": host, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_https_per_host_with_the_redirect_and_a_live_switch(short_dir, colors, tmp_path):
    host = "cdlibnx-shop.test"
    pair = make_pair(tmp_path / "tls", "shop", hosts=(host,))
    tls_port = free_port()
    proxy = NginxProxy(short_dir / "nginx", listen=f"127.0.0.1:{free_port()}", tls_listen=f"127.0.0.1:{tls_port}",
                       drain_timeout=5)

    def shop(color: str) -> Backend:
        return Backend(NAME, color, "r-1", Routes(hosts=(host,), tls_cert=str(pair.cert), tls_key=str(pair.key),
                                                  https_redirect=True), colors[color].addresses)

    try:
        proxy.apply(proxy.render([shop("blue")]))
        status, headers, _ = _get(proxy.port, host)
        assert status == 301 and headers["Location"] == f"https://{host}:{tls_port}/x"
        # cdlib's probe is answered over plain HTTP, by the server that serves the route
        status, headers, body = _get(proxy.port, host, {"X-Cdlib-Probe": "1"})
        assert (status, body) == (200, b"blue\n")
        assert headers["X-Cdlib-Upstream"] in {f"{a}:{p}" for a, p in colors["blue"].addresses}
        assert _get(tls_port, host, tls=True)[::2] == (200, b"blue\n")
        before = processes(proxy)
        text = proxy.render([shop("green")])
        assert proxy.plan_apply(text)[0] == "runtime"  # the certificate did not change
        proxy.apply(text)
        assert _get(tls_port, host, tls=True)[::2] == (200, b"green\n") and processes(proxy) == before
    finally:
        proxy.stop()


# -- nginx accepts every golden file -------------------------------------------------------------------
@pytest.mark.parametrize("golden", sorted(p.name for p in (cases.GOLDEN_ROOT / "nginx").glob("*.conf")))
def test_nginx_accepts_every_nginx_golden_file(tmp_path, golden):
    text = (cases.GOLDEN_ROOT / "nginx" / golden).read_text()
    for name in ("shop", "reports"):  # the certificate files the edge goldens name
        pair = make_pair(tmp_path / "tls", name, hosts=(f"{name}.example.com",))
        text = text.replace(f"/etc/cdlib/tls/{name}.pem", str(pair.cert))
        text = text.replace(f"/etc/cdlib/tls/{name}.key", str(pair.key))
    prefix = tmp_path / "prefix"
    (prefix / "temp").mkdir(parents=True)
    # nginx -t binds the admin socket (and removes it): its directory must exist
    text = text.replace("unix:/var/lib/cdlib/nginx/admin/nginx.sock", f"unix:{prefix}/admin.sock")
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    proc = subprocess.run([NGINX, "-t", "-q", "-p", f"{prefix}/", "-c", str(conf)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_preflight_before_the_proxy_directory_exists(short_dir):
    """nginx -t binds the admin socket: the check runs with it in a temporary directory, so a first
    release (no proxy directory yet) passes, and nothing is created."""
    proxy = NginxProxy(short_dir / "not-yet", listen=f"127.0.0.1:{free_port()}")
    assert proxy.dynamic
    proxy.preflight()
    assert not (short_dir / "not-yet").exists()
