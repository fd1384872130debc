"""A private HAProxy instance as the proxy, in master-worker mode.

Started as ``haproxy -W -S DIR/master.sock,mode,600 -D -f DIR/haproxy.cfg``: the master stays, the
worker serves, and the pid file, the sockets and the configuration all live in DIR, so the system's
HAProxy is never touched. A change goes: render -> write ``haproxy.cfg.staged`` -> ``haproxy -c`` on
it -> rename over ``haproxy.cfg`` -> start, or SIGUSR2 to the master -> wait until a new worker runs
and every worker that existed before the reload has exited. The last step is what makes blue-green
switching lossless: the old worker keeps serving the old backend for about 50 ms after the reload,
so stopping the old color earlier drops requests (see docs/proxy.md). Any failure after the rename
puts the previous bytes back and reloads again. Those mechanics are shared with nginx in
:mod:`cdlib.proxy.managed`; this module holds what only HAProxy does.

The master re-executes itself on SIGUSR2 and keeps its pid. When the new file cannot be loaded
(``haproxy -c`` passed, so it is a bind or a permission problem) it keeps the old worker and counts
the failure; ``show proc`` on the master socket reports that count, which is how a refused reload
is told apart from a slow one.

**Switches without a reload.** A reload closes the old worker's idle keep-alive connections, and a
client that was sending on one at that moment loses its request (``RemoteDisconnected``). So each
service has one backend named after it, whatever its color, with a fixed number of server slots
per color (``blue_1``..``blue_N``, ``green_1``..``green_N``; N is 4 or the next power of two of the
instance count): the live color's instances fill its first slots, every other slot is ``disabled``
at the placeholder address 0.0.0.0:1 (no traffic, no health check). ``X-Cdlib-Color`` is read from
the name of the server that answered. A switch to the other color, or a change in the number of
instances within the slots, then differs from the running file only in server lines (and
comments): :func:`classify_change` says so, and after ``haproxy -c`` accepted the new text the
admin socket applies it (``set server ... addr ... port``, ``state ready``; then the servers that
leave go to ``state drain`` until their requests in flight are done, bounded like hard-stop-after,
and to ``state maint`` at the placeholder address; everything read back with ``show servers
state``). The same text is then renamed over haproxy.cfg and marked loaded, so a restart or a later
reload runs exactly what the worker runs; that is why no ``server-state-file`` is used (it would
bring back runtime states the file no longer says, e.g. a slot left in maintenance). Frontends,
routes, timeouts, certificates and a change of the slot count still reload. A runtime change that
fails puts the previous servers back through the same API (else reloads the previous file), and the
file keeps the previous bytes (:meth:`ManagedProxy._change_live`). ``runtime_api=False`` makes every
change a reload (to measure or rehearse that path).

**HTTPS.** HAProxy 2.6 loads a key kept apart from its certificate only as ``<certificate>.key``
next to it, so the file names a link in DIR/tls/ per (certificate, key) pair, with a ``# tls-files
LINK CERTIFICATE KEY`` comment from which apply makes LINK -> certificate and LINK.key -> key before
validating: the key is linked, never copied.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import netaddr
from ..errors import ConfigError, ProxyError
from ..model import COLORS, Backend
from .managed import (
    HEALTH_PATH,
    ManagedProxy,
    check_backends,
    children,
    first_error_line,
    hostport,
    parse_listen,
)

# defined here before cdlib.proxy.managed held it
from .managed import LOCK_FILE as LOCK_FILE

CONFIG = "haproxy.cfg"
STAGED = "haproxy.cfg.staged"
LAST_GOOD = "haproxy.cfg.last-good"
PID_FILE = "haproxy.pid"
MASTER_SOCKET = "master.sock"
ADMIN_SOCKET = "admin.sock"
TEMPLATE = "haproxy.cfg.j2"
TLS_DIR = "tls"  # links to the certificates and keys of the HTTPS routes
# where an unused server slot points (never used: the slot is disabled, so neither traffic nor
# health checks go there)
PLACEHOLDER_ADDR, PLACEHOLDER_PORT = "0.0.0.0", 1
PLACEHOLDER = f"{PLACEHOLDER_ADDR}:{PLACEHOLDER_PORT}"
# the comment lines of a configuration that name something the proxy loads: a change is a reload
_SIGNIFICANT_COMMENTS = ("# tls material", "# tls-files ")
_TLS_FILES_RE = re.compile(r"^\s*# tls-files (\S+) (\S+) (\S+)\s*$", re.MULTILINE)

# characters HAProxy reads as syntax inside the tokens cdlib writes (log-format variables, sample
# fetch arguments, regular expressions); cfg_token already refuses what ends a token in any proxy
_HAPROXY_UNSAFE = frozenset("%()[],|*+?^<>!")
_FAILED_RE = re.compile(r"^\s*(\d+)\s+master\s+\d+\s+\[failed:\s*(\d+)\]", re.MULTILINE)
_ALERT_PREFIX = re.compile(r"^\[(ALERT|WARNING|NOTICE)\]\s*(\(\d+\)\s*)?:\s*")


def _haproxy_word(value: object, what: str, service: object) -> None:
    """Refuse a route, name or color that HAProxy would read as more than a literal.

    The model's patterns already exclude these; this guard is for a Backend built by hand or a
    registration edited in the store. Host wildcards keep their leading ``*.`` (rendered as a
    suffix match)."""
    text = str(value)
    if what == "host" and text.startswith("*."):
        text = text[2:]
    for ch in text:
        if ch in _HAPROXY_UNSAFE:
            raise ProxyError(f"unsafe configuration value {str(value)!r}: it contains {ch!r}, which HAProxy "
                             f"would interpret (service {service}, {what}); names, paths and hosts must "
                             "match the patterns of cdlib.yml")


def bind_address(listen: str, key: str = "proxy.listen") -> str:
    """``proxy.listen`` (or ``proxy.tls_listen``) as an HAProxy bind address: a bare port listens
    on every IPv4 address, like nginx's ``listen 8880``."""
    if key == "proxy.listen":
        parse_listen(listen)  # ConfigError when malformed
    else:
        problem = netaddr.listen_problem(str(listen))
        if problem:
            raise ConfigError(f"{key}: expected {problem}, got {listen!r}", key=key)
    return f":{listen}" if str(listen).isdigit() else str(listen)


def slots_per_color(servers: int) -> int:
    """How many server slots each color of a backend gets: at least 4, else the next power of two,
    so a release that changes the number of instances a little still fits the slots already loaded
    (a change of the slot count needs a reload)."""
    n = 4
    while n < servers:
        n *= 2
    return n


def duration(seconds: float) -> str:
    """Seconds as an HAProxy time: whole seconds as ``3s``, anything else in milliseconds."""
    ms = max(1, round(float(seconds) * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def tls_link(directory: str | os.PathLike, cert: str, key: str) -> str:
    """The path HAProxy loads a certificate from: a link in DIR/tls/ named after the two paths,
    next to which ``<link>.key`` links to the key (HAProxy 2.6 loads a key kept apart from its
    certificate only from there). Links, not copies: the key is never written anywhere."""
    name = hashlib.sha256(f"{cert}\0{key}".encode()).hexdigest()[:16]
    return f"{directory}/{TLS_DIR}/{name}.pem"


def _check_edge(b: Backend) -> None:
    """Refuse edge settings no configuration can hold (a Backend built by hand or a spec key
    edited in the store; the descriptor parser refuses them first)."""
    r = b.routes
    for what in ("connect_timeout", "read_timeout", "send_timeout"):
        value = getattr(r, what)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6:
            raise ProxyError(f"service {b.service}: routes.{what} {value!r} must be a number of seconds above 0")
    max_body = r.max_body
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 0:
        raise ProxyError(f"service {b.service}: routes.max_body {max_body!r} must be a number of bytes (0: no limit)")
    cert, key = r.tls_cert, r.tls_key
    if (cert is None) != (key is None):
        raise ProxyError(f"service {b.service}: routes.tls needs both a certificate and a key")
    for path in (cert, key):
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise ProxyError(f"service {b.service}: routes.tls file {path!r} must be an absolute path")


def tls_files(text: str) -> list[tuple[str, str, str]]:
    """The (link, certificate, key) triples a rendered haproxy.cfg needs: HAProxy loads the
    certificate from ``link`` and the key from ``link + ".key"`` (an adapter that runs HAProxy
    elsewhere, e.g. in a container, makes them there)."""
    return [(m.group(1), m.group(2), m.group(3)) for m in _TLS_FILES_RE.finditer(text)]


def haproxy_context(backends: Sequence[Backend], *, listen: str, directory: str | os.PathLike,
                    hard_stop_after: int = 12, tls_listen: str | None = None) -> dict:
    """The variables haproxy.cfg.j2 (and a user's override template) sees. Pure.

    Backends are sorted by service, servers by address and path routes by length (longest first,
    as the first matching rule wins in HAProxy), so the same state always renders the same bytes.

    Each service has one backend named after it, whatever its color, with a fixed number of server
    slots per color (``blue_1`` ... ``green_4``): the live color's servers fill its first slots,
    every other slot is ``disabled`` at a placeholder address. A switch to the other color then
    changes only the servers' addresses and states, which the runtime API applies without a reload.
    """
    check_backends(backends)
    out: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    tls_certs: list[dict[str, Any]] = []
    tls_route_ids: list[str] = []
    for b in sorted(backends, key=lambda b: str(b.service)):
        words = [(b.service, "service"), (b.color, "color")]
        words += [(p, "path") for p in b.routes.paths] + [(h, "host") for h in b.routes.hosts]
        for word, what in words:
            _haproxy_word(word, what, b.service)
        if b.color not in COLORS:
            raise ProxyError(f"unsafe configuration value {b.color!r}: service {b.service} color must be one of "
                             f"{', '.join(COLORS)} (the names of its server slots)")
        route_ids = [f"host:{b.service}"] if b.routes.hosts else []
        for path in b.routes.paths:
            prefix = path.rstrip("/") + "/"
            routes.append({"path": path, "prefix": prefix, "redirect": prefix[:-1] if prefix != "/" else None,
                           "route": f"path:{prefix}", "service": b.service, "upstream": b.service})
            route_ids.append(f"path:{prefix}")
        servers = sorted({hostport(a, p) for a, p in b.servers})
        per_color = slots_per_color(len(servers))
        slots = []
        for color in COLORS:
            for i in range(per_color):
                live = color == b.color and i < len(servers)
                slots.append({"name": f"{color}_{i + 1}", "color": color,
                              "address": servers[i] if live else PLACEHOLDER, "enabled": live})
        r = b.routes
        _check_edge(b)
        if r.tls_cert and r.tls_key:
            tls_certs.append({"service": b.service, "cert": r.tls_cert, "key": r.tls_key,
                              "link": tls_link(directory, r.tls_cert, r.tls_key)})
            tls_route_ids += route_ids
        out.append({
            "service": b.service, "name": b.service, "color": b.color, "release": b.release or "-",
            "upstream": b.service, "servers": servers, "slots": slots, "slots_per_color": per_color,
            "paths": list(b.routes.paths), "hosts": list(b.routes.hosts), "route_ids": route_ids,
            "health_path": b.health_path,
            "connect_timeout": duration(r.connect_timeout),
            # HAProxy has one inactivity timeout for the server side, both directions: it is the
            # read timeout (an answer later than that is a 504); send_timeout has no HAProxy twin
            "server_timeout": duration(r.read_timeout),
            "max_body": r.max_body,
            "tls": r.tls, "https_redirect": r.tls and r.https_redirect,
        })
    routes.sort(key=lambda r: (-len(r["prefix"]), r["prefix"]))
    tls_bind = tls_port = None
    if tls_listen is not None and tls_certs:
        tls_bind = bind_address(tls_listen, "proxy.tls_listen")
        tls_port = parse_listen(tls_listen)[1]
    return {
        "backends": out,
        "routes": routes,
        "listen": listen,
        "bind": bind_address(listen),
        "dir": str(directory),
        "hard_stop_after": hard_stop_after,
        "health_path": HEALTH_PATH,
        "has_root": any(r["prefix"] == "/" for r in routes),
        "tls_listen": tls_listen,
        # HTTPS is served only when a route has a certificate (a TLS bind needs at least one)
        "tls_bind": tls_bind,
        "tls_port_suffix": "" if tls_port in (None, 443) else f":{tls_port}",
        "tls_certs": tls_certs if tls_bind else [],
        "tls_route_ids": tls_route_ids if tls_bind else [],
    }


def _first_error_line(text: str) -> str:
    """The first [ALERT] of haproxy's output without its pid prefix (it names the file and line)."""
    return first_error_line(text, ("[ALERT]",), lambda ln: _ALERT_PREFIX.sub("", ln), anchored=True,
                            noise="[NOTICE]")


# -- which changes the runtime API can apply -------------------------------------------------------
MAINT_BITS = 0x23  # srv_admin_state: forced, inherited or resolution maintenance
DRAIN_BITS = 0x18  # srv_admin_state: forced or inherited drain


@dataclass
class ParsedConfig:
    """A haproxy.cfg as the change classifier sees it: the lines that matter (comments and blank
    lines dropped, but for the comments naming files the proxy loads) by section, each server line
    reduced to its name and options, and every server's address, port and whether it is enabled."""

    sections: dict[str, list[str]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    slots: dict[tuple[str, str], tuple[str, int, bool]] = field(default_factory=dict)


def _split_address(text: str) -> tuple[str, int] | None:
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host, int(port)


def parse_config(text: str) -> ParsedConfig:
    out = ParsedConfig()
    section = ""
    out.sections[section] = []
    out.order.append(section)
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if line.startswith("# tls material"):
                out.sections.setdefault("tls material", []).append(line)
                if "tls material" not in out.order:
                    out.order.append("tls material")
            elif line.startswith(_SIGNIFICANT_COMMENTS):
                out.sections[section].append(line)
            continue
        if not raw[0].isspace():
            section = " ".join(line.split())
            out.sections.setdefault(section, [])
            out.order.append(section)
            continue
        words = line.split()
        if words[0] == "server" and len(words) >= 3 and section.startswith("backend "):
            address = _split_address(words[2])
            if address is not None:
                options = [w for w in words[3:] if w != "disabled"]
                out.slots[(section.split()[1], words[1])] = (address[0], address[1], "disabled" not in words[3:])
                out.sections[section].append(" ".join(["server", words[1], *options]))
                continue
        out.sections[section].append(" ".join(words))
    return out


def _reload_reason(a: ParsedConfig, b: ParsedConfig) -> str:
    for header in b.order:
        if header not in a.sections:
            return "the TLS certificates change" if header == "tls material" else f"{header} is new"
    for header in a.order:
        if header not in b.sections:
            return "the TLS certificates change" if header == "tls material" else f"{header} is gone"
    for header in b.order:
        old, new = a.sections[header], b.sections[header]
        if old == new:
            continue
        if header == "tls material":
            return "the TLS certificates change (a certificate or key file was renewed)"
        if header == "":
            return "the lines before the first section change"
        if header.startswith("backend "):
            servers_old = [ln for ln in old if ln.startswith("server ")]
            servers_new = [ln for ln in new if ln.startswith("server ")]
            rest_old = [ln for ln in old if not ln.startswith("server ")]
            rest_new = [ln for ln in new if not ln.startswith("server ")]
            if rest_old == rest_new and len(servers_old) != len(servers_new):
                return (f"{header} needs {len(servers_new)} server slots instead of {len(servers_old)} "
                        "(more instances than slots)")
            if rest_old == rest_new:
                return f"the server options of {header} change"
            return f"{header} changes (timeouts, body size, probe or other settings)"
        if header.startswith("frontend "):
            return f"{header} changes (routes, hosts, TLS or listen addresses)"
        return f"the {header} section changes"
    return "the sections change order"


def classify_change(old: str, new: str) -> tuple[str, str]:
    """How haproxy.cfg ``old`` (running) becomes ``new``: ("none", why) when the text is the same,
    ("runtime", why) when only the addresses, ports or states of existing servers differ (plus
    comments such as the color and release of a backend), ("reload", why naming what changed)
    otherwise. Pure."""
    if old == new:
        return "none", "the configuration is unchanged"
    a, b = parse_config(old), parse_config(new)
    if a.order != b.order or a.sections != b.sections or set(a.slots) != set(b.slots):
        return "reload", _reload_reason(a, b)
    changed = sorted({be for key, slot in b.slots.items() if a.slots[key] != slot for be in (key[0],)})
    for (be, srv), (address, _port, enabled) in sorted(b.slots.items()):
        if enabled and a.slots[(be, srv)] != b.slots[(be, srv)] and not netaddr.is_ip(address):
            return "reload", (f"server {srv} of backend {be} is the host name {address}: the runtime API "
                              "sets IP addresses only")
    if not changed:
        return "runtime", "only comments change (colors, releases): nothing to do but write the file"
    return "runtime", (f"only the servers of backend {', '.join(changed)} change: the runtime API sets their "
                       "addresses and states, without a reload")


class HaproxyProxy(ManagedProxy):
    kind = "haproxy"
    config_file = CONFIG
    staged_file = STAGED
    last_good_file = LAST_GOOD
    pid_file = PID_FILE
    template_name = TEMPLATE
    stop_signal = signal.SIGUSR1  # soft stop: workers finish their requests, bounded by hard-stop-after
    check_flag = "-c"

    def __init__(self, directory: str | os.PathLike, listen: str = "127.0.0.1:8880", binary: str = "haproxy",
                 template: str | os.PathLike | None = None, drain_timeout: float = 15.0, *,
                 reload_timeout: float = 10.0, start_timeout: float = 10.0, tls_listen: str | None = None,
                 runtime_api: bool = True):
        super().__init__(directory, listen, binary, template, drain_timeout,
                         reload_timeout=reload_timeout, start_timeout=start_timeout, tls_listen=tls_listen)
        # False: every change is a reload (to measure or rehearse the reload path)
        self.runtime_api = runtime_api

    @property
    def master_socket(self) -> Path:
        return self.dir / MASTER_SOCKET

    @property
    def admin_socket(self) -> Path:
        return self.dir / ADMIN_SOCKET

    def _context(self, backends: Sequence[Backend]) -> dict:
        # hard-stop-after: old workers are forced out a little before the drain gives up waiting for them
        return haproxy_context(backends, listen=self.listen, directory=self.dir,
                               hard_stop_after=self._forced_stop_after(), tls_listen=self.tls_listen)

    def status(self) -> dict:
        return {**super().status(), "master_socket": str(self.master_socket),
                "admin_socket": str(self.admin_socket)}

    # -- the master CLI ------------------------------------------------------------------------------
    def master_command(self, command: str, timeout: float = 2.0) -> str:
        """One command on the master CLI (``show proc``, ``reload``); its whole answer."""
        return _unix_command(self.master_socket, command, timeout).decode("utf-8", "replace")

    def failed_reloads(self) -> int | None:
        """How many reloads the master refused since it started (``show proc``); None when the
        master socket does not answer (e.g. while the master re-executes itself)."""
        try:
            m = _FAILED_RE.search(self.master_command("show proc", timeout=1.0))
        except OSError:
            return None
        return int(m.group(2)) if m else None

    # -- HAProxy's own ways ------------------------------------------------------------------------
    def _validate_command(self, path: Path, prefix: Path | None = None) -> list[str]:
        return [self.binary, "-c", "-f", str(path)]  # every path in the file is absolute

    def _error_line(self, output: str) -> str:
        return _first_error_line(output)

    def _is_master(self, pid: int, cmdline: bytes) -> bool:
        args = cmdline.split(b"\0")
        return self._is_ours(pid) and str(self.config_path).encode() in args and b"-W" in args

    def _is_own_name(self, comm: str) -> bool:
        return comm.startswith("haproxy")  # haproxy, haproxy-2.8, ...

    def _start(self) -> None:
        # -D: the command returns once the master has bound the listeners and forked its worker, so
        # a busy port or a bad path fails here with haproxy's own message. The pid file comes from
        # the configuration's "pidfile" (giving -p as well makes haproxy complain about it).
        cmd = [self.binary, "-W", "-S", f"{self.master_socket},mode,600", "-D", "-f", str(self.config_path)]
        proc = self._run(cmd, timeout=self.start_timeout)
        if proc.returncode != 0:
            raise ProxyError(f"haproxy did not start: {_first_error_line(proc.stderr)}")
        deadline = self._wait_until_serving(
            f"haproxy started but its master is not found through {self.pid_path} or does not answer on "
            f"{self.listen} within {self.start_timeout:g}s; a template must keep 'pidfile' and the bind "
            "address")
        self._wait_for_master_cli(deadline)

    def _wait_for_master_cli(self, deadline: float) -> None:
        """The master opens its CLI a few milliseconds after it forked the worker. Until then the
        next reload could not tell a refusal from a slow start, so a change ends only once it answers."""
        while self.failed_reloads() is None:
            if time.monotonic() > deadline:
                raise ProxyError(f"the haproxy master does not answer on {self.master_socket}")
            time.sleep(0.005)

    def _reload(self, master: int, old: set[int]) -> float:
        """SIGUSR2 the master; wait until it runs a worker that is not in ``old`` and its CLI answers.

        A refused reload leaves the old worker running and no new one; the master's failed-reload
        count tells that apart from a slow start, so the caller can undo at once."""
        failed_before = self.failed_reloads()
        t0 = self._signal_master(master, signal.SIGUSR2)
        deadline = t0 + self.reload_timeout
        next_ask = t0 + 0.05
        while not {p for p in children(master) - old if self._is_ours(p)}:
            now = time.monotonic()
            if failed_before is not None and now >= next_ask:
                next_ask = now + 0.05
                failed = self.failed_reloads()
                if failed is not None and failed > failed_before:
                    raise ProxyError("haproxy refused the reload and kept the old worker: `haproxy -c` "
                                     "accepted the file, so the cause is at start-up (a listen address "
                                     f"already in use, a socket path in {self.dir} it cannot create)")
            if not self._is_ours(master):
                raise ProxyError(f"the haproxy master {master} exited during the reload")
            if now > deadline:
                raise ProxyError(f"haproxy started no new worker within {self.reload_timeout:g}s of the "
                                 f"reload; ask its master: echo 'show proc' | socat - {self.master_socket}")
            time.sleep(0.002)
        self._wait_for_master_cli(deadline)
        return t0

    # -- TLS: the files the configuration names -------------------------------------------------------
    def _stage_and_validate(self, data: bytes) -> None:
        self._link_tls(data)
        super()._stage_and_validate(data)

    def _link_tls(self, data: bytes) -> None:
        """Make the links a configuration's ``# tls-files LINK CERT KEY`` lines name: LINK to the
        certificate, LINK.key to the key, both in DIR/tls/ (a link elsewhere is not made: the
        validation then names the missing file). Before validation, so ``haproxy -c`` loads them."""
        for link, cert, key in tls_files(data.decode("utf-8", "replace")):
            if link != tls_link(self.dir, cert, key):
                continue
            folder = self.dir / TLS_DIR
            try:
                folder.mkdir(mode=0o700, exist_ok=True)
                for path, target in ((Path(link), cert), (Path(link + ".key"), key)):
                    if path.is_symlink() and os.readlink(path) == target:
                        continue
                    tmp = path.with_name(path.name + ".tmp")
                    tmp.unlink(missing_ok=True)
                    os.symlink(target, tmp)
                    os.replace(tmp, path)
            except OSError as exc:
                raise ProxyError(f"cannot link the TLS files in {folder}: {exc.strerror or exc}; check proxy.dir") from exc

    # -- the runtime API -------------------------------------------------------------------------------
    def admin_command(self, command: str, timeout: float = 2.0) -> str:
        """One command on the current worker's admin socket; its whole answer."""
        try:
            answer = _unix_command(self.admin_socket, command, timeout)
        except OSError as exc:
            raise ProxyError(f"the haproxy runtime API on {self.admin_socket} did not answer "
                             f"{command.split(' ', 3)[:3]}: {exc.strerror or exc}") from exc
        return answer.decode("utf-8", "replace")

    def server_states(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every server of the running worker: (backend, server) -> address, port, admin and
        operational state (``show servers state``)."""
        answer = self.admin_command("show servers state")
        names: list[str] = []
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for line in answer.splitlines():
            if line.startswith("# "):
                names = line[2:].split()
                continue
            words = line.split()
            if not names or len(words) < len(names):
                continue
            row = dict(zip(names, words, strict=False))
            try:
                out[(row["be_name"], row["srv_name"])] = {
                    "address": row["srv_addr"], "port": int(row["srv_port"]),
                    "admin": int(row["srv_admin_state"]), "op": int(row["srv_op_state"])}
            except (KeyError, ValueError):
                continue
        if not names:
            raise ProxyError(f"the haproxy runtime API on {self.admin_socket} did not list the servers")
        return out

    def server_sessions(self, keys: Sequence[tuple[str, str]]) -> int:
        """Requests the running worker has in flight on these servers (``show stat``: scur)."""
        wanted = set(keys)
        total = 0
        header: list[str] = []
        for line in self.admin_command("show stat").splitlines():
            if line.startswith("# "):
                header = line[2:].split(",")
                continue
            row = dict(zip(header, line.split(","), strict=False))
            if (row.get("pxname"), row.get("svname")) in wanted:
                total += int(row.get("scur") or 0)
        return total

    def _set_server(self, be: str, srv: str, what: str) -> None:
        answer = self.admin_command(f"set server {be}/{srv} {what}").strip()
        ok = not answer or answer.startswith(("IP changed", "no need to change", "port changed"))
        if not ok:
            raise ProxyError(f"the haproxy runtime API refused 'set server {be}/{srv} {what}': {answer.splitlines()[0]}")

    def _live_plan(self, old: bytes, new: bytes) -> tuple[bool, str]:
        if not self.runtime_api:
            return False, "the haproxy runtime API is off for this proxy: every change is a reload"
        running = old.decode("utf-8", "replace")
        if not re.search(rf"^\s*stats socket {re.escape(str(self.admin_socket))}\s.*\blevel admin\b", running,
                         re.MULTILINE):
            return False, (f"the running configuration opens no admin socket ({self.admin_socket}, level admin) for "
                           "the runtime API: a template must keep the 'stats socket' line")
        mode, why = classify_change(running, new.decode("utf-8", "replace"))
        return mode == "runtime", why

    def _apply_live(self, old: bytes, new: bytes) -> dict:
        """Set every server slot of the running worker to what ``new`` says, compared with what the
        worker runs now (not with ``old``, so a half-done attempt converges too): a slot that
        serves in ``new`` gets its address and port, then ``state ready`` (before any slot stops
        serving); a slot that no longer serves is drained (no new requests; the requests it has go
        on) until its in-flight requests are done, bounded like hard-stop-after, then put in
        maintenance at the placeholder address the file names. The result is read back."""
        target = parse_config(new.decode("utf-8", "replace")).slots
        t0 = time.monotonic()
        states = self.server_states()
        missing = sorted(f"{be}/{srv}" for be, srv in target if (be, srv) not in states)
        if missing:
            raise ProxyError(f"the running haproxy has no server {missing[0]}: it did not load the active "
                             "configuration")
        for (be, srv), (address, port, enabled) in sorted(target.items()):
            st = states[(be, srv)]
            if enabled:  # first: every server of the new state takes requests
                if (st["address"], st["port"]) != (address, port):
                    self._set_server(be, srv, f"addr {address} port {port}")
                if st["admin"] & (MAINT_BITS | DRAIN_BITS):
                    self._set_server(be, srv, "state ready")
        retire: list[tuple[str, str]] = []
        for (be, srv), (_address, _port, enabled) in sorted(target.items()):
            if not enabled and not states[(be, srv)]["admin"] & MAINT_BITS:  # then: the others stop
                self._set_server(be, srv, "state drain")
                retire.append((be, srv))
        t1 = time.monotonic()
        if retire and self.drain_timeout > 0:
            deadline = t1 + self._forced_stop_after()
            while self.server_sessions(retire) > 0 and time.monotonic() < deadline:
                time.sleep(0.01)
        t2 = time.monotonic()
        for (be, srv), (_address, _port, enabled) in sorted(target.items()):
            if enabled:
                continue
            st = states[(be, srv)]
            if (be, srv) in retire or not st["admin"] & MAINT_BITS:
                self._set_server(be, srv, "state maint")
            if (be, srv) in retire or (st["address"], st["port"]) != (PLACEHOLDER_ADDR, PLACEHOLDER_PORT):
                self._set_server(be, srv, f"addr {PLACEHOLDER_ADDR} port {PLACEHOLDER_PORT}")
        now = self.server_states()
        for (be, srv), (address, port, enabled) in sorted(target.items()):
            got = now.get((be, srv))
            good = got is not None and (
                ((got["address"], got["port"]) == (address, port) and not got["admin"] & (MAINT_BITS | DRAIN_BITS))
                if enabled else bool(got["admin"] & MAINT_BITS))
            if not good:
                raise ProxyError(f"the haproxy runtime API did not set server {be}/{srv} as asked "
                                 f"({'serving at ' + hostport(address, port) if enabled else 'in maintenance'})")
        t3 = time.monotonic()
        return {"reload": 0.0, "runtime": round((t1 - t0) + (t3 - t2), 4), "drain": round(t2 - t1, 4)}


def _unix_command(path: str | os.PathLike, command: str, timeout: float) -> bytes:
    """One command on one of HAProxy's unix sockets (the master CLI, the admin socket): the whole
    answer, which comes once the request side is closed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(command.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)
