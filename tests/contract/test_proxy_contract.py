"""The proxy contract, run against every adapter: MemoryProxy, a real private nginx and HAProxy.

Traffic goes to tiny HTTP servers on free ports that answer with their own name and the path they
saw, so each test can tell who answered. Every request goes through the port's ``request()``, the
method the core's probe uses; the memory proxy runs with ``forward=True`` so it really forwards.
"""

from __future__ import annotations

import errno
import fcntl
import http.client
import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cdlib.errors import ProxyError
from cdlib.model import Backend, Routes
from cdlib.proxy import managed as managed_module
from cdlib.proxy.base import PROBE_HEADER, UPSTREAM_HEADER
from cdlib.proxy.container import ContainerProxy, DockerEngine
from cdlib.proxy.haproxy import HaproxyProxy
from cdlib.proxy.managed import LOCK_FILE
from cdlib.proxy.memory import MemoryProxy
from cdlib.proxy.nginx import NginxProxy, children
from tests.support.registry import free_port

PRIVATE = {"nginx": NginxProxy, "haproxy": HaproxyProxy}

# a template each binary's validation refuses, and the word its message then names
BROKEN = {
    "nginx": """\
{% extends "nginx.conf.j2" %}
{% block http_extra %}
    cdlibt_no_such_directive on;
{% endblock %}
""",
    "haproxy": """\
{% extends "haproxy.cfg.j2" %}
{% block global_extra %}
    cdlibt_no_such_keyword on
{% endblock %}
""",
}
BROKEN_WORD = {"nginx": "cdlibt_no_such_directive", "haproxy": "cdlibt_no_such_keyword"}




# -- backends -------------------------------------------------------------------------------------
class Backends:
    """Named HTTP servers in threads; each answers '<name> <path>', after ``delay`` seconds when
    the test needs a request still in flight during a reload."""

    def __init__(self):
        self.servers: dict[str, ThreadingHTTPServer] = {}

    def start(self, name: str, delay: float = 0.0) -> tuple[str, int]:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                time.sleep(delay)
                body = f"{name} {self.path}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Cdlib-Upstream", "forged-by-the-backend")  # the proxy must hide it
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

            def handle(self):
                try:
                    super().handle()
                except (ConnectionResetError, BrokenPipeError):
                    pass  # HAProxy's health checks reset their connections; a cut request breaks the pipe

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"cdlibt-{name}", daemon=True).start()
        self.servers[name] = server
        return server.server_address[:2]

    def addr(self, name: str) -> str:
        host, port = self.servers[name].server_address[:2]
        return f"{host}:{port}"

    def stop(self, name: str) -> None:
        server = self.servers.pop(name)
        server.shutdown()
        server.server_close()

    def stop_all(self) -> None:
        for name in list(self.servers):
            self.stop(name)


@pytest.fixture
def backends():
    b = Backends()
    yield b
    b.stop_all()


def backend(backends: Backends, *names: str, color: str = "blue", service: str = "cdlibt-demo",
            paths=("/demo/",), hosts=()) -> Backend:
    servers = tuple(sorted(backends.servers[n].server_address[:2] for n in names))
    return Backend(service, color, f"r-{color}", Routes(tuple(paths), tuple(hosts)), servers)


# -- adapters -------------------------------------------------------------------------------------
class Harness:
    def __init__(self, kind: str, tmp_path: Path):
        self.kind = kind
        self.tmp = tmp_path
        self.dir = tmp_path / "proxy"
        self.listen = f"127.0.0.1:{free_port()}"
        self.proxy = self.make()

    def make(self, template: Path | None = None):
        if self.kind == "memory":
            return MemoryProxy(self.dir, forward=True)
        if self.kind in CONTAINER:  # the proxy in a container on the local engine (host network)
            return ContainerProxy(CONTAINER[self.kind], name=f"cdlibpx-ct-{self.listen.rsplit(':', 1)[1]}",
                                  listen=self.listen, template=template, drain_timeout=10)
        return PRIVATE[self.kind](self.dir, listen=self.listen, template=template, drain_timeout=10)

    def running(self) -> bool:
        if self.kind == "memory":
            return self.proxy.running
        return self.proxy.master_pid() is not None

    def invalid_text(self, backends: list[Backend]) -> str:
        """A whole configuration the adapter's validation must refuse."""
        if self.kind == "memory":
            return self.proxy.render(backends)[:-3]  # a truncated document
        template = self.tmp / "broken.conf.j2"
        template.write_text(BROKEN[CONTAINER.get(self.kind, self.kind)])
        return self.make(template).render(backends)

    def get(self, path: str, headers: dict | None = None) -> tuple[int, dict, str]:
        status, hdrs, body = self.proxy.request(path, headers)
        return status, {k.lower(): v for k, v in hdrs.items()}, body.decode()

    def who(self, path: str = "/demo/x", headers: dict | None = None) -> str:
        status, _, body = self.get(path, headers)
        assert status == 200, (status, body)
        return body.split(" ")[0]

    def close(self) -> None:
        if self.kind in PRIVATE:
            self.proxy.stop()
        if self.kind in CONTAINER:
            self.proxy.stop()  # removes the container
            self.proxy.close()


# the proxy as a container (cdlib.proxy.container), for each kind
CONTAINER = {"nginx-container": "nginx", "haproxy-container": "haproxy"}
_IMAGES_READY: set[str] = set()


def proxy_image(kind: str) -> None:
    """Build the proxy image once per session unless it is there (fast when it is)."""
    if kind not in _IMAGES_READY:
        engine = DockerEngine()
        try:
            engine.ensure_image(kind)
        finally:
            engine.close()
        _IMAGES_READY.add(kind)


@pytest.fixture(params=["memory", pytest.param("nginx", marks=pytest.mark.integration),
                        pytest.param("haproxy", marks=pytest.mark.integration),
                        pytest.param("nginx-container", marks=pytest.mark.integration),
                        pytest.param("haproxy-container", marks=pytest.mark.integration)])
def harness(request, tmp_path):
    if request.param in CONTAINER:
        proxy_image(CONTAINER[request.param])
    h = Harness(request.param, tmp_path)
    yield h
    h.close()


# -- the contract -----------------------------------------------------------------------------------
def test_apply_when_not_running_starts_it_and_routes_traffic(harness, backends):
    backends.start("alpha")
    p = harness.proxy
    assert not harness.running()
    assert harness.get("/demo/")[0] == 0  # nothing answers yet
    timings = p.apply(p.render([backend(backends, "alpha")]))
    assert set(timings) >= {"validate", "reload", "drain"}
    assert harness.running()
    status, _, body = harness.get("/demo/hello?x=1")
    assert (status, body) == (200, "alpha /hello?x=1")  # the prefix is stripped, the query kept


def test_bare_prefix_redirects_to_the_prefix(harness, backends):
    backends.start("alpha")
    harness.proxy.apply(harness.proxy.render([backend(backends, "alpha")]))
    # request() returns the redirect (the probe must see the proxy's own answer); following it, as a
    # client would, /demo ends up at the backend's root
    status, headers, _ = harness.get("/demo")
    location = headers.get("location", f"none in {status} {headers}")
    assert (status, location.rsplit(":", 1)[-1].split("/", 1)[-1]) == (301, "demo/")
    assert harness.get("/demo/")[2] == "alpha /"


def test_switching_backends_changes_who_answers(harness, backends):
    backends.start("alpha")
    backends.start("beta")
    p = harness.proxy
    p.apply(p.render([backend(backends, "alpha", color="blue")]))
    assert {harness.who() for _ in range(4)} == {"alpha"}
    p.apply(p.render([backend(backends, "beta", color="green")]))
    assert {harness.who() for _ in range(4)} == {"beta"}


def test_requests_spread_over_all_servers_of_a_backend(harness, backends):
    backends.start("alpha")
    backends.start("alpha2")
    p = harness.proxy
    p.apply(p.render([backend(backends, "alpha", "alpha2")]))
    assert {harness.who() for _ in range(8)} == {"alpha", "alpha2"}


def test_host_route_passes_the_path_unchanged(harness, backends):
    backends.start("alpha")
    backends.start("beta")
    p = harness.proxy
    p.apply(p.render([backend(backends, "alpha"),
                      backend(backends, "beta", service="cdlibt-api", paths=(), hosts=("api.cdlibt.test",))]))
    status, _, body = harness.get("/v1/items", {"Host": "api.cdlibt.test"})
    assert (status, body) == (200, "beta /v1/items")
    assert harness.who("/demo/x") == "alpha"
    assert harness.get("/v1/items")[0] == 404  # without the host: no route


def test_probe_header_reveals_the_upstream_only_when_asked(harness, backends):
    backends.start("alpha")
    p = harness.proxy
    p.apply(p.render([backend(backends, "alpha", color="green")]))
    status, headers, _ = harness.get("/demo/x")
    assert status == 200
    assert "x-cdlib-upstream" not in headers and "x-cdlib-color" not in headers  # the backend's forgery is hidden
    status, headers, _ = harness.get("/demo/x", {PROBE_HEADER: "1"})
    assert status == 200
    assert headers[UPSTREAM_HEADER.lower()] == backends.addr("alpha")
    assert headers["x-cdlib-color"] == "green"
    _, headers, _ = harness.get("/demo/x", {PROBE_HEADER: "yes"})
    assert "x-cdlib-upstream" not in headers


def test_invalid_config_is_refused_and_nothing_changes(harness, backends):
    backends.start("alpha")
    backends.start("beta")
    p = harness.proxy
    p.apply(p.render([backend(backends, "alpha")]))
    before = p.read_config()
    with pytest.raises(ProxyError, match="refused"):
        p.apply(harness.invalid_text([backend(backends, "beta", color="green")]))
    assert p.read_config() == before
    assert {harness.who() for _ in range(4)} == {"alpha"}


def test_restore_puts_the_exact_bytes_back_and_is_idempotent(harness, backends):
    backends.start("alpha")
    backends.start("beta")
    p = harness.proxy
    p.apply(p.render([backend(backends, "alpha")]))
    prior = p.read_config()
    p.apply(p.render([backend(backends, "beta", color="green")]))
    assert p.read_config() != prior and harness.who() == "beta"
    p.restore(prior)
    assert p.read_config() == prior
    assert harness.who() == "alpha"
    p.restore(prior)
    assert p.read_config() == prior
    assert harness.who() == "alpha"


def test_restore_none_returns_to_no_configuration_and_no_proxy(harness, backends):
    """None is the state before anything was ever served: no config file, no running proxy."""
    backends.start("alpha")
    p = harness.proxy
    p.apply(p.render([backend(backends, "alpha")]))
    p.restore(None)
    assert p.read_config() is None
    assert not harness.running()
    p.restore(None)  # idempotent
    assert p.read_config() is None and not harness.running()
    p.apply(p.render([backend(backends, "alpha")]))  # and it starts again on the next apply
    assert harness.who() == "alpha"


def test_ensure_running_serves_the_empty_configuration(harness):
    p = harness.proxy
    p.ensure_running()
    assert harness.running()
    assert harness.get("/_cdlib/health")[0] == 200
    assert harness.get("/anything")[0] == 503
    p.ensure_running()  # a second call changes nothing
    assert harness.running()


def test_backend_without_servers_answers_503(harness, backends):
    p = harness.proxy
    p.apply(p.render([Backend("cdlibt-demo", "blue", "r", Routes(paths=("/demo/",)), ())]))
    assert harness.get("/demo/x")[0] == 503


# -- memory only --------------------------------------------------------------------------------------
def test_memory_injected_failure_keeps_the_previous_configuration(backends):
    backends.start("alpha")
    backends.start("beta")
    p = MemoryProxy(forward=True)
    p.apply(p.render([backend(backends, "alpha")]))
    before = p.read_config()
    p.fail_next_apply = "reload failed"
    with pytest.raises(ProxyError, match="reload failed"):
        p.apply(p.render([backend(backends, "beta", color="green")]))
    assert p.read_config() == before and p.served == {"cdlibt-demo": "blue"}
    assert p.fail_next_apply is None  # one shot
    p.apply(p.render([backend(backends, "beta", color="green")]))
    assert p.served == {"cdlibt-demo": "green"} and p.last_good == before
    assert len(p.applies) == 2 and len(p.refused) == 1


def test_memory_answer_from_old_serves_the_previous_color():
    p = MemoryProxy()
    old = Backend("shop", "blue", "r1", Routes(paths=("/shop/",)), (("10.0.0.1", 1),))
    new = Backend("shop", "green", "r2", Routes(paths=("/shop/",)), (("10.0.0.2", 1),))
    p.apply(p.render([old]))
    p.apply(p.render([new]))
    assert p.request("/shop/", {PROBE_HEADER: "1"})[1][UPSTREAM_HEADER] == "10.0.0.2:1"
    p.answer_from_old = True
    assert p.request("/shop/", {PROBE_HEADER: "1"})[1][UPSTREAM_HEADER] == "10.0.0.1:1"


def test_memory_route_mirrors_nginx_location_rules():
    p = MemoryProxy()
    p.apply(p.render([
        Backend("a", "blue", "r", Routes(paths=("/", "/a/b")), (("10.0.0.1", 1),)),
        Backend("b", "green", "r", Routes(paths=("/a/",), hosts=("*.b.test",)), (("10.0.0.2", 1),)),
    ]))
    assert (p.route("/a/b/c").service, p.route("/a/b/c").path) == ("a", "/c")  # longest prefix
    assert (p.route("/a/x").service, p.route("/a/x").path) == ("b", "/x")
    assert p.route("/zzz").service == "a"
    assert p.route("/a/b?q=1").location == "/a/b/?q=1"
    assert (p.route("/p", host="x.b.test:80").service, p.route("/p", host="x.b.test").path) == ("b", "/p")
    assert p.route("/_cdlib/health").status == 200


# -- the private instances: nginx and HAProxy ---------------------------------------------------------
def _private(kind: str, tmp_path: Path):
    h = Harness(kind, tmp_path)
    yield h
    h.close()
    assert h.proxy.master_pid() is None


@pytest.fixture(params=["nginx", "haproxy"])
def managed(request, tmp_path):
    """A harness around a private nginx or HAProxy; it must not outlive the test."""
    yield from _private(request.param, tmp_path)


@pytest.fixture
def haproxy(tmp_path):
    yield from _private("haproxy", tmp_path)


# files each instance keeps in its directory besides its configuration
LAYOUT = {"nginx": ("nginx.pid", "error.log", "access.log", "temp/proxy"),
          "haproxy": ("haproxy.pid", "master.sock", "admin.sock")}
# how a start on a port that is already taken fails, in the binary's own words
BIND_REFUSED = {"nginx": r"did not start: \[emerg\] bind\(\) to .* failed",
                "haproxy": "did not start.*cannot bind"}


def raw_get(proxy, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw_who(p) -> str:
    """Who answers /demo/x on a fresh connection (the name of the backend)."""
    status, _, body = raw_get(p, "/demo/x")
    assert status == 200, (status, body)
    return body.decode().split(" ")[0]


def _state(pid: int) -> str:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "X"
    return data[data.rfind(")") + 2:].split()[0]


def _in_background(fn) -> tuple[threading.Thread, list]:
    out: list = []

    def run():
        try:
            out.append(fn())
        except OSError as exc:
            out.append(exc)

    t = threading.Thread(target=run, name="cdlibt-request")
    t.start()
    return t, out


@pytest.mark.integration
def test_drain_no_pre_reload_worker_survives_apply(managed, backends):
    backends.start("beta")
    backends.start("slow", delay=0.6)
    p = managed.proxy
    p.apply(p.render([backend(backends, "slow")]))
    master = p.master_pid()
    old = children(master)
    assert old
    sent = time.monotonic()
    t, out = _in_background(lambda: raw_get(p, "/demo/slow"))
    time.sleep(0.15)  # the request is now inside an old worker
    # a new route as well: a change of servers alone goes by the runtime API (no reload, no drain)
    timings = p.apply(p.render([backend(backends, "beta", color="green", paths=("/demo/", "/cdlibt-more/"))]))
    assert p.master_pid() == master  # a reload, not a restart
    assert not any(_state(pid) not in ("Z", "X") for pid in old)
    assert children(master) and not children(master) & old
    # apply waited for the request the old worker still served: it cannot return before the
    # backend's 0.6 s answer (how much of that was drain depends on how long validate and reload took)
    assert timings["drain"] > 0 and time.monotonic() - sent >= 0.55
    t.join(5)
    assert out and out[0][0] == 200 and out[0][2] == b"slow /slow"  # and that request succeeded
    assert raw_who(p) == "beta"


@pytest.mark.integration
def test_files_text_and_layout(managed, backends):
    backends.start("alpha")
    backends.start("beta")
    p = managed.proxy
    p.apply(p.render([backend(backends, "alpha")]))
    first = p.read_config()
    assert not p.last_good_path.exists()  # nothing was active before the first apply
    p.apply(p.render([backend(backends, "beta", color="green")]))
    assert p.last_good_path.read_bytes() == first
    assert not p.staged_path.exists()
    for name in LAYOUT[managed.kind]:
        assert (managed.dir / name).exists(), name
    st = p.status()
    assert st["running"] and st["pid"] == p.master_pid() and st["url"] == p.url()
    assert st["workers"] == sorted(p.workers())
    status, headers, _ = raw_get(p, "/demo")
    assert (status, headers["location"]) == (301, "/demo/")
    status, headers, _ = raw_get(p, "/demo?x=1")
    assert (status, headers["location"]) == (301, "/demo/?x=1")
    status, _, body = raw_get(p, "/nowhere")
    assert (status, body) == (404, b"no route for this path\n")
    assert raw_get(p, "/_cdlib/health")[::2] == (200, b"ok\n")


@pytest.mark.integration
def test_refused_config_leaves_file_and_process_untouched(managed, backends):
    backends.start("alpha")
    p = managed.proxy
    p.apply(p.render([backend(backends, "alpha")]))
    before, workers = p.read_config(), p.workers()
    invalid = managed.invalid_text([backend(backends, "alpha")])
    line = next(i for i, text in enumerate(invalid.splitlines(), 1) if BROKEN_WORD[managed.kind] in text)
    with pytest.raises(ProxyError, match="refused the rendered configuration") as info:
        p.apply(invalid)
    # the message points at the file and the line that failed, and never quotes the file
    assert f"line {line} of {p.staged_path}" in str(info.value), str(info.value)
    assert BROKEN_WORD[managed.kind] not in str(info.value)
    assert p.staged_path.stat().st_mode & 0o777 == 0o600  # the refused candidate stays private
    assert p.read_config() == before and p.workers() == workers


@pytest.mark.integration
def test_reload_failure_after_the_swap_restores_the_previous_bytes(managed, backends):
    backends.start("alpha")
    backends.start("beta")
    p = managed.proxy
    p.apply(p.render([backend(backends, "alpha")]))
    before, master = p.read_config(), p.master_pid()
    with socket.socket() as taken:  # validation does not bind, the reload does: it must fail there
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        other = PRIVATE[managed.kind](managed.dir, listen=f"127.0.0.1:{taken.getsockname()[1]}",
                                      drain_timeout=10)
        t0 = time.monotonic()
        with pytest.raises(ProxyError, match="refused the reload.*put back"):
            other.apply(other.render([backend(backends, "beta", color="green")]))
        assert time.monotonic() - t0 < other.reload_timeout / 2  # told apart from a slow reload
    assert p.read_config() == before and p.master_pid() == master
    assert {managed.who() for _ in range(4)} == {"alpha"}
    if managed.kind == "haproxy":
        assert re.search(r"master +2 ", p.master_command("show proc"))  # the refused reload and the undo


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_start_failure_leaves_no_file_behind(tmp_path, backends, kind):
    backends.start("alpha")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        p = PRIVATE[kind](tmp_path / "proxy", listen=f"127.0.0.1:{taken.getsockname()[1]}")
        try:
            with pytest.raises(ProxyError, match=BIND_REFUSED[kind]):
                p.apply(p.render([backend(backends, "alpha")]))
            assert p.read_config() is None and p.master_pid() is None
        finally:
            p.stop()


@pytest.mark.integration
def test_switch_under_traffic_drops_nothing_when_the_old_backend_stops_after_apply(managed, backends):
    p = managed.proxy
    backends.start("gen0")
    p.apply(p.render([backend(backends, "gen0")]))
    failures: list[str] = []
    answers: list[str] = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:  # a new connection per request, like the measured clients
                status, _, body = raw_get(p, "/demo/x")
                (answers if status == 200 else failures).append(f"{status} {body[:40]!r}")
            except OSError as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=client, name=f"cdlibt-client-{i}") for i in range(4)]
    for t in threads:
        t.start()
    try:
        for gen in range(1, 4):
            time.sleep(0.2)
            backends.start(f"gen{gen}")
            p.apply(p.render([backend(backends, f"gen{gen}", color=("green", "blue")[gen % 2])]))
            backends.stop(f"gen{gen - 1}")  # right after apply returned: the old workers are gone
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert len(answers) > 50
    assert failures == []
    assert answers[-1].startswith("200 b'gen3")


@pytest.mark.integration
def test_stop_waits_for_the_master_and_its_workers_to_exit(managed):
    p = managed.proxy
    p.ensure_running()
    pid = p.master_pid()
    workers = p.workers()
    assert pid is not None and workers
    assert p.stop() is True
    assert p.master_pid() is None and _state(pid) in ("Z", "X")
    assert all(_state(w) in ("Z", "X") for w in workers)
    assert p.stop() is False


@pytest.mark.integration
def test_restore_none_waits_for_the_lock_before_stopping(managed, backends):
    """Another process changing the proxy holds the lock: restore(None) must not stop the proxy
    under it (that apply could start it again on the file restore then deletes)."""
    backends.start("alpha")
    p = managed.proxy
    p.apply(p.render([backend(backends, "alpha")]))
    with open(managed.dir / LOCK_FILE, "a+") as other:  # another open file: a lock of its own
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        t, out = _in_background(lambda: p.restore(None))
        time.sleep(0.3)
        assert p.master_pid() is not None and p.read_config() is not None
        fcntl.flock(other.fileno(), fcntl.LOCK_UN)
    t.join(30)
    assert out == [None]
    assert p.master_pid() is None and p.read_config() is None


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_a_lock_file_that_cannot_be_opened_is_a_proxy_error(tmp_path, kind):
    p = PRIVATE[kind](tmp_path / "proxy", listen=f"127.0.0.1:{free_port()}")
    (tmp_path / "proxy" / LOCK_FILE).mkdir(parents=True)  # open() fails on it, even for root
    for call in (lambda: p.apply(p.render([])), lambda: p.restore(b"x"), lambda: p.restore(None),
                 p.ensure_running):
        with pytest.raises(ProxyError, match="cannot open the lock file"):
            call()
    assert p.master_pid() is None


@pytest.mark.integration
def test_stop_of_a_master_of_another_user_is_a_proxy_error(managed, monkeypatch):
    p = managed.proxy
    p.ensure_running()
    master = p.master_pid()
    real_kill = os.kill

    def kill(pid, sig):
        if pid == master:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        real_kill(pid, sig)

    monkeypatch.setattr(managed_module.os, "kill", kill)
    with pytest.raises(ProxyError, match="runs as another user"):
        p.restore(None)
    monkeypatch.undo()
    assert p.master_pid() == master  # untouched; the fixture stops it


# -- haproxy only -------------------------------------------------------------------------------------
@pytest.mark.integration
def test_haproxy_hard_stop_after_bounds_the_drain(tmp_path, backends):
    """A request longer than the drain cannot hold a release: hard-stop-after (the drain timeout
    less 2 s here) ends the old worker, and apply returns instead of failing. The 2 s are the
    worker's to be told, to exit and to be seen gone: 1 s was once too little on a loaded machine."""
    backends.start("beta")
    backends.start("slow", delay=6.0)
    # every change by reload: a switch through the runtime API does not end the old worker at all
    p = HaproxyProxy(tmp_path / "proxy", listen=f"127.0.0.1:{free_port()}", drain_timeout=4, runtime_api=False)
    try:
        assert "hard-stop-after 2s" in p.render([])
        p.apply(p.render([backend(backends, "slow")]))
        t, out = _in_background(lambda: raw_get(p, "/demo/slow"))
        time.sleep(0.15)
        p.apply(p.render([backend(backends, "beta", color="green")]))  # returns: it did not fail
        assert raw_who(p) == "beta"
        t.join(10)
        # the old worker was ended and the request cut, as documented: a drain that had waited for the
        # backend's 6 s answer would have let it end with 200
        assert out and (isinstance(out[0], OSError) or out[0][0] != 200)
    finally:
        p.stop()


@pytest.mark.integration
def test_haproxy_sockets_and_runtime_api(haproxy, backends):
    """After a reload: both sockets are private, the runtime API knows the servers of the live
    color, and the master counts no failed reload."""
    backends.start("alpha")
    backends.start("beta")
    p = haproxy.proxy
    for live in (backend(backends, "alpha"), backend(backends, "beta", color="green")):
        p.apply(p.render([live]))
    assert (haproxy.dir / "admin.sock").stat().st_mode & 0o777 == 0o600
    assert (haproxy.dir / "master.sock").stat().st_mode & 0o777 == 0o600
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(haproxy.dir / "admin.sock"))
        s.sendall(b"show servers state\n")
        s.shutdown(socket.SHUT_WR)
        state = s.makefile().read()
    host, port = backends.addr("beta").split(":")
    assert f"cdlibt-demo 5 green_1 {host} " in state and f" {port} " in state
    assert "[failed: 0]" in p.master_command("show proc")


@pytest.mark.integration
def test_haproxy_second_instance_on_the_same_port_is_refused(haproxy, backends, tmp_path):
    """noreuseport: two private instances never share one port (and the traffic) silently."""
    backends.start("alpha")
    backends.start("beta")
    p = haproxy.proxy
    p.apply(p.render([backend(backends, "alpha")]))
    intruder = HaproxyProxy(tmp_path / "other", listen=haproxy.listen)
    try:
        with pytest.raises(ProxyError, match="did not start"):
            intruder.apply(intruder.render([backend(backends, "beta", color="green")]))
        assert intruder.master_pid() is None
    finally:
        intruder.stop()
    assert {haproxy.who() for _ in range(8)} == {"alpha"}


# -- nothing to restore, nothing done -----------------------------------------------------------------
def test_restore_of_what_is_already_active_does_not_reload(harness, backends):
    """An undo with nothing to restore succeeds without touching the proxy."""
    backends.start("alpha")
    p = harness.proxy
    p.apply(p.render([backend(backends, "alpha")]))
    prior = p.read_config()
    if harness.kind == "memory":
        reloads = p.reloads
        p.restore(prior)
        assert p.read_config() == prior and harness.who() == "alpha" and p.reloads == reloads
        return
    master, workers = p.master_pid(), p.workers()
    p.restore(prior)
    assert p.master_pid() == master and p.workers() == workers  # no reload: the same workers
    assert p.read_config() == prior and harness.who() == "alpha"


@pytest.mark.integration
def test_restore_with_a_missing_binary_succeeds_when_nothing_changed(managed, backends):
    """proxy.binary mistyped: the switch's apply fails before anything changed, and its undo
    (restore the prior bytes, or None on a first release) must then succeed without the binary."""
    backends.start("alpha")
    good = managed.proxy
    good.apply(good.render([backend(backends, "alpha")]))
    prior, master, workers = good.read_config(), good.master_pid(), good.workers()
    typo = PRIVATE[managed.kind](managed.dir, listen=managed.listen, binary="cdlibt-no-such-binary",
                                 drain_timeout=10)
    with pytest.raises(ProxyError, match="not found"):
        typo.apply(typo.render([backend(backends, "alpha", color="green")]))
    typo.restore(prior)
    assert typo.read_config() == prior and good.master_pid() == master and good.workers() == workers
    assert not typo.staged_path.exists()
    assert managed.who() == "alpha"
    # a first release: nothing was ever served from the directory
    fresh = PRIVATE[managed.kind](managed.tmp / "fresh", listen=f"127.0.0.1:{free_port()}",
                                  binary="cdlibt-no-such-binary")
    with pytest.raises(ProxyError, match="not found"):
        fresh.apply(fresh.render([backend(backends, "alpha")]))
    fresh.restore(None)
    fresh.restore(None)
    assert fresh.read_config() is None and fresh.master_pid() is None
    never = PRIVATE[managed.kind](managed.tmp / "never", listen=f"127.0.0.1:{free_port()}")
    never.restore(None)
    assert not (managed.tmp / "never").exists()  # not even the directory is created


@pytest.mark.integration
def test_restore_reloads_when_the_running_proxy_loaded_something_else(managed, backends):
    """The file holds the prior bytes but the master was not reloaded since they were written
    (the marker says so): restore reloads, as before."""
    backends.start("alpha")
    backends.start("beta")
    p = managed.proxy
    p.apply(p.render([backend(backends, "alpha")]))
    prior = p.read_config()
    p.apply(p.render([backend(backends, "beta", color="green")]))
    p.config_path.write_bytes(prior)  # put back by hand, never loaded
    assert managed.who() == "beta"
    workers = p.workers()
    p.restore(prior)
    assert not (p.workers() & workers)  # reloaded: new workers
    assert managed.who() == "alpha"


# -- preflight ----------------------------------------------------------------------------------------
def test_preflight_of_a_good_proxy_changes_nothing(harness):
    p = harness.proxy
    p.preflight()
    assert p.read_config() is None and not harness.running()
    if harness.kind in PRIVATE:
        assert not harness.dir.exists()  # validated in a directory of its own


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
@pytest.mark.parametrize("binary", ["cdlibt-no-such-binary", "/nonexistent/cdlibt/nginx", "not-executable"])
def test_preflight_names_a_binary_that_is_not_there(tmp_path, kind, binary):
    from cdlib.errors import ConfigError

    if binary == "not-executable":
        binary = str(tmp_path / "cdlibt-nginx")
        Path(binary).write_text("#!/bin/sh\n")
        os.chmod(binary, 0o644)
    p = PRIVATE[kind](tmp_path / "proxy", listen=f"127.0.0.1:{free_port()}", binary=binary)
    with pytest.raises(ConfigError, match="^proxy.binary: .*not found or not executable") as info:
        p.preflight()
    assert info.value.key == "proxy.binary" and info.value.exit_code == 2
    assert not (tmp_path / "proxy").exists()


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_preflight_names_a_binary_that_is_not_the_proxy(tmp_path, kind):
    from cdlib.errors import ConfigError

    p = PRIVATE[kind](tmp_path / "proxy", listen=f"127.0.0.1:{free_port()}", binary="/bin/false")
    with pytest.raises(ConfigError, match=f"^proxy.binary: '/bin/false' .*is it {kind}"):
        p.preflight()


SECRET_LINE = "cdlibt-root:$6$cdlibtS3cretHash$abcdefghijklmnop:19000:0:99999:7:::"
SECRET_TEMPLATES = {
    "a file that is not a template": f"{SECRET_LINE}\ncdlibt-daemon:*:19000:0:99999:7:::\n",
    "a template that extends the packaged one with a bad line": {
        "nginx": f'{{% extends "nginx.conf.j2" %}}{{% block http_extra %}}\n    {SECRET_LINE};\n{{% endblock %}}\n',
        "haproxy": f'{{% extends "haproxy.cfg.j2" %}}{{% block global_extra %}}\n    {SECRET_LINE}\n'
                   '{% endblock %}\n'},
    "a quote that is never closed": "events {\n" + '"' + SECRET_LINE + "\n",
    "a syntax error": f"{SECRET_LINE}\n{{% if %}}\n",
    "an undefined name": "{{ cdlibt_S3cretHash }}\n",
}


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
@pytest.mark.parametrize("case", sorted(SECRET_TEMPLATES))
def test_preflight_names_a_bad_template_without_quoting_it(tmp_path, kind, case):
    """proxy.template may name any file the agent can read: no error may repeat a byte of it."""
    from cdlib.errors import ConfigError

    text = SECRET_TEMPLATES[case]
    template = tmp_path / "secret.j2"
    template.write_text(text if isinstance(text, str) else text[kind])
    p = PRIVATE[kind](tmp_path / "proxy", listen=f"127.0.0.1:{free_port()}", template=template)
    with pytest.raises(ConfigError, match="^proxy.template: ") as info:
        p.preflight()
    message = str(info.value)
    assert str(template) in message and info.value.key == "proxy.template", message
    assert "S3cret" not in message and "cdlibt-root" not in message and "daemon" not in message, message
    assert not (tmp_path / "proxy").exists()
    # and apply, without preflight, refuses it the same way
    try:
        p.apply(p.render([]))
    except ProxyError as exc:
        assert "S3cret" not in str(exc) and "cdlibt-root" not in str(exc), str(exc)
    finally:
        p.stop()


@pytest.mark.integration
def test_preflight_does_not_touch_a_running_proxy(managed, backends):
    backends.start("alpha")
    p = managed.proxy
    p.apply(p.render([backend(backends, "alpha")]))
    before = sorted((f.name, f.stat().st_mtime_ns) for f in managed.dir.iterdir() if f.name != "access.log")
    master, workers = p.master_pid(), p.workers()
    p.preflight()
    assert sorted((f.name, f.stat().st_mtime_ns) for f in managed.dir.iterdir() if f.name != "access.log") == before
    assert p.master_pid() == master and p.workers() == workers


def test_memory_preflight_can_be_scripted():
    from cdlib.errors import ConfigError

    p = MemoryProxy()
    p.preflight()
    p.fail_preflight = ConfigError("proxy.binary: scripted", key="proxy.binary")
    with pytest.raises(ConfigError, match="scripted"):
        p.preflight()
    assert p.preflights == 2
