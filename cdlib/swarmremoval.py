"""Removing a Swarm service without taking the Swarm manager down with it.

Docker 20.10's Swarm manager (swarmkit before its fix 8d571f3, "nil pointer that happened twice in
swarm stack") lists a removed service's tasks, then marks each one for removal in a second
transaction without checking that the task still exists. When the task reaper deletes one of them
in between (a task a scale-down left to be reaped, or history beyond the retention limit), the
manager dereferences a nil task and the whole dockerd exits. It happens in practice right after a
service was scaled down, or while a failing service is being restarted.

The window is closed by removing a service only once none of its tasks is in motion: first no task
should run (a replicated service is scaled to 0; a global one gets a constraint no node matches),
then every task left is at rest (stopped, and not waiting for the reaper), then the removal.
Everything that removes a Swarm service goes through here, the tests' cleanup included.

``api`` is a docker-py ``APIClient`` (``client.api``): its exceptions are the caller's to translate.
"""

from __future__ import annotations

import copy
from typing import Any

from .clock import Clock, as_clock

POLL = 0.1  # seconds between two looks at the tasks
# the wait for the tasks to come to rest is bounded by the service's stop grace period plus this much:
# a stuck task must not hold a removal forever (the removal then goes ahead, as docker would)
SETTLE_WAIT = 15.0
NO_NODE = "node.id==cdlib-removing"  # a constraint no node matches: a global service's tasks stop
TERMINAL = ("complete", "shutdown", "failed", "rejected", "remove", "orphaned")


def quiet_spec(spec: dict) -> dict | None:
    """The spec changed so that no task of the service runs, or None when none runs already."""
    out = copy.deepcopy(spec)
    mode = out.get("Mode") or {}
    if "Global" in mode:
        placement = out.setdefault("TaskTemplate", {}).setdefault("Placement", {})
        constraints = placement.setdefault("Constraints", [])
        if NO_NODE in constraints:
            return None
        constraints.append(NO_NODE)
        return out
    replicas = int((mode.get("Replicated") or {}).get("Replicas") or 0)
    if not replicas:
        return None
    out["Mode"] = {"Replicated": {"Replicas": 0}}
    return out


def left_stopped(spec: dict) -> bool:
    """Whether the spec runs no task: what a removal leaves when it is killed before the last call
    (or a replicated service someone scaled to 0)."""
    return quiet_spec(spec) is None


def at_rest(tasks: list[dict]) -> bool:
    """Whether no task should run, none is still running, and none waits to be deleted."""
    for t in tasks:
        desired = t.get("DesiredState")
        state = (t.get("Status") or {}).get("State")
        if desired not in ("shutdown", "complete", "failed", "rejected") or state not in TERMINAL:
            return False
    return True


def stop_seconds(spec: dict) -> float:
    grace = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("StopGracePeriod") or 10 ** 10
    return int(grace) / 1e9


def tasks_of(api: Any, service_id: str) -> list[dict]:
    found = api.tasks(filters={"service": service_id}) or []
    return [t for t in found if t.get("ServiceID") == service_id]


def update_spec(api: Any, svc: dict, spec: dict) -> Any:
    """Write spec over the service as read (its version: a write that lost a race is refused as out
    of sequence). Returns what the engine answered."""
    return api.update_service(svc["ID"], svc["Version"]["Index"], task_template=spec["TaskTemplate"], name=spec["Name"],
                       labels=spec.get("Labels"), mode=spec.get("Mode"), endpoint_spec=spec.get("EndpointSpec"),
                       update_config=spec.get("UpdateConfig"), rollback_config=spec.get("RollbackConfig"))


def wait_at_rest(api: Any, svc: dict, clock: Clock | None = None, extra: float = SETTLE_WAIT) -> bool:
    """Wait (at most the stop grace period plus extra) until the service's tasks are at rest.
    Returns whether they are."""
    clk = as_clock(clock)
    deadline = clk.monotonic() + stop_seconds(svc["Spec"]) + extra
    while True:
        if at_rest(tasks_of(api, svc["ID"])):
            return True
        if clk.monotonic() >= deadline:
            return False
        clk.sleep(POLL)


def remove_service(api: Any, service: str, clock: Clock | None = None, extra: float = SETTLE_WAIT) -> bool:
    """Stop every task of the service (by name or id), wait until they are at rest, remove it.
    Returns False when the service was not there."""
    return bool(remove_services(api, [service], clock, extra))


def remove_services(api: Any, services: list[str], clock: Clock | None = None,
                    extra: float = SETTLE_WAIT) -> list[str]:
    """remove_service for several services: all are stopped first, then each is removed once its
    tasks are at rest. Returns the ids of the services removed (those not there are skipped)."""
    quieted = [svc for svc in (stop_tasks(api, s) for s in services) if svc is not None]
    removed = []
    for svc in quieted:
        wait_at_rest(api, svc, clock, extra)
        try:
            api.remove_service(svc["ID"])
        except Exception as exc:
            if not _not_found(exc):
                raise
            continue
        removed.append(svc["ID"])
    return removed


def stop_tasks(api: Any, service: str) -> dict | None:
    """Change the service so that no task runs; the service as it is then, None when it is not
    there. A concurrent update (out of sequence) is met by reading the service again."""
    for _ in range(5):
        try:
            svc = api.inspect_service(service)
        except Exception as exc:
            if _not_found(exc):
                return None
            raise
        spec = quiet_spec(svc["Spec"])
        if spec is None:
            return svc
        try:
            update_spec(api, svc, spec)
        except Exception as exc:
            if _not_found(exc):
                return None
            if "out of sequence" not in str(exc):
                raise
    return svc


def _not_found(exc: Exception) -> bool:
    """docker.errors.NotFound, told without importing docker here."""
    return getattr(exc, "status_code", None) == 404
