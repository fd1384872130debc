"""A private HAProxy instance as the proxy, in master-worker mode.

Started as ``haproxy -W -S DIR/master.sock,mode,600 -D -f DIR/haproxy.cfg``: the master stays, the
worker serves, and the pid file, the sockets and the configuration all live in DIR, so the system's
HAProxy is never touched. A change goes: render -> write ``haproxy.cfg.staged`` -> ``haproxy -c`` on
it -> rename over ``haproxy.cfg`` -> start, or SIGUSR2 to the master -> wait until a new worker runs
and every worker that existed before the reload has exited. The last step is what makes blue-green
switching lossless: the old worker keeps serving the old backend for about 50 ms after the reload,
so stopping the old color earlier drops requests (see docs/proxy.md). Any failure after the rename
puts the previous bytes back and reloads again.

The master re-executes itself on SIGUSR2 and keeps its pid. When the new file cannot be loaded
(``haproxy -c`` passed, so it is a bind or a permission problem) it keeps the old worker and counts
the failure; ``show proc`` on the master socket reports that count, which is how a refused reload
is told apart from a slow one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import ProxyError
from ..model import Backend
from .base import Proxy
from .nginx import (
    HEALTH_PATH,
    _alive,
    _fsync_dir,
    _hostport,
    _stat,
    _write_synced,
    check_backends,
    children,
    parse_listen,
)

CONFIG = "haproxy.cfg"
STAGED = "haproxy.cfg.staged"
LAST_GOOD = "haproxy.cfg.last-good"
PID_FILE = "haproxy.pid"
MASTER_SOCKET = "master.sock"
ADMIN_SOCKET = "admin.sock"
LOCK_FILE = ".cdlib.lock"
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
    out = []
    routes = []
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
            "upstream": b.upstream, "servers": sorted({_hostport(a, p) for a, p in b.servers}),
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


def _is_haproxy(pid: int) -> bool:
    """Alive and still an haproxy process (a pid can be reused once a worker has exited). The
    name is the executable's, cut to 15 characters by the kernel: haproxy, haproxy-2.8, ..."""
    st = _stat(pid)
    return st is not None and st[1] not in ("Z", "X") and st[0].startswith("haproxy")


def _first_error_line(text: str) -> str:
    """The first [ALERT] of haproxy's output without its pid prefix (it names the file and line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("[ALERT]"):
            return _ALERT_PREFIX.sub("", ln)
    notices = [ln for ln in lines if not ln.startswith("[NOTICE]")]
    return _ALERT_PREFIX.sub("", (notices or lines or ["no output"])[0])


class HaproxyProxy(Proxy):
    kind = "haproxy"

    def __init__(self, directory: str | os.PathLike, listen: str = "127.0.0.1:8880", binary: str = "haproxy",
                 template: str | os.PathLike | None = None, drain_timeout: float = 15.0, *,
                 reload_timeout: float = 10.0, start_timeout: float = 10.0):
        self.dir = Path(directory).absolute()
        self.listen = str(listen)
        self.host, self.port = parse_listen(self.listen)
        self.binary = binary
        self.template = Path(template) if template is not None else None
        self.drain_timeout = float(drain_timeout)
        self.reload_timeout = reload_timeout
        self.start_timeout = start_timeout

    # -- paths ------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.dir / CONFIG

    @property
    def staged_path(self) -> Path:
        return self.dir / STAGED

    @property
    def last_good_path(self) -> Path:
        return self.dir / LAST_GOOD

    @property
    def pid_path(self) -> Path:
        return self.dir / PID_FILE

    @property
    def master_socket(self) -> Path:
        return self.dir / MASTER_SOCKET

    @property
    def admin_socket(self) -> Path:
        return self.dir / ADMIN_SOCKET

    # -- the port -----------------------------------------------------------------------------------
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def describe(self) -> str:
        return f"haproxy at {self.url()} (dir {self.dir})"

    def read_config(self) -> bytes | None:
        try:
            return self.config_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ProxyError(f"cannot read {self.config_path}: {exc.strerror}") from exc

    def render(self, backends: Sequence[Backend]) -> str:
        from ..render import render_template

        # old workers are forced out a little before the drain gives up waiting for them
        hard_stop = max(1, int(self.drain_timeout * 0.8))
        context = haproxy_context(backends, listen=self.listen, directory=self.dir, hard_stop_after=hard_stop)
        return render_template(TEMPLATE, context, self.template)

    def apply(self, text: str) -> dict:
        data = text.encode("utf-8")
        with self._locked():
            t0 = time.monotonic()
            self._stage_and_validate(data)
            t_validate = time.monotonic() - t0
            prior = self.read_config()
            was_running = self.master_pid() is not None
            self._swap_in()
            try:
                t_reload, t_drain = self._activate()
            except (ProxyError, OSError) as exc:
                cause = exc if isinstance(exc, ProxyError) else ProxyError(f"haproxy in {self.dir}: {exc}")
                self._undo(prior, was_running, cause)
                raise ProxyError(f"{cause}; the previous haproxy configuration was put back",
                                 **cause.data) from exc
            self._keep_last_good(prior)
        return {"validate": round(t_validate, 4), "reload": round(t_reload, 4), "drain": round(t_drain, 4)}

    def restore(self, prior: bytes | None) -> None:
        """Put prior back byte for byte and reload. prior None means there was no configuration
        (nothing was ever served from this directory): the exact prior state is then an HAProxy
        that does not run and no haproxy.cfg, so that is what restore(None) leaves."""
        if prior is None:
            self.stop()
            with self._locked():
                for path in (self.config_path, self.staged_path):
                    path.unlink(missing_ok=True)
            return
        with self._locked():
            self._stage_and_validate(prior)
            self._swap_in()
            try:
                self._activate()
            except (ProxyError, OSError) as exc:
                raise ProxyError(f"restoring the haproxy configuration in {self.dir} failed: {exc}") from exc

    def ensure_running(self) -> None:
        with self._locked():
            if self.read_config() is None:
                self._stage_and_validate(self.render([]).encode("utf-8"))
                self._swap_in()
            if self.master_pid() is None:
                self._start()

    def status(self) -> dict:
        pid = self.master_pid()
        return {"kind": self.kind, "url": self.url(), "running": pid is not None, "pid": pid,
                "workers": sorted(children(pid)) if pid else [], "config": str(self.config_path),
                "dir": str(self.dir), "listen": self.listen, "master_socket": str(self.master_socket),
                "admin_socket": str(self.admin_socket)}

    # -- process control -------------------------------------------------------------------------
    def master_pid(self) -> int | None:
        """The master's pid when this directory's HAProxy runs (pid file + /proc, so a stale pid
        file or a reused pid never counts)."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _is_haproxy(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if str(self.config_path).encode() not in cmdline or b"-W" not in cmdline:
            return None
        return pid

    def workers(self) -> set[int]:
        pid = self.master_pid()
        return children(pid) if pid else set()

    def stop(self, timeout: float | None = None) -> bool:
        """Soft-stop (SIGUSR1: workers finish their requests, bounded by hard-stop-after), then
        SIGTERM, then SIGKILL; wait until the master is gone. True if it ran."""
        pid = self.master_pid()
        if pid is None:
            return False
        kids = children(pid)
        timeout = self.drain_timeout + 5 if timeout is None else timeout
        for sig, wait in ((signal.SIGUSR1, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            # only signal what is still haproxy: a pid is reused once its process has exited
            for target in [pid] + (sorted(kids) if sig == signal.SIGKILL else []):
                if _is_haproxy(target):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(target, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not _is_haproxy(pid) and not any(_is_haproxy(k) for k in kids):
                    return True
                time.sleep(0.01)
        raise ProxyError(f"haproxy master {pid} in {self.dir} did not exit; kill it by hand")

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

    # -- steps -------------------------------------------------------------------------------------
    def _prepare_dir(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProxyError(f"cannot create the haproxy directory {self.dir}: {exc.strerror}; "
                             "check proxy.dir") from exc

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One change at a time per directory, across processes (two services released at once)."""
        self._prepare_dir()
        wait = self.drain_timeout + self.reload_timeout + self.start_timeout + 30
        with open(self.dir / LOCK_FILE, "a+") as fh:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        raise ProxyError(f"another process keeps {self.dir / LOCK_FILE} locked; "
                                         "is another release switching the proxy?") from exc
                    time.sleep(0.02)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _stage_and_validate(self, data: bytes) -> None:
        """Write the staged file and let haproxy check it. Touches nothing else."""
        try:
            _write_synced(self.staged_path, data)
        except OSError as exc:
            raise ProxyError(f"cannot write {self.staged_path}: {exc.strerror}") from exc
        proc = self._run([self.binary, "-c", "-f", str(self.staged_path)], timeout=30)
        if proc.returncode != 0:
            raise ProxyError(f"haproxy refused the new configuration: {_first_error_line(proc.stderr)}",
                             staged=str(self.staged_path))

    def _swap_in(self) -> None:
        try:
            os.replace(self.staged_path, self.config_path)
            _fsync_dir(self.dir)
        except OSError as exc:
            raise ProxyError(f"cannot rename {self.staged_path} to {self.config_path}: "
                             f"{exc.strerror}") from exc

    def _activate(self) -> tuple[float, float]:
        """Start haproxy, or reload it and drain the old workers. Returns (reload s, drain s)."""
        pid = self.master_pid()
        if pid is None:
            t0 = time.monotonic()
            self._start()
            return time.monotonic() - t0, 0.0
        return self._reload_and_drain(pid)

    def _start(self) -> None:
        # -D: the command returns once the master has bound the listeners and forked its worker, so
        # a busy port or a bad path fails here with haproxy's own message. The pid file comes from
        # the configuration's "pidfile" (giving -p as well makes haproxy complain about it).
        cmd = [self.binary, "-W", "-S", f"{self.master_socket},mode,600", "-D", "-f", str(self.config_path)]
        proc = self._run(cmd, timeout=self.start_timeout)
        if proc.returncode != 0:
            raise ProxyError(f"haproxy did not start: {_first_error_line(proc.stderr)}")
        deadline = time.monotonic() + self.start_timeout
        while True:
            pid = self.master_pid()
            if pid is not None and children(pid) and self._listening():
                self._wait_for_master_cli(deadline)
                return
            if time.monotonic() > deadline:
                raise ProxyError(f"haproxy started but its master is not found through {self.pid_path} or "
                                 f"does not answer on {self.listen} within {self.start_timeout:g}s; "
                                 "a template must keep 'pidfile' and the bind address")
            time.sleep(0.01)

    def _wait_for_master_cli(self, deadline: float) -> None:
        """The master opens its CLI a few milliseconds after it forked the worker. Until then the
        next reload could not tell a refusal from a slow start, so a change ends only once it answers."""
        while self.failed_reloads() is None:
            if time.monotonic() > deadline:
                raise ProxyError(f"the haproxy master does not answer on {self.master_socket}")
            time.sleep(0.005)

    def _listening(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _reload_and_drain(self, master: int) -> tuple[float, float]:
        """SIGUSR2 the master; wait for a new worker, then until every pre-reload worker has exited.

        A refused reload leaves the old worker running and no new one; the master's failed-reload
        count tells that apart from a slow start, so the caller can undo at once."""
        old = children(master)
        failed_before = self.failed_reloads()
        t0 = time.monotonic()
        try:
            os.kill(master, signal.SIGUSR2)
        except OSError as exc:
            raise ProxyError(f"cannot signal the haproxy master {master}: {exc.strerror}") from exc
        deadline = t0 + self.reload_timeout
        next_ask = t0 + 0.05
        while not {p for p in children(master) - old if _is_haproxy(p)}:
            now = time.monotonic()
            if failed_before is not None and now >= next_ask:
                next_ask = now + 0.05
                failed = self.failed_reloads()
                if failed is not None and failed > failed_before:
                    raise ProxyError("haproxy refused the reload and kept the old worker: `haproxy -c` "
                                     "accepted the file, so the cause is at start-up (a listen address "
                                     f"already in use, a socket path in {self.dir} it cannot create)")
            if not _is_haproxy(master):
                raise ProxyError(f"the haproxy master {master} exited during the reload")
            if now > deadline:
                raise ProxyError(f"haproxy started no new worker within {self.reload_timeout:g}s of the "
                                 f"reload; ask its master: echo 'show proc' | socat - {self.master_socket}")
            time.sleep(0.002)
        self._wait_for_master_cli(deadline)
        t1 = time.monotonic()
        if self.drain_timeout <= 0:
            return t1 - t0, 0.0
        deadline = t1 + self.drain_timeout
        while True:
            left = [p for p in old if _alive(p) and (_stat(p) or ("", "", 0))[2] == master]
            if not left:
                return t1 - t0, time.monotonic() - t1
            if time.monotonic() > deadline:
                raise ProxyError(f"haproxy workers {sorted(left)} from before the reload still run after "
                                 f"{self.drain_timeout:g}s; raise proxy.drain_timeout or look for "
                                 "long-running requests", workers=sorted(left))
            time.sleep(0.002)

    def _undo(self, prior: bytes | None, was_running: bool, cause: ProxyError) -> None:
        """Put the bytes that were active before back and make haproxy run them again."""
        try:
            if prior is None:
                self.config_path.unlink(missing_ok=True)
                _fsync_dir(self.dir)
                self.stop()
                return
            _write_synced(self.staged_path, prior)
            self._swap_in()
            pid = self.master_pid()
            if pid is not None:
                self._reload_and_drain(pid)
            elif was_running:
                self._start()
        except (ProxyError, OSError) as exc:
            raise ProxyError(f"{cause}; putting the previous haproxy configuration back failed too: {exc}",
                             **cause.data) from exc

    def _keep_last_good(self, prior: bytes | None) -> None:
        try:
            if prior is None:
                self.last_good_path.unlink(missing_ok=True)
            else:
                tmp = self.last_good_path.with_name(LAST_GOOD + ".tmp")
                _write_synced(tmp, prior)
                os.replace(tmp, self.last_good_path)
        except OSError as exc:
            raise ProxyError(f"the new configuration is active but {self.last_good_path} could not be "
                             f"written: {exc.strerror}") from exc

    def _run(self, cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
        # stderr goes to a file, not a pipe: a daemonizing process could keep a pipe open
        with tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                      timeout=timeout, check=False)
            except FileNotFoundError as exc:
                raise ProxyError(f"haproxy binary {self.binary!r} not found; install haproxy or set "
                                 "proxy.binary in cdlib.yml") from exc
            except subprocess.TimeoutExpired as exc:
                raise ProxyError(f"{' '.join(cmd)} did not finish within {timeout:g}s") from exc
            except OSError as exc:
                raise ProxyError(f"cannot run {self.binary!r}: {exc.strerror}") from exc
            err.seek(0)
            proc.stderr = err.read().decode("utf-8", "replace")
        return proc
