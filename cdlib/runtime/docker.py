"""The runtime port on one Docker engine, through the Docker SDK (``docker`` 7.x).

Containers are found by label, never by remembering ids, so any later process (another Jenkins
stage, a rollback after a crash) sees what an earlier one started. Host ports are picked from
``StartRequest.host_ports`` and pinned in the container's port binding: Docker gives a dynamically
published port a *new* number on every restart, which would make a resumed color unreachable through
a proxy configuration restored byte for byte. A port that turns out to be taken is retried with
another one (the engine is the judge, so this works against a remote DOCKER_HOST too).

The SDK is imported on first use (the CLI must start fast), and nothing from ``docker`` or
``requests`` leaves this module: every failure becomes a one-line :class:`RuntimeBackendError`.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

from ..errors import RuntimeBackendError
from ..model import Instance, instance_name
from .base import (
    ASIDE,
    LABEL_COLOR,
    LABEL_INDEX,
    LABEL_RELEASE,
    LABEL_SERVICE,
    Runtime,
    StartRequest,
    aside_name,
    is_aside,
)

# Not part of the port: what instances() needs to report the same address and port start() did.
LABEL_PORT = "cdlib.port"
LABEL_ADDRESS = "cdlib.address"

DEFAULT_HOST = "unix:///var/run/docker.sock"
DEFAULT_STOP_TIMEOUT = 10
REGISTRY_USER_ENV = "CDLIB_REGISTRY_USER"
REGISTRY_PASSWORD_ENV = "CDLIB_REGISTRY_PASSWORD"


def redact_host(url: str) -> str:
    """The host URL without a password (ssh://user:secret@host -> ssh://user@host)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid docker host URL>"
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class DockerRuntime(Runtime):
    kind = "docker"

    def __init__(self, docker_host: str | None = None, timeout: float = 60):
        self.docker_host = docker_host
        self.timeout = timeout
        self._docker_client = None

    # -- connection ---------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return self.docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST

    def describe(self) -> str:
        return redact_host(self.host)

    @property
    def _client(self):
        """The SDK client, built (and the engine contacted) on first use."""
        if self._docker_client is None:
            import docker
            import requests

            try:
                if self.docker_host is None:
                    # from_env honours DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH
                    client = docker.from_env(timeout=int(self.timeout))
                else:
                    client = docker.DockerClient(base_url=self.docker_host, timeout=int(self.timeout))
            except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
                raise self._unreachable(exc) from exc
            self._docker_client = client
        return self._docker_client

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
            self._client.ping()

    @contextmanager
    def _translate(self, action: str, hint: str = "") -> Iterator[None]:
        """Turn SDK and transport errors into RuntimeBackendError; ours pass through."""
        import docker
        import requests
        import urllib3

        try:
            yield
        except RuntimeBackendError:
            raise
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
            tail = f"; {hint}" if hint else ""
            raise RuntimeBackendError(f"docker runtime: {action}: {self._reason(exc)}{tail}") from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
            tail = f"; {hint}" if hint else ""
            raise RuntimeBackendError(f"docker runtime: {action}: {self._reason(exc)}{tail}") from exc

    # -- lookups --------------------------------------------------------------------------------
    def _containers(self, service: str, color: str | None = None, release: str | None = None) -> list:
        # a color label always: test-suite containers carry the service label too, and are no instances
        labels = [f"{LABEL_SERVICE}={service}", LABEL_COLOR if color is None else f"{LABEL_COLOR}={color}"]
        if release is not None:
            labels.append(f"{LABEL_RELEASE}={release}")
        with self._translate(f"list the containers of {service}"):
            found = self._client.containers.list(all=True, filters={"label": labels}, ignore_removed=True)
        return sorted(found, key=lambda c: c.name)

    def _get(self, name: str):
        import docker

        with self._translate(f"inspect container {name}"):
            try:
                return self._client.containers.get(name)
            except docker.errors.NotFound:
                return None

    def _instance(self, container) -> Instance:
        labels = container.labels
        return Instance(
            name=container.name,
            service=labels.get(LABEL_SERVICE, ""),
            color=labels.get(LABEL_COLOR, ""),
            release=labels.get(LABEL_RELEASE, ""),
            image=container.attrs.get("Config", {}).get("Image", ""),
            address=labels.get(LABEL_ADDRESS, "127.0.0.1"),
            port=_host_port(container) if container.status == "running" else 0,
            state=container.status,
            id=container.id,
        )

    # -- the port -------------------------------------------------------------------------------
    def start(self, req: StartRequest) -> list[Instance]:
        out, have_image = [], False
        for index in range(req.first_index, req.first_index + req.replicas):
            name = instance_name(req.service, req.color, index)
            container = self._get(name)
            if container is None:
                if not have_image:  # a retried start that reuses everything needs no registry
                    self._ensure_image(req.image)
                    have_image = True
                out.append(self._create_and_run(req, name, index))
                continue
            else:
                found = container.labels.get(LABEL_RELEASE)
                if found != req.release or container.labels.get(LABEL_SERVICE) != req.service:
                    raise RuntimeBackendError(
                        f"docker runtime: container {name} already exists for release {found or '(none)'}; "
                        f"it must be set aside or removed before release {req.release} can start",
                        name=name, release=found)
            out.append(self._run(container))
        return out

    def _create_and_run(self, req: StartRequest, name: str, index: int, attempts: int = 20) -> Instance:
        """Create the container on a free host port of req.host_ports and start it; when the engine
        says the port is taken, remove it and try another port."""
        low, high = req.host_ports
        used = self._used_ports()
        for _ in range(attempts):
            free = [p for p in (random.randint(low, high) for _ in range(50)) if p not in used]
            port = free[0] if free else random.randint(low, high)
            used.add(port)
            container = self._create(req, name, index, port)
            try:
                return self._run(container)
            except RuntimeBackendError as exc:
                if not any(s in str(exc) for s in ("port is already allocated", "address already in use")):
                    raise
                with self._translate(f"remove container {name} after a port clash"):
                    container.remove(force=True, v=True)
        raise RuntimeBackendError(f"docker runtime: no free host port for {name} in {low}-{high} after "
                                  f"{attempts} attempts; widen target.host_ports", name=name)

    def _used_ports(self) -> set[int]:
        """Host ports pinned by cdlib's containers on this engine (running or stopped)."""
        with self._translate("list the containers that cdlib started"):
            found = self._client.containers.list(all=True, filters={"label": LABEL_SERVICE})
        used = set()
        for c in found:
            for bindings in ((c.attrs.get("HostConfig") or {}).get("PortBindings") or {}).values():
                for b in bindings or []:
                    if str(b.get("HostPort") or "").isdigit():
                        used.add(int(b["HostPort"]))
        return used

    def _create(self, req: StartRequest, name: str, index: int, host_port: int):
        labels = dict(req.labels)
        labels.update({LABEL_SERVICE: req.service, LABEL_COLOR: req.color, LABEL_RELEASE: req.release,
                       LABEL_INDEX: str(index), LABEL_PORT: str(req.port), LABEL_ADDRESS: req.address})
        env = dict(req.env)
        env.update({"CDLIB_SERVICE": req.service, "CDLIB_COLOR": req.color, "CDLIB_RELEASE": req.release})
        with self._translate(f"create container {name} from {req.image}",
                             "check the image, target.network and target.bind"):
            # the low-level call: the SDK's containers.create() cannot set StopTimeout, and the
            # container's own StopTimeout also makes a hand-typed `docker stop` wait long enough
            api = self._client.api
            host_config = api.create_host_config(
                port_bindings={f"{req.port}/tcp": (req.bind, host_port)}, init=req.init,
                restart_policy={"Name": "unless-stopped"}, network_mode=req.network or None)
            networking = (api.create_networking_config({req.network: api.create_endpoint_config()})
                          if req.network else None)
            created = api.create_container(
                req.image, name=name, labels=labels, environment=env, ports=[(req.port, "tcp")],
                host_config=host_config, networking_config=networking, stop_timeout=req.stop_timeout)
            return self._client.containers.get(created["Id"])

    def _run(self, container) -> Instance:
        """Start the container when it is not running and wait until its port is published."""
        with self._translate(f"start container {container.name}", f"check `docker logs {container.name}`"):
            container.reload()
            if container.status != "running":
                container.start()
            deadline = time.monotonic() + self.timeout
            while True:
                container.reload()
                port = _host_port(container)
                if container.status == "running" and port:
                    return self._instance(container)
                if container.status in ("exited", "dead", "restarting") or time.monotonic() > deadline:
                    code = container.attrs.get("State", {}).get("ExitCode")
                    raise RuntimeBackendError(
                        f"docker runtime: container {container.name} is {container.status} (exit code {code}) "
                        f"right after start, no published port; check `docker logs {container.name}`",
                        name=container.name)
                time.sleep(0.05)

    def _ensure_image(self, ref: str) -> None:
        """Pull the image only when the engine does not have it (a registry may be offline)."""
        import docker

        with self._translate(f"look up image {ref}"):
            try:
                self._client.images.get(ref)
                return
            except docker.errors.ImageNotFound:
                pass
        repository, tag = docker.utils.parse_repository_tag(ref)
        with self._translate(f"pull image {ref}", "check the image reference, the registry and its credentials"):
            self._client.images.pull(repository, tag=tag or "latest", auth_config=_auth_config())

    def instances(self, service: str, color: str | None = None, release: str | None = None,
                  include_aside: bool = False) -> list[Instance]:
        found = self._containers(service, color, release)
        with self._translate(f"inspect the containers of {service}"):
            return [self._instance(c) for c in found if include_aside or not is_aside(c.name)]

    def stop(self, service: str, color: str, release: str | None = None) -> list[str]:
        stopped = []
        for container in self._containers(service, color, release):
            if is_aside(container.name) or container.status not in ("running", "restarting", "paused"):
                continue
            timeout = container.attrs.get("Config", {}).get("StopTimeout") or DEFAULT_STOP_TIMEOUT
            with self._translate(f"stop container {container.name}"):
                container.stop(timeout=timeout)
            stopped.append(container.name)
        return stopped

    def resume(self, service: str, color: str, release: str | None = None) -> list[Instance]:
        return [self._run(c) for c in self._containers(service, color, release) if not is_aside(c.name)]

    def remove(self, service: str, color: str, release: str | None = None,
               aside: bool = False) -> list[str]:
        """aside=False: every instance of the color (of release, by label, when given), set-aside
        ones included. aside=True: only set-aside ones (of release when given: the release they
        were set aside for, i.e. the ``.aside-<release>`` suffix)."""
        import docker

        if aside:
            chosen = [c for c in self._containers(service, color)
                      if is_aside(c.name) and (release is None or _aside_release(c.name) == release)]
        else:
            chosen = self._containers(service, color, release)
        removed = []
        for container in chosen:
            with self._translate(f"remove container {container.name}"):
                try:
                    container.remove(force=True, v=True)
                except docker.errors.NotFound:
                    pass  # removed by someone else meanwhile: the goal is reached
            removed.append(container.name)
        return removed

    def set_aside(self, service: str, color: str, release: str) -> list[str]:
        """Rename the color's plain-named instances to ``<name>.aside-<release>``; instances that
        already belong to release are left alone, so a repeated call changes nothing."""
        renamed = []
        for container in self._containers(service, color):
            if is_aside(container.name) or container.labels.get(LABEL_RELEASE) == release:
                continue
            target = aside_name(container.name, release)
            if self._get(target) is not None:
                raise RuntimeBackendError(f"docker runtime: cannot set {container.name} aside: {target} already "
                                          f"exists; remove it first", name=container.name)
            with self._translate(f"rename container {container.name} to {target}"):
                container.rename(target)
            renamed.append(target)
        return renamed

    def restore_aside(self, service: str, color: str, release: str) -> list[str]:
        restored = []
        for container in self._containers(service, color):
            if not is_aside(container.name) or _aside_release(container.name) != release:
                continue
            plain = container.name.split(ASIDE, 1)[0]
            holder = self._get(plain)
            if holder is not None:
                raise RuntimeBackendError(
                    f"docker runtime: cannot restore {container.name}: the name {plain} is taken by another "
                    f"container (release {holder.labels.get(LABEL_RELEASE) or 'unknown'}); remove it first",
                    name=plain)
            with self._translate(f"rename container {container.name} to {plain}"):
                container.rename(plain)
            restored.append(plain)
        return restored

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
        import docker

        for ref in tags:
            repository, tag = docker.utils.parse_repository_tag(ref)
            with self._translate(f"tag {image_id} as {ref}"):
                self._client.api.tag(image_id, repository, tag or "latest", force=True)
        return image_id

    def push_image(self, ref: str) -> str:
        import docker

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


def _auth_config() -> dict | None:
    """Registry credentials from the environment; None lets the engine use its own."""
    user = os.environ.get(REGISTRY_USER_ENV)
    password = os.environ.get(REGISTRY_PASSWORD_ENV)
    if not user or password is None:
        return None
    return {"username": user, "password": password}


def _host_port(container) -> int:
    """The host port published for the instance's container port (the first one when unknown);
    for a stopped container, the port pinned in its binding."""
    ports = (container.attrs.get("NetworkSettings") or {}).get("Ports") or {}
    if not any(ports.values()):
        ports = (container.attrs.get("HostConfig") or {}).get("PortBindings") or {}
    wanted = container.labels.get(LABEL_PORT)
    keys = [f"{wanted}/tcp"] if wanted else sorted(ports)
    for key in keys:
        bindings = ports.get(key) or []
        for binding in bindings:
            if binding.get("HostPort"):
                return int(binding["HostPort"])
    return 0


def _aside_release(name: str) -> str:
    return name.split(ASIDE, 1)[1] if ASIDE in name else ""


def _transport_reason(exc: BaseException) -> str:
    """The short cause of a connection failure (refused, timed out, no such socket...), not the
    whole urllib3 retry story."""
    seen, cur = set(), exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.strerror:
            return cur.strerror.lower()
        for arg in getattr(cur, "args", ()):
            if isinstance(arg, BaseException):
                found = _transport_reason(arg)
                if found:
                    return found
        cur = cur.__cause__ or cur.__context__
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
