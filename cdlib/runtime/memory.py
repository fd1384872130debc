"""The runtime port in memory, for unit tests of the core.

It keeps the same contract as the Docker adapter (the contract suite runs against both), with
fake addresses (127.0.0.1 and increasing ports) and no network at all. Tests steer it through:

- ``healthy``: name -> bool; an instance is healthy unless it is listed here as False;
- ``fail_next``: method name -> exception, raised (once) the next time that method is called,
  to rehearse a runtime that breaks in the middle of a release;
- ``calls``: every port call made, in order, as (method, args) tuples;
- ``clock``: what the wait for health follows (a manual clock: an unhealthy instance times out at once);
- ``kill(name)``: the instance dies as with SIGKILL (it exits and keeps its port binding); deleting
  it from ``containers`` is an instance that vanished (removed by hand).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ..clock import Clock
from ..errors import RuntimeBackendError
from ..model import Instance, instance_name
from .base import ASIDE, Runtime, StartRequest, aside_name, is_aside

FIRST_PORT = 20000


@dataclass
class _Container:
    instance: Instance
    index: int
    labels: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    host_port: int = 0  # the port it keeps while stopped, like a container's port binding


class MemoryRuntime(Runtime):
    kind = "memory"

    def __init__(self, clock: Clock | None = None):
        self.clock = clock
        self.containers: dict[str, _Container] = {}
        self.images: dict[str, str] = {}  # tag -> image id
        self.pushed: dict[str, str] = {}  # ref -> digest
        self.healthy: dict[str, bool] = {}
        self.fail_next: dict[str, BaseException] = {}
        self.calls: list[tuple[str, tuple]] = []
        self._next_port = FIRST_PORT

    def _enter(self, method: str, *args) -> None:
        self.calls.append((method, args))
        exc = self.fail_next.pop(method, None)
        if exc is not None:
            raise exc

    def _find(self, service: str, color: str | None = None, release: str | None = None) -> list[_Container]:
        found = [c for c in self.containers.values()
                 if c.instance.service == service and (color is None or c.instance.color == color)
                 and (release is None or c.instance.release == release)]
        return sorted(found, key=lambda c: c.instance.name)

    def _view(self, c: _Container) -> Instance:
        return replace(c.instance, port=c.host_port if c.instance.running else 0)

    def _set_state(self, c: _Container, state: str) -> None:
        c.instance = replace(c.instance, state=state)

    def _rename(self, c: _Container, name: str) -> None:
        del self.containers[c.instance.name]
        c.instance = replace(c.instance, name=name)
        self.containers[name] = c

    # -- the port -------------------------------------------------------------------------------
    def ping(self) -> None:
        self._enter("ping")

    def start(self, req: StartRequest) -> list[Instance]:
        self._enter("start", req)
        out = []
        for index in range(req.first_index, req.first_index + req.replicas):
            name = instance_name(req.service, req.color, index)
            c = self.containers.get(name)
            if c is None:
                c = self._create(req, name, index)
            elif c.instance.release != req.release or c.instance.service != req.service:
                raise RuntimeBackendError(f"memory runtime: container {name} already exists for release "
                                          f"{c.instance.release}; it must be set aside or removed before "
                                          f"release {req.release} can start", name=name)
            self._set_state(c, "running")
            out.append(self._view(c))
        return out

    def _create(self, req: StartRequest, name: str, index: int, port: int | None = None) -> _Container:
        labels = dict(req.labels)
        labels.update({"cdlib.service": req.service, "cdlib.color": req.color,
                       "cdlib.release": req.release, "cdlib.index": str(index)})
        env = dict(req.env)
        env.update({"CDLIB_SERVICE": req.service, "CDLIB_COLOR": req.color, "CDLIB_RELEASE": req.release})
        if port is None:
            port = self._next_port
            self._next_port += 1
        instance = Instance(name=name, service=req.service, color=req.color, release=req.release,
                            image=req.image, address=req.address, port=port, state="created",
                            id=hashlib.sha256(f"{name}/{port}".encode()).hexdigest()[:12])
        c = _Container(instance, index, labels, env, port)
        self.containers[name] = c
        return c

    def instances(self, service: str, color: str | None = None, release: str | None = None,
                  include_aside: bool = False) -> list[Instance]:
        self._enter("instances", service, color, release, include_aside)
        return [self._view(c) for c in self._find(service, color, release)
                if include_aside or not is_aside(c.instance.name)]

    def stop(self, service: str, color: str, release: str | None = None) -> list[str]:
        self._enter("stop", service, color, release)
        stopped = []
        for c in self._find(service, color, release):
            if not is_aside(c.instance.name) and c.instance.running:
                self._set_state(c, "exited")
                stopped.append(c.instance.name)
        return stopped

    def resume(self, service: str, color: str, release: str | None = None) -> list[Instance]:
        self._enter("resume", service, color, release)
        out = []
        for c in self._find(service, color, release):
            if not is_aside(c.instance.name):
                self._set_state(c, "running")
                out.append(self._view(c))
        return out

    def remove(self, service: str, color: str, release: str | None = None,
               aside: bool = False) -> list[str]:
        self._enter("remove", service, color, release, aside)
        if aside:
            chosen = [c for c in self._find(service, color)
                      if is_aside(c.instance.name)
                      and (release is None or c.instance.name.split(ASIDE, 1)[1] == release)]
        else:
            chosen = self._find(service, color, release)
        for c in chosen:
            del self.containers[c.instance.name]
        return [c.instance.name for c in chosen]

    def set_aside(self, service: str, color: str, release: str) -> list[str]:
        self._enter("set_aside", service, color, release)
        renamed = []
        for c in self._find(service, color):
            if is_aside(c.instance.name) or c.instance.release == release:
                continue
            target = aside_name(c.instance.name, release)
            if target in self.containers:
                raise RuntimeBackendError(f"memory runtime: cannot set {c.instance.name} aside: {target} "
                                          "already exists; remove it first")
            self._rename(c, target)
            renamed.append(target)
        return renamed

    def restore_aside(self, service: str, color: str, release: str) -> list[str]:
        self._enter("restore_aside", service, color, release)
        restored = []
        for c in self._find(service, color):
            name = c.instance.name
            if not is_aside(name) or name.split(ASIDE, 1)[1] != release:
                continue
            plain = name.split(ASIDE, 1)[0]
            if plain in self.containers:
                raise RuntimeBackendError(f"memory runtime: cannot restore {name}: the name {plain} is taken "
                                          f"by another container (release {self.containers[plain].instance.release}); "
                                          "remove it first", name=plain)
            self._rename(c, plain)
            restored.append(plain)
        return restored

    # -- healing and scaling ---------------------------------------------------------------------
    def scale(self, req: StartRequest, replicas: int) -> list[Instance]:
        self._enter("scale", req, replicas)
        pinned = dict(req.pinned_ports)
        for index in range(1, replicas + 1):
            name = instance_name(req.service, req.color, index)
            c = self.containers.get(name)
            if c is None:
                c = self._create(req, name, index, pinned.get(name))
            elif c.instance.release != req.release or c.instance.service != req.service:
                raise RuntimeBackendError(f"memory runtime: container {name} belongs to release "
                                          f"{c.instance.release}, not {req.release}; remove it first", name=name)
            self._set_state(c, "running")
        for c in self._above(req.service, req.color, replicas):
            if c.instance.running:
                self._set_state(c, "exited")
        return [self._view(c) for c in self._find(req.service, req.color)
                if not is_aside(c.instance.name) and c.instance.running]

    def _above(self, service: str, color: str, replicas: int) -> list[_Container]:
        return [c for c in self._find(service, color) if not is_aside(c.instance.name) and c.index > replicas]

    def doomed(self, service: str, color: str, replicas: int) -> list[str]:
        self._enter("doomed", service, color, replicas)
        return [c.instance.name for c in self._above(service, color, replicas) if c.instance.running]

    def discard(self, service: str, color: str, names: Sequence[str]) -> list[str]:
        self._enter("discard", service, color, tuple(names))
        removed = []
        for name in names:
            c = self.containers.get(name)
            if c is None or c.instance.service != service or c.instance.color != color or c.instance.running:
                continue
            del self.containers[name]
            removed.append(name)
        return sorted(removed)

    def kill(self, name: str) -> None:
        """The instance dies (SIGKILL): it exits, keeping its port binding; nothing restarts it."""
        self._set_state(self.containers[name], "exited")

    # -- images ---------------------------------------------------------------------------------
    def build_image(self, context: str, dockerfile: str, tags: Sequence[str],
                    buildargs: dict | None = None) -> str:
        self._enter("build_image", context, dockerfile, tuple(tags), dict(buildargs or {}))
        if not tags:
            raise RuntimeBackendError("memory runtime: build needs at least one tag")
        seed = f"{context}|{dockerfile}|{sorted((buildargs or {}).items())}"
        image_id = "sha256:" + hashlib.sha256(seed.encode()).hexdigest()
        for tag in tags:
            self.images[tag] = image_id
        return image_id

    def push_image(self, ref: str) -> str:
        self._enter("push_image", ref)
        if ref not in self.images:
            raise RuntimeBackendError(f"memory runtime: push of {ref} failed: no such image; build it first",
                                      image=ref)
        digest = "sha256:" + hashlib.sha256(f"{ref}|{self.images[ref]}".encode()).hexdigest()
        self.pushed[ref] = digest
        return digest

    # -- health ---------------------------------------------------------------------------------
    def check_health(self, instance: Instance, path: str, timeout: float = 2.0) -> bool:
        c = self.containers.get(instance.name)
        return c is not None and c.instance.running and self.healthy.get(instance.name, True)
