"""A private nginx instance as the proxy: ``nginx -p DIR -c DIR/nginx.conf``.

Everything the instance writes (pid file, logs, temp files) lives in DIR, so it never touches the
system's nginx. A change goes: render -> write ``nginx.conf.staged`` -> ``nginx -t`` on it -> rename
over ``nginx.conf`` -> start or SIGHUP the master -> wait until new workers run and every worker that
existed before the reload has exited. The last step is what makes blue-green switching lossless:
after a reload the old workers keep serving the old upstream for about 100 ms, so stopping the old
color before they exit drops requests (see docs/proxy.md). Any failure after the rename puts the
previous bytes back and reloads again. Those mechanics are shared with HAProxy in
:mod:`cdlib.proxy.managed`; this module holds what only nginx does.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ProxyError
from ..model import HOST_RE, Backend
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


def nginx_context(backends: Sequence[Backend], *, listen: str, worker_processes: int = 2,
                  shutdown_timeout: int = 12) -> dict:
    """The variables nginx.conf.j2 (and a user's override template) sees. Pure.

    Backends are sorted by service and servers by address, so the same state always renders the
    same bytes (the core compares configurations byte for byte).
    """
    check_backends(backends)
    out: list[dict[str, Any]] = []
    for b in sorted(backends, key=lambda b: str(b.service)):
        for host in b.routes.hosts:
            _check_server_name(host, b.service)
        locations = []
        for path in b.routes.paths:
            prefix = path.rstrip("/") + "/"
            locations.append({"path": path, "prefix": prefix,
                              "redirect": prefix[:-1] if prefix != "/" else None})
        out.append({
            "service": b.service, "color": b.color, "release": b.release or "-",
            "upstream": b.upstream, "servers": sorted({hostport(a, p) for a, p in b.servers}),
            "paths": list(b.routes.paths), "hosts": list(b.routes.hosts), "locations": locations,
            "health_path": b.health_path,
        })
    return {
        "backends": out,
        "listen": listen,
        "worker_processes": worker_processes,
        "shutdown_timeout": shutdown_timeout,
        "health_path": HEALTH_PATH,
        "has_root": any(loc["prefix"] == "/" for b in out for loc in b["locations"]),
    }


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
    subdirs = ("temp",)  # the temp paths the template points at
    stop_signal = signal.SIGQUIT  # graceful quit: workers finish their requests
    check_flag = "-t"

    def __init__(self, directory: str | os.PathLike, listen: str = "127.0.0.1:8880", binary: str = "nginx",
                 template: str | os.PathLike | None = None, drain_timeout: float = 15.0, *,
                 worker_processes: int = 2, reload_timeout: float = 10.0, start_timeout: float = 10.0):
        super().__init__(directory, listen, binary, template, drain_timeout,
                         reload_timeout=reload_timeout, start_timeout=start_timeout)
        self.worker_processes = worker_processes

    def _context(self, backends: Sequence[Backend]) -> dict:
        # worker_shutdown_timeout: the old workers are forced to close their connections a little
        # before the drain gives up
        return nginx_context(backends, listen=self.listen, worker_processes=self.worker_processes,
                             shutdown_timeout=self._forced_stop_after())

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
