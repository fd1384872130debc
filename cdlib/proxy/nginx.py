"""A private nginx instance as the proxy: ``nginx -p DIR -c DIR/nginx.conf``.

Everything the instance writes (pid file, logs, temp files) lives in DIR, so it never touches the
system's nginx. A change goes: render -> write ``nginx.conf.staged`` -> ``nginx -t`` on it -> rename
over ``nginx.conf`` -> start or SIGHUP the master -> wait until new workers run and every worker that
existed before the reload has exited. The last step is what makes blue-green switching lossless:
after a reload the old workers keep serving the old upstream for about 100 ms, so stopping the old
color before they exit drops requests (see docs/proxy.md). Any failure after the rename puts the
previous bytes back and reloads again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import ConfigError, ProxyError
from ..model import Backend
from .base import Proxy

CONFIG = "nginx.conf"
STAGED = "nginx.conf.staged"
LAST_GOOD = "nginx.conf.last-good"
PID_FILE = "nginx.pid"
ERROR_LOG = "error.log"
LOCK_FILE = ".cdlib.lock"
HEALTH_PATH = "/_cdlib/health"
TEMPLATE = "nginx.conf.j2"


def parse_listen(listen: str) -> tuple[str, int]:
    """'8880', '127.0.0.1:8880', '[::1]:8880' -> the host and port a client connects to."""
    from ..config import LISTEN_RE

    m = LISTEN_RE.match(str(listen))
    if not m or not 1 <= int(m.group("port")) <= 65535:
        raise ConfigError(f"proxy.listen: expected PORT or ADDRESS:PORT, got {listen!r}", key="proxy.listen")
    host = m.group("host") or "127.0.0.1"
    if host == "0.0.0.0":
        host = "127.0.0.1"
    elif host.startswith("["):
        host = host[1:-1]
        host = "::1" if host == "::" else host
    return host, int(m.group("port"))


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def check_backends(backends: Sequence[Backend]) -> None:
    """Refuse what no proxy can serve: two backends for one service, one path or one host claimed
    by two services, a path under the proxy's own /_cdlib/ prefix, a malformed server. Pure.

    nginx would refuse most of these too, but with a message about its file, not about services.
    """
    seen_services: set[str] = set()
    seen_paths: dict[str, str] = {}
    seen_hosts: dict[str, str] = {}
    for b in backends:
        if b.service in seen_services:
            raise ProxyError(f"two backends for service {b.service!r}: the proxy routes one color per service")
        seen_services.add(b.service)
        for path in b.routes.paths:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ProxyError(f"service {b.service}: route path {path!r} must start with '/'")
            if path == "/_cdlib" or path.startswith("/_cdlib/"):
                raise ProxyError(f"service {b.service}: route path {path!r} is reserved for the proxy itself")
            prefix = path.rstrip("/") + "/"
            owner = seen_paths.setdefault(prefix, b.service)
            if owner != b.service:
                raise ProxyError(f"services {owner} and {b.service} both route the path {prefix}")
        for host in b.routes.hosts:
            owner = seen_hosts.setdefault(host, b.service)
            if owner != b.service:
                raise ProxyError(f"services {owner} and {b.service} both route the host {host}")
        for server in b.servers:
            try:
                address, port = server
            except (TypeError, ValueError):
                raise ProxyError(f"service {b.service}: server {server!r} is not (address, port)") from None
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ProxyError(f"service {b.service}: server port {port!r} is not from 1 to 65535")
            if not isinstance(address, str):
                raise ProxyError(f"service {b.service}: server address {address!r} is not a string")


def nginx_context(backends: Sequence[Backend], *, listen: str, worker_processes: int = 2,
                  shutdown_timeout: int = 12) -> dict:
    """The variables nginx.conf.j2 (and a user's override template) sees. Pure.

    Backends are sorted by service and servers by address, so the same state always renders the
    same bytes (the core compares configurations byte for byte).
    """
    check_backends(backends)
    out = []
    for b in sorted(backends, key=lambda b: str(b.service)):
        locations = []
        for path in b.routes.paths:
            prefix = path.rstrip("/") + "/"
            locations.append({"path": path, "prefix": prefix,
                              "redirect": prefix[:-1] if prefix != "/" else None})
        out.append({
            "service": b.service, "color": b.color, "release": b.release or "-",
            "upstream": b.upstream, "servers": sorted({_hostport(a, p) for a, p in b.servers}),
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


# -- /proc --------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, ppid) of a process, None when it does not exist."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    close = data.rfind(")")
    fields = data[close + 2:].split()
    try:
        return data[data.find("(") + 1:close], fields[0], int(fields[1])
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] not in ("Z", "X")


def _is_nginx(pid: int) -> bool:
    """Alive and still an nginx process (a pid can be reused once a worker has exited)."""
    st = _stat(pid)
    return st is not None and st[1] not in ("Z", "X") and st[0] == "nginx"


def children(ppid: int) -> set[int]:
    """Living processes whose parent is ``ppid`` (nginx workers of a master)."""
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None and st[2] == ppid and st[1] not in ("Z", "X"):
                out.add(int(name))
    return out


def _first_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for marker in ("[emerg]", "[alert]", "[crit]", "[error]"):
        for ln in lines:
            if marker in ln:
                return ln.removeprefix("nginx: ")
    return lines[0].removeprefix("nginx: ") if lines else "no output"


class NginxProxy(Proxy):
    kind = "nginx"

    def __init__(self, directory: str | os.PathLike, listen: str = "127.0.0.1:8880", binary: str = "nginx",
                 template: str | os.PathLike | None = None, drain_timeout: float = 15.0, *,
                 worker_processes: int = 2, reload_timeout: float = 10.0, start_timeout: float = 10.0):
        self.dir = Path(directory).absolute()
        self.listen = str(listen)
        self.host, self.port = parse_listen(self.listen)
        self.binary = binary
        self.template = Path(template) if template is not None else None
        self.drain_timeout = float(drain_timeout)
        self.worker_processes = worker_processes
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

    # -- the port -----------------------------------------------------------------------------------
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def describe(self) -> str:
        return f"nginx at {self.url()} (dir {self.dir})"

    def read_config(self) -> bytes | None:
        try:
            return self.config_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ProxyError(f"cannot read {self.config_path}: {exc.strerror}") from exc

    def render(self, backends: Sequence[Backend]) -> str:
        from ..render import render_template

        # the old workers are forced to close their connections a little before the drain gives up
        shutdown = max(1, int(self.drain_timeout * 0.8))
        context = nginx_context(backends, listen=self.listen, worker_processes=self.worker_processes,
                                shutdown_timeout=shutdown)
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
                cause = exc if isinstance(exc, ProxyError) else ProxyError(f"nginx in {self.dir}: {exc}")
                self._undo(prior, was_running, cause)
                raise ProxyError(f"{cause}; the previous nginx configuration was put back",
                                 **cause.data) from exc
            self._keep_last_good(prior)
        return {"validate": round(t_validate, 4), "reload": round(t_reload, 4), "drain": round(t_drain, 4)}

    def restore(self, prior: bytes | None) -> None:
        """Put prior back byte for byte and reload. prior None means there was no configuration
        (nothing was ever served from this directory): the exact prior state is then an nginx that
        does not run and no nginx.conf, so that is what restore(None) leaves."""
        if prior is None:
            self.stop()
            with self._locked():
                for path in (self.config_path, self.staged_path):
                    path.unlink(missing_ok=True)
            return
        data = prior
        with self._locked():
            self._stage_and_validate(data)
            self._swap_in()
            try:
                self._activate()
            except (ProxyError, OSError) as exc:
                raise ProxyError(f"restoring the nginx configuration in {self.dir} failed: {exc}") from exc

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
                "dir": str(self.dir), "listen": self.listen}

    # -- process control -------------------------------------------------------------------------
    def master_pid(self) -> int | None:
        """The master's pid when this directory's nginx runs (pid file + /proc, so a stale pid file
        or a reused pid never counts)."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if b"master process" not in cmdline or str(self.dir).encode() not in cmdline:
            return None
        return pid

    def workers(self) -> set[int]:
        pid = self.master_pid()
        return children(pid) if pid else set()

    def stop(self, timeout: float | None = None) -> bool:
        """Quit gracefully (SIGQUIT), then force; wait until the master is gone. True if it ran."""
        pid = self.master_pid()
        if pid is None:
            return False
        kids = children(pid)
        timeout = self.drain_timeout + 5 if timeout is None else timeout
        for sig, wait in ((signal.SIGQUIT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            # only signal what is still nginx: a pid is reused once its process has exited
            for target in [pid] + (sorted(kids) if sig == signal.SIGKILL else []):
                if _is_nginx(target):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(target, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not _is_nginx(pid) and not any(_is_nginx(k) for k in kids):
                    return True
                time.sleep(0.01)
        raise ProxyError(f"nginx master {pid} in {self.dir} did not exit; kill it by hand")

    # -- steps -------------------------------------------------------------------------------------
    def _prepare_dir(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "temp").mkdir(exist_ok=True)
        except OSError as exc:
            raise ProxyError(f"cannot create the nginx directory {self.dir}: {exc.strerror}; "
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
        """Write the staged file and let nginx check it. Touches nothing else."""
        try:
            _write_synced(self.staged_path, data)
        except OSError as exc:
            raise ProxyError(f"cannot write {self.staged_path}: {exc.strerror}") from exc
        proc = self._run([self.binary, "-t", "-q", "-p", f"{self.dir}/", "-c", str(self.staged_path)],
                         timeout=30)
        if proc.returncode != 0:
            raise ProxyError(f"nginx refused the new configuration: {_first_error_line(proc.stderr)}",
                             staged=str(self.staged_path))

    def _swap_in(self) -> None:
        try:
            os.replace(self.staged_path, self.config_path)
            _fsync_dir(self.dir)
        except OSError as exc:
            raise ProxyError(f"cannot rename {self.staged_path} to {self.config_path}: {exc.strerror}") from exc

    def _activate(self) -> tuple[float, float]:
        """Start nginx, or reload it and drain the old workers. Returns (reload s, drain s)."""
        pid = self.master_pid()
        if pid is None:
            t0 = time.monotonic()
            self._start()
            return time.monotonic() - t0, 0.0
        return self._reload_and_drain(pid)

    def _start(self) -> None:
        proc = self._run([self.binary, "-p", f"{self.dir}/", "-c", str(self.config_path)],
                         timeout=self.start_timeout)
        if proc.returncode != 0:
            raise ProxyError(f"nginx did not start: {_first_error_line(proc.stderr)}; "
                             f"check {self.dir / ERROR_LOG}")
        deadline = time.monotonic() + self.start_timeout
        while True:
            pid = self.master_pid()
            if pid is not None and children(pid) and self._listening():
                return
            if time.monotonic() > deadline:
                raise ProxyError(f"nginx started but does not answer on {self.listen} within "
                                 f"{self.start_timeout:g}s; check {self.dir / ERROR_LOG}")
            time.sleep(0.01)

    def _listening(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _reload_and_drain(self, master: int) -> tuple[float, float]:
        """SIGHUP the master; wait for new workers, then until every pre-reload worker has exited."""
        old = children(master)
        log = self.dir / ERROR_LOG
        offset = log.stat().st_size if log.exists() else 0
        t0 = time.monotonic()
        try:
            os.kill(master, signal.SIGHUP)
        except OSError as exc:
            raise ProxyError(f"cannot signal the nginx master {master}: {exc.strerror}") from exc
        deadline = t0 + self.reload_timeout
        while not (children(master) - old):
            refused = _emerg_since(log, offset)
            if refused:
                raise ProxyError(f"nginx refused the reload: {refused}")
            if not _alive(master):
                raise ProxyError(f"the nginx master {master} exited during the reload; check {log}")
            if time.monotonic() > deadline:
                raise ProxyError(f"nginx started no new workers within {self.reload_timeout:g}s of the "
                                 f"reload; check {log}")
            time.sleep(0.002)
        t1 = time.monotonic()
        if self.drain_timeout <= 0:
            return t1 - t0, 0.0
        deadline = t1 + self.drain_timeout
        while True:
            left = [p for p in old if _alive(p) and (_stat(p) or ("", "", 0))[2] == master]
            if not left:
                return t1 - t0, time.monotonic() - t1
            if time.monotonic() > deadline:
                raise ProxyError(f"nginx workers {sorted(left)} from before the reload still run after "
                                 f"{self.drain_timeout:g}s; raise proxy.drain_timeout or look for "
                                 "long-running requests", workers=sorted(left))
            time.sleep(0.002)

    def _undo(self, prior: bytes | None, was_running: bool, cause: ProxyError) -> None:
        """Put the bytes that were active before back and make nginx run them again."""
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
            raise ProxyError(f"{cause}; putting the previous nginx configuration back failed too: {exc}",
                             **cause.data) from exc

    def _keep_last_good(self, prior: bytes | None) -> None:
        try:
            if prior is None:
                self.last_good_path.unlink(missing_ok=True)
            else:
                _write_synced(self.last_good_path.with_name(LAST_GOOD + ".tmp"), prior)
                os.replace(self.last_good_path.with_name(LAST_GOOD + ".tmp"), self.last_good_path)
        except OSError as exc:
            raise ProxyError(f"the new configuration is active but {self.last_good_path} could not be "
                             f"written: {exc.strerror}") from exc

    def _run(self, cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
        # stderr goes to a file, not a pipe: the daemonized master inherits it and would keep a pipe open
        with tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                      timeout=timeout, check=False)
            except FileNotFoundError as exc:
                raise ProxyError(f"nginx binary {self.binary!r} not found; install nginx or set "
                                 "proxy.binary in cdlib.yml") from exc
            except subprocess.TimeoutExpired as exc:
                raise ProxyError(f"{' '.join(cmd)} did not finish within {timeout:g}s") from exc
            except OSError as exc:
                raise ProxyError(f"cannot run {self.binary!r}: {exc.strerror}") from exc
            err.seek(0)
            proc.stderr = err.read().decode("utf-8", "replace")
        return proc


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
    marker = f"signal 1 (SIGHUP) received from {os.getpid()}"
    seen = False
    for line in tail.splitlines():
        if not seen:
            seen = marker in line
        elif "[emerg]" in line:
            return line.split("[emerg]", 1)[1].strip()
    return None


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
