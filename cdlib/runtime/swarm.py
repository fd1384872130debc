"""The runtime port on Docker Swarm: one Swarm service per color, ``<service>-<color>``.

A color's instances are the tasks of its service: task slot n is instance ``<service>-<color>-n``.
Everything a later process needs is in the service's labels (service, color, release, the replica
count to bring back, the container port, the address clients use), so any Jenkins stage or a
rollback after a crash finds by label what an earlier one created.

How the tasks are reached (``StartRequest.endpoint_mode``):

- ``dnsrr`` (no routing mesh: kernels without IPVS, like this project's CI): each task publishes the
  container port in host mode on a port the engine picks; an instance is the node's address and
  that task's port. A task that is replaced (rescheduled, or a stopped color started again) comes
  back on another port: :attr:`SwarmRuntime.stable_ports` is False.
- ``vip`` (the routing mesh): the service publishes one ingress port (``published_port``, else one
  picked from ``host_ports``) on every node; every instance is that address and port, kept across
  stop and resume.

Stopping a color scales its service to 0 and keeps it (the count to bring back stays in the
``cdlib.replicas`` label, so the spec after a resume is the spec before the stop). A service cannot
be renamed in Swarm, so setting a color aside saves its exact spec in a Swarm config object labelled
with the release it was set aside for, then removes the service; restoring creates the service again
from that spec (image, replicas, labels, env, placement, everything in ``Spec``: only the service's
id and version are new) and deletes the config. Each of these is idempotent, and a process killed
between two calls leaves a state the next call (or the undo) finishes.

The SDK's low-level client is imported on first use (through :class:`DockerRuntime`, which also
builds and pushes images), and every Docker failure becomes a one-line RuntimeBackendError.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from .. import swarmremoval
from ..clock import as_clock
from ..errors import RuntimeBackendError
from ..model import Instance, instance_name
from .base import LABEL_COLOR, LABEL_RELEASE, LABEL_SERVICE, StartRequest, aside_name
from .docker import LABEL_ADDRESS, LABEL_IMAGE, LABEL_PORT, DockerRuntime, redact_host

LABEL_REPLICAS = "cdlib.replicas"  # the replica count a resume brings back (kept while scaled to 0)
LABEL_UID = "cdlib.uid"  # one color's service through set aside and restore (the instance ids derive from it)
LABEL_FIRST = "cdlib.first-index"  # task slot 1 is instance first-index
LABEL_ASIDE = "cdlib.aside"  # on a config holding a set-aside service's spec: the release it was set aside for
LABEL_HEALTH = "cdlib.health-path"  # the descriptor's health path (what cdlib asks every task before it counts)
ENDPOINT_MODES = ("dnsrr", "vip")
MAX_CONFIG_NAME = 64  # Swarm's limit on a config's name
POLL = 0.1  # seconds between two looks at the tasks while waiting
RUNNING_STATES = ("new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running")
FAILED_STATES = ("failed", "rejected", "orphaned")
GONE = object()


def service_name(service: str, color: str) -> str:
    return f"{service}-{color}"


def aside_config_name(service: str, color: str, release: str) -> str:
    """``<service>-<color>.aside-<release>`` when Swarm takes a name that long, else a digest of it."""
    name = aside_name(service_name(service, color), release)
    if len(name) <= MAX_CONFIG_NAME:
        return name
    return f"cdlib.aside-{hashlib.sha256(name.encode()).hexdigest()[:40]}"


def service_spec(req: StartRequest, uid: str, published_port: int = 0) -> dict[str, Any]:
    """The Swarm service spec (the Engine API's ServiceSpec) of req's color."""
    if req.endpoint_mode not in ENDPOINT_MODES:
        raise RuntimeBackendError(f"swarm runtime: endpoint mode {req.endpoint_mode!r} is not one of "
                                  f"{', '.join(ENDPOINT_MODES)}; check target.swarm.endpoint_mode")
    if req.endpoint_mode == "vip" and not published_port:
        raise RuntimeBackendError("swarm runtime: endpoint mode vip needs a published port")
    cdlib_labels = {LABEL_SERVICE: req.service, LABEL_COLOR: req.color, LABEL_RELEASE: req.release}
    labels = dict(req.labels)
    labels.update(cdlib_labels)
    labels.update({LABEL_REPLICAS: str(req.replicas), LABEL_UID: uid, LABEL_FIRST: str(req.first_index),
                   LABEL_PORT: str(req.port), LABEL_ADDRESS: req.address, LABEL_IMAGE: req.image,
                   LABEL_HEALTH: req.health_path})
    container_labels = dict(req.labels)
    container_labels.update(cdlib_labels)
    env = dict(req.env)
    env.update({"CDLIB_SERVICE": req.service, "CDLIB_COLOR": req.color, "CDLIB_RELEASE": req.release})
    task: dict[str, Any] = {
        "ContainerSpec": {
            "Image": req.image, "Labels": container_labels, "Env": [f"{k}={v}" for k, v in env.items()],
            "Init": req.init, "StopGracePeriod": int(req.stop_timeout * 1_000_000_000),
        },
        "RestartPolicy": {"Condition": "any", "Delay": int(req.restart_delay * 1_000_000_000), "MaxAttempts": 0},
        "ForceUpdate": 0,
    }
    if req.constraints:
        task["Placement"] = {"Constraints": list(req.constraints)}
    resources = {}
    for key, cpus, memory in (("Limits", req.limit_cpus, req.limit_memory),
                              ("Reservations", req.reserve_cpus, req.reserve_memory)):
        part = {}
        if cpus:
            part["NanoCPUs"] = int(cpus * 1_000_000_000)
        if memory:
            part["MemoryBytes"] = int(memory)
        if part:
            resources[key] = part
    if resources:
        task["Resources"] = resources
    if req.network:
        task["Networks"] = [{"Target": req.network}]
    if req.endpoint_mode == "vip":
        ports = [{"Protocol": "tcp", "TargetPort": req.port, "PublishedPort": published_port,
                  "PublishMode": "ingress"}]
    else:
        ports = [{"Protocol": "tcp", "TargetPort": req.port, "PublishMode": "host"}]
    return {
        "Name": service_name(req.service, req.color),
        "Labels": labels,
        "TaskTemplate": task,
        "Mode": {"Replicated": {"Replicas": req.replicas}},
        "EndpointSpec": {"Mode": req.endpoint_mode, "Ports": ports},
    }


class SwarmRuntime(DockerRuntime):
    """Docker Swarm through a manager's Engine API (DOCKER_HOST or target.docker_host)."""

    kind = "swarm"
    stable_ports = False  # dnsrr: a task that is replaced comes back on another host port

    def __init__(self, docker_host: str | None = None, timeout: float = 60, start_timeout: float = 120):
        super().__init__(docker_host, timeout)
        self.start_timeout = start_timeout

    def describe(self) -> str:
        return f"swarm at {redact_host(self.host)}"

    # -- calls ------------------------------------------------------------------------------------
    @property
    def _api(self) -> Any:
        return self._client.api

    @contextmanager
    def _swarm(self, action: str, hint: str = "") -> Iterator[None]:
        """DockerRuntime's translation of engine, SDK and transport errors, said by this runtime."""
        try:
            with self._translate(action, hint):
                yield
        except RuntimeBackendError as exc:
            text = str(exc)
            if text.startswith("docker runtime: "):
                raise RuntimeBackendError("swarm runtime: " + text[len("docker runtime: "):],
                                          **exc.data) from exc.__cause__
            raise

    def _api_call(self, action: str, fn: Callable[..., Any], *args: Any, hint: str = "", **kw: Any) -> Any:
        """fn(*args, **kw) with errors translated; GONE when the object is not there (404)."""
        with self._swarm(action, hint):
            try:
                return fn(*args, **kw)
            except Exception as exc:
                if getattr(exc, "status_code", None) == 404:
                    return GONE
                raise

    def ping(self) -> None:
        info = self._api_call(f"ask {redact_host(self.host)} for its swarm state", self._api.info)
        swarm = (info or {}).get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            state = swarm.get("LocalNodeState") or "unknown"
            what = "a worker, not a manager" if state == "active" else f"not in a swarm (state: {state})"
            raise RuntimeBackendError(f"swarm runtime: the engine at {redact_host(self.host)} is {what}; run "
                                      "`docker swarm init` there or point target.docker_host (or DOCKER_HOST) "
                                      "at a swarm manager", host=redact_host(self.host))

    # -- lookups ----------------------------------------------------------------------------------
    def _service(self, name: str) -> dict | None:
        found = self._api_call(f"inspect service {name}", self._api.inspect_service, name)
        return None if found is GONE else found

    def _services(self, service: str, color: str | None = None, release: str | None = None) -> list[dict]:
        labels = [f"{LABEL_SERVICE}={service}", LABEL_COLOR if color is None else f"{LABEL_COLOR}={color}"]
        if release is not None:
            labels.append(f"{LABEL_RELEASE}={release}")
        found = self._api_call(f"list the services of {service}", self._api.services, filters={"label": labels})
        mine = [s for s in found or [] if s["Spec"].get("Name") == service_name(
            service, (s["Spec"].get("Labels") or {}).get(LABEL_COLOR, ""))]
        return sorted(mine, key=lambda s: s["Spec"]["Name"])

    def _tasks(self, svc: dict) -> list[dict]:
        found = self._api_call(f"list the tasks of service {svc['Spec']['Name']}", self._api.tasks,
                           filters={"service": svc["ID"]})
        return [t for t in found or [] if t.get("ServiceID") == svc["ID"]]

    def _node_addresses(self) -> dict[str, str] | None:
        """Node id -> the address its published ports are reached on; None on a single node (the
        request's address is used there: a swarm on loopback advertises 127.0.0.1)."""
        nodes = self._api_call("list the swarm's nodes", self._api.nodes) or []
        if len(nodes) <= 1:
            return None
        return {n["ID"]: (n.get("Status") or {}).get("Addr", "") for n in nodes}

    def _configs(self, service: str, color: str | None = None, aside_for: str | None = None,
                 release: str | None = None) -> list[dict]:
        labels = [f"{LABEL_SERVICE}={service}", LABEL_COLOR if color is None else f"{LABEL_COLOR}={color}",
                  LABEL_ASIDE if aside_for is None else f"{LABEL_ASIDE}={aside_for}"]
        if release is not None:
            labels.append(f"{LABEL_RELEASE}={release}")
        found = self._api_call(f"list the set-aside specs of {service}", self._api.configs, filters={"label": labels})
        return sorted(found or [], key=lambda c: c["Spec"]["Name"])

    # -- instances ----------------------------------------------------------------------------------
    def _view(self, svc: dict, tasks: list[dict] | None = None,
              nodes: dict[str, str] | None | object = GONE) -> list[Instance]:
        """The instances of one service: one per task slot that should run (a slot without a task
        yet is shown as pending), or, scaled to 0, the count a resume brings back, stopped."""
        spec = svc["Spec"]
        labels = spec.get("Labels") or {}
        first = _int(labels.get(LABEL_FIRST), 1)
        replicas = _replicas(spec)
        uid = labels.get(LABEL_UID) or svc.get("ID", "")
        image = labels.get(LABEL_IMAGE) or spec["TaskTemplate"]["ContainerSpec"].get("Image", "")

        def make(slot: int, state: str, address: str, port: int) -> Instance:
            return Instance(name=instance_name(labels.get(LABEL_SERVICE, ""), labels.get(LABEL_COLOR, ""),
                                               first + slot - 1),
                            service=labels.get(LABEL_SERVICE, ""), color=labels.get(LABEL_COLOR, ""),
                            release=labels.get(LABEL_RELEASE, ""), image=image, address=address,
                            port=port if state == "running" else 0, state=state, id=f"{uid}.{slot}")

        address = labels.get(LABEL_ADDRESS) or "127.0.0.1"
        if replicas == 0:
            return [make(slot, "exited", address, 0) for slot in range(1, _int(labels.get(LABEL_REPLICAS), 0) + 1)]
        if tasks is None:
            tasks = self._tasks(svc)
        current = _current_tasks(tasks)
        if nodes is GONE:
            nodes = self._node_addresses() if current else None
        target = _int(labels.get(LABEL_PORT), 0)
        vip_port = _ingress_port(svc, target)
        out = []
        for slot, t in sorted(current.items()):
            where = _task_address(t, nodes, address)
            out.append(make(slot, t["Status"]["State"], where, vip_port or _task_port(t, target, where)))
        missing = (slot for slot in range(1, replicas + len(current) + 1) if slot not in current)
        out += [make(slot, "pending", address, 0) for _, slot in zip(range(replicas - len(current)), missing, strict=False)]
        return out

    def _aside_view(self, cfg: dict) -> list[Instance]:
        """The instances a set-aside spec brings back, stopped, named ``<name>.aside-<release>``."""
        saved = _saved(cfg)
        release = (cfg["Spec"].get("Labels") or {}).get(LABEL_ASIDE, "")
        try:
            stopped = _stopped({"ID": saved.get("id", ""), "Spec": saved["spec"]})
            return [replace(i, name=aside_name(i.name, release)) for i in self._view(stopped)]
        except (KeyError, TypeError, AttributeError):  # not a spec set_aside saved: nothing to show
            return []

    def instances(self, service: str, color: str | None = None, release: str | None = None,
                  include_aside: bool = False) -> list[Instance]:
        found: list[Instance] = []
        nodes: dict[str, str] | None | object = GONE
        for svc in self._services(service, color, release):
            tasks = self._tasks(svc) if _replicas(svc["Spec"]) else []
            if nodes is GONE and _current_tasks(tasks):
                nodes = self._node_addresses()
            found += self._view(svc, tasks, nodes)
        if include_aside:
            for cfg in self._configs(service, color, release=release):
                found += self._aside_view(cfg)
        return sorted(found, key=lambda i: i.name)

    # -- start, scale -------------------------------------------------------------------------------
    def start(self, req: StartRequest) -> list[Instance]:
        name = service_name(req.service, req.color)
        svc = self._mine(req, self._service(name))
        history: set[str] = set()
        if svc is None:
            svc = self._create_service(req, name)
        else:  # a retried start converges
            history = self._failures(svc)
            if _replicas(svc["Spec"]) != req.replicas:
                svc = self._set_replicas(svc, req.replicas)
        return self._wait_running(name, req.replicas, history)

    def _mine(self, req: StartRequest, svc: dict | None) -> dict | None:
        """svc when it is req's release's service; None when there is none; an error when another
        release holds the name."""
        if svc is None:
            return None
        labels = svc["Spec"].get("Labels") or {}
        found = labels.get(LABEL_RELEASE)
        if found != req.release or labels.get(LABEL_SERVICE) != req.service:
            name = svc["Spec"]["Name"]
            raise RuntimeBackendError(
                f"swarm runtime: service {name} already exists for release {found or '(none)'}; it must be set "
                f"aside or removed before release {req.release} can start", name=name, release=found)
        return svc

    def _create_service(self, req: StartRequest, name: str, attempts: int = 20) -> dict:
        """Create req's service; a vip port taken by another service is retried with another one.
        A service of the same name created meanwhile by another process of the release is taken."""
        uid = secrets.token_hex(6)
        for _ in range(attempts):
            port = (req.published_port or self._free_ingress_port(req.host_ports)) if req.endpoint_mode == "vip" else 0
            spec = service_spec(req, uid, port)
            try:
                self._create_from(spec, f"create service {name} from {req.image}",
                                  "check the image, target.network and target.swarm")
            except RuntimeBackendError as exc:
                text = str(exc)
                if "already exists" in text or "name conflicts" in text or "409" in text and "name" in text:
                    got = self._mine(req, self._service(name))
                    if got is not None:
                        return got
                if req.endpoint_mode == "vip" and not req.published_port and "already in use" in text:
                    continue
                raise
            got = self._service(name)
            if got is not None:
                return got
        raise RuntimeBackendError(f"swarm runtime: no free ingress port for {name} in {req.host_ports[0]}-"
                                  f"{req.host_ports[1]} after {attempts} attempts; widen target.host_ports "
                                  "or set target.swarm.published_port", name=name)

    def _create_from(self, spec: dict, action: str, hint: str = "") -> None:
        spec = copy.deepcopy(spec)  # the SDK may change what it is given
        self._api_call(action, self._api.create_service, spec["TaskTemplate"], name=spec["Name"],
                   labels=spec.get("Labels"), mode=spec.get("Mode"), endpoint_spec=spec.get("EndpointSpec"),
                   update_config=spec.get("UpdateConfig"), rollback_config=spec.get("RollbackConfig"),
                   networks=spec.get("Networks"), hint=hint)

    def _free_ingress_port(self, host_ports: tuple[int, int]) -> int:
        used = set()
        for svc in self._api_call("list the swarm's services", self._api.services) or []:
            for p in (svc.get("Endpoint") or {}).get("Ports") or []:
                used.add(p.get("PublishedPort"))
        low, high = host_ports
        free = [p for p in (random.randint(low, high) for _ in range(50)) if p not in used]
        return free[0] if free else random.randint(low, high)

    def _update(self, svc: dict, change: Callable[[dict], None], action: str, attempts: int = 5) -> dict:
        """Apply change to the service's current spec; a write that lost the race with another
        (update out of sequence) is done again on the newer spec. Returns the service as updated;
        when it vanished meanwhile, the last one seen."""
        name = svc["Spec"]["Name"]
        for _ in range(attempts):
            spec = copy.deepcopy(svc["Spec"])
            change(spec)
            if spec == svc["Spec"]:
                return svc
            try:
                got = self._api_call(action, swarmremoval.update_spec, self._api, svc, spec)
            except RuntimeBackendError as exc:
                if "out of sequence" not in str(exc):
                    raise
                got = None
            fresh = self._service(svc["ID"])
            if fresh is None or got is GONE:
                return svc
            if got is not None:
                return fresh
            svc = fresh
        raise RuntimeBackendError(f"swarm runtime: {action}: service {name} kept changing under this update "
                                  f"({attempts} attempts); check what else updates it", name=name)

    def _set_replicas(self, svc: dict, replicas: int) -> dict:
        def change(spec: dict) -> None:
            spec["Mode"] = {"Replicated": {"Replicas": replicas}}
            if replicas:  # the count a resume brings back
                spec.setdefault("Labels", {})[LABEL_REPLICAS] = str(replicas)
            elif not _int(spec["Labels"].get(LABEL_REPLICAS), 0):  # created before the label
                spec["Labels"][LABEL_REPLICAS] = str(_replicas(svc["Spec"]))
        return self._update(svc, change, f"scale service {svc['Spec']['Name']} to {replicas}")

    def _failures(self, svc: dict) -> set[str]:
        """The ids of the service's tasks that failed so far (history to a wait that follows)."""
        return {t["ID"] for t in self._tasks(svc) if t["Status"]["State"] in FAILED_STATES}

    def _wait_running(self, name: str, replicas: int, history: set[str],
                      timeout: float | None = None) -> list[Instance]:
        """Wait until replicas tasks of the service run (with their host port in dnsrr mode) and
        return them; a task that fails meanwhile (not one of history) fails the wait with its error."""
        clock = as_clock(self.clock)
        timeout = self.start_timeout if timeout is None else timeout
        deadline = clock.monotonic() + timeout
        while True:
            svc = self._service(name)
            if svc is None:
                raise RuntimeBackendError(f"swarm runtime: service {name} was removed by another process while "
                                          "it was started; check what removes services", name=name)
            tasks = self._tasks(svc)
            fresh = [t for t in tasks if t["Status"]["State"] in FAILED_STATES and t["ID"] not in history]
            if fresh:
                t = fresh[0]
                raise RuntimeBackendError(
                    f"swarm runtime: task {name}.{t.get('Slot', '?')} {t['Status']['State']}: "
                    f"{_task_error(t)}; check `docker service ps --no-trunc {name}`", name=name)
            view = self._view(svc, tasks)
            running = [i for i in view if i.running and i.port]
            if len(running) >= replicas and len(view) == len(running):
                return view
            if clock.monotonic() >= deadline:
                waiting = [t for t in _current_tasks(tasks).values() if t["Status"]["State"] != "running"]
                why = "; ".join(f"{name}.{t.get('Slot', '?')} {t['Status']['State']}"
                                + (f" ({_task_error(t)})" if _task_error(t) else "") for t in waiting)
                raise RuntimeBackendError(
                    f"swarm runtime: {len(running)} of {replicas} tasks of {name} running after {timeout:g}s"
                    f"{': ' + why if why else ''}; check `docker service ps --no-trunc {name}`", name=name)
            clock.sleep(POLL)

    def _wait_stopped(self, svc: dict, timeout: float) -> None:
        """Wait until no task of the service runs any more (its containers stopped)."""
        clock = as_clock(self.clock)
        deadline = clock.monotonic() + timeout
        name = svc["Spec"]["Name"]
        while True:
            tasks = self._tasks(svc)
            if not any(t["Status"]["State"] in RUNNING_STATES and t["Status"]["State"] not in ("new", "pending")
                       for t in tasks):
                return
            if clock.monotonic() >= deadline:
                raise RuntimeBackendError(f"swarm runtime: tasks of {name} still run {timeout:g}s after it was "
                                          f"scaled to 0; check `docker service ps {name}`", name=name)
            clock.sleep(POLL)

    def scale(self, req: StartRequest, replicas: int) -> list[Instance]:
        name = service_name(req.service, req.color)
        svc = self._service(name)
        if svc is None:
            if replicas == 0:
                return []
            return self.start(replace(req, replicas=replicas))
        history = self._failures(svc)
        if _replicas(svc["Spec"]) != replicas:
            svc = self._set_replicas(svc, replicas)
        if replicas == 0:
            self._wait_stopped(svc, _stop_seconds(svc) + 30)
            return []
        return self._wait_running(name, replicas, history)

    def doomed(self, service: str, color: str, replicas: int) -> list[str]:
        running = sorted((i for i in self.instances(service, color) if i.running), key=_index)
        return [i.name for i in running[max(replicas, 0):]]

    def discard(self, service: str, color: str, names: Sequence[str]) -> list[str]:
        return []  # Swarm removes the tasks it shut down itself

    # -- stop, resume, remove -----------------------------------------------------------------------
    def stop(self, service: str, color: str, release: str | None = None) -> list[str]:
        stopped: list[str] = []
        for svc in self._services(service, color, release):
            if not _replicas(svc["Spec"]):
                continue
            names = [i.name for i in self._view(svc) if i.state in RUNNING_STATES]
            got = self._set_replicas(svc, 0)
            self._wait_stopped(got, _stop_seconds(got) + 30)
            stopped += names
        return stopped

    def resume(self, service: str, color: str, release: str | None = None) -> list[Instance]:
        out: list[Instance] = []
        for svc in self._services(service, color, release):
            count = _replicas(svc["Spec"]) or _int((svc["Spec"].get("Labels") or {}).get(LABEL_REPLICAS), 0)
            if not count:
                continue
            history = self._failures(svc)
            if not _replicas(svc["Spec"]):
                self._set_replicas(svc, count)
            out += self._wait_running(svc["Spec"]["Name"], count, history)
        return sorted(out, key=lambda i: i.name)

    def remove(self, service: str, color: str, release: str | None = None,
               aside: bool = False) -> list[str]:
        """aside=False: the color's service (of release, by label, when given) and its set-aside
        specs (of that release, by the label they were saved with). aside=True: only set-aside
        specs (of release when given: the release they were set aside for)."""
        removed: list[str] = []
        if not aside:
            for svc in self._services(service, color, release):
                names = [i.name for i in self._view(svc)]
                self._remove_service(svc, f"remove service {svc['Spec']['Name']}")
                removed += names
            configs = self._configs(service, color, release=release)
        else:
            configs = self._configs(service, color, aside_for=release)
        for cfg in configs:
            names = [i.name for i in self._aside_view(cfg)]
            self._api_call(f"remove the set-aside spec {cfg['Spec']['Name']}", self._api.remove_config, cfg["ID"])
            removed += names
        return sorted(removed)

    # -- set aside ------------------------------------------------------------------------------------
    def set_aside(self, service: str, color: str, release: str) -> list[str]:
        """Save the color's service's exact spec in a config labelled with release, then remove the
        service; a service of release itself is left alone, so a repeated call changes nothing."""
        name = service_name(service, color)
        svc = self._service(name)
        if svc is None:
            return []
        labels = svc["Spec"].get("Labels") or {}
        if labels.get(LABEL_RELEASE) == release or labels.get(LABEL_SERVICE) != service:
            return []
        uid = labels.get(LABEL_UID) or svc["ID"]
        kept = self._configs(service, color, aside_for=release)
        if kept:
            if (kept[0]["Spec"].get("Labels") or {}).get(LABEL_UID) != uid:
                raise RuntimeBackendError(f"swarm runtime: cannot set {name} aside: {kept[0]['Spec']['Name']} "
                                          "already exists for another service; remove it first", name=name)
        else:
            self._save(svc, service, color, release, uid)
        names = [aside_name(i.name, release) for i in self._view(_stopped(svc))]
        self._remove_service(svc, f"remove service {name} (its spec is kept)")
        return names

    def _remove_service(self, svc: dict, action: str) -> None:
        """Scale to 0, wait until the service's tasks are at rest (bounded), then remove it: the
        removal then has no task to race with (see cdlib.swarmremoval)."""
        if _replicas(svc["Spec"]):
            svc = self._set_replicas(svc, 0)
        self._api_call(f"wait for the tasks of {svc['Spec']['Name']} to stop", swarmremoval.wait_at_rest,
                       self._api, svc, self.clock)
        self._api_call(action, self._api.remove_service, svc["ID"])

    def _save(self, svc: dict, service: str, color: str, release: str, uid: str) -> None:
        labels = svc["Spec"].get("Labels") or {}
        data = json.dumps({"id": svc["ID"], "version": svc["Version"]["Index"], "spec": svc["Spec"]},
                          sort_keys=True).encode()
        cfg_name = aside_config_name(service, color, release)
        cfg_labels = {LABEL_SERVICE: service, LABEL_COLOR: color, LABEL_RELEASE: labels.get(LABEL_RELEASE, ""),
                      LABEL_ASIDE: release, LABEL_UID: uid}
        try:
            self._api_call(f"save the spec of {svc['Spec']['Name']} as {cfg_name}", self._api.create_config,
                       cfg_name, data, labels=cfg_labels)
        except RuntimeBackendError as exc:
            if "already exists" not in str(exc) and "409" not in str(exc):
                raise
            if not self._configs(service, color, aside_for=release):
                raise RuntimeBackendError(f"swarm runtime: cannot set {svc['Spec']['Name']} aside: a config "
                                          f"named {cfg_name} exists without cdlib's labels; remove it first",
                                          name=svc["Spec"]["Name"]) from exc

    def restore_aside(self, service: str, color: str, release: str) -> list[str]:
        """Create the service again from the spec set_aside saved for release, then delete that
        spec. When the service is back already (an interrupted restore), only the spec goes."""
        kept = self._configs(service, color, aside_for=release)
        if not kept:
            return []
        cfg = kept[0]
        saved = _saved(cfg)
        spec = saved.get("spec")
        if not isinstance(spec, dict) or "TaskTemplate" not in spec:
            raise RuntimeBackendError(f"swarm runtime: the set-aside spec {cfg['Spec']['Name']} cannot be read; "
                                      "inspect it with `docker config inspect`", name=cfg["Spec"]["Name"])
        name = spec.get("Name") or service_name(service, color)
        uid = (spec.get("Labels") or {}).get(LABEL_UID)
        holder = self._service(name)
        if holder is not None and (holder["Spec"].get("Labels") or {}).get(LABEL_UID) != uid:
            found = (holder["Spec"].get("Labels") or {}).get(LABEL_RELEASE)
            raise RuntimeBackendError(
                f"swarm runtime: cannot restore {aside_name(name, release)}: the name {name} is taken by another "
                f"service (release {found or 'unknown'}); remove it first", name=name)
        history: set[str] = set()
        if holder is None:
            self._create_from(spec, f"create service {name} again from its set-aside spec")
        else:  # an interrupted restore (the service is back already) or set-aside (scaled to 0 for removal)
            history = self._failures(holder)

            def saved_spec(current: dict) -> None:
                current.clear()
                current.update(copy.deepcopy(spec))
            self._update(holder, saved_spec, f"give service {name} its set-aside spec back")
        if _replicas(spec):
            self._wait_running(name, _replicas(spec), history)
        self._api_call(f"remove the set-aside spec {cfg['Spec']['Name']}", self._api.remove_config, cfg["ID"])
        return [i.name for i in self._view(_stopped({"ID": saved.get("id", ""), "Spec": spec}))]


# -- helpers -------------------------------------------------------------------------------------------
def _int(value: object, default: int) -> int:
    return int(value) if str(value or "").isdigit() else default  # type: ignore[call-overload]


def _replicas(spec: dict) -> int:
    return int(((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas") or 0)


def _stopped(svc: dict) -> dict:
    """The service as it would be listed scaled to 0 (its count kept in the label)."""
    out = copy.deepcopy(svc)
    spec = out["Spec"]
    count = _replicas(spec) or _int((spec.get("Labels") or {}).get(LABEL_REPLICAS), 0)
    spec.setdefault("Labels", {})[LABEL_REPLICAS] = str(count)
    spec["Mode"] = {"Replicated": {"Replicas": 0}}
    return out


def _stop_seconds(svc: dict) -> float:
    return swarmremoval.stop_seconds(svc["Spec"])


def _current_tasks(tasks: list[dict]) -> dict[int, dict]:
    """slot -> the newest task that should run in it."""
    out: dict[int, dict] = {}
    for t in tasks:
        if t.get("DesiredState") != "running" or not t.get("Slot"):
            continue
        slot = int(t["Slot"])
        if slot not in out or (t.get("Version") or {}).get("Index", 0) > (out[slot].get("Version") or {}).get("Index", 0):
            out[slot] = t
    return out


def _task_port(task: dict, target: int, address: str) -> int:
    """The task's host port for the container port. An engine with IPv6 binds a host-mode port twice,
    0.0.0.0 then ::, each on its own dynamic port (Docker 20.10): the first is IPv4's, the last
    IPv6's (taken when the instance's address is an IPv6 address)."""
    found = [int(p["PublishedPort"]) for p in ((task.get("Status") or {}).get("PortStatus") or {}).get("Ports") or []
             if p.get("PublishMode") == "host" and (not target or p.get("TargetPort") == target)
             and p.get("PublishedPort")]
    if not found:
        return 0
    return found[-1] if ":" in address else found[0]


def _ingress_port(svc: dict, target: int) -> int:
    if ((svc["Spec"].get("EndpointSpec") or {}).get("Mode") or "vip") != "vip":
        return 0
    ports = (svc.get("Endpoint") or {}).get("Ports") or (svc["Spec"].get("EndpointSpec") or {}).get("Ports") or []
    for p in ports:
        if p.get("PublishMode", "ingress") == "ingress" and (not target or p.get("TargetPort") == target):
            return int(p.get("PublishedPort") or 0)
    return 0


def _task_address(task: dict, nodes: object, default: str) -> str:
    if not isinstance(nodes, dict):
        return default
    addr = nodes.get(task.get("NodeID", ""), "")
    return default if not addr or addr.startswith("127.") or addr in ("0.0.0.0", "::1") else addr


def _task_error(task: dict) -> str:
    status = task.get("Status") or {}
    text = status.get("Err") or (status.get("Message") if status.get("State") != "running" else "") or ""
    return " ".join(str(text).split())


def _saved(cfg: dict) -> dict:
    """What set_aside saved in a config: {"id", "version", "spec"} ({} when unreadable)."""
    import base64

    try:
        data = json.loads(base64.b64decode(cfg["Spec"].get("Data") or ""))
    except (ValueError, TypeError):
        return {}
    return data if isinstance(data, dict) else {}


def _index(inst: Instance) -> int:
    tail = inst.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0
