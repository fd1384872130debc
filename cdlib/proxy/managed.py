"""A proxy that cdlib runs itself, as a private instance in a directory of its own.

nginx and HAProxy are switched the same way; only their commands, signals and messages differ.
This module holds what they share, so the guarantees are written once:

- the directory: the active file, the staged candidate (``<config>.staged``), the file that was
  active before the last successful apply (``<config>.last-good``), the master's pid file and
  ``.cdlib.lock``; nothing outside it is touched;
- one change at a time per directory, across processes (two services released at the same time);
- a change goes: write and fsync the staged file -> let the binary check it -> rename it over the
  active file (fsync the directory) -> start the proxy, or reload it and wait until every worker
  that ran before the reload has exited. That last wait (the drain) is what makes blue-green
  switching lossless: old workers keep serving the old upstream for a while after a reload
  (about 100 ms for nginx, 50 ms for HAProxy), so stopping the old color earlier drops requests
  (see docs/proxy.md);
- any failure after the rename puts the previous bytes back exactly, reloads (and drains) again
  and raises ProxyError;
- after every successful start or reload, a marker (``.cdlib.loaded``) records the digest of the
  file the master loaded and the master's pid. ``restore(prior)`` is a no-op when the file already
  holds exactly ``prior`` and the marker says the running master loaded it: an undo with nothing
  to restore then succeeds without running the binary (a mistyped ``proxy.binary`` included);
- a refusal by the binary never quotes the file: the descriptor may name any readable file as the
  template (``proxy.template: /etc/shadow``), and ``nginx -t`` / ``haproxy -c`` repeat the words
  they refuse. The message keeps what the binary says with every quoted part cut out, and the line;
- :meth:`ManagedProxy.preflight` checks the binary, the template and a validation of what it
  renders in a temporary directory, before a release changes anything.

An adapter says how to check a file, start the binary, reload it and wait for the new workers,
how to recognise its master and its processes, and how to render its configuration
(:class:`ManagedProxy`'s abstract methods).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .. import netaddr
from ..errors import ConfigError, ProxyError
from ..model import Backend, Routes
from .base import Proxy

LOCK_FILE = ".cdlib.lock"
LOADED_FILE = ".cdlib.loaded"  # what the running master loaded: {"sha256": ..., "pid": ...}
# what preflight renders besides the empty configuration: one service with one server
PREFLIGHT_BACKEND = Backend("cdlib-preflight", "blue", "preflight", Routes(("/cdlib-preflight/",), ()),
                            (("127.0.0.1", 9),), "/health")
HEALTH_PATH = "/_cdlib/health"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# an IPv4 address, an IPv6 address (hex digits, colons, a dotted IPv4 tail) or a DNS name
SERVER_ADDRESS_RE = re.compile(rf"(?:[0-9.]+|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*|{_LABEL}(?:\.{_LABEL})*)", re.ASCII)


def parse_listen(listen: str) -> tuple[str, int]:
    """'8880', '127.0.0.1:8880', '[::1]:8880' -> the host and port a client connects to
    (:func:`cdlib.netaddr.parse_listen`); a malformed address is a ConfigError naming proxy.listen."""
    try:
        return netaddr.parse_listen(str(listen))
    except ValueError:
        raise ConfigError(f"proxy.listen: expected PORT or ADDRESS:PORT, got {listen!r}",
                          key="proxy.listen") from None


hostport = netaddr.format_hostport  # a server as a configuration file writes it: IPv6 addresses in brackets


def check_backends(backends: Sequence[Backend]) -> None:
    """Refuse what no proxy can serve: two backends for one service, one path or one host claimed
    by two services, a path under the proxy's own /_cdlib/ prefix, a malformed server. Pure.

    nginx and HAProxy would refuse most of these too, but with a message about their file, not
    about services.
    """
    seen_services: set[str] = set()
    seen_paths: dict[str, str] = {}
    seen_hosts: dict[str, str] = {}
    for b in backends:
        if b.service in seen_services:
            raise ProxyError(f"two backends for service {b.service!r}: the proxy routes one color per "
                             "service")
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
            if not SERVER_ADDRESS_RE.fullmatch(address):
                # HAProxy reads "unix@", "abns@", "/path" and the like as other socket families
                raise ProxyError(f"unsafe configuration value {address!r}: service {b.service} server address "
                                 "must be an IP address or a host name")


def first_error_line(output: str, markers: Sequence[str], clean: Callable[[str], str], *,
                     anchored: bool = False, noise: str | None = None) -> str:
    """The line of a tool's output that says what went wrong, passed through ``clean`` (which cuts
    the tool's own prefix): the first line holding the most severe marker (``markers`` from most to
    least severe; ``anchored``: only where the line starts with it), else the first line that does
    not start with ``noise``, else the first line; 'no output' when there is none."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for marker in markers:
        for ln in lines:
            if ln.startswith(marker) if anchored else marker in ln:
                return clean(ln)
    rest = [ln for ln in lines if noise is None or not ln.startswith(noise)]
    return clean((rest or lines or ["no output"])[0])


# -- /proc --------------------------------------------------------------------------------------
def proc_stat(pid: int) -> tuple[str, str, int] | None:
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


def alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[1] not in ("Z", "X")


def children(ppid: int) -> set[int]:
    """Living processes whose parent is ``ppid`` (the workers of a master)."""
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None and st[2] == ppid and st[1] not in ("Z", "X"):
                out.add(int(name))
    return out


# -- durable files ------------------------------------------------------------------------------
def write_synced(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write and fsync; ``mode`` (e.g. 0o600) is set before a byte is written."""
    if mode is None:
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with open(fd, "wb") as fh:
        os.fchmod(fh.fileno(), mode)  # an existing file keeps its mode through O_CREAT
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


_QUOTED_RE = re.compile(r"[\"'`].*[\"'`]|[\"'`].*$")  # from the first quote to the last, or to the end
# nginx's "2024/01/01 10:00:00 [emerg] 12#12: " (or just "[emerg] "), HAProxy's level when left
_LEVEL_RE = re.compile(r"^(?:\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\s+)?\[(?:emerg|alert|crit|error|warn)\]\s*"
                       r"(?:\d+#\d+:\s*)?", re.IGNORECASE)
_PARSING_RE = re.compile(r"^(?:config\s*:\s*)?(?:parsing\s*)?(?::\s*)?")


def refusal(line: str, path: str | os.PathLike, data: bytes | str) -> tuple[str, int | None]:
    """What a binary's error line says about the file at ``path`` holding ``data``, without a byte
    of the file: (the reason with every quoted part cut out, the line number or None).

    nginx and HAProxy quote the tokens they refuse (``unknown directive "root:x:0:0..."``), so the
    text from the first quote to the last goes. Should a whole line of the file still show through,
    the reason is dropped altogether."""
    where = re.escape(str(path))
    m = re.search(where + r":(\d+)", line)
    number = int(m.group(1)) if m else None
    text = re.sub(r"\s*(?:\bin\s+)?\[?" + where + r"(?::\d+)?\]?", " ", line)
    text = _QUOTED_RE.sub("[...]", text)
    text = _PARSING_RE.sub("", _LEVEL_RE.sub("", text.strip())).strip(" :,;")
    text = " ".join(text.split())
    config = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if any(len(ln.strip()) >= 6 and ln.strip() in text for ln in config.splitlines()):
        text = ""
    return text, number


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)



def forced_stop_after(drain_timeout: float) -> int:
    """drain_timeout less max(2 s, 20 %), at least 1 s: 15 -> 12, 10 -> 8, 4 -> 2, 2 -> 1."""
    return max(1, int(drain_timeout - max(2.0, math.ceil(drain_timeout * 0.2))))

class ManagedProxy(Proxy):
    """The private-instance mechanics; ``kind`` names the binary in every message."""

    config_file: str  # the active configuration, e.g. nginx.conf
    staged_file: str  # the candidate being validated (left behind when the binary refuses it)
    last_good_file: str  # what was active before the most recent successful apply
    pid_file: str  # written by the master
    template_name: str  # the packaged Jinja2 template a user's override may extend
    subdirs: tuple[str, ...] = ()  # created in the directory before the binary runs
    stop_signal: signal.Signals  # the graceful stop, tried before SIGTERM and SIGKILL
    check_flag: str  # the binary's "check this file" option, as messages name it (-t, -c)

    def __init__(self, directory: str | os.PathLike, listen: str, binary: str,
                 template: str | os.PathLike | None, drain_timeout: float, *,
                 reload_timeout: float, start_timeout: float, tls_listen: str | None = None):
        self.dir = Path(directory).absolute()
        self.listen = str(listen)
        self.host, self.port = parse_listen(self.listen)
        # the HTTPS listen address (proxy.tls_listen), None: no HTTPS; the templates see it as tls_listen
        self.tls_listen = None if tls_listen is None else str(tls_listen)
        if self.tls_listen is not None and netaddr.listen_problem(self.tls_listen):
            raise ConfigError(f"proxy.tls_listen: expected {netaddr.listen_problem(self.tls_listen)}, got "
                              f"{self.tls_listen!r}", key="proxy.tls_listen")
        self.binary = binary
        self.template = Path(template) if template is not None else None
        self.drain_timeout = float(drain_timeout)
        self.reload_timeout = reload_timeout
        self.start_timeout = start_timeout

    # -- what each proxy does its own way ---------------------------------------------------------
    @abstractmethod
    def _context(self, backends: Sequence[Backend]) -> dict:
        """The template's variables for these backends. Pure."""

    @abstractmethod
    def _validate_command(self, path: Path, prefix: Path | None = None) -> list[str]:
        """The command that checks the file at ``path`` without binding or touching the instance;
        ``prefix``: the directory relative paths of the file resolve in (default: the instance's)."""

    @abstractmethod
    def _error_line(self, output: str) -> str:
        """The line of the binary's output that says what it refused."""

    @abstractmethod
    def _start(self) -> None:
        """Start the master on the active file; return once it serves (see ``_wait_until_serving``)."""

    @abstractmethod
    def _reload(self, master: int, old: set[int]) -> float:
        """Signal ``master`` to load the active file (``_signal_master``) and wait until it runs a
        worker that is not in ``old``. Raise ProxyError as soon as the reload is known to be refused,
        when the master exits or after ``reload_timeout``. Returns when the signal was sent
        (time.monotonic()): the reload timing starts there."""

    @abstractmethod
    def _is_master(self, pid: int, cmdline: bytes) -> bool:
        """Whether the living process ``pid`` with this /proc cmdline is this directory's master."""

    @abstractmethod
    def _is_own_name(self, comm: str) -> bool:
        """Whether a process with this name (the executable's, cut to 15 characters by the
        kernel) is one of this binary's."""

    # -- paths ------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.dir / self.config_file

    @property
    def staged_path(self) -> Path:
        return self.dir / self.staged_file

    @property
    def last_good_path(self) -> Path:
        return self.dir / self.last_good_file

    @property
    def pid_path(self) -> Path:
        return self.dir / self.pid_file

    @property
    def loaded_path(self) -> Path:
        return self.dir / LOADED_FILE

    # -- the port -----------------------------------------------------------------------------------
    def url(self) -> str:
        return f"http://{netaddr.format_hostport(self.host, self.port)}"

    def describe(self) -> str:
        return f"{self.kind} at {self.url()} (dir {self.dir})"

    def read_config(self) -> bytes | None:
        try:
            return self.config_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ProxyError(f"cannot read {self.config_path}: {exc.strerror}") from exc

    def render(self, backends: Sequence[Backend]) -> str:
        """The configuration for these backends. When a route has TLS, the text ends with a comment
        holding the digest of the certificate and key files (:func:`cdlib.tls.digest_line`): the
        proxy reads them only when it loads its configuration, so a certificate renewed in place
        changes the text, and applying it validates, swaps and reloads like any change."""
        from ..render import render_template
        from ..tls import digest_line

        text = render_template(self.template_name, self._template_context(backends), self.template)
        tail = digest_line(backends)
        return text + ("\n" if tail and not text.endswith("\n") else "") + tail

    def _template_context(self, backends: Sequence[Backend]) -> dict:
        """The adapter's context plus what every managed proxy's template sees: ``tls_listen``.
        A route with TLS and no HTTPS listen address is refused: the proxy is shared, and rendering
        it without HTTPS would silently drop another service's HTTPS routes."""
        context = self._context(backends)
        context.setdefault("tls_listen", self.tls_listen)
        if context["tls_listen"] is None:
            for b in backends:
                if b.routes.tls_cert is not None:
                    raise ConfigError(f"proxy.tls_listen: expected the HTTPS listen address (e.g. 127.0.0.1:8443): "
                                      f"service {b.service} routes HTTPS through this {self.kind} (routes.tls), and "
                                      "every service sharing the proxy needs the same proxy settings",
                                      key="proxy.tls_listen")
        return context

    def _forced_stop_after(self) -> int:
        """Seconds after which the proxy itself closes what an old worker still holds: before the
        drain gives up waiting for it, leaving the worker 20 % of drain_timeout and at least 2 s to
        be told, to exit and to be seen gone (a loaded machine needs more than 1 s); at least 1 s."""
        return forced_stop_after(self.drain_timeout)

    # -- changes without a reload (an adapter that can says so in _live_plan) -----------------------
    def plan_apply(self, text: str) -> tuple[str, str]:
        current, data = self.read_config(), text.encode("utf-8")
        if current is None or self.master_pid() is None:  # a proxy that died runs nothing, whatever its file
            return "reload", f"{self.kind} is not running: apply starts it"
        if current == data:
            return "none", "the configuration is unchanged"
        if not self._runs(current):
            return "reload", f"the running {self.kind} has not loaded {self.config_path} as it is now"
        ok, why = self._live_plan(current, data)
        return ("runtime" if ok else "reload"), why

    def _live_plan(self, old: bytes, new: bytes) -> tuple[bool, str]:
        """Whether the running proxy, which runs ``old``, can take ``new`` without a reload, and
        why (the words plan_apply shows). Pure. The default: every change is a reload."""
        return False, f"{self.kind} applies every change with a reload"

    def _apply_live(self, old: bytes, new: bytes) -> dict:
        """Make the running proxy run ``new`` without a reload; called only when ``_live_plan``
        allowed it. The proxy runs ``old`` or, after a failed attempt, something between the two:
        converge to ``new`` from either. ProxyError on a failure, wherever it stopped. Returns the
        timings (seconds)."""
        raise ProxyError(f"{self.kind} cannot change its configuration without a reload")

    def _change_live(self, prior: bytes | None, data: bytes) -> dict | None:
        """Under the lock, once ``data`` was validated: apply it without a reload when the running
        master runs ``prior`` (the marker says so) and the adapter takes the change live; None when
        a reload is needed. The marker goes first (a crash between the live change and the rename
        leaves no marker, so restore() reloads), then the live change, the rename and the marker.
        A failure puts the previous state back live (by a reload of the previous file when that
        fails too), leaves the previous bytes in the file and raises ProxyError."""
        if prior is None or prior == data or not self._runs(prior) or not self._live_plan(prior, data)[0]:
            return None
        self.loaded_path.unlink(missing_ok=True)
        try:
            timings = self._apply_live(prior, data)
            self._swap_in()
        except (ProxyError, OSError) as exc:
            cause = exc if isinstance(exc, ProxyError) else ProxyError(f"{self.kind} in {self.dir}: {exc}")
            self._undo_live(prior, data, cause)
            raise ProxyError(f"{cause}; the previous {self.kind} configuration was put back",
                             **cause.data) from exc
        self._mark_loaded()
        return timings

    def _undo_live(self, prior: bytes, data: bytes, cause: ProxyError) -> None:
        try:
            if self.read_config() != prior:
                write_synced(self.staged_path, prior)
                self._swap_in()
            self.staged_path.unlink(missing_ok=True)
            try:
                self._apply_live(data, prior)
            except (ProxyError, OSError):
                pid = self.master_pid()
                if pid is None:
                    raise
                self._reload_and_drain(pid)
            self._mark_loaded()
        except (ProxyError, OSError) as exc:
            raise ProxyError(f"{cause}; putting the previous {self.kind} configuration back failed too: "
                             f"{exc}", **cause.data) from exc

    def apply(self, text: str) -> dict:
        data = text.encode("utf-8")
        with self._locked():
            t0 = time.monotonic()
            self._stage_and_validate(data)
            t_validate = time.monotonic() - t0
            prior = self.read_config()
            live = self._change_live(prior, data)
            if live is not None:
                self._keep_last_good(prior)
                return {"validate": round(t_validate, 4), **live}
            was_running = self.master_pid() is not None
            self._swap_in()
            try:
                t_reload, t_drain = self._activate()
            except (ProxyError, OSError) as exc:
                cause = exc if isinstance(exc, ProxyError) else ProxyError(
                    f"{self.kind} in {self.dir}: {exc}")
                self._undo(prior, was_running, cause)
                raise ProxyError(f"{cause}; the previous {self.kind} configuration was put back",
                                 **cause.data) from exc
            self._keep_last_good(prior)
        return {"validate": round(t_validate, 4), "reload": round(t_reload, 4), "drain": round(t_drain, 4)}

    def restore(self, prior: bytes | None) -> None:
        """Put prior back byte for byte and reload. prior None means there was no configuration
        (nothing was ever served from this directory): the exact prior state is then a proxy that
        does not run and no configuration file, so that is what restore(None) leaves.

        Nothing to restore, nothing done: when the file already holds exactly ``prior`` and the
        running master is known to have loaded it (the marker), or, for None, when there is no
        file and no proxy, neither the binary nor a signal is used. An undo after a change that
        never happened (a refused file, a binary that is not there) then succeeds."""
        if prior is None:
            if not self.dir.is_dir():
                return  # nothing was ever here (and the directory is not created for nothing)
            # stop under the lock too: another process's apply between the stop and the unlink
            # would start the proxy on a file this then deletes
            with self._locked():
                self.stop()
                try:
                    for path in (self.config_path, self.staged_path, self.loaded_path):
                        path.unlink(missing_ok=True)
                except OSError as exc:
                    raise ProxyError(f"cannot remove {path}: {exc.strerror or exc}; check proxy.dir") from exc
            return
        with self._locked():
            if self._runs(prior):
                self.staged_path.unlink(missing_ok=True)  # a refused candidate, if any
                return
            self._stage_and_validate(prior)
            if self._change_live(self.read_config(), prior) is not None:
                return
            self._swap_in()
            try:
                self._activate()
            except (ProxyError, OSError) as exc:
                raise ProxyError(f"restoring the {self.kind} configuration in {self.dir} failed: "
                                 f"{exc}") from exc

    def ensure_running(self) -> None:
        with self._locked():
            if self.read_config() is None:
                self._stage_and_validate(self.render([]).encode("utf-8"))
                self._swap_in()
            if self.master_pid() is None:
                self._start()
                self._mark_loaded()

    def preflight(self) -> None:
        """Check, before a release changes anything, what a switch will need: the binary is there
        and executable (``proxy.binary``), the template can be read and renders with no backend and
        with one (``proxy.template``), and the binary accepts both renderings. The check runs on
        files in a temporary directory: the live configuration, the directory and the running
        proxy are not touched. ConfigError names the field to fix and never quotes a file."""
        self._check_binary()
        texts = [self._preflight_render(backends) for backends in ([], [PREFLIGHT_BACKEND])]
        for text in texts:
            refused = self._check_elsewhere(text)
            if refused is not None:
                raise self._preflight_refusal(text, refused)

    def _check_binary(self) -> None:
        binary = self.binary
        path = binary if os.sep in binary else shutil.which(binary)
        if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
            where = "" if os.sep in binary else " on PATH"
            raise ConfigError(f"proxy.binary: {self.kind} binary {binary!r} not found or not executable{where}; "
                              f"install {self.kind} or fix proxy.binary in cdlib.yml", key="proxy.binary")

    def _preflight_render(self, backends: Sequence[Backend]) -> str:
        try:
            return self.render(backends)
        except ProxyError as exc:
            message = exc.message if exc.message.startswith("proxy.template:") else (
                f"{'proxy.template' if self.template is not None else 'proxy'}: {exc.message}")
            raise ConfigError(message, key="proxy.template" if self.template is not None else "proxy") from exc

    def _check_elsewhere(self, text: str) -> tuple[str, int | None, bool] | None:
        """Let the binary check ``text`` in a temporary directory of its own. None when it accepts
        it; else (reason, line, whether the answer came from the binary at all)."""
        with tempfile.TemporaryDirectory(prefix=f"cdlib-{self.kind}-preflight-") as tmp:
            prefix = Path(tmp)
            for name in self.subdirs:
                (prefix / name).mkdir()
            path = prefix / self.config_file
            data = text.encode("utf-8")
            write_synced(path, data, mode=0o600)
            try:
                proc = self._run(self._validate_command(path, prefix), timeout=30)
            except ProxyError as exc:
                raise ConfigError(f"proxy.binary: {exc}", key="proxy.binary") from exc
            if proc.returncode == 0:
                return None
            line = self._error_line(proc.stderr)
            reason, number = refusal(line, path, data)
            return reason, number, bool(proc.stderr.strip())

    def _preflight_refusal(self, text: str, refused: tuple[str, int | None, bool]) -> ConfigError:
        reason, number, answered = refused
        cmd = f"{self.kind} {self.check_flag}"
        where = f" (line {number} of the rendered configuration)" if number is not None else ""
        if self.template is not None:
            from ..render import render_template

            if self._check_elsewhere(render_template(self.template_name, self._template_context([]))) is None:
                return ConfigError(f"proxy.template: {cmd} refused the configuration rendered from "
                                   f"{self.template}{': ' + reason if reason else ''}{where}",
                                   key="proxy.template", line=number)
        if not answered:
            return ConfigError(f"proxy.binary: {self.binary!r} refused cdlib's own {self.kind} configuration "
                               f"without saying why; is it {self.kind}?", key="proxy.binary")
        return ConfigError(f"proxy: {cmd} refused the configuration cdlib renders{': ' + reason if reason else ''}"
                           f"{where}; check proxy.listen, proxy.dir and the {self.kind} version",
                           key="proxy", line=number)

    def status(self) -> dict:
        pid = self.master_pid()
        return {"kind": self.kind, "url": self.url(), "running": pid is not None, "pid": pid,
                "workers": sorted(children(pid)) if pid else [], "config": str(self.config_path),
                "dir": str(self.dir), "listen": self.listen}

    # -- process control -------------------------------------------------------------------------
    def master_pid(self) -> int | None:
        """The master's pid when this directory's instance runs (pid file + /proc, so a stale pid
        file or a reused pid never counts)."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        if not alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if self._is_master(pid, cmdline) else None

    def workers(self) -> set[int]:
        pid = self.master_pid()
        return children(pid) if pid else set()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop gracefully (``stop_signal``: workers finish their requests), then SIGTERM, then
        SIGKILL to the master and the workers it had; wait until they are gone. True if it ran."""
        pid = self.master_pid()
        if pid is None:
            return False
        kids = children(pid)
        timeout = self.drain_timeout + 5 if timeout is None else timeout
        for sig, wait in ((self.stop_signal, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            # only signal what is still this binary: a pid is reused once its process has exited
            for target in [pid] + (sorted(kids) if sig == signal.SIGKILL else []):
                if self._is_ours(target):
                    try:
                        os.kill(target, sig)
                    except ProcessLookupError:
                        pass
                    except PermissionError as exc:
                        raise ProxyError(f"cannot stop the {self.kind} master {pid} in {self.dir}: "
                                         f"{exc.strerror}; it runs as another user, stop it as that user") from exc
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not self._is_ours(pid) and not any(self._is_ours(k) for k in kids):
                    return True
                time.sleep(0.01)
        raise ProxyError(f"{self.kind} master {pid} in {self.dir} did not exit; kill it by hand")

    def _is_ours(self, pid: int) -> bool:
        """Alive and still a process of this binary (a pid can be reused once a worker has exited)."""
        st = proc_stat(pid)
        return st is not None and st[1] not in ("Z", "X") and self._is_own_name(st[0])

    # -- steps -------------------------------------------------------------------------------------
    def _prepare_dir(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            for name in self.subdirs:
                (self.dir / name).mkdir(exist_ok=True)
        except OSError as exc:
            raise ProxyError(f"cannot create the {self.kind} directory {self.dir}: {exc.strerror}; "
                             "check proxy.dir") from exc

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One change at a time per directory, across processes (two services released at once)."""
        self._prepare_dir()
        wait = self.drain_timeout + self.reload_timeout + self.start_timeout + 30
        try:
            lock_file = open(self.dir / LOCK_FILE, "a+")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise ProxyError(f"cannot open the lock file {self.dir / LOCK_FILE}: {exc.strerror or exc}; "
                             "check proxy.dir and its permissions") from exc
        with lock_file as fh:
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
        """Write the staged file and let the binary check it. Touches nothing else.

        The candidate is private (0600) until the binary accepted it: a template that is some
        other file (``proxy.template: /etc/shadow``) must not become a readable copy of it."""
        try:
            write_synced(self.staged_path, data, mode=0o600)
        except OSError as exc:
            raise ProxyError(f"cannot write {self.staged_path}: {exc.strerror}") from exc
        proc = self._run(self._validate_command(self.staged_path), timeout=30)
        if proc.returncode != 0:
            reason, number = refusal(self._error_line(proc.stderr), self.staged_path, data)
            where = f"line {number} of {self.staged_path}" if number is not None else str(self.staged_path)
            raise ProxyError(f"{self.kind} {self.check_flag} refused the rendered configuration"
                             f"{': ' + reason if reason else ''} ({where})",
                             staged=str(self.staged_path), line=number)
        try:
            os.chmod(self.staged_path, 0o644)
        except OSError as exc:
            raise ProxyError(f"cannot change the mode of {self.staged_path}: {exc.strerror}") from exc

    def _swap_in(self) -> None:
        try:
            os.replace(self.staged_path, self.config_path)
            fsync_dir(self.dir)
        except OSError as exc:
            raise ProxyError(f"cannot rename {self.staged_path} to {self.config_path}: "
                             f"{exc.strerror}") from exc

    def _activate(self) -> tuple[float, float]:
        """Start the proxy, or reload it and drain the old workers. Returns (reload s, drain s)."""
        pid = self.master_pid()
        if pid is None:
            t0 = time.monotonic()
            self._start()
            self._mark_loaded()
            return time.monotonic() - t0, 0.0
        timings = self._reload_and_drain(pid)
        self._mark_loaded()
        return timings

    def _mark_loaded(self) -> None:
        """Record that the running master loaded the active file (after a start or a reload)."""
        data = self.read_config()
        pid = self.master_pid()
        try:
            if data is None or pid is None:
                self.loaded_path.unlink(missing_ok=True)
                return
            tmp = self.loaded_path.with_name(LOADED_FILE + ".tmp")
            write_synced(tmp, json.dumps({"sha256": digest(data), "pid": pid}).encode())
            os.replace(tmp, self.loaded_path)
        except OSError as exc:
            raise ProxyError(f"the {self.kind} configuration is active but {self.loaded_path} could not be "
                             f"written: {exc.strerror}") from exc

    def _runs(self, data: bytes) -> bool:
        """Whether the active file holds exactly ``data`` and the running master loaded it."""
        if self.read_config() != data:
            return False
        pid = self.master_pid()
        if pid is None:
            return False
        try:
            marker = json.loads(self.loaded_path.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(marker, dict) and marker.get("pid") == pid and marker.get("sha256") == digest(data)

    def _wait_until_serving(self, timeout_message: str) -> float:
        """After the start command returned: wait until this directory's master runs, has workers
        and the listen address accepts connections. Returns the deadline (start_timeout from now),
        for whatever else the adapter waits for within the same bound."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            pid = self.master_pid()
            if pid is not None and children(pid) and self._listening():
                return deadline
            if time.monotonic() > deadline:
                raise ProxyError(timeout_message)
            time.sleep(0.01)

    def _listening(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _signal_master(self, master: int, sig: signal.Signals) -> float:
        """Send the reload signal; returns when it was sent (time.monotonic())."""
        t0 = time.monotonic()
        try:
            os.kill(master, sig)
        except OSError as exc:
            raise ProxyError(f"cannot signal the {self.kind} master {master}: {exc.strerror}") from exc
        return t0

    def _reload_and_drain(self, master: int) -> tuple[float, float]:
        """Reload, then wait until every worker from before the reload has exited (they keep
        serving the old upstream until then). Returns (reload s, drain s)."""
        old = children(master)
        t0 = self._reload(master, old)
        t1 = time.monotonic()
        if self.drain_timeout <= 0:
            return t1 - t0, 0.0
        deadline = t1 + self.drain_timeout
        while True:
            left = [p for p in old if alive(p) and (proc_stat(p) or ("", "", 0))[2] == master]
            if not left:
                return t1 - t0, time.monotonic() - t1
            if time.monotonic() > deadline:
                raise ProxyError(f"{self.kind} workers {sorted(left)} from before the reload still run after "
                                 f"{self.drain_timeout:g}s; raise proxy.drain_timeout or look for "
                                 "long-running requests", workers=sorted(left))
            time.sleep(0.002)

    def _undo(self, prior: bytes | None, was_running: bool, cause: ProxyError) -> None:
        """Put the bytes that were active before back and make the proxy run them again."""
        try:
            if prior is None:
                self.config_path.unlink(missing_ok=True)
                fsync_dir(self.dir)
                self.stop()
                return
            write_synced(self.staged_path, prior)
            self._swap_in()
            pid = self.master_pid()
            if pid is not None:
                self._reload_and_drain(pid)
                self._mark_loaded()
            elif was_running:
                self._start()
                self._mark_loaded()
        except (ProxyError, OSError) as exc:
            raise ProxyError(f"{cause}; putting the previous {self.kind} configuration back failed too: "
                             f"{exc}", **cause.data) from exc

    def _keep_last_good(self, prior: bytes | None) -> None:
        try:
            if prior is None:
                self.last_good_path.unlink(missing_ok=True)
            else:
                tmp = self.last_good_path.with_name(self.last_good_file + ".tmp")
                write_synced(tmp, prior)
                os.replace(tmp, self.last_good_path)
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
                raise ProxyError(f"{self.kind} binary {self.binary!r} not found; install {self.kind} or set "
                                 "proxy.binary in cdlib.yml") from exc
            except subprocess.TimeoutExpired as exc:
                raise ProxyError(f"{' '.join(cmd)} did not finish within {timeout:g}s") from exc
            except OSError as exc:
                raise ProxyError(f"cannot run {self.binary!r}: {exc.strerror}") from exc
            err.seek(0)
            proc.stderr = err.read().decode("utf-8", "replace")  # type: ignore[assignment]  # callers read text
        return proc
