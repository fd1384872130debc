"""The proxy as a container (``proxy.run: container``) or a Swarm service (``proxy.run: service``).

Both run the images :mod:`cdlib.proxy.image` builds (nginx or HAProxy with busybox, ``FROM
scratch``) and are reached through the Docker API only: the configuration is rendered by the same
templates as the private processes (an inner :class:`~cdlib.proxy.nginx.NginxProxy` or
:class:`~cdlib.proxy.haproxy.HaproxyProxy` does the rendering, with ``/cdlib`` as its directory),
delivered with ``put_archive`` to a staged path in the container, validated by an ``exec`` of
``nginx -t`` / ``haproxy -c``, swapped in by an ``exec`` of ``mv``, and reloaded by a signal sent
with an ``exec`` of ``kill`` (nginx: HUP, HAProxy's master: USR2). The drain is the private
processes' drain: the process list is read from ``/proc`` inside the container until every worker
that ran before the reload has exited. Any failure puts the previous bytes back.

Networking: the containers run on the host network, so the proxy reaches instances published on
``127.0.0.1:<host port>`` and clients reach the proxy on ``proxy.listen`` (docs/proxy-placement.md).
On one node, replicas of a replicated service would share the host's ports: replica ``slot`` (1, 2,
...) listens on ``proxy.listen``'s port + slot - 1, and its file is the rendered configuration with
that listen address (the only difference). In global mode (one replica per node) every replica
listens on ``proxy.listen``.

A change goes to every replica or to none: each replica's candidate is staged and validated
first; then replicas are switched one after the other (swap, reload, drain, probe of the replica's
health path); a failure on one puts back, byte for byte, the ones already switched and that one.
``status()`` shows each replica's config digest.

Each replica is reached through the engine of its node: the local engine, or for another node the
Docker host ``proxy.engines`` names for its hostname (a replica on a node with no engine known is a
ProxyError, before anything changes).

HTTPS: the certificate and key files a route names are files of the machine that runs cdlib. The
rendered configuration names them inside the container instead (:func:`tls_path`, the one place the
translation is made): ``/cdlib/tls/<sha256 of the content>.crt`` / ``.key``, in a directory only root
may enter (0700), each file 0600, delivered with ``put_archive`` to every replica before its
candidate is validated. Named after their content, these files are never rewritten: a renewal adds
new files and a new text (which also ends with ``# tls material sha256:``), so it goes the usual
validate -> swap -> reload way, and a replica that is put back finds its previous files untouched.
The files a change added are removed again when the change fails; after a change that went through,
each replica keeps the files of its new and of its previous configuration only. HAProxy's
``# tls-files LINK CERT KEY`` lines become links in the same directory. ``# tls-source PATH FILE``
lines say which file of this machine a path holds, so a configuration rendered by another process
(a restore) can deliver what a replica lacks, once the file's content is checked against its name.
Key content is never printed or logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import netaddr, swarmremoval
from ..errors import ConfigError, ProxyError
from ..model import Backend
from . import image as images
from .base import Proxy, http_get
from .managed import HEALTH_PATH, LOADED_FILE, PREFLIGHT_BACKEND, ManagedProxy, parse_listen, refusal

RESTART_DELAY_NS = 1_000_000_000  # Swarm waits 1 s before it replaces a proxy replica that died

CONFIG_DIR = images.CONFIG_DIR
NAME_PREFIX = "cdlibpx"
LABEL = "cdlib.proxy"  # on every container and service this adapter creates: the proxy kind
BB = "/bin/busybox"
# the main process of a proxy container (docker-init runs it; the proxy master runs beside it)
COMMAND = [BB, "sh", images.START_SCRIPT]
_MARK = "@@cdlib@@"
TLS_DIR = f"{CONFIG_DIR}/tls"  # root's only (0700): the certificates and keys of the HTTPS routes, 0600
_TLS_NAME = r"[0-9a-f]{64}\.(?:crt|key)"
_TLS_FILE_RE = re.compile(re.escape(TLS_DIR) + r"/(" + _TLS_NAME + r")(?![A-Za-z0-9._-])")
_TLS_LINK_RE = re.compile(re.escape(TLS_DIR) + r"/([0-9a-f]{16}\.pem)(?![A-Za-z0-9._-])")
_TLS_SOURCE_RE = re.compile(r"^# tls-source " + re.escape(TLS_DIR) + r"/(" + _TLS_NAME + r") (\S+)$", re.MULTILINE)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tls_path(data: bytes, what: str) -> str:
    """Where a certificate (``what`` "cert") or key ("key") file of this machine is in a proxy
    container: named after its content, so new content is a new path (and a new configuration)."""
    return f"{TLS_DIR}/{digest(data)}.{'key' if what == 'key' else 'crt'}"


def read_tls_file(path: str) -> bytes:
    """A certificate or key file of this machine (bounded); ProxyError naming the file, never its content."""
    from ..config.schema import FileProblem, read_bounded
    from ..tls import MAX_PEM_BYTES

    try:
        return read_bounded(Path(path), MAX_PEM_BYTES)
    except FileProblem as exc:
        raise ProxyError(f"TLS file {path} {exc}; check routes.tls of the service that names it") from None


def tls_names(text: bytes | str) -> set[str]:
    """The names in /cdlib/tls a configuration needs: the files it names, and for each HAProxy
    link ``X.pem`` the link and ``X.pem.key``."""
    s = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    links = set(_TLS_LINK_RE.findall(s))
    return set(_TLS_FILE_RE.findall(s)) | links | {f"{link}.key" for link in links}


def tls_links(text: bytes) -> list[tuple[str, str]]:
    """(link name, target name) pairs in /cdlib/tls that HAProxy's ``# tls-files`` lines ask for."""
    from .haproxy import tls_files, tls_link

    out = []
    for link, cert, key in tls_files(text.decode("utf-8", "replace")):
        if link != tls_link(CONFIG_DIR, cert, key):
            continue
        for name, target in ((link, cert), (f"{link}.key", key)):
            folder, _, base = name.rpartition("/")
            tfolder, _, tbase = target.rpartition("/")
            if folder == tfolder == TLS_DIR and re.fullmatch(_TLS_NAME, tbase):
                out.append((base, tbase))
    return out


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "explanation", None) or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:300]


# -- the engine ---------------------------------------------------------------------------------------
class DockerEngine:
    """The Docker API calls the adapter makes, with the SDK imported on first use and its
    exceptions translated to ProxyError (one line). Tests give the adapter a fake with the same
    methods."""

    def __init__(self, docker_host: str | None = None, timeout: float = 60):
        self.docker_host = docker_host
        self.timeout = timeout
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._translated("connecting to the Docker engine"):
                import docker

                if self.docker_host:
                    self._client = docker.DockerClient(base_url=self.docker_host, timeout=int(self.timeout))
                else:
                    self._client = docker.from_env(timeout=int(self.timeout))
        return self._client

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        """Docker's, requests' and the socket's exceptions become one ProxyError line."""
        try:
            yield
        except ProxyError:
            raise
        except Exception as exc:
            if isinstance(exc, (OSError, ValueError)) or type(exc).__module__.split(".")[0] in (
                    "docker", "requests", "urllib3"):
                where = f" at {self.docker_host}" if self.docker_host else ""
                raise ProxyError(f"{what}: {_one_line(exc)}; is the Docker engine{where} running?") from exc
            raise

    def _not_found(self, exc: BaseException) -> bool:
        return type(exc).__name__ in ("NotFound", "ImageNotFound")

    # images
    def image_exists(self, ref: str) -> bool:
        with self._translated(f"looking up the image {ref}"):
            try:
                self.client.api.inspect_image(ref)
                return True
            except Exception as exc:
                if self._not_found(exc):
                    return False
                raise

    def ensure_image(self, kind: str) -> dict:
        return images.ensure_image(self.client, kind)

    # containers
    def container(self, name: str) -> dict | None:
        """{"id", "running", "name", "labels"} or None."""
        with self._translated(f"inspecting the container {name}"):
            try:
                info = self.client.api.inspect_container(name)
            except Exception as exc:
                if self._not_found(exc):
                    return None
                raise
        return {"id": info["Id"], "running": bool(info["State"].get("Running")), "name": info["Name"].lstrip("/"),
                "labels": info["Config"].get("Labels") or {}}

    def run_container(self, name: str, image: str, labels: dict[str, str]) -> str:
        with self._translated(f"starting the proxy container {name}"):
            c = self.client.containers.run(image, COMMAND, name=name, detach=True, init=True, network_mode="host",
                                           labels=labels, restart_policy={"Name": "unless-stopped"})
            return str(c.id)

    def start_container(self, cid: str) -> None:
        with self._translated(f"starting the container {cid[:12]}"):
            self.client.api.start(cid)

    def remove_container(self, cid: str) -> None:
        with self._translated(f"removing the container {cid[:12]}"):
            try:
                self.client.api.remove_container(cid, force=True)
            except Exception as exc:
                if not self._not_found(exc):
                    raise

    def exec(self, cid: str, argv: Sequence[str], timeout: float = 30) -> tuple[int, bytes, bytes]:
        with self._translated(f"exec in the container {cid[:12]}"):
            api = self.client.api
            ex = api.exec_create(cid, list(argv), stdout=True, stderr=True)
            out, err = api.exec_start(ex["Id"], demux=True)
            code = api.exec_inspect(ex["Id"]).get("ExitCode")
        return (code if code is not None else -1), out or b"", err or b""

    def put_file(self, cid: str, path: str, data: bytes, mode: int = 0o600) -> None:
        """One file into the container (its directory exists) with put_archive."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(Path(path).name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        with self._translated(f"copying {path} into the container {cid[:12]}"):
            ok = self.client.api.put_archive(cid, str(Path(path).parent), buf.getvalue())
        if not ok:
            raise ProxyError(f"the engine refused to copy {path} into the container {cid[:12]}")

    # swarm
    def local_node(self) -> str | None:
        with self._translated("reading the engine's swarm state"):
            info = self.client.api.info()
        swarm = info.get("Swarm") or {}
        return swarm.get("NodeID") if swarm.get("LocalNodeState") == "active" and swarm.get("ControlAvailable") \
            else None

    def node_hostname(self, node_id: str) -> str:
        with self._translated(f"inspecting the swarm node {node_id[:12]}"):
            info = self.client.api.inspect_node(node_id)
        return str((info.get("Description") or {}).get("Hostname") or node_id)

    def service(self, name: str) -> dict | None:
        with self._translated(f"inspecting the service {name}"):
            try:
                info = self.client.api.inspect_service(name)
            except Exception as exc:
                if self._not_found(exc):
                    return None
                raise
        return {"id": info["ID"], "labels": info["Spec"].get("Labels") or {}, "mode": info["Spec"].get("Mode") or {},
                "stopped": swarmremoval.left_stopped(info["Spec"])}

    def create_service(self, name: str, image: str, labels: dict[str, str], replicas: int | None) -> str:
        with self._translated(f"creating the proxy service {name}"):
            import docker

            mode = docker.types.ServiceMode("global") if replicas is None else \
                docker.types.ServiceMode("replicated", replicas=replicas)
            svc = self.client.services.create(image, COMMAND, name=name, labels=labels, container_labels=labels,
                                              mode=mode, networks=["host"], init=True,
                                              # a replica that dies is replaced (docker-py's default
                                              # condition is "none": never); its new task starts without
                                              # a configuration until heal or 'proxy apply' gives it one
                                              restart_policy=docker.types.RestartPolicy(
                                                  condition="any", delay=RESTART_DELAY_NS))
            return str(svc.id)

    def remove_service(self, name: str) -> None:
        """Stop its tasks, wait until they are at rest, then remove it (see cdlib.swarmremoval)."""
        with self._translated(f"removing the service {name}"):
            swarmremoval.remove_service(self.client.api, name)

    def tasks(self, name: str) -> list[dict]:
        """The service's running tasks: {"container", "node", "slot", "state"}."""
        with self._translated(f"listing the tasks of {name}"):
            found = self.client.api.tasks(filters={"service": name, "desired-state": "running"})
        out = []
        for t in found:
            status = t.get("Status") or {}
            out.append({"container": (status.get("ContainerStatus") or {}).get("ContainerID"),
                        "node": t.get("NodeID"), "slot": t.get("Slot"), "state": status.get("State")})
        return out

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


# -- one replica -----------------------------------------------------------------------------------------
@dataclass
class Procs:
    """A snapshot of the processes in a container: pid -> (comm, state, ppid)."""

    table: dict[int, tuple[str, str, int]]
    log: str = ""  # what the error log holds past the offset asked for (nginx)

    def alive(self, pid: int) -> bool:
        st = self.table.get(pid)
        return st is not None and st[1] not in ("Z", "X")

    def children(self, ppid: int, name: str | None = None) -> set[int]:
        return {p for p, (comm, state, parent) in self.table.items()
                if parent == ppid and state not in ("Z", "X") and (name is None or comm.startswith(name))}


def parse_procs(text: str) -> dict[int, tuple[str, str, int]]:
    """``cat /proc/[0-9]*/stat`` -> pid -> (comm, state, ppid); lines that do not parse are skipped
    (a process that exited while it was read)."""
    table: dict[int, tuple[str, str, int]] = {}
    for line in text.splitlines():
        open_, close = line.find("("), line.rfind(")")
        if open_ < 1 or close < open_:
            continue
        fields = line[close + 2:].split()
        try:
            table[int(line[:open_].strip())] = (line[open_ + 1:close], fields[0], int(fields[1]))
        except (IndexError, ValueError):
            continue
    return table


class Replica:
    """One proxy container: its files under /cdlib, its master and workers, through ``engine``."""

    def __init__(self, engine: Any, container: str, inner: ManagedProxy, *, name: str, node: str | None = None,
                 address: str | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.engine = engine
        self.container = container
        self.inner = inner  # renders, and says how this kind validates, starts and reports
        self.name = name
        self.node = node
        self.host, self.port = parse_listen(inner.listen)
        self.address = address or self.host  # where the health probe connects
        self._now, self._sleep = clock, sleep

    @property
    def kind(self) -> str:
        return self.inner.kind

    @property
    def config(self) -> str:
        return f"{CONFIG_DIR}/{self.inner.config_file}"

    @property
    def staged(self) -> str:
        return f"{CONFIG_DIR}/{self.inner.staged_file}"

    @property
    def pid_file(self) -> str:
        return f"{CONFIG_DIR}/{self.inner.pid_file}"

    @property
    def loaded_file(self) -> str:
        return f"{CONFIG_DIR}/{LOADED_FILE}"

    def _exec(self, *argv: str, timeout: float = 30) -> tuple[int, bytes, bytes]:
        return self.engine.exec(self.container, list(argv), timeout=timeout)

    def _sh(self, script: str) -> tuple[int, bytes, bytes]:
        return self._exec(BB, "sh", "-c", script)

    # -- reading --------------------------------------------------------------------------------------
    def state(self, log_offset: int | None = None, with_config: bool = False) -> State:
        """One exec: the master's pid file, the loaded marker, the process table, the error log's
        size (or what it holds past ``log_offset``), and the active file when asked."""
        log = f"{CONFIG_DIR}/error.log"
        tail = (f"{BB} tail -c +{log_offset + 1} {log} 2>/dev/null" if log_offset is not None
                else f"{BB} stat -c %s {log} 2>/dev/null || echo 0")
        conf = (f"if [ -f {self.config} ]; then echo 1; {BB} cat {self.config}; else echo 0; fi" if with_config
                else "echo 0")
        script = (f"{BB} cat {self.pid_file} 2>/dev/null; echo {_MARK}; {BB} cat {self.loaded_file} 2>/dev/null; "
                  f"echo {_MARK}; {BB} cat /proc/[0-9]*/stat 2>/dev/null; echo {_MARK}; {tail}; echo {_MARK}; "
                  f"{conf}; exit 0")
        code, out, err = self._sh(script)
        parts = out.split(_MARK.encode() + b"\n", 4)
        if code != 0 or len(parts) != 5:
            raise ProxyError(f"{self.name}: cannot read the proxy's state: {err.decode(errors='replace').strip()}")
        pid_text, marker, procs, log_text, rest = parts
        has_conf, _, config = rest.partition(b"\n")
        log_str = log_text.decode("utf-8", "replace")
        return State(pid_text.decode("ascii", "replace").strip(), marker, Procs(parse_procs(procs.decode(
            "utf-8", "replace")), log_str if log_offset is not None else ""),
            _int(log_str) if log_offset is None else 0, config if has_conf.strip() == b"1" else None,
            self.kind)

    def read(self) -> bytes | None:
        return self.state(with_config=True).config

    def procs(self, log_offset: int | None = None) -> Procs:
        return self.state(log_offset).procs

    def master_pid(self, state: State | None = None) -> int | None:
        return (state or self.state()).master

    def workers(self) -> set[int]:
        st = self.state()
        return st.procs.children(st.master, self.kind) if st.master else set()

    def runs(self, data: bytes, state: State | None = None) -> bool:
        """The active file holds exactly ``data`` and the running master loaded it (the marker)."""
        st = state or self.state(with_config=True)
        if st.config != data or st.master is None:
            return False
        try:
            marker = json.loads(st.marker)
        except ValueError:
            return False
        return isinstance(marker, dict) and marker.get("pid") == st.master and marker.get("sha256") == digest(data)

    def sha256(self) -> str | None:
        data = self.read()
        return None if data is None else digest(data)

    # -- changing -------------------------------------------------------------------------------------
    def stage_and_validate(self, data: bytes) -> None:
        """Copy the candidate to the staged path (0600) and let the binary check it there."""
        self.engine.put_file(self.container, self.staged, data, 0o600)
        self.validate(Path(self.staged), data)

    def validate(self, path: Path, data: bytes, prefix: Path | None = None) -> None:
        cmd = self.inner._validate_command(path, prefix)
        cmd[0] = images.BINARIES[self.kind]
        code, _out, err = self._exec(*cmd)
        if code != 0:
            text = err.decode("utf-8", "replace")
            reason, number = refusal(self.inner._error_line(text), path, data)
            where = f"line {number} of {path}" if number is not None else str(path)
            raise ProxyError(f"{self.kind} {self.inner.check_flag} refused the rendered configuration in "
                             f"{self.name}{': ' + reason if reason else ''} ({where})",
                             staged=str(path), line=number, replica=self.name)

    def drop_staged(self) -> None:
        self._sh(f"{BB} rm -f {self.staged}")

    def swap(self) -> None:
        code, _out, err = self._sh(f"{BB} chmod 644 {self.staged} && {BB} mv -f {self.staged} {self.config}")
        if code != 0:
            raise ProxyError(f"{self.name}: cannot rename {self.staged} to {self.config}: "
                             f"{err.decode(errors='replace').strip()}")

    def remove_config(self) -> None:
        self._sh(f"{BB} rm -f {self.config} {self.staged} {self.loaded_file}")

    def switch(self, data: bytes, state: State | None = None) -> tuple[float, float]:
        """Swap the staged file in (``data`` is what it holds) and start the master, or reload it
        and drain the old workers; then record what the master loaded. The rename and the signal
        go in one exec. Returns (reload s, drain s)."""
        st = state or self.state()
        swap = f"{BB} chmod 644 {self.staged} && {BB} mv -f {self.staged} {self.config}"
        master = st.master
        if master is None:
            self.swap()
            t0 = self._now()
            pid = self.start()
            self.mark_loaded(data, pid)
            return self._now() - t0, 0.0
        old = st.procs.children(master, self.kind)
        sig = "HUP" if self.kind == "nginx" else "USR2"
        t0 = self._now()
        code, out, err = self._sh(f"{swap} || exit 7; {BB} kill -{sig} {master}")
        if code == 7:
            raise ProxyError(f"{self.name}: cannot rename {self.staged} to {self.config}: "
                             f"{err.decode(errors='replace').strip()}")
        if code != 0:
            raise ProxyError(f"cannot signal the {self.kind} master {master} in {self.name}: "
                             f"{err.decode(errors='replace').strip()}", swapped=True)
        timings = self._wait_reload(master, old, t0, st.log_size if self.kind == "nginx" else None)
        self.mark_loaded(data, master)
        return timings

    def start(self) -> int:
        start = images.START[self.kind].split()
        code, _out, err = self._exec(*start, timeout=self.inner.start_timeout)
        if code != 0:
            line = self.inner._error_line(err.decode("utf-8", "replace"))
            raise ProxyError(f"{self.kind} did not start in {self.name}: {line}")
        deadline = self._now() + self.inner.start_timeout
        while True:
            st = self.state()
            if st.master is not None and st.procs.children(st.master, self.kind) and self.healthy():
                return st.master
            if self._now() > deadline:
                raise ProxyError(f"{self.kind} started in {self.name} but does not answer on {self.inner.listen} "
                                 f"within {self.inner.start_timeout:g}s")
            self._sleep(0.02)

    def _wait_reload(self, master: int, old: set[int], t0: float, log_offset: int | None) -> tuple[float, float]:
        """Until the master runs a worker that is not in ``old``, then until every one of ``old``
        has exited (the drain). Returns (reload s, drain s)."""
        deadline = t0 + self.inner.reload_timeout
        while True:
            procs = self.procs(log_offset)
            if procs.children(master, self.kind) - old:
                break
            refused = _emerg_after_hup(procs.log) if log_offset is not None else None
            if refused:
                raise ProxyError(f"nginx refused the reload in {self.name}: {refused}")
            if not procs.alive(master):
                raise ProxyError(f"the {self.kind} master {master} in {self.name} exited during the reload")
            if self._now() > deadline:
                raise ProxyError(f"{self.kind} in {self.name} started no new worker within "
                                 f"{self.inner.reload_timeout:g}s of the reload")
            self._sleep(0.005)
        t1 = self._now()
        drain = self.inner.drain_timeout
        while drain > 0:
            left = sorted(p for p in old if procs.alive(p) and procs.table[p][2] == master)
            if not left:
                break
            if self._now() > t1 + drain:
                raise ProxyError(f"{self.kind} workers {left} in {self.name} from before the reload still run "
                                 f"after {drain:g}s; raise proxy.drain_timeout or look for long-running requests",
                                 workers=left)
            self._sleep(0.005)
            procs = self.procs()
        return t1 - t0, self._now() - t1

    def mark_loaded(self, data: bytes, pid: int) -> None:
        """Record that master ``pid`` loaded ``data`` (hex digits and a number: safe in the shell)."""
        marker = json.dumps({"sha256": digest(data), "pid": int(pid)})
        self._sh(f"{BB} printf '%s' '{marker}' > {self.loaded_file}")

    def healthy(self) -> bool:
        status, _h, _b = http_get(f"http://{netaddr.format_hostport(self.address, self.port)}{HEALTH_PATH}", {}, 1.0)
        return status == 200

    def probe(self, timeout: float = 5.0) -> None:
        """The replica answers its health path after the change."""
        deadline = self._now() + timeout
        while not self.healthy():
            if self._now() > deadline:
                raise ProxyError(f"{self.name} does not answer {HEALTH_PATH} on "
                                 f"{netaddr.format_hostport(self.address, self.port)} after the change")
            self._sleep(0.05)

    # -- the TLS files -------------------------------------------------------------------------------
    def tls_present(self) -> set[str]:
        """What /cdlib/tls holds (made 0700 when missing): every link, and every file whose content
        is what its name says (a copy cut short is not there)."""
        return self._tls_listing()[1]

    def _tls_listing(self) -> tuple[set[str], set[str]]:
        """(every name in /cdlib/tls, the names :meth:`tls_present` gives)."""
        code, out, err = self._sh(f"{BB} mkdir -p {TLS_DIR} && {BB} chmod 700 {TLS_DIR} && cd {TLS_DIR} || exit 1; "
                                  f"{BB} ls -A1; echo {_MARK}; {BB} sha256sum *.crt *.key 2>/dev/null; exit 0")
        names, sep, sums = out.decode("utf-8", "replace").partition(_MARK + "\n")
        if code != 0 or not sep:
            raise ProxyError(f"{self.name}: cannot prepare {TLS_DIR}: {err.decode(errors='replace').strip()}")
        good = {n for n, h in _sums(sums).items() if re.fullmatch(_TLS_NAME, n) and n.split(".")[0] == h}
        every = set(names.split())
        return every, {n for n in every if n in good or re.fullmatch(r"[0-9a-f]{16}\.pem(?:\.key)?", n)}

    def put_tls(self, text: bytes, fetch: Callable[[str], bytes]) -> list[str]:
        """Deliver what ``text`` names in /cdlib/tls and this replica lacks: the files (0600, their
        content from ``fetch(path)``), then HAProxy's links. Returns the names it added; on a failure
        it removes them again and raises ProxyError."""
        wanted = sorted(_TLS_FILE_RE.findall(text.decode("utf-8", "replace")))
        links = tls_links(text)
        if not wanted and not links:
            return []
        have = self.tls_present()
        added: list[str] = []
        try:
            for name in wanted:
                if name not in have:
                    data = fetch(f"{TLS_DIR}/{name}")
                    added.append(name)
                    self.engine.put_file(self.container, f"{TLS_DIR}/{name}", data, 0o600)
            new_links = [(link, target) for link, target in links if link not in have]
            if added or new_links:
                steps = [f"{BB} ln -sf {target} {link}" for link, target in new_links]
                added += [link for link, _t in new_links]
                files = [n for n in added if re.fullmatch(_TLS_NAME, n)]
                steps.append(f"{BB} sha256sum {' '.join(files)}" if files else "true")
                code, out, err = self._sh(f"cd {TLS_DIR} && " + " && ".join(steps))
                sums = _sums(out.decode("utf-8", "replace"))
                bad = [n for n in files if sums.get(n) != n.split(".")[0]]
                if code != 0 or bad:
                    why = f"{', '.join(bad)} does not hold what was sent" if bad else \
                        err.decode(errors="replace").strip()
                    raise ProxyError(f"{self.name}: cannot deliver the TLS files into {TLS_DIR}: {why}")
        except ProxyError:
            _quietly(lambda: self.remove_tls(added))
            raise
        return added

    def remove_tls(self, names: Sequence[str]) -> None:
        safe = [n for n in names if re.fullmatch(_TLS_NAME + r"|[0-9a-f]{16}\.pem(?:\.key)?", n)]
        if safe:
            self._sh(f"cd {TLS_DIR} && {BB} rm -f {' '.join(safe)}")

    def prune_tls(self, *texts: bytes | None) -> None:
        """Remove from /cdlib/tls what none of ``texts`` needs."""
        keep: set[str] = set()
        for text in texts:
            if text is not None:
                keep |= tls_names(text)
        self.remove_tls(sorted(self._tls_listing()[0] - keep))

    def stop_proxy(self) -> None:
        """Stop the master gracefully and wait for it and its workers (bounded), then kill."""
        st = self.state()
        pid = st.master
        if pid is None:
            return
        kids = st.procs.children(pid)
        sig = "QUIT" if self.kind == "nginx" else "USR1"
        for s, wait in ((sig, self.inner.drain_timeout + 5), ("TERM", 5.0), ("KILL", 5.0)):
            targets = [pid] + (sorted(kids) if s == "KILL" else [])
            self._exec(BB, "kill", f"-{s}", *map(str, targets))
            deadline = self._now() + wait
            while self._now() < deadline:
                procs = self.procs()
                if not procs.alive(pid) and not any(procs.alive(k) for k in kids):
                    self._sh(f"{BB} rm -f {self.pid_file} {self.loaded_file}")
                    return
                self._sleep(0.01)
        raise ProxyError(f"the {self.kind} master {pid} in {self.name} did not exit")

    def status(self) -> dict:
        st = self.state(with_config=True)
        return {"name": self.name, "container": self.container[:12], "node": self.node, "listen": self.inner.listen,
                "running": st.master is not None, "pid": st.master,
                "workers": sorted(st.procs.children(st.master, self.kind)) if st.master else [],
                "digest": None if st.config is None else digest(st.config)}


def _sums(text: str) -> dict[str, str]:
    """``sha256sum`` output -> name -> digest."""
    out = {}
    for line in text.splitlines():
        h, _, name = line.partition("  ")
        if re.fullmatch(r"[0-9a-f]{64}", h) and name:
            out[name.strip()] = h
    return out


def _int(text: str) -> int:
    try:
        return int(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0


@dataclass
class State:
    """What one exec reads from a proxy container."""

    pid_text: str
    marker: bytes
    procs: Procs
    log_size: int
    config: bytes | None
    kind: str

    @property
    def master(self) -> int | None:
        """The master's pid: the pid file names a living process of this binary."""
        try:
            pid = int(self.pid_text)
        except ValueError:
            return None
        st = self.procs.table.get(pid)
        if st is None or st[1] in ("Z", "X") or not st[0].startswith(self.kind):
            return None
        return pid


def _emerg_after_hup(log: str) -> str | None:
    seen = False
    for line in log.splitlines():
        if not seen:
            seen = "signal 1 (SIGHUP) received" in line
        elif "[emerg]" in line:
            return line.split("[emerg]", 1)[1].strip()
    return None


def listen_with_port(listen: str, port: int) -> str:
    """``proxy.listen`` with another port, as written: '127.0.0.1:8880' -> '127.0.0.1:8881',
    '8880' -> '8881', '[::1]:8880' -> '[::1]:8881'."""
    text = str(listen)
    return str(port) if text.isdigit() else f"{text.rsplit(':', 1)[0]}:{port}"


def retarget(text: bytes, kind: str, listen: str, new_listen: str) -> bytes:
    """The configuration ``text`` with its listen address moved from ``listen`` to ``new_listen``:
    the lines ``listen <listen>`` (nginx) or ``bind <bind address>`` (HAProxy). The one difference
    between the files of two replicas on one node. ProxyError when no such line is found (a
    template that dropped the listen directive cannot be spread over several ports)."""
    if listen == new_listen:
        return text
    if kind == "nginx":
        old, new, word = listen, new_listen, "listen"
    else:
        # HAProxy binds a bare port on every IPv4 address (cdlib.proxy.haproxy.bind_address)
        old, new = (f":{x}" if str(x).isdigit() else str(x) for x in (listen, new_listen))
        word = "bind"
    pattern = re.compile(rb"^(\s*" + word.encode() + rb"\s+)" + re.escape(old.encode()) + rb"(?=[\s;])", re.MULTILINE)
    out, count = pattern.subn(lambda m: m.group(1) + new.encode(), text)
    if not count:
        raise ProxyError(f"the rendered {kind} configuration has no '{word} {old}' line: replicas on one node need "
                         "their own listen port, and a template must keep the listen directive")
    return out


# -- the adapters ---------------------------------------------------------------------------------------
class _DockerProxy(Proxy):
    """What the container and the service share: rendering, all-or-nothing changes, restore."""

    run = "container"

    def __init__(self, kind: str, *, name: str | None = None, listen: str = "127.0.0.1:8880",
                 template: str | Path | None = None, drain_timeout: float = 15.0, image: str | None = None,
                 engine: Any = None, docker_host: str | None = None, reload_timeout: float = 10.0,
                 start_timeout: float = 10.0, probe_timeout: float = 5.0, tls_listen: str | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if kind not in images.KINDS:
            raise ConfigError(f"proxy.kind: unknown proxy {kind!r}", key="proxy.kind")
        self.kind = kind
        self.listen = listen
        self.host, self.port = parse_listen(listen)
        self.template = template
        self.drain_timeout = drain_timeout
        self.tls_listen = tls_listen
        self.reload_timeout, self.start_timeout, self.probe_timeout = reload_timeout, start_timeout, probe_timeout
        self.name = name or f"{NAME_PREFIX}-{kind}-{self.port}"
        if not self.name.startswith(NAME_PREFIX):
            raise ConfigError(f"proxy.name: expected a name starting with {NAME_PREFIX}, got {self.name!r}",
                              key="proxy.name")
        self._image = image
        self.engine = engine if engine is not None else DockerEngine(docker_host)
        self._clock, self._sleep = clock, sleep
        self._renderer = self._inner(listen)
        self._material: dict[str, bytes] = {}  # /cdlib/tls path -> the content a render read

    # the inner adapter renders and knows the binary's ways; it never runs anything itself
    def _inner(self, listen: str) -> ManagedProxy:
        from .haproxy import HaproxyProxy
        from .nginx import NginxProxy

        cls = NginxProxy if self.kind == "nginx" else HaproxyProxy
        extra: dict[str, Any] = {} if self.tls_listen is None else {"tls_listen": self.tls_listen}
        if cls is NginxProxy:
            # the container's nginx is switched by reloads: no Lua balancer and admin socket in it
            extra["dynamic"] = False
        return cls(CONFIG_DIR, listen=listen, binary=images.BINARIES[self.kind], template=self.template,
                   drain_timeout=self.drain_timeout, reload_timeout=self.reload_timeout,
                   start_timeout=self.start_timeout, **extra)

    @property
    def image(self) -> str:
        if self._image is None:
            self._image = images.image_tag(self.kind)
        return self._image

    def _labels(self) -> dict[str, str]:
        return {LABEL: self.kind, f"{LABEL}.listen": self.listen}

    def url(self) -> str:
        return f"http://{netaddr.format_hostport(self.host, self.port)}"

    def describe(self) -> str:
        return f"{self.kind} in {self.run} {self.name} at {self.url()}"

    def render(self, backends: Sequence[Backend]) -> str:
        """The inner adapter's text, with the certificate and key files of the HTTPS routes named
        where they are in the container (:func:`tls_path`), then the digest of their content (as a
        process's configuration ends) and the file of this machine each path holds. The files are
        read once here; their content is kept for the apply that delivers them."""
        from ..render import cfg_token, render_template

        pairs = sorted({(b.routes.tls_cert, b.routes.tls_key) for b in backends
                        if b.routes.tls_cert and b.routes.tls_key})
        if not pairs:
            return self._renderer.render(backends)
        inside: dict[tuple[str | None, str | None], tuple[str, str]] = {}
        sources: dict[str, str] = {}
        h = hashlib.sha256()
        for cert, key in pairs:
            paths = []
            for host, what in ((cert, "cert"), (key, "key")):
                assert host is not None
                cfg_token(host)  # it is written on a comment line
                data = read_tls_file(host)
                h.update(len(data).to_bytes(8, "big"))  # as cdlib.tls.material_digest frames them
                h.update(data)
                path = tls_path(data, what)
                self._material[path] = data
                sources[path] = host
                paths.append(path)
            inside[(cert, key)] = (paths[0], paths[1])
        moved = [replace(b, routes=replace(b.routes, tls_cert=inside[k][0], tls_key=inside[k][1]))
                 if (k := (b.routes.tls_cert, b.routes.tls_key)) in inside else b for b in backends]
        r = self._renderer
        text = render_template(r.template_name, r._template_context(moved), r.template)
        tail = f"# tls material sha256:{h.hexdigest()}\n" + "".join(
            f"# tls-source {path} {host}\n" for path, host in sorted(sources.items()))
        return text + ("" if text.endswith("\n") else "\n") + tail

    def _fetcher(self, text: bytes) -> Callable[[str], bytes]:
        """The content of a path in /cdlib/tls that ``text`` names: what a render of this adapter
        read, else the file its ``# tls-source`` line names, when its content is still what the
        path says."""
        sources = {f"{TLS_DIR}/{name}": host for name, host in _TLS_SOURCE_RE.findall(text.decode("utf-8", "replace"))}

        def fetch(path: str) -> bytes:
            data = self._material.get(path)
            if data is not None:
                return data
            host = sources.get(path)
            if host is None:
                raise ProxyError(f"the configuration names {path}, which the proxy {self.run} {self.name} does not "
                                 "hold, and no file of this machine for it: render it again (cdlib proxy apply)")
            data = read_tls_file(host)
            if tls_path(data, "key" if path.endswith(".key") else "cert") != path:
                raise ProxyError(f"TLS file {host} changed since the configuration naming it as {path} was "
                                 "rendered: render it again (cdlib proxy apply)")
            self._material[path] = data
            return data

        return fetch

    # -- what subclasses say --------------------------------------------------------------------------
    def _replicas(self, wait: bool = True) -> list[Replica]:
        """The replicas that exist now (none when the container or service does not); ``wait``:
        until as many run as the service wants (bounded), else those that run now."""
        raise NotImplementedError

    def _create(self) -> None:
        """Create the container or the service and wait until its replicas run."""
        raise NotImplementedError

    def _remove(self) -> None:
        raise NotImplementedError

    def _replica_listen(self, replica_index: int, slot: int | None) -> str:
        return self.listen

    def _replica(self, container: str, name: str, listen: str, node: str | None = None,
                 address: str | None = None, engine: Any = None) -> Replica:
        return Replica(engine or self.engine, container, self._inner(listen), name=name, node=node,
                       address=address, clock=self._clock, sleep=self._sleep)

    def _text_for(self, replica: Replica, data: bytes) -> bytes:
        return retarget(data, self.kind, self.listen, replica.inner.listen)

    # -- the port ---------------------------------------------------------------------------------------
    def read_config(self) -> bytes | None:
        """The active file of the first replica, as render() gives it: with proxy.listen (the
        first replica's listen address; another replica's file is moved back to it)."""
        replicas = self._replicas(wait=False)
        if not replicas:
            return None
        data = replicas[0].read()
        return None if data is None else retarget(data, self.kind, replicas[0].inner.listen, self.listen)

    def plan_apply(self, text: str) -> tuple[str, str]:
        """("none", why) only when every replica runs its file of ``text`` already (a task Swarm
        replaced starts without one; a replica whose proxy died runs none); else ("reload", why): a
        proxy container reloads every change."""
        replicas = self._replicas(wait=False)
        if not replicas:
            return "reload", f"the proxy {self.run} {self.name} does not run yet: the change creates it"
        data = text.encode("utf-8")
        # a replica whose proxy died (its container lives on: its main process is not the proxy) runs nothing
        stale = [r.name for r in replicas if r.read() != self._text_for(r, data) or r.master_pid() is None]
        if not stale:
            return "none", "the configuration is unchanged on every replica"
        if len(stale) < len(replicas):
            return "reload", f"{', '.join(stale)} of the proxy {self.run} {self.name} run another configuration"
        return "reload", f"{self.kind} in a {self.run} applies every change with a reload"

    def master_pid(self) -> int | None:
        replicas = self._replicas(wait=False)
        return replicas[0].master_pid() if replicas else None

    def workers(self) -> set[int]:
        replicas = self._replicas(wait=False)
        return replicas[0].workers() if replicas else set()

    def _ready(self) -> tuple[list[Replica], bool]:
        """The replicas, creating the container or service first when there is none."""
        replicas = self._replicas()
        if replicas:
            return replicas, False
        self._check_image()
        self._create()
        replicas = self._replicas()
        if not replicas:
            raise ProxyError(f"the proxy {self.run} {self.name} runs no replica")
        return replicas, True

    def apply(self, text: str) -> dict:
        data = text.encode("utf-8")
        replicas, created = self._ready()
        t0 = self._clock()
        fetch = self._fetcher(data)
        added: dict[str, list[str]] = {}  # replica name -> the TLS files and links this change gave it
        try:
            # every replica's candidate is staged and checked (with its TLS files) before any replica changes
            candidates = [(r, self._text_for(r, data)) for r in replicas]
            for r, candidate in candidates:
                added[r.name] = r.put_tls(candidate, fetch)
                r.stage_and_validate(candidate)
        except ProxyError:
            for r in replicas:
                _quietly(r.drop_staged)
                _drop_tls(r, added.get(r.name))
            if created:
                _quietly(self._remove)
            raise
        t_validate = self._clock() - t0
        done: list[tuple[Replica, bytes | None, bool]] = []
        t_reload = t_drain = 0.0
        for r, _candidate in candidates:  # noqa: B007 - used in the body
            st = r.state(with_config=True)
            done.append((r, st.config, st.master is not None))
            try:
                reload_s, drain_s = r.switch(_candidate, st)
                r.probe(self.probe_timeout)
            except ProxyError as exc:
                problems = self._put_back(done)
                for other, _c in candidates[len(done):]:
                    _quietly(other.drop_staged)
                for other, other_candidate in candidates:
                    # the files this change added go from every replica whose active file is not its candidate
                    _drop_tls(other, added.get(other.name), unless_active=other_candidate)
                if created and not problems:
                    _quietly(self._remove)
                also = f"; putting it back failed too: {'; '.join(problems)}" if problems else ""
                raise ProxyError(f"{exc}; every replica of the proxy {self.run} {self.name} was put back to its "
                                 f"previous configuration{also}", **exc.data) from exc
            t_reload, t_drain = max(t_reload, reload_s), max(t_drain, drain_s)
        # each replica keeps the TLS files of its new and its previous configuration (a restore's)
        for (r, candidate), (_r, prior, _running) in zip(candidates, done, strict=True):
            try:
                r.prune_tls(candidate, prior)
            except ProxyError:
                pass  # a file left over takes a little room, nothing else
        return {"validate": round(t_validate, 4), "reload": round(t_reload, 4), "drain": round(t_drain, 4),
                "replicas": len(replicas)}

    def _put_back(self, done: list[tuple[Replica, bytes | None, bool]]) -> list[str]:
        """Put each switched replica's previous bytes back, newest first; what failed."""
        problems = []
        for r, prior, was_running in reversed(done):
            try:
                self._restore_replica(r, prior, was_running)
            except ProxyError as exc:
                problems.append(f"{r.name}: {exc}")
        return problems

    def _restore_replica(self, r: Replica, prior: bytes | None, was_running: bool = True) -> None:
        if prior is None:
            r.stop_proxy()
            r.remove_config()
            return
        st = r.state(with_config=True)
        if r.runs(prior, st):
            r.drop_staged()
            return
        # no validation: these bytes ran in this replica before the change (its TLS files are kept
        # until a later change went through; put_tls gives back one that went missing)
        r.put_tls(prior, self._fetcher(prior))
        r.engine.put_file(r.container, r.staged, prior, 0o600)
        if st.master is not None or was_running:
            r.switch(prior, st)
        else:
            r.swap()

    def restore(self, prior: bytes | None) -> None:
        """Every replica back to ``prior`` (its own listen address), byte for byte; None: no proxy
        container or service at all, which is the state before the first apply."""
        if prior is None:
            if self._exists():
                self._remove()
            return
        replicas = self._replicas()
        if not replicas:
            replicas, _created = self._ready()
        problems = []
        for r in replicas:
            data = self._text_for(r, prior)
            try:
                st = r.state(with_config=True)
                if r.runs(data, st):
                    continue
                r.put_tls(data, self._fetcher(data))
                r.stage_and_validate(data)
                r.switch(data, st)
            except ProxyError as exc:
                problems.append(f"{r.name}: {exc}")
        if problems:
            raise ProxyError(f"restoring the {self.kind} configuration of {self.run} {self.name} failed: "
                             f"{'; '.join(problems)}")

    def _exists(self) -> bool:
        raise NotImplementedError

    def ensure_running(self) -> None:
        replicas, _created = self._ready()
        empty = self.render([]).encode("utf-8")
        for r in replicas:
            st = r.state(with_config=True)
            if st.config is None:
                data = self._text_for(r, empty)
                r.stage_and_validate(data)
                r.switch(data, st)
            elif st.master is None:
                r.mark_loaded(st.config, r.start())

    def stop(self) -> bool:
        """Remove the container or the service; True when there was one."""
        existed = self._exists()
        if existed:
            self._remove()
        return existed

    def _check_image(self) -> None:
        if not self.engine.image_exists(self.image):
            raise ConfigError(f"proxy.image: the image {self.image} is not on the Docker engine; build it with "
                              f"'cdlib proxy image --kind {self.kind}' or set proxy.image", key="proxy.image")

    def preflight(self) -> None:
        """The image is on the engine, and the binary in it accepts what the templates render
        (no backend, one backend), validated in a directory of its own: inside a running replica
        when there is one, else in a throwaway container that is removed afterwards."""
        self._check_image()
        texts = []
        for backends in ([], [PREFLIGHT_BACKEND]):
            try:
                texts.append(self.render(backends))
            except ProxyError as exc:
                key = "proxy.template" if self.template is not None else "proxy"
                raise ConfigError(f"{key}: {exc.message}", key=key) from exc
        replicas = [r for r in self._replicas(wait=False) if r.master_pid() is not None]
        throwaway: str | None = None
        if replicas:
            r = replicas[0]
        else:
            throwaway = f"{NAME_PREFIX}-preflight-{uuid.uuid4().hex[:8]}"
            cid = self.engine.run_container(throwaway, self.image, {LABEL: self.kind, f"{LABEL}.preflight": "1"})
            r = self._replica(cid, throwaway, self.listen)
        try:
            tmp = f"/tmp/cdlib-preflight-{uuid.uuid4().hex[:8]}"
            r._sh(f"{BB} mkdir -p {tmp} " + " ".join(f"{tmp}/{d}" for d in r.inner.subdirs))
            try:
                for text in texts:
                    path = f"{tmp}/{r.inner.config_file}"
                    r.engine.put_file(r.container, path, text.encode("utf-8"), 0o600)
                    try:
                        r.validate(Path(path), text.encode("utf-8"), Path(tmp))
                    except ProxyError as exc:
                        key = "proxy.template" if self.template is not None else "proxy"
                        raise ConfigError(f"{key}: {exc.message}", key=key) from exc
            finally:
                _quietly(lambda: r._sh(f"{BB} rm -rf {tmp}"))
        finally:
            if throwaway is not None:
                _quietly(lambda: self.engine.remove_container(r.container))

    def status(self) -> dict:
        replicas = self._replicas(wait=False)
        return {"kind": self.kind, "run": self.run, "name": self.name, "image": self.image, "url": self.url(),
                "running": any(r.master_pid() is not None for r in replicas),
                "replicas": [r.status() for r in replicas]}

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


def _quietly(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except ProxyError:
        pass


def _drop_tls(replica: Replica, names: list[str] | None, unless_active: bytes | None = None) -> None:
    """Remove the TLS files and links a change gave ``replica``, unless its active file is
    ``unless_active`` (which names them)."""
    def drop() -> None:
        if unless_active is None or replica.read() != unless_active:
            replica.remove_tls(names or [])

    if names:
        _quietly(drop)


class ContainerProxy(_DockerProxy):
    """``proxy.run: container``: one container named ``proxy.name`` on the target engine."""

    run = "container"

    def _exists(self) -> bool:
        return self.engine.container(self.name) is not None

    def _replicas(self, wait: bool = True) -> list[Replica]:
        info = self.engine.container(self.name)
        if info is None:
            return []
        if not info["running"]:
            self.engine.start_container(info["id"])
        return [self._replica(info["id"], self.name, self.listen)]

    def _create(self) -> None:
        self.engine.run_container(self.name, self.image, self._labels())

    def _remove(self) -> None:
        info = self.engine.container(self.name)
        if info is not None:
            self.engine.remove_container(info["id"])


class ServiceProxy(_DockerProxy):
    """``proxy.run: service``: a Swarm service named ``proxy.name``, ``replicas`` tasks (replicated)
    or one per node (``mode: global``). Each task's container is reached through its node's engine:
    the local one, or the Docker host ``engines`` names for the node's hostname."""

    run = "service"

    def __init__(self, kind: str, *, replicas: int = 1, mode: str = "replicated",
                 engines: dict[str, str] | None = None, service_timeout: float = 60.0, **kw: Any):
        super().__init__(kind, **kw)
        if mode not in ("replicated", "global"):
            raise ConfigError(f"proxy.mode: expected replicated or global, got {mode!r}", key="proxy.mode")
        if self.tls_listen is not None and mode == "replicated" and replicas > 1:
            # the replicas of one node get listen ports of their own, but would share the HTTPS one
            raise ConfigError(f"proxy.replicas: expected 1 with proxy.tls_listen (the replicas of one node would "
                              f"share its port; use mode: global for one replica per node), got {replicas}",
                              key="proxy.replicas")
        self.replicas = replicas
        self.mode = mode
        self.engines = dict(engines or {})
        self.service_timeout = service_timeout
        self._node_engines: dict[str, Any] = {}

    def _exists(self) -> bool:
        return self.engine.service(self.name) is not None

    def _ready(self) -> tuple[list[Replica], bool]:
        found = self.engine.service(self.name)
        if found is not None and found.get("stopped"):
            # a removal killed between stopping the tasks and removing the service: finish it, then
            # the service is created again as a service that was never there
            self.engine.remove_service(self.name)
        return super()._ready()

    def _engine_for(self, node: str | None, local: str | None) -> tuple[Any, str | None]:
        if node is None or node == local:
            return self.engine, None
        if node not in self._node_engines:
            host = self.engine.node_hostname(node)
            url = self.engines.get(host)
            if url is None:
                raise ProxyError(f"a replica of {self.name} runs on node {host}, whose Docker engine cdlib does not "
                                 f"know: set proxy.engines.{host} to its Docker host (e.g. tcp://{host}:2376)")
            self._node_engines[node] = (DockerEngine(url), host)
        return self._node_engines[node]

    def _replicas(self, wait: bool = True) -> list[Replica]:
        if self.engine.service(self.name) is None:
            return []
        return self._running_replicas(wait)

    def _running_replicas(self, wait: bool) -> list[Replica]:
        want = self.replicas if self.mode == "replicated" else None
        deadline = self._clock() + self.service_timeout
        while True:
            tasks = [t for t in self.engine.tasks(self.name) if t.get("state") == "running" and t.get("container")]
            if tasks and (want is None or len(tasks) >= want) or not wait:
                break
            if self._clock() > deadline:
                raise ProxyError(f"the proxy service {self.name} runs {len(tasks)} of {want} replicas after "
                                 f"{self.service_timeout:g}s; see 'docker service ps {self.name}'")
            self._sleep(0.1)
        local = self.engine.local_node()
        tasks.sort(key=lambda t: (t.get("slot") or 0, t.get("node") or ""))
        out = []
        for t in tasks:
            engine, host = self._engine_for(t.get("node"), local)
            slot = t.get("slot")
            listen = self.listen if self.mode == "global" or not slot else \
                listen_with_port(self.listen, self.port + int(slot) - 1)
            label = f"{self.name}.{slot}" if slot else f"{self.name}@{host or 'local'}"
            out.append(self._replica(t["container"], label, listen, node=t.get("node"), address=host,
                                     engine=engine))
        return out

    def _create(self) -> None:
        if self.engine.local_node() is None:
            raise ProxyError("proxy.run is service but the Docker engine is not a swarm manager; run 'docker swarm "
                             "init' (or join it to a swarm as a manager) or use proxy.run: container")
        self.engine.create_service(self.name, self.image, self._labels(),
                                   self.replicas if self.mode == "replicated" else None)

    def _remove(self) -> None:
        if self.engine.service(self.name) is None:
            return
        containers = [t.get("container") for t in self.engine.tasks(self.name) if t.get("container")]
        self.engine.remove_service(self.name)
        # the service is gone once its tasks' containers are: wait (bounded) so ports are free again
        deadline = self._clock() + self.service_timeout
        while any(self.engine.container(c) is not None for c in containers if c):
            if self._clock() > deadline:
                raise ProxyError(f"the containers of the removed service {self.name} are still there after "
                                 f"{self.service_timeout:g}s")
            self._sleep(0.1)

    def status(self) -> dict:
        return {**super().status(), "mode": self.mode, "want": self.replicas if self.mode == "replicated" else None}
