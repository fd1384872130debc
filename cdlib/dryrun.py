"""Dry runs: what release, deploy, switch, cleanup and rollback would do, and nothing done.

A dry run checks the input as the verb does (the same one-line errors, exit 2), then reads the
store, the runtime and the proxy only: no lock is taken, no journal written, no container touched,
no proxy file written (the proxy configuration is rendered with the proxy's own ``render()`` and
compared with the current file). What the runtime chooses when it acts (the host ports, the release
id) is said to be chosen then.
"""

from __future__ import annotations

import base64
import difflib
import re
from typing import Any

from . import journal as jr
from . import keys
from .context import Ctx
from .errors import UsageError
from .journal import Journal
from .locks import DEFAULT_LOCK_TTL, check_lock_times
from .model import Backend, Instance, other_color
from .record import StepName
from .registry import backends, check_routes, live_record, revert_target
from .results import PlanOutcome
from .runtime.base import ASIDE
from .steps import UNDO
from .store.base import ALIVE, GONE
from .transaction import preflight

CHOSEN_AT_OPEN = "chosen at open"
CHOSEN_AT_START = "chosen at start"
NEW_RELEASE = "<release chosen at open>"
_RENDER_RELEASE = "dry-run-release"  # a token every proxy template accepts, shown as NEW_RELEASE
_SENTINEL_PORT = 65535  # the new instances' ports in the rendering, counting down; shown as chosen at start


# ------------------------------------------------------------------------------------------------
# reading the open release (the journal record), in one place
# ------------------------------------------------------------------------------------------------
def _open_record(ctx: Ctx) -> Journal | None:
    return Journal.load(ctx.ports.store, ctx.service)


def _started(j: Journal) -> list[Instance]:
    for name in (StepName.START, StepName.RESUME):
        step = j.step(name)
        if step is not None and step.state == jr.DONE:
            return [Instance.from_dict(d) for d in step.data["instances"]]
    return []


def _require(ctx: Ctx, phases: tuple[str, ...], verb: str) -> Journal:
    """As the verb checks it (the same messages), without adopting the release."""
    j = _open_record(ctx)
    if j is None:
        raise UsageError(f"{ctx.service} has no open release; run 'cdlib deploy' first")
    if j.phase not in phases:
        raise UsageError(f"{verb}: release {j.id} of {ctx.service} is {j.phase}; {verb} needs it to be "
                         + " or ".join(phases))
    return j


# ------------------------------------------------------------------------------------------------
# pieces of a plan
# ------------------------------------------------------------------------------------------------
def _lock(ctx: Ctx) -> dict[str, Any] | None:
    info = ctx.ports.store.lock_info(keys.lock(ctx.service))
    if not info:
        return None
    return {k: info.get(k) for k in ("who", "host", "pid", "state", "expired", "parked", "release", "build")}


def _proxy_diff(ctx: Ctx, text: str | None, sentinels: dict[int, str]) -> dict[str, Any]:
    """The unified diff of the current proxy file against text (None: the file would be removed)."""
    proxy = ctx.ports.proxy
    where = str(getattr(proxy, "config_path", "") or proxy.describe())
    current = proxy.read_config()
    old = [] if current is None else current.decode("utf-8", "replace").splitlines(keepends=True)
    new = [] if text is None else text.splitlines(keepends=True)
    lines = []
    for line in difflib.unified_diff(old, new, fromfile=f"{where} (now)", tofile=f"{where} (planned)"):
        if line.startswith("+") and not line.startswith("+++"):
            line = line.replace(_RENDER_RELEASE, NEW_RELEASE)
            for port, shown in sentinels.items():
                line = re.sub(rf"(?<!\d){port}(?!\d)", shown, line)
        lines.append(line if line.endswith("\n") else line + "\n")
    return {"file": where, "changed": bool(lines), "diff": "".join(lines)}


def _render_with(ctx: Ctx, color: str, servers: list[tuple[str, int]], release: str) -> str:
    s = ctx.spec
    backend = Backend(s.name, color, release, s.routes, tuple(sorted(servers)), s.health.path)
    return ctx.ports.proxy.render(backends(ctx.ports.store, override=backend))


def _new_instances(ctx: Ctx, color: str, image: str) -> tuple[list[dict[str, Any]], list[tuple[str, int]], dict[int, str]]:
    s = ctx.spec
    low, high = s.target.host_ports
    address = s.target.reach_address
    planned, servers, sentinels = [], [], {}
    from .healing import inherited_replicas  # the descriptor's replicas, else the live color's count

    for index in range(1, inherited_replicas(ctx) + 1):
        name = f"{s.name}-{color}-{index}"
        planned.append({"name": name, "image": image, "container_port": s.port, "address": address,
                        "host_port": f"{CHOSEN_AT_START} from {low}-{high}", "bind": s.target.bind})
        port = _SENTINEL_PORT - index + 1
        servers.append((address, port))
        sentinels[port] = f"<port of {name} {CHOSEN_AT_START}>"
    return planned, servers, sentinels


def _registered(ctx: Ctx, color: str | None) -> list[str]:
    if not color:
        return []
    return [keys.instance(ctx.service, color, r["name"]) for r in ctx.ports.store.registrations(ctx.service, color)]


def _outcome(ctx: Ctx, verb: str, headline: str, plan: dict[str, Any]) -> PlanOutcome:
    plan = dict(plan, verb=verb, service=ctx.service)
    return PlanOutcome(verb, ctx.service, True, 0, describe(headline, plan), [], {"dry_run": True, "plan": plan})


def describe(headline: str, plan: dict[str, Any]) -> str:
    """The plan for a human: one fact a line, then the proxy diff."""
    out = [f"dry run, nothing changed: {headline}"]
    if plan.get("open_release"):
        o = plan["open_release"]
        out.append(f"open release  {o['id']} ({o['phase']}): {o['note']}")
    lock = plan.get("lock")
    if lock is not None:
        out.append(f"lock          held by {lock.get('who')} pid {lock.get('pid')} ({lock.get('state') or '?'}"
                   + (", expired" if lock.get("expired") else "") + f"): {plan.get('lock_note', '')}".rstrip(": "))
    if plan.get("steps"):
        out.append("steps         " + ", ".join(plan["steps"]))
    c = plan.get("containers") or {}
    for kind, label in (("start", "start"), ("resume", "resume"), ("set_aside", "set aside"), ("stop", "stop"),
                        ("remove", "remove")):
        items = c.get(kind) or []
        if not items:
            continue
        shown = []
        for i in items:
            if isinstance(i, str):
                shown.append(i)
            elif "host_port" in i:
                shown.append(f"{i['name']} ({i['image']}, container port {i['container_port']}, host port "
                             f"{i['host_port']} on {i['bind']})")
            else:
                shown.append(f"{i['name']} ({i.get('image')}, {i['address']}:{i['port']})")
        out.append(f"{label + ':':<14}" + "; ".join(shown))
    for kind in ("write", "delete"):
        found = (plan.get("store_keys") or {}).get(kind) or []
        if found:
            out.append(f"store {kind + ':':<8}" + ", ".join(found))
    proxy = plan.get("proxy")
    if proxy is not None:
        if proxy["changed"]:
            out.append(f"proxy         {proxy['file']} would change:")
            out.append(proxy["diff"].rstrip("\n"))
        else:
            out.append(f"proxy         {proxy['file']} unchanged")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# a release to a new color: release, deploy, rollback --previous/--to
# ------------------------------------------------------------------------------------------------
def _new_release(ctx: Ctx, verb: str, image: str, lock_wait: float, lock_ttl: float, *,
                 switch: bool, cleanup: bool, tests: bool, revert_of: str | None = None) -> PlanOutcome:
    check_lock_times(lock_wait, lock_ttl)
    check_routes(ctx)
    preflight(ctx)
    ctx.ports.runtime.ping()
    store, s = ctx.ports.store, ctx.spec
    live = live_record(store, s.name)
    live_color = live["color"] if live else None
    color = other_color(live_color)
    plan: dict[str, Any] = {"image": image, "color": color, "live_color": live_color,
                  "live_image": live.get("image") if live else None, "release": CHOSEN_AT_OPEN,
                  "revert_of": revert_of, "lock": _lock(ctx), "open_release": None}
    j = _open_record(ctx)
    if j is not None:
        plan["open_release"] = {"id": j.id, "phase": j.phase,
                                "note": "rolled back first when its lock is free, expired or its holder gone; "
                                        "else exit 3"}
    if plan["lock"] is not None:
        held = plan["lock"]
        free = held.get("state") == GONE or (held.get("expired") and held.get("state") != ALIVE)
        plan["lock_note"] = "taken over" if free else f"waited for up to {lock_wait:g}s (--lock-wait), then exit 3"
    runtime = ctx.ports.runtime
    old_of_color = [i for i in runtime.instances(s.name, color) if ASIDE not in i.name]
    stopped_target = [i for i in old_of_color if not i.running and i.image == image]
    containers: dict[str, Any] = {}
    resume = revert_of is not None and stopped_target and len({i.release for i in stopped_target}) == 1
    if resume:
        steps = ["open", "resume", "health", "register"]
        # a stopped container shows no published port: it comes back on the one pinned at its start
        containers["resume"], servers, sentinels = [], [], {}
        for n, i in enumerate(stopped_target):
            port = i.port or _SENTINEL_PORT - n
            if not i.port:
                sentinels[port] = f"<port of {i.name} pinned at its start>"
            containers["resume"].append({"name": i.name, "image": i.image, "address": i.address,
                                         "port": i.port or "pinned at its start"})
            servers.append((i.address, port))
        new_names = [i.name for i in stopped_target]
    else:
        steps = ["open", "set-aside", "start", "health", "register"]
        containers["set_aside"] = [f"{i.name} -> {i.name}{ASIDE}{NEW_RELEASE}" for i in old_of_color]
        containers["start"], servers, sentinels = _new_instances(ctx, color, image)
        new_names = [c["name"] for c in containers["start"]]
    write = [keys.lock(s.name), keys.release(s.name), keys.spec(s.name)]
    write += [keys.instance(s.name, color, n) for n in new_names]
    delete = [k for k in _registered(ctx, color) if k not in write]
    if tests:
        steps.append("test pre-integration")
    if switch:
        steps += ["proxy", "live"]
        write += [keys.PROXY_LOCK, keys.live(s.name)]
        release_token = resume and stopped_target[0].release or _RENDER_RELEASE
        plan["proxy"] = _proxy_diff(ctx, _render_with(ctx, color, servers, release_token), sentinels)
    if tests and switch:
        steps.append("test post-integration")
    if cleanup:
        steps += ["persist", "stop-old", "close"]
        containers["stop"] = [i.name for i in runtime.instances(s.name, live_color) if i.running] if live_color else []
        containers["remove"] = [f"{i.name} (set aside at open)" for i in old_of_color]
        write.append(keys.history(s.name, NEW_RELEASE))
        delete += _registered(ctx, live_color) + [keys.release(s.name), keys.lock(s.name), keys.PROXY_LOCK]
    plan.update(steps=steps, containers=containers, store_keys={"write": write, "delete": sorted(set(delete))})
    beside = f" beside {live_color} ({plan['live_image']})" if live_color else " (first release)"
    return _outcome(ctx, verb, f"{verb} of {s.name}: {image} as {color}{beside}", plan)


def release(ctx: Ctx, *, lock_wait: float = 0.0, lock_ttl: float = DEFAULT_LOCK_TTL) -> PlanOutcome:
    return _new_release(ctx, "release", ctx.spec.image.ref, lock_wait, lock_ttl, switch=True, cleanup=True,
                        tests=True)


def deploy(ctx: Ctx, *, lock_wait: float = 0.0, lock_ttl: float = DEFAULT_LOCK_TTL) -> PlanOutcome:
    return _new_release(ctx, "deploy", ctx.spec.image.ref, lock_wait, lock_ttl, switch=False, cleanup=False,
                        tests=False)


# ------------------------------------------------------------------------------------------------
# the stages of an open release
# ------------------------------------------------------------------------------------------------
def switch(ctx: Ctx) -> PlanOutcome:
    j = _require(ctx, (jr.DEPLOYED,), "switch")
    preflight(ctx)
    s, rec = ctx.spec, j.record
    started = _started(j)
    text = _render_with(ctx, rec.color, [(i.address, i.port) for i in started],
                        started[0].release if started else j.id)
    plan = {"release": j.id, "color": rec.color, "image": rec.image,
            "live_color": (rec.previous or {}).get("color"), "lock": _lock(ctx),
            "steps": ["proxy", "live"],
            "containers": {"serve": [{"name": i.name, "image": i.image, "address": i.address, "port": i.port}
                                     for i in started]},
            "store_keys": {"write": [keys.PROXY_LOCK, keys.release(s.name), keys.live(s.name)],
                           "delete": [keys.PROXY_LOCK]},
            "proxy": _proxy_diff(ctx, text, {})}
    return _outcome(ctx, "switch", f"switch {s.name} to {rec.color} ({rec.image}), release {j.id}", plan)


def cleanup(ctx: Ctx) -> PlanOutcome:
    j = _require(ctx, (jr.SWITCHED, jr.CLEANING), "cleanup")
    s, rec = ctx.spec, j.record
    prev = (rec.previous or {}).get("color")
    runtime = ctx.ports.runtime
    stop = [i.name for i in runtime.instances(s.name, prev) if i.running] if prev else []
    aside = [i.name for i in runtime.instances(s.name, rec.color, include_aside=True) if ASIDE in i.name]
    plan = {"release": j.id, "color": rec.color, "image": rec.image, "live_color": rec.color,
            "lock": _lock(ctx), "steps": ["persist", "stop-old", "close"],
            "containers": {"stop": stop, "remove": aside},
            "store_keys": {"write": [keys.release(s.name)]
                           + [keys.instance(s.name, rec.color, i.name) for i in _started(j)]
                           + [keys.history(s.name, j.id)],
                           "delete": sorted(set(_registered(ctx, prev) + [keys.release(s.name), keys.lock(s.name)]))}}
    return _outcome(ctx, "cleanup", f"close release {j.id} of {s.name}: {rec.color} stays live"
                    + (f", {prev} is stopped" if prev else ""), plan)


def rollback(ctx: Ctx, *, to: str | None = None, previous: bool = False, lock_wait: float = 0.0,
             lock_ttl: float = DEFAULT_LOCK_TTL) -> PlanOutcome:
    check_lock_times(lock_wait, lock_ttl)
    from .errors import ConfigError

    if to is not None and previous:
        raise ConfigError("rollback: --to and --previous name two targets; give one of them", key="--to")
    j = _open_record(ctx)
    if j is None and (to is not None or previous):
        target = revert_target(ctx.ports.store, ctx.service, to)
        return _new_release(ctx, "rollback", target["image"], lock_wait, lock_ttl, switch=True, cleanup=True,
                            tests=False, revert_of=target["id"])
    if j is None:
        plan: dict[str, Any] = {"release": None, "lock": _lock(ctx), "steps": ["leftovers"], "containers": {},
                "store_keys": {"write": [], "delete": []}}
        return _outcome(ctx, "rollback", f"{ctx.service} has no open release: nothing to roll back (what an "
                        "interrupted release left behind would be finished)", plan)
    if to is not None or previous:
        raise UsageError(f"{ctx.service} has an open release {j.id}; run 'cdlib rollback' without "
                         f"{'--to' if to is not None else '--previous'} first")
    return _undo_plan(ctx, j)


def _undo_plan(ctx: Ctx, j: Journal) -> PlanOutcome:
    s, rec = ctx.spec, j.record
    undos = [st for st in reversed(j.steps) if st.state in jr.NEEDS_UNDO and st.name in UNDO]
    plan: dict[str, Any] = {"release": j.id, "phase": j.phase, "color": rec.color, "image": rec.image,
                  "live_color": (rec.previous or {}).get("color"), "lock": _lock(ctx),
                  "steps": [f"undo {st.name.value}" for st in undos] + ["close"], "containers": {}}
    names = {st.name.value: st for st in undos}
    write, delete = [keys.release(s.name), keys.history(s.name, j.id)], [keys.release(s.name), keys.lock(s.name)]
    if "start" in names:
        plan["containers"]["remove"] = [i.name for i in ctx.ports.runtime.instances(s.name, rec.color,
                                                                                    release=j.id)]
    if "set-aside" in names:
        plan["containers"]["restore"] = [i.name for i in ctx.ports.runtime.instances(s.name, rec.color,
                                                                                     include_aside=True)
                                         if i.name.endswith(f"{ASIDE}{j.id}")]
    if "register" in names:
        delete += _registered(ctx, rec.color)
    if "live" in names:
        write.append(keys.live(s.name))
    if "proxy" in names:
        prior = (names["proxy"].data or {}).get("prior")
        text = None if prior is None else base64.b64decode(prior).decode("utf-8", "replace")
        plan["proxy"] = _proxy_diff(ctx, text, {})
        write.append(keys.PROXY_LOCK)
    plan["store_keys"] = {"write": write, "delete": sorted(set(delete))}
    return _outcome(ctx, "rollback", f"undo release {j.id} of {s.name} ({j.phase})", plan)
