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
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ProxyError
from ..model import Backend
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


def bind_address(listen: str) -> str:
    """``proxy.listen`` as an HAProxy bind address: a bare port listens on every IPv4 address,
    like nginx's ``listen 8880``."""
    parse_listen(listen)  # ConfigError when malformed
    return f":{listen}" if str(listen).isdigit() else str(listen)


def haproxy_context(backends: Sequence[Backend], *, listen: str, directory: str | os.PathLike,
                    hard_stop_after: int = 12) -> dict:
    """The variables haproxy.cfg.j2 (and a user's override template) sees. Pure.

    Backends are sorted by service, servers by address and path routes by length (longest first,
    as the first matching rule wins in HAProxy), so the same state always renders the same bytes.
    """
    check_backends(backends)
    out: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    for b in sorted(backends, key=lambda b: str(b.service)):
        words = [(b.service, "service"), (b.color, "color")]
        words += [(p, "path") for p in b.routes.paths] + [(h, "host") for h in b.routes.hosts]
        for word, what in words:
            _haproxy_word(word, what, b.service)
        route_ids = [f"host:{b.service}"] if b.routes.hosts else []
        for path in b.routes.paths:
            prefix = path.rstrip("/") + "/"
            routes.append({"path": path, "prefix": prefix, "redirect": prefix[:-1] if prefix != "/" else None,
                           "route": f"path:{prefix}", "service": b.service, "upstream": b.upstream})
            route_ids.append(f"path:{prefix}")
        out.append({
            "service": b.service, "color": b.color, "release": b.release or "-",
            "upstream": b.upstream, "servers": sorted({hostport(a, p) for a, p in b.servers}),
            "paths": list(b.routes.paths), "hosts": list(b.routes.hosts), "route_ids": route_ids,
            "health_path": b.health_path,
        })
    routes.sort(key=lambda r: (-len(r["prefix"]), r["prefix"]))
    return {
        "backends": out,
        "routes": routes,
        "listen": listen,
        "bind": bind_address(listen),
        "dir": str(directory),
        "hard_stop_after": hard_stop_after,
        "health_path": HEALTH_PATH,
        "has_root": any(r["prefix"] == "/" for r in routes),
    }


def _first_error_line(text: str) -> str:
    """The first [ALERT] of haproxy's output without its pid prefix (it names the file and line)."""
    return first_error_line(text, ("[ALERT]",), lambda ln: _ALERT_PREFIX.sub("", ln), anchored=True,
                            noise="[NOTICE]")


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
                 reload_timeout: float = 10.0, start_timeout: float = 10.0):
        super().__init__(directory, listen, binary, template, drain_timeout,
                         reload_timeout=reload_timeout, start_timeout=start_timeout)

    @property
    def master_socket(self) -> Path:
        return self.dir / MASTER_SOCKET

    @property
    def admin_socket(self) -> Path:
        return self.dir / ADMIN_SOCKET

    def _context(self, backends: Sequence[Backend]) -> dict:
        # hard-stop-after: old workers are forced out a little before the drain gives up waiting for them
        return haproxy_context(backends, listen=self.listen, directory=self.dir,
                               hard_stop_after=self._forced_stop_after())

    def status(self) -> dict:
        return {**super().status(), "master_socket": str(self.master_socket),
                "admin_socket": str(self.admin_socket)}

    # -- the master CLI ------------------------------------------------------------------------------
    def master_command(self, command: str, timeout: float = 2.0) -> str:
        """One command on the master CLI (``show proc``, ``reload``); its whole answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.master_socket))
            sock.sendall(command.encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)  # the master answers once the request side is closed
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

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
