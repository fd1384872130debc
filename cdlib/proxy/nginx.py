"""A private nginx instance as the proxy: ``nginx -p DIR -c DIR/nginx.conf``.

Everything the instance writes (pid file, logs, temp files) lives in DIR, so it never touches the
system's nginx. A change goes: render -> write ``nginx.conf.staged`` -> ``nginx -t`` on it -> rename
over ``nginx.conf`` -> start or SIGHUP the master -> wait until new workers run and every worker that
existed before the reload has exited. The last step is what makes blue-green switching lossless:
after a reload the old workers keep serving the old upstream for about 100 ms, so stopping the old
color before they exit drops requests (see docs/proxy.md). Any failure after the rename puts the
previous bytes back and reloads again. Those mechanics are shared with HAProxy in
:mod:`cdlib.proxy.managed`; this module holds what only nginx does.

Dynamic upstreams. Where Debian's Lua module for nginx is installed (``libnginx-mod-http-lua``,
with ``libnginx-mod-http-ndk``) and the binary is Debian's, the configuration loads it and routes
each service through one upstream named after the service (``cdlib_<service>``) whose servers
live in a shared dictionary; a Lua balancer picks one per request (round robin, the next server
on a connection failure). The file records the servers in its ``init_by_lua_block`` (between
``-- cdlib:servers begin`` and ``-- cdlib:servers end``), so a start or a reload loads them. A
change that only replaces those servers (a switch of color, new instances of a live color) goes
through the local admin endpoint (``DIR/admin/nginx.sock``, a unix socket in a directory only its
owner may enter) without a reload: nginx -t on the new file first, then the new servers, then
the file is renamed in and marked loaded; a failure puts the previous servers and bytes back.
The apply then waits until no request is in flight to a server that left (the drain), so the old
color can be stopped. Anything else (a new service, new routes or settings, a certificate)
reloads as before. :meth:`NginxProxy.plan_apply` says which and why.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ProxyError
from ..model import HOST_RE, Backend
from ..netaddr import is_ip
from ..netaddr import parse_listen as _client_address
from .managed import HEALTH_PATH, ManagedProxy, alive, check_backends, children, first_error_line, hostport

# public names of this module that cdlib.proxy.managed now holds (HEALTH_PATH, check_backends,
# children and parse_listen are imported from here by cdlib.proxy.memory and the tests)
from .managed import LOCK_FILE as LOCK_FILE
from .managed import parse_listen as parse_listen

CONFIG = "nginx.conf"
STAGED = "nginx.conf.staged"
LAST_GOOD = "nginx.conf.last-good"
PID_FILE = "nginx.pid"
ERROR_LOG = "error.log"
TEMPLATE = "nginx.conf.j2"
LUA_SOURCE = Path(__file__).parent / "templates" / "cdlib_upstreams.lua"
# Debian's nginx and its Lua module (libnginx-mod-http-lua needs the NDK module loaded first)
DEBIAN_NGINX = "/usr/sbin/nginx"
LUA_MODULES = ("/usr/lib/nginx/modules/ndk_http_module.so", "/usr/lib/nginx/modules/ngx_http_lua_module.so")
ADMIN_DIR = "admin"
ADMIN_SOCKET = "admin/nginx.sock"
ADMIN_PATH = "/cdlib/upstreams"
SERVERS_BEGIN = "-- cdlib:servers begin"
SERVERS_END = "-- cdlib:servers end"
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes with its terminating NUL
BUFFERED_BODY = 1048576  # client_body_buffer_size: larger bodies stream to the server (no temp files)
# the http block's proxy_*_timeout, as _duration writes them
ROUTE_DEFAULTS = {"connect_timeout": "3s", "read_timeout": "60s", "send_timeout": "60s"}


def nginx_context(backends: Sequence[Backend], *, listen: str, worker_processes: int = 2,
                  shutdown_timeout: int = 12, dynamic: bool = False, admin_socket: str | None = None,
                  tls_listen: str | None = None) -> dict:
    """The variables nginx.conf.j2 (and a user's override template) sees. Pure (but for reading
    the packaged Lua code when ``dynamic``).

    Backends are sorted by service and servers by address, so the same state always renders the
    same bytes (the core compares configurations byte for byte). ``dynamic`` (the Lua module is
    there) renders one upstream per service fed by the Lua balancer, unless a server is named by a
    host name (the balancer takes addresses only) or there is no ``admin_socket``.
    """
    from ..render import cfg_token

    check_backends(backends)
    dynamic = dynamic and admin_socket is not None and all(is_ip(a) for b in backends for a, _ in b.servers)
    tls_port_suffix = ""
    if tls_listen is not None:
        port = _client_address(str(tls_listen))[1]
        tls_port_suffix = "" if port == 443 else f":{port}"
    out: list[dict[str, Any]] = []
    for b in sorted(backends, key=lambda b: str(b.service)):
        for host in b.routes.hosts:
            _check_server_name(host, b.service)
        locations = []
        for path in b.routes.paths:
            prefix = path.rstrip("/") + "/"
            locations.append({"path": path, "prefix": prefix,
                              "redirect": prefix[:-1] if prefix != "/" else None})
        servers = sorted({hostport(a, p) for a, p in b.servers})
        release = b.release or "-"
        edge = _edge(b, tls_listen is not None)
        out.append({
            "service": b.service, "color": b.color, "release": release,
            "upstream": f"cdlib_{b.service}" if dynamic else b.upstream, "servers": servers,
            "paths": list(b.routes.paths), "hosts": list(b.routes.hosts), "locations": locations,
            "health_path": b.health_path,
            # the Lua table's entry: every word is one checked configuration token
            "entry": " ".join(cfg_token(w) for w in (b.color, release, *servers)) if servers else "",
            **edge,
        })
    return {
        "backends": out,
        "listen": listen,
        "worker_processes": worker_processes,
        "shutdown_timeout": shutdown_timeout,
        "health_path": HEALTH_PATH,
        "has_root": any(loc["prefix"] == "/" for b in out for loc in b["locations"]),
        "dynamic": dynamic,
        "lua_modules": list(LUA_MODULES) if dynamic else [],
        "lua_code": _lua_code() if dynamic else "",
        "admin_socket": admin_socket if dynamic else None,
        "tls_listen": tls_listen,
        "tls_port_suffix": tls_port_suffix,
        "tls_path_backends": [b for b in out if b["tls"] and b["locations"]],
    }


def _lua_code() -> str:
    try:
        return LUA_SOURCE.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProxyError(f"cannot read cdlib's Lua balancer {LUA_SOURCE}: {exc.strerror}; reinstall cdlib") from exc


def _duration(seconds: object, what: str, service: object) -> str:
    """A timeout as nginx writes it: whole seconds as "60s", anything else in milliseconds."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= 86400:
        raise ProxyError(f"service {service}: routes.{what} {seconds!r} must be a number of seconds above 0 "
                         "and at most 86400")
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def _edge(b: Backend, https: bool) -> dict[str, Any]:
    """The route's edge settings (timeouts, body size, TLS, the redirect to HTTPS), read with the
    defaults of :class:`cdlib.model.Routes` so a Routes without them renders as before."""
    r = b.routes
    max_body = getattr(r, "max_body", BUFFERED_BODY)
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 0:
        raise ProxyError(f"service {b.service}: routes.max_body {max_body!r} must be a number of bytes (0: no limit)")
    cert, key = getattr(r, "tls_cert", None), getattr(r, "tls_key", None)
    if (cert is None) != (key is None):
        raise ProxyError(f"service {b.service}: routes.tls needs both a certificate and a key")
    tls = {"cert": str(cert), "key": str(key)} if https and cert is not None else None
    edge: dict[str, Any] = {
        "connect_timeout": _duration(getattr(r, "connect_timeout", 3.0), "connect_timeout", b.service),
        "read_timeout": _duration(getattr(r, "read_timeout", 60.0), "read_timeout", b.service),
        "send_timeout": _duration(getattr(r, "send_timeout", 60.0), "send_timeout", b.service),
    }
    # only what differs from the http block's defaults is written in the route's locations, so a
    # template that sets one of them in its location_extra block stays valid (nginx refuses a
    # directive twice in one location)
    settings = [(f"proxy_{name}", value) for name, value in edge.items() if value != ROUTE_DEFAULTS[name]]
    if max_body != BUFFERED_BODY:
        settings.append(("client_max_body_size", max_body))
    return {
        **edge,
        "route_settings": settings,
        "max_body": max_body,
        "buffer_body": 0 < max_body <= BUFFERED_BODY,
        "tls": tls,
        "https_redirect": bool(tls and getattr(r, "https_redirect", False)),
    }


def lua_available(binary: str) -> bool:
    """Whether ``binary`` is Debian's nginx and Debian's Lua module (and the NDK it needs) is
    installed: only then can the configuration load them (a module must be built for the very
    nginx that loads it). A stat or two, no process."""
    path = binary if os.sep in binary else shutil.which(binary)
    if not path or os.path.realpath(path) != os.path.realpath(DEBIAN_NGINX):
        return False
    return all(os.path.isfile(m) for m in LUA_MODULES)


# -- reading what a rendered configuration routes dynamically ---------------------------------------
def dynamic_servers(text: str) -> dict[str, str] | None:
    """The Lua table of a configuration rendered with dynamic upstreams: service -> its entry
    ("<color> <release> <address:port> ..."); None when the text has no such table."""
    lines = text.splitlines()
    try:
        start = lines.index(" " * 8 + SERVERS_BEGIN)
        end = lines.index(" " * 8 + SERVERS_END, start)
    except ValueError:
        return None
    out: dict[str, str] = {}
    for line in lines[start + 1:end]:
        line = line.strip()
        if line.startswith('["') and line.endswith('",') and '"] = "' in line:
            name, entry = line[2:-2].split('"] = "', 1)
            out[name] = entry
    return out


def _skeleton(text: str) -> list[str]:
    """The configuration without what a live change may differ in: the leading comment block (it
    names colors and releases) and the servers table. Any other difference needs a reload."""
    lines = text.splitlines()
    i = 0
    while i < len(lines) and (lines[i].startswith("#") or not lines[i].strip()):
        i += 1
    out: list[str] = []
    inside = False
    for line in lines[i:]:
        if line.strip() == SERVERS_BEGIN:
            inside = True
        elif line.strip() == SERVERS_END:
            inside = False
        elif not inside:
            out.append(line)
    return out


def classify(old: str | None, new: str) -> tuple[str, str, dict[str, str]]:
    """How the running configuration ``old`` (the active file's text) becomes ``new``: ("none",
    why, {}), ("runtime", why, {service: new entry}) when only the servers of services both
    route through the Lua balancer change, else ("reload", why naming what changed, {}). Pure."""
    if old is None:
        return "reload", "nginx has no configuration yet: the first apply starts it", {}
    if old == new:
        return "none", "the configuration is unchanged", {}
    new_servers = dynamic_servers(new)
    if new_servers is None:
        return "reload", ("the configuration has no dynamic upstreams (the nginx Lua module is not installed, "
                          "or a server is a host name): nginx applies every change with a reload"), {}
    old_servers = dynamic_servers(old)
    if old_servers is None:
        return "reload", "the running configuration has no dynamic upstreams yet: a reload brings them in", {}
    added = sorted(set(new_servers) - set(old_servers))
    removed = sorted(set(old_servers) - set(new_servers))
    if added or removed:
        parts = ([f"service {', '.join(added)} comes in"] if added else []) + (
            [f"service {', '.join(removed)} leaves"] if removed else [])
        return "reload", f"{' and '.join(parts)}: a change of upstreams needs a reload", {}
    old_lines, new_lines = _skeleton(old), _skeleton(new)
    if old_lines != new_lines:
        return "reload", f"not only servers change ({_what_changed(old_lines, new_lines)}): nginx reloads", {}
    changed = {name: entry for name, entry in new_servers.items() if old_servers.get(name) != entry}
    if not changed:
        return "runtime", "only comments change: the file is rewritten, nothing else", {}
    moves = []
    for name in sorted(changed):
        before, after = old_servers[name].split()[:1], changed[name].split()[:1]
        moves.append(f"{name} {before[0]} -> {after[0]}" if before != after else f"{name} (same color)")
    return "runtime", (f"only the servers of {', '.join(moves)} change: the Lua balancer takes them "
                       "through the admin socket, without a reload"), changed


def _what_changed(old: list[str], new: list[str]) -> str:
    """Which kind of line differs first, in words (never the line itself: a user's template may
    hold anything)."""
    for a, b in zip(old + [""] * (len(new) - len(old)), new + [""] * (len(old) - len(new)), strict=True):
        if a != b:
            line = (b or a).strip()
            if line.startswith("# tls material"):
                return "a certificate or key file changed"
            for word, what in (("location", "routes"), ("server_name", "hosts"), ("listen", "listen addresses"),
                               ("ssl_", "TLS settings"), ("proxy_", "proxy settings"),
                               ("client_max_body_size", "body size"), ("server ", "servers of a static upstream")):
                if line.startswith(word):
                    return f"the {what} change"
            return "the settings or the template change"
    return "the settings change"


def _check_server_name(host: object, service: object) -> None:
    """Refuse a host nginx would not read as a plain name. Routes can come from the store, past the
    descriptor's checks, and ``server_name ~.`` is a regular expression that matches every host:
    that server block would take the traffic of every path-routed service. Wildcards other than a
    leading ``*.`` (``example.*``, ``.example.com``) widen a route the same way."""
    if not isinstance(host, str) or not HOST_RE.match(host):
        raise ProxyError(f"unsafe configuration value {host!r}: service {service} route host must be a "
                         "lower-case DNS name, optionally starting with '*.'")


def _first_error_line(text: str) -> str:
    """The most severe line of nginx's output without its "nginx: " prefix. The level is looked
    for anywhere in a line: lines nginx writes through an error log start with a time stamp."""
    return first_error_line(text, ("[emerg]", "[alert]", "[crit]", "[error]"),
                            lambda ln: ln.removeprefix("nginx: "))


class NginxProxy(ManagedProxy):
    kind = "nginx"
    config_file = CONFIG
    staged_file = STAGED
    last_good_file = LAST_GOOD
    pid_file = PID_FILE
    template_name = TEMPLATE
    subdirs = ("temp", ADMIN_DIR)  # the temp paths the template points at; the admin socket's directory
    stop_signal = signal.SIGQUIT  # graceful quit: workers finish their requests
    check_flag = "-t"

    def __init__(self, directory: str | os.PathLike, listen: str = "127.0.0.1:8880", binary: str = "nginx",
                 template: str | os.PathLike | None = None, drain_timeout: float = 15.0, *,
                 worker_processes: int = 2, reload_timeout: float = 10.0, start_timeout: float = 10.0,
                 tls_listen: str | None = None, dynamic: bool | None = None):
        """``dynamic``: route through the Lua balancer (True), never (False), or when the Lua module
        is installed for this binary (None, :func:`lua_available`)."""
        super().__init__(directory, listen, binary, template, drain_timeout,
                         reload_timeout=reload_timeout, start_timeout=start_timeout, tls_listen=tls_listen)
        self.worker_processes = worker_processes
        self._dynamic = dynamic

    @property
    def dynamic(self) -> bool:
        """Whether rendered configurations route through the Lua balancer (decided once)."""
        if self._dynamic is None:
            self._dynamic = lua_available(self.binary) and _socket_path_ok(str(self.admin_socket))
        return self._dynamic

    @property
    def admin_socket(self) -> Path:
        return self.dir / ADMIN_SOCKET

    def _context(self, backends: Sequence[Backend]) -> dict:
        # worker_shutdown_timeout: the old workers are forced to close their connections a little
        # before the drain gives up
        return nginx_context(backends, listen=self.listen, worker_processes=self.worker_processes,
                             shutdown_timeout=self._forced_stop_after(), dynamic=self.dynamic,
                             admin_socket=str(self.admin_socket), tls_listen=getattr(self, "tls_listen", None))

    def status(self) -> dict:
        return {**super().status(), "dynamic": self.dynamic}

    def _check_elsewhere(self, text: str) -> tuple[str, int | None, bool] | None:
        """As the base class, with the admin socket moved to a temporary directory: nginx -t binds
        (and removes) a unix socket, and the proxy directory may not exist yet."""
        listen = f"listen unix:{self.admin_socket};"
        if listen not in text:
            return super()._check_elsewhere(text)
        with tempfile.TemporaryDirectory(prefix="cdlib-nx-") as tmp:
            return super()._check_elsewhere(text.replace(listen, f"listen unix:{tmp}/nginx.sock;"))

    # -- a change without a reload: the Lua balancer's servers --------------------------------------
    def _live_plan(self, old: bytes, new: bytes) -> tuple[bool, str]:
        mode, why, _ = classify(old.decode("utf-8", "replace"), new.decode("utf-8", "replace"))
        if mode == "runtime" and f"listen unix:{self.admin_socket};".encode() not in old:
            # a template of one's own that routes through the balancer but opens no admin socket
            return False, f"the running configuration opens no admin socket at {self.admin_socket}: nginx reloads"
        return mode in ("runtime", "none"), why

    def _apply_live(self, old: bytes, new: bytes) -> dict:
        """Give every service of ``new`` its servers through the admin socket (whatever the live
        servers are now: the same call converges from ``old`` or from a half-done change), then
        wait until no request is in flight to a server ``old`` had and ``new`` has not."""
        t0 = time.monotonic()
        wanted = dynamic_servers(new.decode("utf-8", "replace")) or {}
        live, _ = self.live_servers()
        changed = {name: entry for name, entry in wanted.items() if live.get(name) != entry}
        if changed:
            self._admin("POST", "".join(f"{name} {entry}\n" for name, entry in sorted(changed.items())))
            live, _ = self.live_servers()
            wrong = sorted(name for name in wanted if live.get(name) != wanted[name])
            if wrong:
                raise ProxyError(f"nginx's admin socket did not take the servers of {', '.join(wrong)}")
        t1 = time.monotonic()
        gone = set(_addresses(dynamic_servers(old.decode("utf-8", "replace")) or {})) - set(_addresses(wanted))
        left = self._drain_servers(gone)
        out = {"reload": 0.0, "runtime": round(t1 - t0, 4), "drain": round(time.monotonic() - t1, 4)}
        if left:
            out["drain_left"] = left
        return out

    def live_servers(self) -> tuple[dict[str, str], dict[str, int]]:
        """What the running nginx routes through its Lua balancer: ({service: "<color> <release>
        <address:port> ..."}, {address:port: requests in flight}), from the admin socket."""
        services: dict[str, str] = {}
        inflight: dict[str, int] = {}
        for line in self._admin("GET").splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "service":
                name, _, entry = rest.partition(" ")
                services[name] = entry
            elif kind == "inflight":
                address, _, count = rest.rpartition(" ")
                inflight[address] = int(count)
        return services, inflight

    def _drain_servers(self, gone: set[str]) -> int:
        """Wait until no request is in flight to these servers, at most until nginx itself would cut
        an old worker's connections after a reload (worker_shutdown_timeout). Returns how many are
        still in flight then (a WebSocket, a stream): stopping the old color closes them."""
        if not gone or self.drain_timeout <= 0:
            return 0
        deadline = time.monotonic() + self._forced_stop_after()
        while True:
            left = sum(n for address, n in self.live_servers()[1].items() if address in gone)
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.01)

    def _admin(self, method: str, body: str | None = None) -> str:
        conn = _UnixHTTPConnection(str(self.admin_socket), timeout=5.0)
        try:
            conn.request(method, ADMIN_PATH, body=body.encode() if body is not None else None,
                         headers={"Content-Type": "text/plain"} if body is not None else {})
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as exc:
            raise ProxyError(f"nginx's admin socket {self.admin_socket} did not answer: "
                             f"{getattr(exc, 'strerror', None) or exc}; check {self.dir / ERROR_LOG}") from exc
        finally:
            conn.close()
        if resp.status != 200:
            raise ProxyError(f"nginx's admin socket refused the servers ({resp.status}: "
                             f"{text.strip()[:200]}); check {self.dir / ERROR_LOG}")
        return text

    # -- nginx's own ways --------------------------------------------------------------------------
    def _validate_command(self, path: Path, prefix: Path | None = None) -> list[str]:
        return [self.binary, "-t", "-q", "-p", f"{prefix or self.dir}/", "-c", str(path)]

    def _error_line(self, output: str) -> str:
        return _first_error_line(output)

    def _is_master(self, pid: int, cmdline: bytes) -> bool:
        # the master's process title names its prefix (-p DIR/)
        return b"master process" in cmdline and str(self.dir).encode() in cmdline

    def _is_own_name(self, comm: str) -> bool:
        return comm == "nginx"

    def _start(self) -> None:
        log = self.dir / ERROR_LOG
        # the admin socket's directory is its owner's only; a socket left by a master that was
        # killed would keep the new one from binding
        try:
            os.chmod(self.dir / ADMIN_DIR, 0o700)
            self.admin_socket.unlink(missing_ok=True)
        except OSError as exc:
            raise ProxyError(f"cannot prepare {self.dir / ADMIN_DIR}: {exc.strerror}; check proxy.dir") from exc
        proc = self._run([self.binary, "-p", f"{self.dir}/", "-c", str(self.config_path)],
                         timeout=self.start_timeout)
        if proc.returncode != 0:
            raise ProxyError(f"nginx did not start: {_first_error_line(proc.stderr)}; check {log}")
        self._wait_until_serving(f"nginx started but does not answer on {self.listen} within "
                                 f"{self.start_timeout:g}s; check {log}")

    def _reload(self, master: int, old: set[int]) -> float:
        """SIGHUP the master; wait until it runs workers that are not in ``old``. A refused reload
        (an [emerg] in error.log after our signal) fails at once instead of waiting."""
        log = self.dir / ERROR_LOG
        offset = log.stat().st_size if log.exists() else 0
        t0 = self._signal_master(master, signal.SIGHUP)
        deadline = t0 + self.reload_timeout
        while not (children(master) - old):
            refused = _emerg_since(log, offset)
            if refused:
                raise ProxyError(f"nginx refused the reload: {refused}")
            if not alive(master):
                raise ProxyError(f"the nginx master {master} exited during the reload; check {log}")
            if time.monotonic() > deadline:
                raise ProxyError(f"nginx started no new workers within {self.reload_timeout:g}s of the "
                                 f"reload; check {log}")
            time.sleep(0.002)
        return t0


def _emerg_since(log: Path, offset: int) -> str | None:
    """The first [emerg] line nginx wrote after it received our SIGHUP (a refused reload).

    Lines before the "received from <our pid>" notice belong to an earlier reload: a reload that
    fails to bind retries for seconds and keeps logging while the next one is already queued.
    """
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            tail = fh.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return None
    # the comma ends the pid: "received from 12" must not match a reload sent by pid 123
    marker = f"signal 1 (SIGHUP) received from {os.getpid()},"
    seen = False
    for line in tail.splitlines():
        if not seen:
            seen = marker in line
        elif "[emerg]" in line:
            return line.split("[emerg]", 1)[1].strip()
    return None


def _socket_path_ok(path: str) -> bool:
    """Whether the admin socket can live at ``path``: short enough for a unix socket, and one bare
    token in nginx.conf (a proxy directory with a space keeps static upstreams)."""
    from ..render import cfg_token

    try:
        cfg_token(path)
    except ProxyError:
        return False
    return len(path.encode()) <= MAX_SOCKET_PATH


def _addresses(entries: dict[str, str]) -> list[str]:
    """The servers of a servers table ("<color> <release> <address:port> ..." per service)."""
    return [address for entry in entries.values() for address in entry.split()[2:]]


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over the admin endpoint's unix socket."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock
