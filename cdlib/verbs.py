"""The verbs: deploy, test, switch, cleanup, rollback, release, status, color, history.

Each verb that changes the world is a short plan of named steps (plan.Step) recorded in the release
journal. The undo of every step is in UNDO, keyed by step name, so any later process can roll back.

Failure classes:
- before the switch: the new color is removed, what was set aside is put back: the world is as it was;
- after the switch: the previous proxy configuration is restored byte for byte and reloaded, the
  live color is restored, then the new color is removed;
- during cleanup: the record stays open and the live color is never touched; re-run ``cleanup``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import journal as jr
from . import keys, plan
from .config import ServiceSpec
from .errors import (
    EXIT_UNDO_INCOMPLETE,
    CdlibError,
    ConfigError,
    LockHeld,
    NothingToRollBack,
    ProxyError,
    ReleaseFailed,
    StoreError,
    TestsFailed,
    UndoIncomplete,
    UsageError,
)
from .heartbeat import Heartbeat
from .journal import Journal
from .model import Backend, Instance, Outcome, Routes, StepReport, other_color
from .proxy.base import PROBE_HEADER, UPSTREAM_HEADER
from .runtime.base import ASIDE, StartRequest
from .store.base import ALIVE, GONE, default_holder, forget_lock, holder_state
from .testrun.base import TestRun
from .wiring import Ports

DEFAULT_LOCK_TTL = 3600.0
MIN_LOCK_TTL = 10.0  # refreshed every ttl/3: below this, a busy store or a paused VM loses the lock
PROXY_LOCK_TTL = 120.0  # refreshed every 40 s while held; a holder killed mid-switch is taken over at once
PROXY_LOCK_WAIT = 150.0
Reporter = Callable[[StepReport], None]


def _quiet(_: StepReport) -> None:
    pass


@dataclass
class Ctx:
    spec: ServiceSpec
    ports: Ports
    report: Reporter = _quiet
    journal: Journal | None = None
    steps: list[StepReport] = field(default_factory=list)
    heartbeat: Heartbeat | None = None  # refreshes the locks and registration TTLs while a verb works
    closed: bool = False  # the journal of ctx.journal was closed by this process
    lock_token: str | None = None  # the service lock this verb works under

    def check(self) -> None:
        """Before acting again: fail when a lock this verb works under was lost."""
        if self.heartbeat is not None:
            self.heartbeat.check()

    def emit(self, step: StepReport) -> None:
        self.steps.append(step)
        self.report(step)

    @property
    def service(self) -> str:
        return self.spec.name

    @property
    def rec(self) -> dict:
        assert self.journal is not None
        return self.journal.record


# ================================================================================================
# reading the world
# ================================================================================================
def live_record(store, service: str) -> dict | None:
    return store.get_json(keys.live(service))


def backends(store, override: Backend | None = None) -> list[Backend]:
    """What the proxy serves: every service's live color and its registered instances, with one
    service replaced by override (the color being switched to)."""
    out = {}
    for entry in store.list(keys.ROOT):
        if not entry.key.endswith("/live"):
            continue
        name = keys.service_of(entry.key)
        live = entry.json()
        spec = store.get_json(keys.spec(name)) or {}
        servers = tuple(sorted((i["address"], int(i["port"])) for i in store.registrations(name, live["color"])))
        if not servers:
            continue
        out[name] = Backend(name, live["color"], live.get("release", ""), Routes.from_dict(spec.get("routes", {})),
                            servers, spec.get("health_path", "/"))
    if override is not None:
        out[override.service] = override
    return [out[k] for k in sorted(out)]


def _backend_for(ctx: Ctx, instances: list[Instance]) -> Backend:
    return Backend(ctx.service, ctx.rec["color"], ctx.rec["id"], ctx.spec.routes,
                   tuple(sorted((i.address, i.port) for i in instances)), ctx.spec.health.path)


def _instances_from(data: list[dict]) -> list[Instance]:
    return [Instance.from_dict(d) for d in data]


# ================================================================================================
# steps and their undos
# ================================================================================================
def _start_request(ctx: Ctx) -> StartRequest:
    s = ctx.spec
    return StartRequest(
        service=s.name, color=ctx.rec["color"], release=ctx.rec["id"], image=ctx.rec["image"], port=s.port,
        replicas=s.replicas, env=s.env, bind=s.target.bind, address=s.target.reach_address, init=s.target.init,
        stop_timeout=s.target.stop_timeout, network=s.target.network, host_ports=s.target.host_ports,
    )


def do_set_aside(ctx: Ctx, data: dict) -> dict:
    names = ctx.ports.runtime.set_aside(ctx.service, ctx.rec["color"], ctx.rec["id"])
    return {"names": names}


def undo_set_aside(ctx: Ctx, data: dict) -> None:
    ctx.ports.runtime.restore_aside(ctx.service, ctx.rec["color"], ctx.rec["id"])


def do_start(ctx: Ctx, data: dict) -> dict:
    instances = ctx.ports.runtime.start(_start_request(ctx))
    return {"instances": [i.to_dict() for i in instances]}


def undo_start(ctx: Ctx, data: dict) -> None:
    ctx.ports.runtime.remove(ctx.service, ctx.rec["color"], release=ctx.rec["id"])


def do_resume(ctx: Ctx, data: dict) -> dict:
    instances = ctx.ports.runtime.resume(ctx.service, ctx.rec["color"], release=data["release"])
    if not instances:
        raise ReleaseFailed(f"no stopped instances of {ctx.service} {ctx.rec['color']} release "
                            f"{data['release']} to resume")
    return {"instances": [i.to_dict() for i in instances]}


def undo_resume(ctx: Ctx, data: dict) -> None:
    ctx.ports.runtime.stop(ctx.service, ctx.rec["color"], release=data["release"])


def do_health(ctx: Ctx, data: dict) -> dict:
    instances = _instances_from(_started(ctx))
    h = ctx.spec.health
    seconds = ctx.ports.runtime.wait_healthy(instances, h.path, h.timeout, h.interval)
    return {"seconds": round(seconds, 3)}


def _started(ctx: Ctx) -> list[dict]:
    for name in ("start", "resume"):
        step = ctx.journal.step(name) if ctx.journal else None
        if step is not None and step["state"] == jr.DONE:
            return step["data"]["instances"]
    raise UsageError(f"{ctx.service}: the open release has no started instances; run 'cdlib rollback'")


def _registration(ctx: Ctx, inst: dict) -> dict:
    return {"name": inst["name"], "address": inst["address"], "port": inst["port"], "release": inst["release"],
            "image": inst["image"], "health_url": Instance.from_dict(inst).url + ctx.spec.health.path}


def _prior_registrations(ctx: Ctx, color: str) -> dict:
    """name -> the exact stored record of every registration of the color (to restore byte for byte)."""
    store = ctx.ports.store
    return {r["name"]: _raw(store, keys.instance(ctx.service, color, r["name"]))
            for r in store.registrations(ctx.service, color)}


def _restore_registrations(ctx: Ctx, color: str, prior: dict) -> None:
    store = ctx.ports.store
    for reg in store.registrations(ctx.service, color):
        if reg["name"] not in prior:
            store.deregister(ctx.service, color, reg["name"])
    for name, raw in prior.items():
        if raw is not None:
            store.register(ctx.service, color, name, json.loads(raw))


def intent_register(ctx: Ctx) -> dict:
    """Record the prior state of everything this step may write, so its undo restores it exactly."""
    return {"prior": _prior_registrations(ctx, ctx.rec["color"]), "prior_spec": _raw(ctx.ports.store,
                                                                                    keys.spec(ctx.service))}


def do_register(ctx: Ctx, data: dict) -> dict:
    """Register the healthy new instances, with the release's TTL until the release closes: a
    deploy that dies and is never rolled back leaves no registration behind for longer."""
    store, s, color = ctx.ports.store, ctx.spec, ctx.rec["color"]
    for name in data["prior"]:
        store.deregister(ctx.service, color, name)  # stale registrations of this color
    store.put_json(keys.spec(ctx.service), {"routes": s.routes.to_dict(), "port": s.port,
                                            "health_path": s.health.path})
    ttl = ctx.rec.get("lock_ttl", DEFAULT_LOCK_TTL)
    for inst in _started(ctx):
        store.register(ctx.service, color, inst["name"], _registration(ctx, inst), ttl=ttl)
    _keep_registrations(ctx)
    return {}


REFRESH_REGISTRATIONS = "registrations"


def _keep_registrations(ctx: Ctx) -> None:
    """While the verb works, the heartbeat re-registers the release's instances with its TTL."""
    if ctx.heartbeat is None:
        return
    store, color, ttl = ctx.ports.store, ctx.rec["color"], ctx.rec.get("lock_ttl", DEFAULT_LOCK_TTL)
    regs = [(inst["name"], _registration(ctx, inst)) for inst in _started(ctx)]

    def refresh() -> None:
        for name, record in regs:
            store.register(ctx.service, color, name, record, ttl=ttl)
    ctx.heartbeat.add(REFRESH_REGISTRATIONS, refresh, ttl / 3)


def _stop_keeping_registrations(ctx: Ctx) -> None:
    """Before the registrations change for good (persist, undo): no refresh may write them again."""
    if ctx.heartbeat is not None:
        ctx.heartbeat.drop(REFRESH_REGISTRATIONS)


def undo_register(ctx: Ctx, data: dict) -> None:
    _restore_registrations(ctx, ctx.rec["color"], data.get("prior") or {})
    undo_restore_keys(ctx, {"prior": {keys.spec(ctx.service): data.get("prior_spec")}})


def do_persist(ctx: Ctx, data: dict) -> dict:
    """The release is done: the new color's registrations lose their TTL."""
    _stop_keeping_registrations(ctx)
    for inst in _started(ctx):
        ctx.ports.store.register(ctx.service, ctx.rec["color"], inst["name"], _registration(ctx, inst))
    return {}


def undo_restore_keys(ctx: Ctx, data: dict) -> None:
    store = ctx.ports.store
    for key, value in (data.get("prior") or {}).items():
        if value is None:
            store.delete(key)
        else:
            store.put(key, value)


def intent_proxy(ctx: Ctx) -> dict:
    """The exact prior configuration and the exact text this step will apply (rendered under the
    proxy lock): the undo restores the prior bytes when the proxy still holds what we applied."""
    proxy = ctx.ports.proxy
    prior = proxy.read_config()
    backend = _backend_for(ctx, _instances_from(_started(ctx)))
    text = proxy.render(backends(ctx.ports.store, override=backend))
    return {"prior": None if prior is None else base64.b64encode(prior).decode("ascii"), "text": text}


def do_proxy(ctx: Ctx, data: dict) -> dict:
    proxy = ctx.ports.proxy
    timings = proxy.apply(data["text"])
    backend = _backend_for(ctx, _instances_from(_started(ctx)))
    probe_seconds = probe(ctx.spec, proxy, backend)
    return {"timings": {k: round(v, 3) for k, v in (timings or {}).items()}, "probe": round(probe_seconds, 3)}


def undo_proxy(ctx: Ctx, data: dict) -> None:
    """Put the prior bytes back; but when another service's switch changed the proxy since ours,
    the prior bytes would undo that switch too: render from the registry instead (our live color
    has been restored by then, since undos run newest first)."""
    prior = None if data.get("prior") is None else base64.b64decode(data["prior"])
    proxy = ctx.ports.proxy
    current = proxy.read_config()
    ours = data.get("text", "").encode("utf-8")
    if current is None or current == prior or _digest(current) == _digest(ours):
        proxy.restore(prior)
    else:
        proxy.apply(proxy.render(backends(ctx.ports.store)))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def intent_live(ctx: Ctx) -> dict:
    return {"prior": _raw(ctx.ports.store, keys.live(ctx.service))}


def do_live(ctx: Ctx, data: dict) -> dict:
    store = ctx.ports.store
    current = store.get(keys.live(ctx.service))
    if (current.value if current else None) != ctx.rec["prior"]["live"]:
        raise ReleaseFailed(f"the live color of {ctx.service} changed during the release (now "
                            f"{current.json().get('color') if current else 'none'}); rolled back")
    started = _started(ctx)
    live = {"color": ctx.rec["color"], "release": started[0]["release"] if started else ctx.rec["id"],
            "image": ctx.rec["image"], "since": time.time(), "via": ctx.rec["id"]}
    store.put_json(keys.live(ctx.service), live, expect=current.version if current else 0)
    return {"live": live}


def undo_live(ctx: Ctx, data: dict) -> None:
    undo_restore_keys(ctx, {"prior": {keys.live(ctx.service): data.get("prior")}})


def intent_stop_old(ctx: Ctx) -> dict:
    prev = ctx.rec.get("previous")
    if not prev:
        return {"color": None}
    return {"color": prev["color"], "release": prev.get("release"),
            "prior": _prior_registrations(ctx, prev["color"])}


def do_stop_old(ctx: Ctx, data: dict) -> dict:
    if not data.get("color"):
        return {"stopped": []}
    for name in data["prior"]:
        ctx.ports.store.deregister(ctx.service, data["color"], name)
    stopped = ctx.ports.runtime.stop(ctx.service, data["color"], release=data.get("release"))
    return {"stopped": stopped}


def undo_stop_old(ctx: Ctx, data: dict) -> None:
    if not data.get("color"):
        return
    ctx.ports.runtime.resume(ctx.service, data["color"], release=data.get("release"))
    _restore_registrations(ctx, data["color"], data.get("prior") or {})


UNDO = {
    "set-aside": undo_set_aside,
    "start": undo_start,
    "resume": undo_resume,
    "register": undo_register,
    "proxy": undo_proxy,
    "live": undo_live,
    "stop-old": undo_stop_old,
}


def _names(key: str) -> Callable[[dict], str]:
    def describe(data: dict) -> str:
        items = data.get(key) or []
        return ", ".join(i["name"] + (f" ({i['address']}:{i['port']})" if "port" in i else "") if isinstance(i, dict)
                         else str(i) for i in items)
    return describe


DEPLOY_STEPS = [
    plan.Step("set-aside", do_set_aside, describe=_names("names")),
    plan.Step("start", do_start, describe=_names("instances")),
    plan.Step("health", do_health, describe=lambda d: f"healthy after {d.get('seconds', 0):.2f}s"),
    plan.Step("register", do_register, intent=intent_register),
]
REVERT_STEPS = [
    plan.Step("resume", do_resume, describe=_names("instances")),
    plan.Step("health", do_health, describe=lambda d: f"healthy after {d.get('seconds', 0):.2f}s"),
    plan.Step("register", do_register, intent=intent_register),
]
SWITCH_STEPS = [
    plan.Step("proxy", do_proxy, intent=intent_proxy,
              describe=lambda d: "validated, swapped, reloaded, drained; new color answered through the proxy "
                                 f"after {d.get('probe', 0):.2f}s"),
    plan.Step("live", do_live, intent=intent_live, describe=lambda d: f"live color is {d['live']['color']}"),
]
CLEANUP_STEPS = [
    plan.Step("persist", do_persist, describe=lambda d: "registrations kept without TTL"),
    plan.Step("stop-old", do_stop_old, intent=intent_stop_old,
              describe=lambda d: ("stopped " + ", ".join(d["stopped"])) if d.get("stopped") else "nothing to stop"),
]


def _raw(store, key: str) -> str | None:
    entry = store.get(key)
    return None if entry is None else entry.value


# ================================================================================================
# the probe through the proxy
# ================================================================================================
def probe(spec: ServiceSpec, proxy, backend: Backend) -> float:
    """Request the service through the proxy until the new color answers, consecutively, as many
    times as it has instances (at least 3). Proven by the upstream address the proxy reports back;
    with probe.expect, the body must contain that text too. Returns the seconds it took."""
    path = spec.probe.path or spec.health.path
    headers = {PROBE_HEADER: "1"}
    if backend.routes.paths:
        path = backend.routes.paths[0].rstrip("/") + path
    else:
        headers["Host"] = backend.routes.hosts[0].replace("*.", "probe.")
    expected = {f"{a}:{p}" for a, p in backend.servers}
    need = max(3, len(backend.servers))
    t0 = time.monotonic()
    streak, last = 0, "no answer"
    while True:
        ok, last = _probe_once(proxy, path, headers, expected, spec.probe.expect)
        streak = streak + 1 if ok else 0
        if streak >= need:
            return time.monotonic() - t0
        if time.monotonic() - t0 > spec.probe.timeout:
            raise ProxyError(f"probe through the proxy failed for {spec.name} after {spec.probe.timeout:g}s: "
                             f"{proxy.url()}{path} {last}; the previous configuration was restored", path=path)
        if not ok:
            time.sleep(0.1)


def _probe_once(proxy, path: str, headers: dict, expected: set[str], expect: str | None) -> tuple[bool, str]:
    status, resp_headers, body = proxy.request(path, headers)
    if status == 0:
        return False, "did not answer"
    upstream = next((v for k, v in resp_headers.items() if k.lower() == UPSTREAM_HEADER.lower()), "")
    served_by = upstream.split(",")[-1].strip().split(" ")[-1] if upstream else ""
    served_by = served_by.replace("[", "").replace("]", "")  # nginx brackets IPv6 ([::1]:80), HAProxy does not
    if not 200 <= status < 400:
        return False, f"answered {status}" + (f" from {served_by}" if served_by else "")
    if served_by not in expected:
        return False, f"answered {status} from {served_by or 'an unknown upstream'}, not the new color"
    if expect and expect.encode() not in body:
        return False, f"answered {status} without {expect!r} in the body"
    return True, f"answered {status} from {served_by}"


# ================================================================================================
# lock and journal helpers
# ================================================================================================
def _check_lock_times(lock_wait: float, lock_ttl: float) -> None:
    """The lock is refreshed every ttl/3 while its holder works: a TTL below MIN_LOCK_TTL (or NaN)
    would let another process take the release over while it runs, and the registrations vanish.
    Refused before anything changes."""
    if isinstance(lock_ttl, bool) or not isinstance(lock_ttl, (int, float)) or not math.isfinite(lock_ttl) \
            or lock_ttl < MIN_LOCK_TTL:
        raise ConfigError(f"--lock-ttl: expected a number of seconds from {MIN_LOCK_TTL:g}, got {lock_ttl!r}",
                          key="--lock-ttl")
    if not isinstance(lock_wait, (int, float)) or not math.isfinite(lock_wait) or lock_wait < 0:
        raise ConfigError(f"--lock-wait: expected a number of seconds from 0, got {lock_wait!r}", key="--lock-wait")


def _route_keys(routes: Routes) -> dict[str, str]:
    """Normalized route -> as written: '/shop' and '/shop/' are one prefix to the proxy."""
    out = {f"path {p.rstrip('/') + '/'}": p for p in routes.paths}
    out.update({f"host {h}": h for h in routes.hosts})
    return out


def _check_routes(ctx: Ctx) -> None:
    """A path or host that another service already routes would only fail at the switch, after the
    new color was started and tested (the proxy refuses to render it): refuse it before anything
    changes. Other services' routes are their spec keys, written when they registered."""
    own = _route_keys(ctx.spec.routes)
    for entry in ctx.ports.store.list(keys.ROOT):
        other = keys.service_of(entry.key)
        if other == ctx.service or entry.key != keys.spec(other or ""):
            continue
        taken = sorted(own[k] for k in own.keys() & _route_keys(Routes.from_dict(entry.json().get("routes", {}))))
        if taken:
            raise ConfigError(f"{ctx.spec.source or 'cdlib.yml'}: routes: {', '.join(taken)} is already routed to "
                              f"service {other}; give {ctx.service} a path or host of its own", key="routes")


def _preflight(ctx: Ctx) -> None:
    """The proxy's own checks (binary, template, listen address) before the lock is taken: a release
    that could never switch fails as bad input, with nothing changed."""
    check = getattr(ctx.ports.proxy, "preflight", None)
    if callable(check):
        check()


def _holder(ctx: Ctx, **extra) -> dict:
    return default_holder(service=ctx.service, **extra)


def _beat(ctx: Ctx) -> Heartbeat:
    if ctx.heartbeat is None:  # a helper called outside a verb (tests): refresh nothing in the background
        ctx.heartbeat = Heartbeat()
    return ctx.heartbeat


def _why_free(taken_over: dict | None) -> str:
    if taken_over is None:
        return "its lock was free"
    if taken_over.get("state") == GONE:
        return f"its process {taken_over.get('pid')} on {taken_over.get('host') or taken_over.get('who')} is gone"
    return "its lock expired"


def _open(ctx: Ctx, image: str, lock_wait: float, lock_ttl: float, revert_of: str | None = None) -> None:
    store, s = ctx.ports.store, ctx.spec
    _check_lock_times(lock_wait, lock_ttl)
    _check_routes(ctx)
    _preflight(ctx)
    ctx.ports.runtime.ping()  # an unreachable engine fails the release before anything is changed
    release_id = jr.new_release_id()
    holder = _holder(ctx, release=release_id, image=image)
    lock = store.acquire_lock(keys.lock(s.name), holder, lock_ttl, wait=lock_wait)
    ctx.lock_token = lock.token
    _beat(ctx).hold_lock(store, keys.lock(s.name), lock.token, lock_ttl)
    try:
        abandoned = Journal.load(store, s.name)
        if lock.taken_over is not None and abandoned is None:
            ctx.emit(StepReport("take-over", "done", 0.0, f"took the lock of {s.name} over: "
                                f"release {lock.taken_over.get('release') or '?'} left it ({_why_free(lock.taken_over)})"))
        if abandoned is not None:
            # the lock was free, expired or left by a dead process, yet a release is open: undo it first
            why = _why_free(lock.taken_over)
            ctx.emit(StepReport("take-over", "done", 0.0,
                                f"release {abandoned.id} was abandoned ({why}); rolling it back first"))
            ctx.journal = abandoned  # its lock token is stale: releasing it is a no-op
            out = _rollback_open(ctx, f"taken over: {why}")
            if out.exit_code == EXIT_UNDO_INCOMPLETE:
                raise UndoIncomplete(f"the abandoned release {abandoned.id} of {s.name} could not be fully rolled "
                                     "back; fix the cause and run 'cdlib rollback'")
            ctx.journal, ctx.closed = None, False
        _finish_leftovers(ctx)
        live = store.get(keys.live(s.name))
        prev = live.json() if live else None
        color = other_color(prev["color"] if prev else None)
        ctx.journal = Journal.create(store, s.name, {
            "id": release_id, "service": s.name, "image": image, "color": color,
            "previous": prev, "holder": holder, "lock_token": lock.token, "lock_ttl": lock_ttl,
            "revert_of": revert_of, "prior": {"live": live.value if live else None},
        })
    except (Exception, plan.Interrupted, KeyboardInterrupt):
        ctx.heartbeat.drop_lock(keys.lock(s.name), lock.token)
        store.release_lock(keys.lock(s.name), lock.token)
        ctx.lock_token = None
        raise
    ctx.emit(StepReport("open", "done", 0.0, f"release {release_id}: {image} as {color}"
                        + (f" beside {prev['color']} ({prev.get('image', '?')})" if prev else " (first release)")))


def _adopt(ctx: Ctx, j: Journal) -> None:
    """This process now works under the release's lock: its pid in the holder record (so a kill is
    recognised), refreshed by the heartbeat. Raises LockHeld when the lock was lost, or when another
    live process on this host works under it right now (two processes never drive one release)."""
    store, key = ctx.ports.store, keys.lock(ctx.service)
    info = store.lock_info(key) or {}
    if info.get("state") == ALIVE and info.get("pid") != os.getpid():
        raise LockHeld(f"release {j.id} of {ctx.service} is being driven by process {info.get('pid')} "
                       f"({info.get('build') or info.get('who')}); wait for it to finish", holder=info)
    ttl = j.record.get("lock_ttl", DEFAULT_LOCK_TTL)
    me = _holder(ctx)
    store.refresh_lock(key, j.record["lock_token"], ttl, parked=None,
                       **{k: me[k] for k in ("who", "host", "pid", "proc", "build", "build_url")})
    ctx.lock_token = j.record["lock_token"]
    _beat(ctx).hold_lock(store, key, ctx.lock_token, ttl)


def _require_open(ctx: Ctx, phases: tuple[str, ...], verb: str) -> Journal:
    j = Journal.load(ctx.ports.store, ctx.service)
    if j is None:
        raise UsageError(f"{ctx.service} has no open release; run 'cdlib deploy' first")
    if j.phase not in phases:
        raise UsageError(f"{verb}: release {j.id} of {ctx.service} is {j.phase}; {verb} needs it to be "
                         + " or ".join(phases))
    _adopt(ctx, j)
    ctx.journal = j
    ttl = j.record.get("lock_ttl", DEFAULT_LOCK_TTL)
    if j.phase in (jr.DEPLOYED, jr.SWITCHED) and j.done("register"):
        for inst in _started(ctx):  # the release goes on: so do its registrations
            ctx.ports.store.register(ctx.service, j.record["color"], inst["name"], _registration(ctx, inst),
                                     ttl=ttl)
        _keep_registrations(ctx)
    return j


@contextmanager
def _working(ctx: Ctx) -> Iterator[None]:
    """Run a verb with a heartbeat (refreshing its locks and registration TTLs); stop it when the verb
    ends. A release the verb leaves open (a stage done, an undo incomplete) has its lock parked: no
    process works under it until the next stage adopts it, so it is taken over only once it expires.
    A process killed mid-verb leaves its own pid in the record: a dead holder, taken over at once
    (in tests, an exception that nothing in cdlib catches stands for the kill: nothing is parked)."""
    if ctx.heartbeat is not None and ctx.heartbeat.running:  # a stage of 'release': the release owns it
        yield
        return
    ctx.heartbeat = Heartbeat(name=f"cdlib-heartbeat-{ctx.service}").start()
    ended = False
    try:
        yield
        ended = True
    except (Exception, plan.Interrupted, KeyboardInterrupt, SystemExit):
        ended = True
        raise
    finally:
        hb, ctx.heartbeat = ctx.heartbeat, None
        hb.stop()
        token, ctx.lock_token = ctx.lock_token, None
        if token:
            if ended and ctx.journal is not None and not ctx.closed:
                _park(ctx, token)
            forget_lock(token)


def _park(ctx: Ctx, token: str) -> None:
    store, key = ctx.ports.store, keys.lock(ctx.service)
    try:
        info = store.lock_info(key) or {}
        if info.get("pid") == os.getpid() and not info.get("parked"):
            store.refresh_lock(key, token, ctx.rec.get("lock_ttl", DEFAULT_LOCK_TTL), parked=True)
    except CdlibError:
        pass  # lost, or the store is away: the record names this process, which is about to end


def _run_steps(ctx: Ctx, steps: list[plan.Step]) -> None:
    """plan.run, with a check before every step that the verb still holds its locks."""
    plan.run(ctx, ctx.journal, [_checked(s) for s in steps], ctx.emit)


def _checked(step: plan.Step) -> plan.Step:
    def intent(c: Ctx, original=step.intent) -> dict:
        c.check()
        return original(c) if original else {}
    return plan.Step(step.name, step.do, intent=intent, describe=step.describe)


def _rollback_open(ctx: Ctx, reason: str) -> Outcome:
    """Undo the open release in ctx.journal; close it; release every lock it held; return the
    outcome (exit 1, or 4)."""
    j = ctx.journal
    _stop_keeping_registrations(ctx)
    _claim(j)
    try:
        failed = _undo_all(ctx, j)
    except plan.Interrupted:  # a second SIGTERM while undoing: what is left stays on record
        failed = ["the rest (interrupted)"]
    if failed:
        _save_phase(j, jr.STUCK)
        msg = (f"release {j.id} of {ctx.service} failed ({reason}) and the undo of {', '.join(failed)} failed "
               "too: a person is needed; fix the cause and run 'cdlib rollback' again")
        return _outcome(ctx, "rollback", False, EXIT_UNDO_INCOMPLETE, msg)
    try:
        j.close("rolled-back", reason)
    except StoreError as exc:  # undone, but still on record: exit 4, and 'rollback' closes it
        return _outcome(ctx, "rollback", False, EXIT_UNDO_INCOMPLETE,
                        f"release {j.id} of {ctx.service} failed ({reason}) and was undone, but its record could "
                        f"not be closed ({exc}); run 'cdlib rollback' again")
    ctx.closed = True
    _release_locks(ctx, j)
    prev = j.record.get("previous")
    where = f"{prev['color']} ({prev.get('image')}) is live" if prev else "nothing is live"
    return _outcome(ctx, "rollback", False, 1, f"release {j.id} of {ctx.service} failed: {reason}; rolled back, "
                    f"{where} as before")


def _release_locks(ctx: Ctx, j: Journal) -> None:
    """Every lock the closed release held: the service lock (its token is in the record) and the
    store-wide proxy lock when its holder record names this release and that process does not work
    any more (killed between taking the proxy lock and writing the proxy step's intent)."""
    store = ctx.ports.store
    if ctx.heartbeat is not None:
        ctx.heartbeat.drop_lock(keys.lock(ctx.service), j.record["lock_token"])
    try:
        store.release_lock(keys.lock(ctx.service), j.record["lock_token"])
        store.break_lock(keys.PROXY_LOCK, lambda holder: holder.get("release") == j.id, unexpired=True)
    except StoreError:
        pass  # a lock left behind here names a closed release: the next taker finds its holder gone or expired


def _undo_all(ctx: Ctx, j: Journal) -> list[str]:
    """Undo the journal; under the proxy lock when the proxy step is among the undos (the store may
    be away: then the undos run without it, as well as they can). When another proxy change holds
    the lock past the wait, nothing is undone (removing the new color while the proxy may still
    route to it would drop requests): the record stays open for the next 'rollback'."""
    touches_proxy = any(s["name"] in ("proxy", "live") and s["state"] in jr.NEEDS_UNDO for s in j.steps)
    if not touches_proxy:
        return plan.undo(ctx, j, UNDO, ctx.emit)
    try:
        with proxy_lock(ctx.ports.store, j.id, f"rollback {ctx.service}", heartbeat=ctx.heartbeat,
                        service=ctx.service):
            return plan.undo(ctx, j, UNDO, ctx.emit)
    except ProxyBusy as exc:
        ctx.emit(StepReport("undo", "undo-failed", 0.0, str(exc)))
        return ["every step (the proxy lock is held by another proxy change)"]
    except StoreError:
        return plan.undo(ctx, j, UNDO, ctx.emit)


def _claim(j: Journal) -> None:
    """Mark the record as rolling back, compare-and-set: a process whose copy is stale (another
    one drives or already undoes the release) stops here with JournalConflict instead of undoing
    from that copy. A store that is away does not stop the undos of the runtime side."""
    j.phase = jr.ROLLING_BACK
    try:
        j.save()
    except StoreError:
        pass


def _save_phase(j: Journal, phase: str) -> None:
    """Best effort: while rolling back, the store may be the thing that is away."""
    j.phase = phase
    try:
        j.save()
    except CdlibError:
        pass


class ProxyBusy(LockHeld):
    """Another proxy change held the proxy lock for longer than the wait."""


@contextmanager
def proxy_lock(store, release: str | None = None, purpose: str = "", wait: float | None = None,
               heartbeat: Heartbeat | None = None, service: str | None = None) -> Iterator[None]:
    """Hold the store-wide proxy lock: one proxy change (render, apply, live write) at a time across
    services and machines, refreshed by the heartbeat while held. A lock whose holder is gone (a
    process killed mid-switch) is taken over at once; a live holder's is waited for, even of the same
    release (a second process racing). Raises ProxyBusy when the wait runs out."""
    holder = default_holder(release=release, purpose=purpose, service=service)
    try:
        lock = store.acquire_lock(keys.PROXY_LOCK, holder, PROXY_LOCK_TTL,
                                  wait=PROXY_LOCK_WAIT if wait is None else wait)
    except LockHeld as busy:
        raise ProxyBusy(f"the proxy is busy: {busy}", **busy.data) from None
    own = heartbeat is None or not heartbeat.running
    beat = Heartbeat(name="cdlib-heartbeat-proxy").start() if own else heartbeat
    beat.hold_lock(store, keys.PROXY_LOCK, lock.token, PROXY_LOCK_TTL)
    try:
        yield
    except (Exception, plan.Interrupted, KeyboardInterrupt, SystemExit):
        _let_go_of_proxy(store, beat, own, lock.token, release=True)
        raise
    except BaseException:  # killed: the record stays, naming a process that no longer works under it
        _let_go_of_proxy(store, beat, own, lock.token, release=False)
        raise
    _let_go_of_proxy(store, beat, own, lock.token, release=True)


def _let_go_of_proxy(store, beat: Heartbeat, own: bool, token: str, release: bool) -> None:
    beat.drop_lock(keys.PROXY_LOCK, token)
    if own:
        beat.stop()
    if not release:
        forget_lock(token)
        return
    try:
        store.release_lock(keys.PROXY_LOCK, token)
    except StoreError:
        forget_lock(token)  # it expires by itself, and reads as a dead holder's at once


def _finish_leftovers(ctx: Ctx) -> list[str]:
    """What a killed close or a killed suite left behind, finished by 'rollback' and by the next
    release's open: set-aside instances of releases that closed as released (their close was
    interrupted after the record was closed), and test containers of the service whose process is
    gone. Best effort: a failure here is reported, never fatal."""
    done: list[str] = []
    store, runtime = ctx.ports.store, ctx.ports.runtime
    open_id = ctx.journal.id if ctx.journal is not None and not ctx.closed else None
    t0 = time.monotonic()
    try:
        released = {h.get("id") for h in jr.history(store, ctx.service) if h.get("outcome") == "released"}
        aside: dict[tuple[str, str], list[str]] = {}
        for inst in runtime.instances(ctx.service, include_aside=True):
            if ASIDE not in inst.name:
                continue
            owner = inst.name.rsplit(ASIDE, 1)[1]
            if owner in released and owner != open_id:
                aside.setdefault((inst.color, owner), []).append(inst.name)
        for color_, owner in sorted(aside):
            done += runtime.remove(ctx.service, color_, release=owner, aside=True)
    except CdlibError as exc:
        ctx.emit(StepReport("leftovers", "done", time.monotonic() - t0, f"warning: set-aside instances kept: {exc}"))
    seen = set()
    for suite in ctx.spec.tests.values():
        try:
            runner = ctx.ports.runner(suite)
        except CdlibError:
            continue
        remove = getattr(runner, "remove_leftovers", None)
        if remove is None or id(runner) in seen:
            continue
        seen.add(id(runner))
        try:
            done += remove(ctx.service, _owner_gone)
        except CdlibError as exc:
            ctx.emit(StepReport("leftovers", "done", time.monotonic() - t0, f"warning: test containers kept: {exc}"))
    if done:
        ctx.emit(StepReport("leftovers", "done", time.monotonic() - t0, "removed " + ", ".join(done)))
    return done


def _owner_gone(owner: dict) -> bool:
    """owner: host, pid (and proc) of the process that started a test container."""
    return holder_state({k: owner.get(k) for k in ("host", "pid", "proc")}) == GONE


def _close_success(ctx: Ctx) -> None:
    j = ctx.journal
    runtime = ctx.ports.runtime
    _stop_keeping_registrations(ctx)
    j.close("released")
    ctx.closed = True
    if ctx.heartbeat is not None:
        ctx.heartbeat.drop_lock(keys.lock(ctx.service), j.record["lock_token"])
    ctx.ports.store.release_lock(keys.lock(ctx.service), j.record["lock_token"])
    t0 = time.monotonic()
    try:
        removed = runtime.remove(ctx.service, j.record["color"], aside=True)
    except CdlibError as exc:  # leftovers only cost disk; the release is done
        ctx.emit(StepReport("close", "done", time.monotonic() - t0, f"warning: set-aside instances kept: {exc}"))
        return
    ctx.emit(StepReport("close", "done", time.monotonic() - t0,
                        "release closed" + (f"; removed {', '.join(removed)}" if removed else "")))


def _outcome(ctx: Ctx, verb: str, ok: bool, code: int, message: str, **data) -> Outcome:
    rec = ctx.journal.record if ctx.journal else {}
    base = {"release": rec.get("id"), "color": rec.get("color"), "image": rec.get("image"),
            "previous_color": (rec.get("previous") or {}).get("color")} if rec else {}
    base.update(data)
    return Outcome(verb, ctx.service, ok, code, message, list(ctx.steps), base)


def _guard(ctx: Ctx, verb: str, body: Callable[[], Outcome], rollback_on_failure: bool = True,
           busy_proxy_fails: bool = False) -> Outcome:
    """Run body; on a failure inside an open release, roll the release back (exit 1, or 4). Bad input
    found after the release opened is such a failure too: only an error before the first change
    keeps exit 2. A busy proxy leaves a stage-by-stage release open for a later 'switch' (exit 3),
    unless busy_proxy_fails (a verb that runs the whole release in one process must finish it or roll
    it back)."""
    try:
        return body()
    except ProxyBusy:
        if not busy_proxy_fails or ctx.journal is None or ctx.closed:
            raise
        return _roll_back(ctx, verb, "the proxy lock stayed held by another proxy change; the release could not "
                                     "switch")
    except (LockHeld, NothingToRollBack, UndoIncomplete):
        raise
    except (Exception, plan.Interrupted) as exc:
        if ctx.journal is None or ctx.closed or not rollback_on_failure or ctx.journal.phase == jr.CLEANING:
            raise
        return _roll_back(ctx, verb, plan._reason(exc))


def _roll_back(ctx: Ctx, verb: str, reason: str) -> Outcome:
    outcome = _rollback_open(ctx, reason)
    outcome.verb = verb
    return outcome


# ================================================================================================
# the verbs
# ================================================================================================
def deploy(ctx: Ctx, *, lock_wait: float = 0.0, lock_ttl: float = DEFAULT_LOCK_TTL) -> Outcome:
    """Open a release; start the next color beside the live one; wait until healthy; register it."""
    def body() -> Outcome:
        _open(ctx, ctx.spec.image.ref, lock_wait, lock_ttl)
        _run_steps(ctx, DEPLOY_STEPS)
        ctx.journal.phase = jr.DEPLOYED
        ctx.journal.save()
        return _outcome(ctx, "deploy", True, 0, f"{ctx.service} {ctx.rec['color']} is up and healthy beside the "
                        "live color; next: 'cdlib test pre-integration', then 'cdlib switch'",
                        instances=_started(ctx))
    with _working(ctx):
        return _guard(ctx, "deploy", body)


def switch(ctx: Ctx, *, busy_proxy_fails: bool = False) -> Outcome:
    """Point the proxy at the new color, prove it answers through the proxy, then store it as live.
    A busy proxy lock leaves the release deployed (exit 3) unless busy_proxy_fails (release)."""
    def body() -> Outcome:
        j = _require_open(ctx, (jr.DEPLOYED,), "switch")
        with proxy_lock(ctx.ports.store, j.id, f"switch {ctx.service}", heartbeat=ctx.heartbeat,
                        service=ctx.service):
            j.phase = jr.SWITCHING
            j.save()
            _run_steps(ctx, SWITCH_STEPS)
        j.phase = jr.SWITCHED
        j.save()
        return _outcome(ctx, "switch", True, 0, f"{ctx.service} now serves {j.record['color']} through "
                        f"{ctx.ports.proxy.url()}; next: 'cdlib test post-integration', then 'cdlib cleanup'")
    with _working(ctx):
        return _guard(ctx, "switch", body, busy_proxy_fails=busy_proxy_fails)


def cleanup(ctx: Ctx) -> Outcome:
    """Stop and de-register the old color (kept stopped for a quick rollback); close the release."""
    with _working(ctx):
        return _cleanup(ctx)


def _cleanup(ctx: Ctx) -> Outcome:
    j = _require_open(ctx, (jr.SWITCHED, jr.CLEANING), "cleanup")
    j.phase = jr.CLEANING
    j.save()
    try:
        _run_steps(ctx, CLEANUP_STEPS)
        ctx.check()
    except (Exception, plan.Interrupted) as exc:
        return _outcome(ctx, "cleanup", False, EXIT_UNDO_INCOMPLETE,
                        f"cleanup of {ctx.service} failed: {plan._reason(exc)}; {j.record['color']} is live and "
                        "the release stays open: fix the cause and run 'cdlib cleanup' again")
    try:
        _close_success(ctx)
    except StoreError as exc:
        return _outcome(ctx, "cleanup", False, EXIT_UNDO_INCOMPLETE,
                        f"cleanup of {ctx.service} could not close release {j.id} ({exc}); {j.record['color']} is "
                        "live and the release stays open: run 'cdlib cleanup' again")
    return _outcome(ctx, "cleanup", True, 0, f"{ctx.service} release {j.id} is done: {j.record['color']} is live")


def run_tests(ctx: Ctx, test_type: str, *, target_url: str | None = None, junit: Path | None = None,
              rollback_on_failure: bool = True) -> Outcome:
    """Run one suite. Inside an open release, a failure (unless the suite is marked unstable) rolls
    the release back. The release's locks are refreshed while the suite runs, however long it takes."""
    if test_type not in ("pre-deployment", "pre-integration", "post-integration"):
        raise ConfigError(f"test: TYPE must be pre-deployment, pre-integration or post-integration, "
                          f"got {test_type!r}", key="TYPE")
    with _working(ctx):
        return _run_tests(ctx, test_type, target_url, junit, rollback_on_failure)


def _run_tests(ctx: Ctx, test_type: str, target_url: str | None, junit: Path | None,
               rollback_on_failure: bool) -> Outcome:
    spec = ctx.spec
    suite = spec.tests.get(test_type)
    if test_type != "pre-deployment":
        phases = (jr.DEPLOYED,) if test_type == "pre-integration" else (jr.SWITCHED,)
        _require_open(ctx, phases, f"test {test_type}")
    if suite is None:
        ctx.emit(StepReport(f"test {test_type}", "skipped", 0.0, f"no {test_type} suite in the descriptor"))
        return _outcome(ctx, "test", True, 0, f"no {test_type} suite for {spec.name}", tests=[])

    def body() -> Outcome:
        env, url = _test_target(ctx, test_type)
        env.update({n: os.environ[n] for n in suite.pass_env if n in os.environ})
        url = target_url or url
        image = f"{suite.image.repository}:{spec.image.tag}" if suite.image else None
        path = junit or _junit_path(ctx, test_type)
        t0 = time.monotonic()
        result = ctx.ports.runner(suite).run(TestRun(spec.name, suite, url, tuple(env.items()), path, image))
        status = "done" if result.passed else "failed"
        ctx.emit(StepReport(f"test {test_type}", status, time.monotonic() - t0,
                            f"exit {result.exit_code} against {url or '(no target)'}"))
        if ctx.journal is not None:
            ctx.check()  # the suite may have run for hours: the release must still be ours
            ctx.journal.add_test(result.to_dict())
        if result.passed or suite.unstable:
            msg = f"{test_type} tests of {spec.name} " + ("passed" if result.passed else
                                                          "failed; marked unstable, the release goes on")
            return _outcome(ctx, "test", True, 0, msg, tests=[result.to_dict()])
        error = TestsFailed(f"{test_type} tests failed (exit {result.exit_code})", result=result.to_dict())
        if ctx.journal is None or not rollback_on_failure:
            return _outcome(ctx, "test", False, 1, f"{spec.name}: {error}", tests=[result.to_dict()])
        raise error

    outcome = _guard(ctx, "test", body, rollback_on_failure)
    if not outcome.ok and "tests" not in outcome.data and ctx.journal is not None:
        outcome.data["tests"] = ctx.journal.record.get("tests", [])[-1:]
    return outcome


def _test_target(ctx: Ctx, test_type: str) -> tuple[dict, str]:
    if test_type == "pre-deployment":
        return {}, ""
    if test_type == "pre-integration":
        urls = [Instance.from_dict(i).url for i in _started(ctx)]
        return {"TARGET_URLS": " ".join(urls), "CDLIB_COLOR": ctx.rec["color"], "CDLIB_RELEASE": ctx.rec["id"]}, urls[0]
    routes = ctx.spec.routes
    base = ctx.ports.proxy.url()
    env = {"CDLIB_COLOR": ctx.rec["color"], "CDLIB_RELEASE": ctx.rec["id"], "PROXY_URL": base}
    if routes.paths:
        return env, base + routes.paths[0]
    env["TARGET_HOST"] = routes.hosts[0]
    return env, base + "/"


def _junit_path(ctx: Ctx, test_type: str) -> Path | None:
    d = ctx.ports.junit_dir
    return None if d is None else Path(d) / f"cdlib-{ctx.service}-{test_type}.xml"


def rollback(ctx: Ctx, *, to: str | None = None, previous: bool = False, lock_wait: float = 0.0,
             lock_ttl: float = DEFAULT_LOCK_TTL) -> Outcome:
    """With an open release: undo it from its journal. Without one, no release changes: only what a
    killed close or a killed suite left behind is finished (set-aside instances of closed releases,
    test containers whose process is gone, a lock whose holder is gone). Returning to an earlier
    release takes ``previous`` (the release before the live one) or ``to`` (a release from history):
    resume its stopped color when it is still there, else deploy its image again; then switch and clean
    up, without test suites."""
    _check_lock_times(lock_wait, lock_ttl)
    if to is not None and previous:
        raise ConfigError("rollback: --to and --previous name two targets; give one of them", key="--to")
    store = ctx.ports.store
    j = Journal.load(store, ctx.service)
    if j is None:
        if to is not None or previous:
            return _revert(ctx, to, lock_wait, lock_ttl)
        return _nothing_open(ctx)
    if to is not None or previous:
        raise UsageError(f"{ctx.service} has an open release {j.id}; run 'cdlib rollback' without "
                         f"{'--to' if to is not None else '--previous'} first")
    holder = store.lock_info(keys.lock(ctx.service)) or {}
    if holder.get("state") == ALIVE:
        raise LockHeld(f"release {j.id} of {ctx.service} is still running in process {holder['pid']} "
                       f"({holder.get('build') or holder.get('who')}); wait for it to finish or fail (it rolls "
                       "itself back), or stop it and run 'cdlib rollback'", holder=holder)
    with _working(ctx):
        try:
            _adopt(ctx, j)
        except LockHeld:
            pass  # the lock went (expired, taken, removed): the journal's compare-and-set still guards the undo
        ctx.journal = j
        out = _rollback_open(ctx, "rollback requested")
        if out.exit_code == 1:
            out.ok, out.exit_code = True, 0
            out.message = out.message.replace("failed: rollback requested; rolled back", "rolled back")
            _finish_leftovers(ctx)
            out.steps = list(ctx.steps)
        return out


def _nothing_open(ctx: Ctx) -> Outcome:
    """rollback without an open release: no release changes; leftovers of a killed release are
    finished (its lock when its holder is gone, set-aside instances of closed releases, test
    containers of dead processes)."""
    store, done = ctx.ports.store, []
    t0 = time.monotonic()
    for key, accept in ((keys.lock(ctx.service), lambda h: True),
                        (keys.PROXY_LOCK, lambda h: h.get("service") == ctx.service)):
        removed = store.break_lock(key, accept)
        if removed is not None:
            what = "the proxy lock" if key == keys.PROXY_LOCK else "the lock"
            done.append(f"{what} of release {removed.get('release') or '?'} ({_why_free(removed)})")
            ctx.emit(StepReport("leftovers", "done", time.monotonic() - t0, f"removed {done[-1]}"))
    done += _finish_leftovers(ctx)
    msg = f"{ctx.service} has no open release: nothing to roll back"
    if done:
        msg += f"; finished what an interrupted release left: {', '.join(done)}"
    msg += "; to return to the previous release, run 'cdlib rollback --previous'"
    return Outcome("rollback", ctx.service, True, 0, msg, list(ctx.steps), {"release": None, "leftovers": done})


def _revert(ctx: Ctx, to: str | None, lock_wait: float, lock_ttl: float) -> Outcome:
    store = ctx.ports.store
    live = live_record(store, ctx.service)
    past = [h for h in jr.history(store, ctx.service) if h.get("outcome") == "released"]
    if to is not None:
        target = next((h for h in past if h["id"] == to), None)
        if target is None:
            raise NothingToRollBack(f"rollback --to: no successful release {to!r} of {ctx.service} in history; "
                                    "see 'cdlib history'")
    else:
        current = live.get("via") if live else None
        older = [h for h in past if h["id"] != current and h.get("image") != (live or {}).get("image")]
        if not live or not older:
            raise NothingToRollBack(f"{ctx.service} has no open release and no earlier release to return to")
        target = older[0]

    def body() -> Outcome:
        _open(ctx, target["image"], lock_wait, lock_ttl, revert_of=target["id"])
        color = ctx.rec["color"]
        stopped = [i for i in ctx.ports.runtime.instances(ctx.service, color)
                   if not i.running and i.image == target["image"]]
        steps = DEPLOY_STEPS
        if stopped and len({i.release for i in stopped}) == 1:
            release = stopped[0].release
            steps = [plan.Step(s.name, s.do, intent=(lambda c, r=release: {"release": r}) if s.name == "resume"
                               else s.intent, describe=s.describe) for s in REVERT_STEPS]
        _run_steps(ctx, steps)
        ctx.journal.phase = jr.DEPLOYED
        with proxy_lock(ctx.ports.store, ctx.journal.id, f"switch {ctx.service}", heartbeat=ctx.heartbeat,
                        service=ctx.service):
            _run_steps(ctx, SWITCH_STEPS)
        ctx.journal.phase = jr.SWITCHED
        ctx.journal.save()
        out = _cleanup(ctx)
        out.verb = "rollback"
        if out.ok:
            out.message = f"{ctx.service} is back on {target['image']} (release {target['id']}) as {color}"
        return out
    with _working(ctx):
        return _guard(ctx, "rollback", body, busy_proxy_fails=True)


def release(ctx: Ctx, *, lock_wait: float = 0.0, lock_ttl: float = DEFAULT_LOCK_TTL) -> Outcome:
    """deploy -> pre-integration tests -> switch -> post-integration tests -> cleanup, in one process
    and under one heartbeat; any failure rolls everything back."""
    with _working(ctx):
        tests = []
        for verb in (lambda: deploy(ctx, lock_wait=lock_wait, lock_ttl=lock_ttl),
                     lambda: run_tests(ctx, "pre-integration"),
                     lambda: switch(ctx, busy_proxy_fails=True),
                     lambda: run_tests(ctx, "post-integration"),
                     lambda: cleanup(ctx)):
            out = verb()
            tests += out.data.get("tests", [])
            if not out.ok:
                out.verb = "release"
                out.data["tests"] = tests
                return out
        out.verb = "release"
        out.message = (f"released {ctx.spec.image.ref} as {ctx.rec['color']}: {ctx.service} answers through "
                       f"{ctx.ports.proxy.url()}" + (ctx.spec.routes.paths[0] if ctx.spec.routes.paths else ""))
        out.data["tests"] = tests
        return out


def status(ctx: Ctx, *, check_health: bool = True) -> Outcome:
    store, s = ctx.ports.store, ctx.spec
    live = live_record(store, s.name)
    j = Journal.load(store, s.name)
    lock = store.lock_info(keys.lock(s.name))
    regs = store.registrations(s.name)
    data = {"live": live, "next_color": other_color(live["color"] if live else None),
            "open_release": None, "lock": lock, "registered": regs}
    if j is not None:
        data["open_release"] = {"id": j.id, "phase": j.phase, "color": j.record["color"],
                                "image": j.record["image"],
                                "steps": [{"name": st["name"], "state": st["state"]} for st in j.steps]}
    instances = ctx.ports.runtime.instances(s.name, include_aside=True)
    reg_names = {(r["color"], r["name"]) for r in regs}
    registry_view = store.registry_health(s.name)  # the registry's own checks (Consul), else None
    data["registry_health"] = registry_view
    rows = []
    for inst in instances:
        healthy = ctx.ports.runtime.check_health(inst, s.health.path) if check_health and inst.running else None
        rows.append(dict(inst.to_dict(), healthy=healthy, registered=(inst.color, inst.name) in reg_names,
                         registry=(registry_view or {}).get(inst.name)))
    running = {(i.color, i.name) for i in instances if i.running}
    data["instances"] = rows
    data["drift"] = {
        "registered_not_running": sorted(f"{c}/{n}" for c, n in reg_names - running),
        "running_not_registered": sorted(f"{c}/{n}" for c, n in running - reg_names
                                         if live and c == live["color"]),
    }
    msg = (f"{s.name}: live {live['color']} ({live.get('image')})" if live else f"{s.name}: nothing live yet")
    if j is not None:
        msg += f"; open release {j.id} ({j.phase})"
    return Outcome("status", s.name, True, 0, msg, [], data)


def color(ctx: Ctx, *, next_color: bool = False) -> Outcome:
    live = live_record(ctx.ports.store, ctx.service)
    current = live["color"] if live else None
    value = other_color(current) if next_color else current
    return Outcome("color", ctx.service, True, 0, value or "", [], {"color": value, "live": current})


def history(ctx: Ctx, *, limit: int | None = 20) -> Outcome:
    entries = jr.history(ctx.ports.store, ctx.service, limit)
    return Outcome("history", ctx.service, True, 0, f"{len(entries)} release(s)", [], {"history": entries})
