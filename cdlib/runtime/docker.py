"""The runtime port on one Docker engine, through the Docker SDK (``docker`` 7.x).

Containers are found by label, never by remembering ids, so any later process (another Jenkins
stage, a rollback after a crash) sees what an earlier one started. Host ports are picked from
``StartRequest.host_ports`` and pinned in the container's port binding: Docker gives a dynamically
published port a *new* number on every restart, which would make a resumed color unreachable through
a proxy configuration restored byte for byte. A port that turns out to be taken is retried with
another one (the engine is the judge, so this works against a remote DOCKER_HOST too).

The engine is shared: test suites, other services' releases and people create and remove containers
while a release runs. A listing is one call (the engine's summary, no inspect per container), what a
start needs to know later is in labels (image, pinned host port, stop timeout), and a container
that vanishes between the listing and the next call is taken as gone, never as a failure. The
replicas of a color are started, stopped and removed a few at a time.

The SDK is imported on first use (the CLI must start fast), and nothing from ``docker`` or
``requests`` leaves this module: every failure becomes a one-line :class:`RuntimeBackendError`.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import RuntimeBackendError, causes
from ..model import Instance, instance_name
from ..redact import redact_url
from .base import (
    ASIDE,
    LABEL_COLOR,
    LABEL_INDEX,
    LABEL_RELEASE,
    LABEL_SERVICE,
    LABEL_TEST,
    Runtime,
    StartRequest,
    aside_name,
    is_aside,
)

# Not part of the port: what instances() needs to report the same address and port start() did.
LABEL_PORT = "cdlib.port"
LABEL_ADDRESS = "cdlib.address"
LABEL_IMAGE = "cdlib.image"
LABEL_HOST_PORT = "cdlib.host-port"
LABEL_STOP_TIMEOUT = "cdlib.stop-timeout"
GONE = object()  # what a call on a container answers when another process removed it meanwhile
CLASH = object()  # what starting on a host port answers when that port is taken (the container removed again)
# Engine calls at a time when the replicas of a color start, stop, resume or are removed
# (DockerRuntime(parallel=...)). The engine does the work (runc, network namespace, iptables,
# docker-proxy; this module's own share is about 0.1 s of a 16-replica start), so the replicas of a
# color all go at once: on 2 cores, 16 replicas start (until healthy) and stop in 6.2 s at 16 at a
# time, 7.2 s at 4 at a time, against 6.9 s for 16 concurrent `docker run` and `docker stop`
# (benchmarks/replicas.py --parallel 4,16).
MAX_PARALLEL = 16
# over ssh:// the SDK opens one channel of a single SSH connection per call, and sshd allows 10
# sessions per connection by default (MaxSessions): stay below that whatever the bound says
SSH_PARALLEL = 8

DEFAULT_HOST = "unix:///var/run/docker.sock"
DEFAULT_STOP_TIMEOUT = 10
REGISTRY_USER_ENV = "CDLIB_REGISTRY_USER"
REGISTRY_PASSWORD_ENV = "CDLIB_REGISTRY_PASSWORD"


def redact_host(url: str) -> str:
    """The host URL without a password (ssh://user:secret@host -> ssh://user@host)."""
    return redact_url(url)


class DockerRuntime(Runtime):
    kind = "docker"

    def __init__(self, docker_host: str | None = None, timeout: float = 60, parallel: int = MAX_PARALLEL):
        self.docker_host = docker_host
        self.timeout = timeout
        self._parallel = max(1, parallel)
        self._docker_client = None
        self._local_engine: _LocalEngine | None = None

    # -- connection ---------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return self.docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST

    def describe(self) -> str:
        return redact_host(self.host)

    @property
    def parallel(self) -> int:
        """How many replicas of a color are started, stopped, resumed or removed at a time."""
        return min(self._parallel, SSH_PARALLEL) if self.host.startswith("ssh://") else self._parallel

    @property
    def _client(self):
        """The SDK client, built (and the engine contacted) on first use."""
        if self._docker_client is None:
            import docker
            import requests

            # a connection per call in flight (the SDK keeps 10; more would be opened and dropped)
            pool = max(docker.constants.DEFAULT_MAX_POOL_SIZE, self.parallel + 2)
            try:
                if self.docker_host is None:
                    # from_env honours DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH
                    client = docker.from_env(timeout=int(self.timeout), max_pool_size=pool)
                else:
                    client = docker.DockerClient(base_url=self.docker_host, timeout=int(self.timeout),
                                                 max_pool_size=pool)
            except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
                raise self._unreachable(exc) from exc
            self._docker_client = client
        return self._docker_client

    @property
    def _engine(self) -> _LocalEngine | _SdkEngine:
        """What the container calls go through: the local socket directly when the engine is on
        a unix socket (no SDK to import: that costs more than a release's calls), else the SDK
        (TCP with TLS, ssh://...)."""
        if self.host.startswith("unix://"):
            if self._local_engine is None:
                self._local_engine = _LocalEngine(self.host[len("unix://"):], self.timeout)
            return self._local_engine
        return _SdkEngine(self._client.api)

    def close(self) -> None:
        if self._docker_client is not None:
            self._docker_client.close()
            self._docker_client = None

    def _reason(self, exc: BaseException) -> str:
        """The error's one line, with the host URL's password (if any) masked."""
        return self._mask(_reason(exc))

    def _mask(self, text: str) -> str:
        try:
            password = urlsplit(self.host).password
        except ValueError:
            password = None
        if password:
            text = text.replace(self.host, self.describe()).replace(password, "***")
        return text

    def _unreachable(self, exc: BaseException) -> RuntimeBackendError:
        return RuntimeBackendError(f"docker runtime: cannot reach {self.describe()} ({self._mask(_transport_reason(exc))}); "
                                   "check DOCKER_HOST and that dockerd is running", host=self.describe())

    def ping(self) -> None:
        with self._translate("ping the engine"):
            self._engine.ping()

    @contextmanager
    def _translate(self, action: str, hint: str = "") -> Iterator[None]:
        """Turn engine, SDK and transport errors into RuntimeBackendError; ours pass through."""
        tail = f"; {hint}" if hint else ""
        try:
            yield
        except RuntimeBackendError:
            raise
        except _EngineDown as exc:
            raise self._unreachable(exc.__cause__ or exc) from exc
        except _EngineTimeout as exc:
            raise RuntimeBackendError(f"docker runtime: {action}: no answer from {self.describe()} within "
                                      f"{exc.seconds:g}s; check the engine's load") from exc
        except _EngineError as exc:
            raise RuntimeBackendError(f"docker runtime: {action}: {self._reason(exc)}{tail}") from exc
        except Exception as exc:
            if "docker" not in sys.modules:  # the SDK was not used: nothing of it to translate
                raise
            self._translate_sdk(exc, action, tail)
            raise

    def _translate_sdk(self, exc: Exception, action: str, tail: str) -> None:
        """Raise the RuntimeBackendError for an SDK or transport error; return for anything else."""
        import docker
        import requests
        import urllib3

        try:
            raise exc
        except requests.exceptions.ConnectionError as exc:
            raise self._unreachable(exc) from exc
        except (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError) as exc:
            # a streamed answer (build, push, pull) is read straight from urllib3, unwrapped by requests
            raise RuntimeBackendError(f"docker runtime: {action}: no answer from {self.describe()} within "
                                      f"{self.timeout:g}s; check the engine's load") from exc
        except (urllib3.exceptions.HTTPError, docker.errors.StreamParseError) as exc:
            # the engine's stream broke off mid-answer (engine restarted, connection cut)
            first = exc.args[0] if exc.args and isinstance(exc.args[0], str) else _reason(exc)
            raise RuntimeBackendError(f"docker runtime: {action}: the answer from {self.describe()} broke "
                                      f"off ({self._mask(first)}); check the engine and retry") from exc
        except docker.errors.APIError as exc:
            raise RuntimeBackendError(f"docker runtime: {action}: {self._reason(exc)}{tail}") from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
            raise RuntimeBackendError(f"docker runtime: {action}: {self._reason(exc)}{tail}") from exc
        except Exception:
            return

    # -- lookups --------------------------------------------------------------------------------
    # Other processes create and remove containers all the time (test suites, other services'
    # releases): a container seen in a listing may be gone by the next call. A listing is one call
    # that reads the engine's summary (no inspect per container), and every call on a listed
    # container takes "no such container" (404) and "removal in progress" (409) to mean it is gone.
    def _list(self, action: str, labels: list[str]) -> list[_Seen]:
        with self._translate(action):
            rows = self._engine.containers(labels)
        return sorted((_seen(row) for row in rows), key=lambda s: s.name)

    def _containers(self, service: str, color: str | None = None, release: str | None = None, *,
                    removing: bool = False) -> list[_Seen]:
        """The instances' containers: a color label always, and never a test suite's container
        (it carries the service label too). Containers being removed only when removing."""
        labels = [f"{LABEL_SERVICE}={service}", LABEL_COLOR if color is None else f"{LABEL_COLOR}={color}"]
        if release is not None:
            labels.append(f"{LABEL_RELEASE}={release}")
        return [s for s in self._list(f"list the containers of {service}", labels)
                if LABEL_TEST not in s.labels and (removing or s.state != "removing")]

    def _call(self, action: str, fn, *args, hint: str = "", **kw):
        """fn(*args, **kw) with errors translated; GONE when the container vanished meanwhile."""
        with self._translate(action, hint):
            try:
                return fn(*args, **kw)
            except Exception as exc:
                if _vanished(exc):
                    return GONE
                raise

    def _inspect(self, ref: str) -> dict | None:
        """The container's full description, None when there is no such container (any more)."""
        found = self._call(f"inspect container {ref}", self._engine.inspect, ref)
        return None if found is GONE else found

    def _instance(self, seen: _Seen) -> Instance | None:
        """The instance a listing shows; None when it vanished before its image could be read."""
        image = seen.labels.get(LABEL_IMAGE)
        if image is None:  # created before the image label: only the inspect has it
            attrs = self._inspect(seen.id)
            if attrs is None:
                return None
            image = (attrs.get("Config") or {}).get("Image") or ""
        return Instance(
            name=seen.name,
            service=seen.labels.get(LABEL_SERVICE, ""),
            color=seen.labels.get(LABEL_COLOR, ""),
            release=seen.labels.get(LABEL_RELEASE, ""),
            image=image,
            address=seen.labels.get(LABEL_ADDRESS, "127.0.0.1"),
            port=seen.published_port() if seen.state == "running" else 0,
            state=seen.state,
            id=seen.id,
        )

    # -- the port -------------------------------------------------------------------------------
    def start(self, req: StartRequest) -> list[Instance]:
        names = [(index, instance_name(req.service, req.color, index))
                 for index in range(req.first_index, req.first_index + req.replicas)]
        found = {name: self._reusable(req, name) for _, name in names}  # every name checked first
        ports = _Ports(self._used_ports) if any(v is None for v in found.values()) else None
        if ports is not None:  # a retried start that reuses everything needs no registry
            self._ensure_image(req.image)
        return _each(lambda item: self._bring_up(req, item[1], item[0], found[item[1]], ports), names,
                     self.parallel)

    def _reusable(self, req: StartRequest, name: str) -> dict | None:
        """The inspect of the container holding name when it belongs to req's release; None when
        the name is free; an error when another release holds it."""
        attrs = self._inspect(name)
        if attrs is None:
            return None
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        found = labels.get(LABEL_RELEASE)
        if found != req.release or labels.get(LABEL_SERVICE) != req.service:
            raise RuntimeBackendError(
                f"docker runtime: container {name} already exists for release {found or '(none)'}; "
                f"it must be set aside or removed before release {req.release} can start",
                name=name, release=found)
        return attrs

    def _bring_up(self, req: StartRequest, name: str, index: int, attrs: dict | None,
                  ports: _Ports | None, attempts: int = 3) -> Instance:
        """Run the release's container of that name, creating it when there is none; a container
        that vanishes meanwhile (removed by another process) is looked up and made again."""
        for _ in range(attempts):
            if attrs is None:
                if ports is None:  # it was there a moment ago: the image may have to be pulled now
                    self._ensure_image(req.image)
                    ports = _Ports(self._used_ports)
                got = self._create_and_run(req, name, index, ports)
            else:
                got = self._run(attrs["Id"], name)
            if got is not GONE:
                return got
            attrs = self._reusable(req, name)
        raise RuntimeBackendError(f"docker runtime: container {name} was removed by another process "
                                  f"{attempts} times while it was started; check what removes "
                                  f"containers of {req.service}", name=name)

    def _create_and_run(self, req: StartRequest, name: str, index: int, ports: _Ports,
                        attempts: int = 20):
        """Create the container on a free host port of req.host_ports and start it; when the engine
        says the port is taken, remove it and try another port. GONE when another process took the
        name or removed the container meanwhile."""
        low, high = req.host_ports
        for _ in range(attempts):
            got = self._on_port(req, name, index, ports.pick(low, high))
            if got is not CLASH:
                return got
        raise RuntimeBackendError(f"docker runtime: no free host port for {name} in {low}-{high} after "
                                  f"{attempts} attempts; widen target.host_ports", name=name)

    def _used_ports(self) -> set[int]:
        """Host ports pinned by cdlib's containers on this engine (running or stopped)."""
        used = set()
        for seen in self._list("list the containers that cdlib started", [LABEL_SERVICE]):
            pinned = _int(seen.labels.get(LABEL_HOST_PORT))
            if pinned:
                used.add(pinned)
                continue
            used.update(int(p["PublicPort"]) for p in seen.ports if str(p.get("PublicPort") or "").isdigit())
            if seen.state != "running" and LABEL_COLOR in seen.labels:
                # an instance created before the host-port label: its binding is in the inspect
                attrs = self._inspect(seen.id) or {}
                for bindings in ((attrs.get("HostConfig") or {}).get("PortBindings") or {}).values():
                    used.update(int(b["HostPort"]) for b in bindings or []
                                if str(b.get("HostPort") or "").isdigit())
        return used

    def _create(self, req: StartRequest, name: str, index: int, host_port: int):
        """The new container's id; GONE when another process created that name meanwhile."""
        labels = dict(req.labels)
        labels.update({LABEL_SERVICE: req.service, LABEL_COLOR: req.color, LABEL_RELEASE: req.release,
                       LABEL_INDEX: str(index), LABEL_PORT: str(req.port), LABEL_ADDRESS: req.address,
                       LABEL_IMAGE: req.image, LABEL_HOST_PORT: str(host_port),
                       LABEL_STOP_TIMEOUT: str(req.stop_timeout)})
        env = dict(req.env)
        env.update({"CDLIB_SERVICE": req.service, "CDLIB_COLOR": req.color, "CDLIB_RELEASE": req.release})
        # the Engine API's own form (what the SDK's low-level create_container sends): the
        # container's StopTimeout also makes a hand-typed `docker stop` wait long enough
        config = {
            "Image": req.image, "Labels": labels, "Env": [f"{k}={v}" for k, v in env.items()],
            "ExposedPorts": {f"{req.port}/tcp": {}}, "StopTimeout": req.stop_timeout,
            "HostConfig": {
                "PortBindings": {f"{req.port}/tcp": [{"HostIp": req.bind, "HostPort": str(host_port)}]},
                "Init": req.init, "RestartPolicy": {"Name": "unless-stopped"},
                "NetworkMode": req.network or "default",
            },
        }
        if req.network:
            config["NetworkingConfig"] = {"EndpointsConfig": {req.network: {}}}
        with self._translate(f"create container {name} from {req.image}",
                             "check the image, target.network and target.bind"):
            try:
                return self._engine.create(name, config)
            except Exception as exc:
                if getattr(exc, "status_code", None) == 409 and "already in use" in _reason(exc):
                    return GONE
                raise

    def _run(self, ref: str, name: str, fresh: bool = False):
        """Start the container when it is not running and wait until its port is published; GONE
        when the container vanished meanwhile. fresh: just created, so not running yet."""
        engine, hint = self._engine, f"check `docker logs {name}`"
        action = f"start container {name}"
        started = False
        if fresh:
            if self._call(action, engine.start, ref, hint=hint) is GONE:
                return GONE
            started = True
        deadline = time.monotonic() + self.timeout
        while True:
            attrs = self._call(action, engine.inspect, ref, hint=hint)
            if attrs is GONE:
                return GONE
            status = (attrs.get("State") or {}).get("Status", "")
            if status == "running" and _host_port(attrs):
                return _from_inspect(attrs)
            if status in ("removing", "dead"):
                return GONE
            if not started and status != "running":
                if self._call(action, engine.start, ref, hint=hint) is GONE:
                    return GONE
                started = True
                continue
            if status in ("exited", "restarting") or time.monotonic() > deadline:
                code = (attrs.get("State") or {}).get("ExitCode")
                raise RuntimeBackendError(
                    f"docker runtime: container {name} is {status} (exit code {code}) "
                    f"right after start, no published port; check `docker logs {name}`", name=name)
            time.sleep(0.02)

    def _ensure_image(self, ref: str) -> None:
        """Pull the image only when the engine does not have it (a registry may be offline)."""
        with self._translate(f"look up image {ref}"):
            try:
                self._engine.inspect_image(ref)
                return
            except Exception as exc:
                if getattr(exc, "status_code", None) != 404:
                    raise
        import docker.utils

        repository, tag = docker.utils.parse_repository_tag(ref)
        with self._translate(f"pull image {ref}", "check the image reference, the registry and its credentials"):
            self._client.images.pull(repository, tag=tag or "latest", auth_config=_auth_config())

    def instances(self, service: str, color: str | None = None, release: str | None = None,
                  include_aside: bool = False) -> list[Instance]:
        found = [s for s in self._containers(service, color, release) if include_aside or not is_aside(s.name)]
        return [i for i in map(self._instance, found) if i is not None]

    def stop(self, service: str, color: str, release: str | None = None) -> list[str]:
        chosen = [s for s in self._containers(service, color, release)
                  if not is_aside(s.name) and s.state in ("running", "restarting", "paused")]

        def stop_one(seen: _Seen) -> str | None:
            timeout = _int(seen.labels.get(LABEL_STOP_TIMEOUT))
            if timeout is None:  # created before the stop-timeout label
                attrs = self._inspect(seen.id)
                if attrs is None:
                    return None
                timeout = (attrs.get("Config") or {}).get("StopTimeout") or DEFAULT_STOP_TIMEOUT
            got = self._call(f"stop container {seen.name}", self._engine.stop, seen.id, timeout)
            return None if got is GONE else seen.name

        return [name for name in _each(stop_one, chosen, self.parallel) if name is not None]

    def resume(self, service: str, color: str, release: str | None = None) -> list[Instance]:
        chosen = [s for s in self._containers(service, color, release) if not is_aside(s.name)]
        resumed = _each(lambda s: self._run(s.id, s.name), chosen, self.parallel)
        return [i for i in resumed if i is not GONE]

    def remove(self, service: str, color: str, release: str | None = None,
               aside: bool = False) -> list[str]:
        """aside=False: every instance of the color (of release, by label, when given), set-aside
        ones included. aside=True: only set-aside ones (of release when given: the release they
        were set aside for, i.e. the ``.aside-<release>`` suffix)."""
        if aside:
            chosen = [s for s in self._containers(service, color, removing=True)
                      if is_aside(s.name) and (release is None or _aside_release(s.name) == release)]
        else:
            chosen = self._containers(service, color, release, removing=True)

        def remove_one(seen: _Seen) -> str:
            # gone already (removed by someone else meanwhile): the goal is reached
            self._call(f"remove container {seen.name}", self._engine.remove, seen.id)
            return seen.name

        return _each(remove_one, chosen, self.parallel)

    def set_aside(self, service: str, color: str, release: str) -> list[str]:
        """Rename the color's plain-named instances to ``<name>.aside-<release>``; instances that
        already belong to release are left alone, so a repeated call changes nothing."""
        renamed = []
        for seen in self._containers(service, color):
            if is_aside(seen.name) or seen.labels.get(LABEL_RELEASE) == release:
                continue
            target = aside_name(seen.name, release)
            if self._inspect(target) is not None:
                raise RuntimeBackendError(f"docker runtime: cannot set {seen.name} aside: {target} already "
                                          f"exists; remove it first", name=seen.name)
            got = self._call(f"rename container {seen.name} to {target}", self._engine.rename, seen.id, target)
            if got is not GONE:
                renamed.append(target)
        return renamed

    def restore_aside(self, service: str, color: str, release: str) -> list[str]:
        restored = []
        for seen in self._containers(service, color):
            if not is_aside(seen.name) or _aside_release(seen.name) != release:
                continue
            plain = seen.name.split(ASIDE, 1)[0]
            holder = self._inspect(plain)
            if holder is not None:
                found = ((holder.get("Config") or {}).get("Labels") or {}).get(LABEL_RELEASE)
                raise RuntimeBackendError(
                    f"docker runtime: cannot restore {seen.name}: the name {plain} is taken by another "
                    f"container (release {found or 'unknown'}); remove it first", name=plain)
            got = self._call(f"rename container {seen.name} to {plain}", self._engine.rename, seen.id, plain)
            if got is not GONE:
                restored.append(plain)
        return restored

    # -- healing and scaling (the live color, outside a release) ---------------------------------
    def scale(self, req: StartRequest, replicas: int) -> list[Instance]:
        """Instances 1..replicas of req's color run: a stopped (or killed) one is started again with
        its own port binding, a vanished one is created again on its port from req.pinned_ports
        (another free port of req.host_ports only when that one is taken); those above are stopped
        and kept. Returns the running instances, sorted by name."""
        seen = {s.name: s for s in self._containers(req.service, req.color) if not is_aside(s.name)}
        wanted = [(index, instance_name(req.service, req.color, index)) for index in range(1, replicas + 1)]
        for _, name in wanted:
            other = seen[name].labels.get(LABEL_RELEASE) if name in seen else req.release
            if other != req.release:
                raise RuntimeBackendError(f"docker runtime: container {name} belongs to release {other}, not "
                                          f"{req.release}; remove it first", name=name, release=other)
        pinned = dict(req.pinned_ports)
        shared: list[_Ports] = []
        lock = threading.Lock()

        def ports() -> _Ports:
            with lock:
                if not shared:
                    self._ensure_image(req.image)
                    shared.append(_Ports(self._used_ports))
                return shared[0]

        def up(item: tuple[int, str]) -> Instance:
            index, name = item
            found = seen.get(name)
            for _ in range(3):
                if found is not None and found.state not in ("dead", "removing"):
                    got = self._run(found.id, name)
                    if got is not GONE:
                        return got
                if found is not None:  # dead, or vanished meanwhile: make it again under its name
                    self._call(f"remove container {name}", self._engine.remove, found.id)
                got = self._recreate(req, name, index, pinned.get(name), ports())
                if got is not GONE:
                    return got
                attrs = self._inspect(name)
                found = None if attrs is None else _seen_of(attrs)
            raise RuntimeBackendError(f"docker runtime: container {name} was removed by another process 3 times "
                                      f"while it was started; check what removes containers of {req.service}",
                                      name=name)

        running = _each(up, wanted, self.parallel)
        above = [s for s in seen.values() if self._index(s) > replicas and s.state in ("running", "restarting", "paused")]
        _each(self._stop_seen, above, self.parallel)
        return sorted(running, key=lambda i: i.name)

    def _recreate(self, req: StartRequest, name: str, index: int, port: int | None, ports: _Ports):
        """Create and run the container on its pinned port; on a clash (another program took the port
        meanwhile), on another free port. GONE when another process took the name meanwhile."""
        if port:
            got = self._on_port(req, name, index, port)
            if got is not CLASH:
                return got
        return self._create_and_run(req, name, index, ports)

    def _on_port(self, req: StartRequest, name: str, index: int, port: int):
        """Create and run the container on this host port: its Instance, GONE when another process
        took the name meanwhile, CLASH (the container removed again) when the port is taken."""
        created = self._create(req, name, index, port)
        if created is GONE:
            return GONE
        try:
            return self._run(created, name, fresh=True)
        except RuntimeBackendError as exc:
            if not any(s in str(exc) for s in ("port is already allocated", "address already in use")):
                raise
            self._call(f"remove container {name} after a port clash", self._engine.remove, created)
            return CLASH

    @staticmethod
    def _index(seen: _Seen) -> int:
        label = _int(seen.labels.get(LABEL_INDEX))
        if label is not None:
            return label
        tail = seen.name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    def _stop_seen(self, seen: _Seen) -> str | None:
        timeout = _int(seen.labels.get(LABEL_STOP_TIMEOUT))
        if timeout is None:
            timeout = DEFAULT_STOP_TIMEOUT
        got = self._call(f"stop container {seen.name}", self._engine.stop, seen.id, timeout)
        return None if got is GONE else seen.name

    def doomed(self, service: str, color: str, replicas: int) -> list[str]:
        return [s.name for s in self._containers(service, color)
                if not is_aside(s.name) and self._index(s) > replicas and s.state in ("running", "restarting", "paused")]

    def discard(self, service: str, color: str, names: Sequence[str]) -> list[str]:
        wanted = set(names)
        chosen = [s for s in self._containers(service, color, removing=True)
                  if s.name in wanted and s.state not in ("running", "restarting", "paused")]

        def remove_one(seen: _Seen) -> str:
            self._call(f"remove container {seen.name}", self._engine.remove, seen.id)
            return seen.name

        return sorted(_each(remove_one, chosen, self.parallel))

    # -- images ---------------------------------------------------------------------------------
    def build_image(self, context: str, dockerfile: str, tags: Sequence[str],
                    buildargs: dict | None = None) -> str:
        if not tags:
            raise RuntimeBackendError("docker runtime: build needs at least one tag")
        if not os.path.isdir(context):
            raise RuntimeBackendError(f"docker runtime: build context {context} is not a directory; "
                                      "check image.build.context")
        image_id, last_error, last_line = None, None, ""
        with self._translate(f"build {tags[0]} from {context}", "check the Dockerfile and the build context"):
            stream = self._client.api.build(path=str(context), dockerfile=dockerfile, tag=tags[0],
                                            buildargs=dict(buildargs or {}), rm=True, forcerm=True,
                                            decode=True)
            for chunk in stream:
                if "error" in chunk or "errorDetail" in chunk:
                    last_error = chunk.get("error") or chunk["errorDetail"].get("message", "")
                elif "aux" in chunk and isinstance(chunk["aux"], dict) and chunk["aux"].get("ID"):
                    image_id = chunk["aux"]["ID"]
                elif chunk.get("stream", "").strip():
                    last_line = chunk["stream"].strip()
                    if last_line.startswith("Successfully built "):
                        image_id = image_id or last_line.split()[-1]
        if last_error is not None or image_id is None:
            why = (last_error or last_line or "no image id in the build output").strip().splitlines()
            raise RuntimeBackendError(f"docker runtime: build of {tags[0]} failed: {why[-1] if why else ''}",
                                      tag=tags[0])
        import docker.utils

        for ref in tags:
            repository, tag = docker.utils.parse_repository_tag(ref)
            with self._translate(f"tag {image_id} as {ref}"):
                self._client.api.tag(image_id, repository, tag or "latest", force=True)
        return image_id

    def push_image(self, ref: str) -> str:
        import docker.utils

        repository, tag = docker.utils.parse_repository_tag(ref)
        tag = tag or "latest"
        digest, error = None, None
        with self._translate(f"push {ref}", "check the registry address and its credentials"):
            stream = self._client.api.push(repository, tag=tag, stream=True, decode=True,
                                           auth_config=_auth_config())
            for chunk in stream:
                if "error" in chunk or "errorDetail" in chunk:
                    error = chunk.get("error") or chunk["errorDetail"].get("message", "")
                aux = chunk.get("aux")
                if isinstance(aux, dict) and aux.get("Digest"):
                    digest = aux["Digest"]
                status = chunk.get("status", "")
                if digest is None and "digest: " in status:
                    digest = status.split("digest: ", 1)[1].split()[0]
        if error is not None or digest is None:
            raise RuntimeBackendError(f"docker runtime: push of {ref} failed: "
                                      f"{(error or 'no digest in the registry answer').strip()}; "
                                      "check the registry address and its credentials", image=ref)
        return digest


class _EngineError(Exception):
    """The engine answered a call with an error status."""

    def __init__(self, status_code: int, explanation: str):
        super().__init__(f"{status_code} {explanation}")
        self.status_code = status_code
        self.explanation = explanation


class _EngineDown(Exception):
    """The engine's socket could not be reached (the cause says why)."""


class _EngineTimeout(Exception):
    def __init__(self, seconds: float):
        super().__init__(f"no answer within {seconds:g}s")
        self.seconds = seconds


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _LocalEngine:
    """The container calls of the Engine API over a local unix socket, with the standard library
    (the docker SDK, requests and urllib3 take longer to import than a release's calls take). One
    connection per call: on a unix socket, connecting costs next to nothing, and threads share
    nothing. The API version is the engine's own, at most API_VERSION (what this code was written
    against), read once from /_ping."""

    API_VERSION = (1, 41)

    def __init__(self, path: str, timeout: float):
        self.path = path
        self.timeout = timeout
        self._prefix: str | None = None

    def _send(self, method: str, url: str, body: dict | None, timeout: float) -> tuple[int, bytes, http.client.HTTPMessage]:
        conn = _UnixConnection(self.path, timeout)
        try:
            try:
                conn.connect()
            except OSError as exc:
                raise _EngineDown(str(exc)) from exc
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            try:
                conn.request(method, url, body=data, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read(), resp.headers
            except TimeoutError as exc:
                raise _EngineTimeout(timeout) from exc
            except (OSError, http.client.HTTPException) as exc:
                raise _EngineDown(str(exc)) from exc
        finally:
            conn.close()

    def _version_prefix(self) -> str:
        if self._prefix is None:
            status, raw, headers = self._send("GET", "/_ping", None, self.timeout)
            if status >= 400:
                raise _EngineError(status, _message(raw))
            found = tuple(_int(p) or 0 for p in str(headers.get("Api-Version") or "").split(".")[:2])
            major, minor = min(found, self.API_VERSION) if len(found) == 2 and found[0] else self.API_VERSION
            self._prefix = f"/v{major}.{minor}"
        return self._prefix

    def call(self, method: str, path: str, params: dict | None = None, body: dict | None = None,
             timeout: float | None = None):
        url = self._version_prefix() + urllib.parse.quote(path, safe="/:")
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, raw, _ = self._send(method, url, body, self.timeout if timeout is None else timeout)
        if status >= 400:
            raise _EngineError(status, _message(raw))
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError as exc:
            raise _EngineError(status, f"the answer to {method} {path} is not JSON") from exc

    def ping(self) -> None:
        self._version_prefix()

    def containers(self, labels: list[str]) -> list[dict]:
        return self.call("GET", "/containers/json",
                         {"all": "1", "filters": json.dumps({"label": labels})}) or []

    def inspect(self, ref: str) -> dict:
        return self.call("GET", f"/containers/{ref}/json")

    def inspect_image(self, ref: str) -> dict:
        return self.call("GET", f"/images/{ref}/json")

    def create(self, name: str, config: dict) -> str:
        return self.call("POST", "/containers/create", {"name": name}, config)["Id"]

    def start(self, ref: str) -> None:
        self.call("POST", f"/containers/{ref}/start")  # 304: it runs already

    def stop(self, ref: str, timeout: int) -> None:
        self.call("POST", f"/containers/{ref}/stop", {"t": str(timeout)}, timeout=self.timeout + timeout)

    def rename(self, ref: str, name: str) -> None:
        self.call("POST", f"/containers/{ref}/rename", {"name": name})

    def remove(self, ref: str) -> None:
        self.call("DELETE", f"/containers/{ref}", {"force": "1", "v": "1"})


class _SdkEngine:
    """The same calls through the SDK's low-level client (remote engines: TCP with TLS, ssh)."""

    def __init__(self, api):
        self.api = api

    def ping(self) -> None:
        self.api.ping()

    def containers(self, labels: list[str]) -> list[dict]:
        return self.api.containers(all=True, filters={"label": labels})

    def inspect(self, ref: str) -> dict:
        return self.api.inspect_container(ref)

    def inspect_image(self, ref: str) -> dict:
        return self.api.inspect_image(ref)

    def create(self, name: str, config: dict) -> str:
        return self.api.create_container_from_config(config, name=name)["Id"]

    def start(self, ref: str) -> None:
        self.api.start(ref)

    def stop(self, ref: str, timeout: int) -> None:
        self.api.stop(ref, timeout=timeout)

    def rename(self, ref: str, name: str) -> None:
        self.api.rename(ref, name)

    def remove(self, ref: str) -> None:
        self.api.remove_container(ref, force=True, v=True)


def _message(raw: bytes) -> str:
    """The engine's explanation from an error answer ({"message": ...}), else the raw text."""
    try:
        found = json.loads(raw)
    except ValueError:
        found = None
    text = found.get("message") if isinstance(found, dict) else None
    return text or raw.decode("utf-8", "replace").strip() or "no explanation"


def _auth_config() -> dict | None:
    """Registry credentials from the environment; None lets the engine use its own."""
    user = os.environ.get(REGISTRY_USER_ENV)
    password = os.environ.get(REGISTRY_PASSWORD_ENV)
    if not user or password is None:
        return None
    return {"username": user, "password": password}


def _host_port(attrs: dict) -> int:
    """From an inspect: the host port published for the instance's container port (the first one
    when unknown); for a stopped container, the port pinned in its binding."""
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    ports = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    if not any(ports.values()):
        ports = (attrs.get("HostConfig") or {}).get("PortBindings") or {}
    wanted = labels.get(LABEL_PORT)
    keys = [f"{wanted}/tcp"] if wanted else sorted(ports)
    for key in keys:
        for binding in ports.get(key) or []:
            if str(binding.get("HostPort") or "").isdigit():
                return int(binding["HostPort"])
    return 0


def _from_inspect(attrs: dict) -> Instance:
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    state = (attrs.get("State") or {}).get("Status", "")
    return Instance(
        name=str(attrs.get("Name") or "").lstrip("/"),
        service=labels.get(LABEL_SERVICE, ""),
        color=labels.get(LABEL_COLOR, ""),
        release=labels.get(LABEL_RELEASE, ""),
        image=(attrs.get("Config") or {}).get("Image", ""),
        address=labels.get(LABEL_ADDRESS, "127.0.0.1"),
        port=_host_port(attrs) if state == "running" else 0,
        state=state,
        id=attrs.get("Id", ""),
    )


@dataclass
class _Seen:
    """One container as the engine's listing shows it (no inspect)."""

    id: str
    name: str
    labels: dict
    state: str
    ports: tuple

    def published_port(self) -> int:
        """The host port of the instance's container port while it runs (the pinned one when the
        listing shows none, e.g. a container on a network without published ports)."""
        wanted = _int(self.labels.get(LABEL_PORT))
        for p in sorted(self.ports, key=lambda p: (p.get("PrivatePort") or 0, p.get("IP") or "")):
            if p.get("Type", "tcp") == "tcp" and p.get("PublicPort") and wanted in (None, p.get("PrivatePort")):
                return int(p["PublicPort"])
        return _int(self.labels.get(LABEL_HOST_PORT)) or 0


def _seen_of(attrs: dict) -> _Seen:
    """The listing's view of a container from its inspect."""
    return _Seen(id=attrs.get("Id", ""), name=str(attrs.get("Name") or "").lstrip("/"),
                 labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
                 state=(attrs.get("State") or {}).get("Status", "") or "", ports=())


def _seen(row: dict) -> _Seen:
    names = [str(n).lstrip("/") for n in row.get("Names") or []]
    # a legacy link adds names like /other/alias: the container's own name has no slash
    name = next((n for n in names if "/" not in n), names[0] if names else str(row.get("Id", ""))[:12])
    return _Seen(id=row.get("Id", ""), name=name, labels=dict(row.get("Labels") or {}),
                 state=row.get("State", "") or "", ports=tuple(row.get("Ports") or ()))


def _vanished(exc: BaseException) -> bool:
    """The engine says the container is gone or going: no such container (404), or its removal is
    in progress (409)."""
    status = getattr(exc, "status_code", None)
    if status == 404:
        return True
    return status == 409 and "removal" in _reason(exc).lower()


class _Ports:
    """Host ports taken on the engine, read once per start and shared by the replicas it creates."""

    def __init__(self, read):
        self._used = read()
        self._lock = threading.Lock()

    def pick(self, low: int, high: int) -> int:
        with self._lock:
            free = [p for p in (random.randint(low, high) for _ in range(50)) if p not in self._used]
            port = free[0] if free else random.randint(low, high)
            self._used.add(port)
            return port


def _each(fn, items, limit: int = MAX_PARALLEL) -> list:
    """fn over items, up to limit at a time (the replicas of a color start and stop together);
    results in the items' order. Every call finishes before this returns or raises (nothing may
    still be starting while a rollback undoes the step); the first item's error is raised."""
    items = list(items)
    if len(items) <= 1:
        return [fn(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor, wait

    pool = ThreadPoolExecutor(max_workers=min(limit, len(items)), thread_name_prefix="cdlib-docker")
    try:
        futures = [pool.submit(fn, item) for item in items]
        try:
            wait(futures)
        except BaseException:
            wait(futures)  # interrupted (SIGTERM, Ctrl-C): let the calls in flight end first
            raise
    finally:
        pool.shutdown(wait=False)
    for future in futures:
        if (exc := future.exception()) is not None:
            raise exc
    return [future.result() for future in futures]


def _int(value) -> int | None:
    return int(value) if str(value or "").isdigit() else None


def _aside_release(name: str) -> str:
    return name.split(ASIDE, 1)[1] if ASIDE in name else ""


def _transport_reason(exc: BaseException) -> str:
    """The short cause of a connection failure (refused, timed out, no such socket...), not the
    whole urllib3 retry story."""
    for cur in causes(exc):
        if isinstance(cur, OSError) and cur.strerror:
            return cur.strerror.lower()
    text = _reason(exc)
    for marker in ("Connection refused", "timed out", "No such file or directory", "Name or service not known"):
        if marker.lower() in text.lower():
            return marker.lower()
    return text[:160]


def _reason(exc: BaseException) -> str:
    """One line from an SDK or transport error: the engine's explanation when there is one."""
    text = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(str(text).split())
