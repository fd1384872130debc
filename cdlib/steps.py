"""The steps of a release and their undos.

Each step that changes the world is a plan.Step recorded in the release journal. The undo of every
step is in UNDO, keyed by step name, so any later process can roll back. Every undo is idempotent:
intent is written before a step acts, so an interrupted step is undone as if it had acted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from . import journal as jr
from . import keys, plan
from .config.spec import SwarmSpec
from .context import Ctx
from .errors import ReleaseFailed, UsageError
from .locks import DEFAULT_LOCK_TTL
from .model import Instance
from .probe import probe
from .record import StepName
from .registry import backend_for, backends, instances_from, raw_value
from .runtime.base import StartRequest


def _start_request(ctx: Ctx) -> StartRequest:
    s = ctx.spec
    return StartRequest(
        service=s.name, color=ctx.rec.color, release=ctx.rec.id, image=ctx.rec.image, port=s.port,
        replicas=_replicas(ctx), env=s.env, bind=s.target.bind, address=s.target.reach_address, init=s.target.init,
        stop_timeout=s.target.stop_timeout, network=s.target.network, host_ports=s.target.host_ports,
        health_path=s.health.path, **swarm_options(s.target.swarm),
    )


def swarm_options(sw: SwarmSpec) -> dict[str, Any]:
    """The StartRequest fields of target.swarm (the Swarm runtime reads them; the others ignore them)."""
    return {"endpoint_mode": sw.endpoint_mode, "published_port": sw.published_port, "constraints": sw.constraints,
            "restart_delay": sw.restart_delay, "limit_cpus": sw.limit_cpus, "limit_memory": sw.limit_memory,
            "reserve_cpus": sw.reserve_cpus, "reserve_memory": sw.reserve_memory}


def _replicas(ctx: Ctx) -> int:
    """The descriptor's replicas, else the live color's count (kept by 'scale'), else 1."""
    from .healing import inherited_replicas  # healing builds on this module

    return inherited_replicas(ctx)


def do_set_aside(ctx: Ctx, data: dict[str, Any]) -> dict[str, Any]:
    names = ctx.ports.runtime.set_aside(ctx.service, ctx.rec.color, ctx.rec.id)
    return {"names": names}


def undo_set_aside(ctx: Ctx, data: dict[str, Any]) -> None:
    ctx.ports.runtime.restore_aside(ctx.service, ctx.rec.color, ctx.rec.id)


def do_start(ctx: Ctx, data: dict[str, Any]) -> dict[str, Any]:
    instances = ctx.ports.runtime.start(_start_request(ctx))
    return {"instances": [i.to_dict() for i in instances]}


def undo_start(ctx: Ctx, data: dict[str, Any]) -> None:
    ctx.ports.runtime.remove(ctx.service, ctx.rec.color, release=ctx.rec.id)


def do_resume(ctx: Ctx, data: dict[str, Any]) -> dict[str, Any]:
    instances = ctx.ports.runtime.resume(ctx.service, ctx.rec.color, release=data["release"])
    if not instances:
        raise ReleaseFailed(f"no stopped instances of {ctx.service} {ctx.rec.color} release "
                            f"{data['release']} to resume")
    return {"instances": [i.to_dict() for i in instances]}


def undo_resume(ctx: Ctx, data: dict[str, Any]) -> None:
    ctx.ports.runtime.stop(ctx.service, ctx.rec.color, release=data["release"])


def do_health(ctx: Ctx, data: dict[str, Any]) -> dict[str, Any]:
    instances = instances_from(started_instances(ctx))
    h = ctx.spec.health
    seconds = ctx.ports.runtime.wait_healthy(instances, h.path, h.timeout, h.interval)
    return {"seconds": round(seconds, 3)}


def started_instances(ctx: Ctx) -> list[dict[str, Any]]:
    for name in (StepName.START, StepName.RESUME):
        step = ctx.journal.step(name) if ctx.journal else None
        if step is not None and step.state == jr.DONE:
            instances: list[dict[str, Any]] = step.data["instances"]
            return instances
    raise UsageError(f"{ctx.service}: the open release has no started instances; run 'cdlib rollback'")


def registration_of(ctx: Ctx, inst: dict[str, Any]) -> dict[str, Any]:
    return {"name": inst["name"], "address": inst["address"], "port": inst["port"], "release": inst["release"],
            "image": inst["image"], "health_url": Instance.from_dict(inst).url + ctx.spec.health.path}


def _prior_registrations(ctx: Ctx, color: str) -> dict[str, Any]:
    """name -> the exact stored record of every registration of the color (to restore byte for byte)."""
    store = ctx.ports.store
    return {r["name"]: raw_value(store, keys.instance(ctx.service, color, r["name"]))
            for r in store.registrations(ctx.service, color)}


def _restore_registrations(ctx: Ctx, color: str, prior: dict[str, Any]) -> None:
    store = ctx.ports.store
    for reg in store.registrations(ctx.service, color):
        if reg["name"] not in prior:
            store.deregister(ctx.service, color, reg["name"])
    for name, raw in prior.items():
        if raw is not None:
            store.register(ctx.service, color, name, json.loads(raw))


def intent_register(ctx: Ctx) -> dict[str, Any]:
    """Record the prior state of everything this step may write, so its undo restores it exactly."""
    return {"prior": _prior_registrations(ctx, ctx.rec.color), "prior_spec": raw_value(ctx.ports.store,
                                                                                    keys.spec(ctx.service))}


def do_register(ctx: Ctx, data: dict[str, Any]) -> dict[str, Any]:
    """Register the healthy new instances, with the release's TTL until the release closes: a
    deploy that dies and is never rolled back leaves no registration behind for longer."""
    store, s, color = ctx.ports.store, ctx.spec, ctx.rec.color
    for name in data["prior"]:
        store.deregister(ctx.service, color, name)  # stale registrations of this color
    store.put_json(keys.spec(ctx.service), {"routes": s.routes.to_dict(), "port": s.port,
                                            "health_path": s.health.path})
    ttl = ctx.rec.lock_ttl or DEFAULT_LOCK_TTL
    for inst in started_instances(ctx):
        store.register(ctx.service, color, inst["name"], registration_of(ctx, inst), ttl=ttl)
    keep_registrations(ctx)
    return {}


REFRESH_REGISTRATIONS = "registrations"


def keep_registrations(ctx: Ctx) -> None:
    """While the verb works, the heartbeat re-registers the release's instances with its TTL."""
    if ctx.heartbeat is None:
        return
    store, color, ttl = ctx.ports.store, ctx.rec.color, ctx.rec.lock_ttl or DEFAULT_LOCK_TTL
    regs = [(inst["name"], registration_of(ctx, inst)) for inst in started_instances(ctx)]

    def refresh() -> None:
        for name, record in regs:
            store.register(ctx.service, color, name, record, ttl=ttl)
    ctx.heartbeat.add(REFRESH_REGISTRATIONS, refresh, ttl / 3)


def stop_keeping_registrations(ctx: Ctx) -> None:
    """Before the registrations change for good (persist, undo): no refresh may write them again."""
    if ctx.heartbeat is not None:
        ctx.heartbeat.drop(REFRESH_REGISTRATIONS)


def undo_register(ctx: Ctx, data: dict[str, Any]) -> None:
    _restore_registrations(ctx, ctx.rec.color, data.get("prior") or {})
    undo_restore_keys(ctx, {"prior": {keys.spec(ctx.service): data.get("prior_spec")}})


def do_persist(ctx: Ctx, data: dict[str, Any]) -> dict[str, Any]:
    """The release is done: the new color's registrations lose their TTL."""
    stop_keeping_registrations(ctx)
    for inst in started_instances(ctx):
        ctx.ports.store.register(ctx.service, ctx.rec.color, inst["name"], registration_of(ctx, inst))
    return {}


def undo_restore_keys(ctx: Ctx, data: dict[str, Any]) -> None:
    store = ctx.ports.store
    for key, value in (data.get("prior") or {}).items():
        if value is None:
            store.delete(key)
        else:
            store.put(key, value)


def intent_proxy(ctx: Ctx) -> dict[str, Any]:
    """The exact prior configuration and the exact text this step will apply (rendered under the
    proxy lock): the undo restores the prior bytes when the proxy still holds what we applied."""
    proxy = ctx.ports.proxy
    prior = proxy.read_config()
    backend = backend_for(ctx, instances_from(started_instances(ctx)))
    text = proxy.render(backends(ctx.ports.store, override=backend))
    return {"prior": None if prior is None else base64.b64encode(prior).decode("ascii"), "text": text}


def do_proxy(ctx: Ctx, data: dict[str, Any]) -> dict[str, Any]:
    proxy = ctx.ports.proxy
    timings = proxy.apply(data["text"])
    backend = backend_for(ctx, instances_from(started_instances(ctx)))
    probe_seconds = probe(ctx.spec, proxy, backend, clock=ctx.clock)
    return {"timings": {k: round(v, 3) for k, v in (timings or {}).items()}, "probe": round(probe_seconds, 3)}


def undo_proxy(ctx: Ctx, data: dict[str, Any]) -> None:
    """Put the prior bytes back; but when another service's switch changed the proxy since ours,
    the prior bytes would undo that switch too: render from the registry instead (our live color
    has been restored by then, since undos run newest first)."""
    prior = None if data.get("prior") is None else base64.b64decode(data["prior"])
    proxy = ctx.ports.proxy
    current = proxy.read_config()
    ours = data.get("text", "").encode("utf-8")
    moved = prior is not None and not ctx.ports.runtime.stable_ports
    if not moved and (current is None or current == prior or _digest(current) == _digest(ours)):
        proxy.restore(prior)
    else:
        proxy.apply(proxy.render(backends(ctx.ports.store)))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def intent_live(ctx: Ctx) -> dict[str, Any]:
    store = ctx.ports.store
    return {"prior": raw_value(store, keys.live(ctx.service)),
            "prior_replicas": raw_value(store, keys.replicas(ctx.service))}


def do_live(ctx: Ctx, data: dict[str, Any]) -> dict[str, Any]:
    store = ctx.ports.store
    current = store.get(keys.live(ctx.service))
    if (current.value if current else None) != ctx.rec.prior["live"]:
        raise ReleaseFailed(f"the live color of {ctx.service} changed during the release (now "
                            f"{current.json().get('color') if current else 'none'}); rolled back")
    started = started_instances(ctx)
    live = {"color": ctx.rec.color, "release": started[0]["release"] if started else ctx.rec.id,
            "image": ctx.rec.image, "since": time.time(), "via": ctx.rec.id}
    store.put_json(keys.live(ctx.service), live, expect=current.version if current else 0)
    # the count the new live color runs: what 'heal' keeps running and the next release inherits
    if started:
        store.put_json(keys.replicas(ctx.service), {"replicas": len(started), "color": ctx.rec.color,
                                                    "since": live["since"], "via": ctx.rec.id})
    return {"live": live}


def undo_live(ctx: Ctx, data: dict[str, Any]) -> None:
    prior = {keys.live(ctx.service): data.get("prior")}
    if "prior_replicas" in data:  # recorded since the replica count is stored
        prior[keys.replicas(ctx.service)] = data["prior_replicas"]
    undo_restore_keys(ctx, {"prior": prior})


def intent_stop_old(ctx: Ctx) -> dict[str, Any]:
    prev = ctx.rec.previous
    if not prev:
        return {"color": None}
    return {"color": prev["color"], "release": prev.get("release"),
            "prior": _prior_registrations(ctx, prev["color"])}


def do_stop_old(ctx: Ctx, data: dict[str, Any]) -> dict[str, Any]:
    if not data.get("color"):
        return {"stopped": []}
    for name in data["prior"]:
        ctx.ports.store.deregister(ctx.service, data["color"], name)
    stopped = ctx.ports.runtime.stop(ctx.service, data["color"], release=data.get("release"))
    return {"stopped": stopped}


def undo_stop_old(ctx: Ctx, data: dict[str, Any]) -> None:
    if not data.get("color"):
        return
    resumed = ctx.ports.runtime.resume(ctx.service, data["color"], release=data.get("release"))
    prior = dict(data.get("prior") or {})
    if not ctx.ports.runtime.stable_ports:
        # this runtime's resumed instances run on new host ports: register them where they run now
        for inst in resumed:
            if prior.get(inst.name) is not None:
                record = json.loads(prior[inst.name])
                record.update(address=inst.address, port=inst.port, health_url=inst.url + ctx.spec.health.path)
                prior[inst.name] = json.dumps(record)
    _restore_registrations(ctx, data["color"], prior)


UNDO = {
    StepName.SET_ASIDE: undo_set_aside,
    StepName.START: undo_start,
    StepName.RESUME: undo_resume,
    StepName.REGISTER: undo_register,
    StepName.PROXY: undo_proxy,
    StepName.LIVE: undo_live,
    StepName.STOP_OLD: undo_stop_old,
    StepName.SCALE: lambda ctx, data: _healing().undo_scale(ctx, data),
    StepName.REPLICAS: lambda ctx, data: _healing().undo_replicas(ctx, data),
}


def _healing() -> Any:
    """The scale verb's steps (cdlib.healing, which builds on this module)."""
    from . import healing

    return healing


def _names(key: str) -> Callable[[dict[str, Any]], str]:
    def describe(data: dict[str, Any]) -> str:
        items = data.get(key) or []
        return ", ".join(i["name"] + (f" ({i['address']}:{i['port']})" if "port" in i else "") if isinstance(i, dict)
                         else str(i) for i in items)
    return describe


DEPLOY_STEPS = [
    plan.Step(StepName.SET_ASIDE, do_set_aside, describe=_names("names")),
    plan.Step(StepName.START, do_start, describe=_names("instances")),
    plan.Step(StepName.HEALTH, do_health, describe=lambda d: f"healthy after {d.get('seconds', 0):.2f}s"),
    plan.Step(StepName.REGISTER, do_register, intent=intent_register),
]


REVERT_STEPS = [
    plan.Step(StepName.RESUME, do_resume, describe=_names("instances")),
    plan.Step(StepName.HEALTH, do_health, describe=lambda d: f"healthy after {d.get('seconds', 0):.2f}s"),
    plan.Step(StepName.REGISTER, do_register, intent=intent_register),
]


SWITCH_STEPS = [
    plan.Step(StepName.PROXY, do_proxy, intent=intent_proxy,
              describe=lambda d: "validated, swapped, reloaded, drained; new color answered through the proxy "
                                 f"after {d.get('probe', 0):.2f}s"),
    plan.Step(StepName.LIVE, do_live, intent=intent_live, describe=lambda d: f"live color is {d['live']['color']}"),
]


CLEANUP_STEPS = [
    plan.Step(StepName.PERSIST, do_persist, describe=lambda d: "registrations kept without TTL"),
    plan.Step(StepName.STOP_OLD, do_stop_old, intent=intent_stop_old,
              describe=lambda d: ("stopped " + ", ".join(d["stopped"])) if d.get("stopped") else "nothing to stop"),
]
