"""Self-healing and scaling of the live color: ``heal`` and ``scale``.

Both work on the live color only, outside a release, under the service lock: a release that is open
(being driven, parked between stages, or abandoned) is never touched.

**heal** compares what should run (the live color, and its replica count: ``keys.replicas``, written
by the release that made the color live and by ``scale``) with what runs and with the registrations.
Dead instances (exited, or gone) are brought back with ``Runtime.scale(req, count)``: same names, same
pinned host ports (a vanished container is created again on the port its registration names), so the
registrations and the rendered proxy configuration stay byte for byte what they were. Registrations
that are missing or name another port are written again; the proxy is applied only when it does not
run the text rendered from the registry (a changed text, a proxy that stopped, a proxy replica Swarm
replaced: ``Proxy.plan_apply``, as ``proxyctl.apply`` asks it); stopped instances above
the count (left by an interrupted ``scale`` down) are removed. A round first looks without a lock
(the runtime, the registrations, the proxy text it would render): when nothing needs repair it takes
no lock at all, so a periodic heal does not make a release that starts at that moment fail with exit
3. Heal keeps no journal: every round converges from what it finds, so a heal that is killed is
finished by the next one.

Exit codes of a one-shot heal (what a cron or Jenkins job sees): 0 when the live color is as it
should be (after repairs, or with nothing to repair), and also when a release is open and no process
works on it (a release parked between Jenkins stages can stay open for hours: heal says it left the
service alone, in the result's ``skipped``); 3 when something needs repair and the service lock is
held by a live process (a release stage, a scale or another heal is at work right now: run heal again
later); 1 when a repair failed (e.g. a replaced instance did not become healthy). With ``watch``, a busy round only waits
for the next one.

**scale** changes the number of instances of the live color, with the journal of a release (the
record at ``keys.release``, its ``extra`` says ``verb: scale``), so that a process killed half way is
undone by ``cdlib rollback`` (or by the next release, which rolls an abandoned record back first):

    up:   scale (start 1..N) -> health -> register -> proxy (applied with them) -> replicas
    down: register (de-register the doomed) -> proxy (applied without them; the adapter drains the
          workers that still had connections to them) -> scale (stop them) -> replicas;
          after the record closes, the stopped instances are removed

The undo of ``scale`` brings the prior count back (a scale up: stopped, and the instances it created
removed; a scale down: the stopped instances start again on their pinned ports), the undos of
``register`` and ``proxy`` are the release's (the exact prior registrations and proxy bytes).
"""

from __future__ import annotations

import base64
import math
import re
import time
from collections.abc import Callable
from typing import Any

from . import journal as jr
from . import keys, plan
from . import steps as release_steps
from .context import Ctx
from .errors import CdlibError, ConfigError, LockHeld, ProxyError, UndoIncomplete, UsageError
from .journal import Journal
from .locks import (
    DEFAULT_LOCK_TTL,
    ProxyBusy,
    check_lock_times,
    heartbeat_of,
    holder_for,
    proxy_lock,
    release_locks,
    working,
)
from .model import Instance, StepReport, instance_name
from .record import ReleaseRecord, StepName
from .registry import backends, live_record, raw_value
from .results import HealOutcome, ScaleOutcome
from .runtime.base import StartRequest
from .transaction import preflight, rollback_open, run_steps

MIN_REPLICAS, MAX_REPLICAS = 1, 100
SCALING = "scaling"  # the phase of a scale's record while it runs
HEAL_LOCK_TTL = 60.0  # heal holds the service lock for seconds; refreshed every ttl/3 while it works
REPLICAS_RE = re.compile(r"([+-]?)([0-9]{1,6})")


# -- the replica count ------------------------------------------------------------------------------
def stored_replicas(store: Any, service: str, color: str) -> int | None:
    """The stored count when it was written for this color, else None."""
    value = store.get_json(keys.replicas(service))
    if not isinstance(value, dict) or value.get("color") != color:
        return None
    count = value.get("replicas")
    if isinstance(count, bool) or not isinstance(count, int) or not MIN_REPLICAS <= count <= MAX_REPLICAS:
        return None
    return count


def live_replicas(store: Any, service: str, live: dict[str, Any] | None = None) -> tuple[int, str]:
    """How many instances of the live color should run, and where that comes from: "stored" (the
    replicas key), "registered" (a color made live before the key existed: its registrations), or
    "default" (nothing live, nothing registered: 1)."""
    live = live if live is not None else live_record(store, service)
    if not live:
        return 1, "default"
    stored = stored_replicas(store, service, live["color"])
    if stored is not None:
        return stored, "stored"
    regs = store.registrations(service, live["color"])
    return (len(regs), "registered") if regs else (1, "default")


def inherited_replicas(ctx: Ctx) -> int:
    """The replicas of the next release: the descriptor's, else the live color's count, else 1."""
    if ctx.spec.replicas is not None:
        return ctx.spec.replicas
    return live_replicas(ctx.ports.store, ctx.service)[0]


def replicas_value(count: int, color: str, via: str) -> dict[str, Any]:
    return {"replicas": count, "color": color, "since": time.time(), "via": via}


def index_of(service: str, color: str, name: str) -> int | None:
    prefix = f"{service}-{color}-"
    tail = name[len(prefix):] if name.startswith(prefix) else ""
    return int(tail) if tail.isdigit() else None


def request_for(ctx: Ctx, color: str, release: str, image: str, replicas: int,
                pinned: dict[str, int]) -> StartRequest:
    s = ctx.spec
    swarm = getattr(release_steps, "swarm_options", None)  # the Swarm runtime's options, where present
    extra: dict[str, Any] = swarm(s.target.swarm) if swarm is not None and hasattr(s.target, "swarm") else {}
    return StartRequest(
        service=s.name, color=color, release=release, image=image, port=s.port, replicas=replicas, env=s.env,
        bind=s.target.bind, address=s.target.reach_address, init=s.target.init, stop_timeout=s.target.stop_timeout,
        network=s.target.network, host_ports=s.target.host_ports, pinned_ports=tuple(sorted(pinned.items())),
        health_path=s.health.path, **extra,
    )


def _registration_ports(ctx: Ctx, color: str) -> dict[str, int]:
    return {r["name"]: int(r["port"]) for r in ctx.ports.store.registrations(ctx.service, color)
            if str(r.get("port", "")).isdigit()}


# -- heal -------------------------------------------------------------------------------------------
def heal(ctx: Ctx, *, watch: bool = False, interval: float = 30.0, max_rounds: int | None = None,
         max_seconds: float | None = None, lock_ttl: float = HEAL_LOCK_TTL,
         log: Callable[[str], None] | None = None) -> HealOutcome:
    """One round (a cron or Jenkins job), or rounds every ``interval`` seconds on ctx.clock with
    ``watch`` until stopped (SIGTERM/SIGINT), ``max_rounds`` or ``max_seconds``."""
    _check_heal_input(watch, interval, max_rounds, max_seconds)
    check_lock_times(0.0, lock_ttl)
    ctx.ports.proxy.preflight()
    say = log or (lambda line: None)
    with working(ctx):
        if not watch:
            data = _heal_round(ctx, lock_ttl)
            return _heal_outcome(ctx, data, rounds=1, failures=0)
        return _heal_watch(ctx, interval, max_rounds, max_seconds, lock_ttl, say)


def _check_heal_input(watch: bool, interval: float, max_rounds: int | None, max_seconds: float | None) -> None:
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not math.isfinite(interval) \
            or interval < 0.05:
        raise ConfigError(f"heal --interval: expected a number of seconds from 0.05, got {interval!r}",
                          key="--interval")
    if max_rounds is not None and (isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1):
        raise ConfigError(f"heal --max-rounds: expected a whole number from 1, got {max_rounds!r}", key="--max-rounds")
    if max_seconds is not None and (isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float))
                                    or not math.isfinite(max_seconds) or max_seconds < 0):
        raise ConfigError(f"heal --max-seconds: expected a number of seconds from 0, got {max_seconds!r}",
                          key="--max-seconds")
    if not watch and (max_rounds is not None or max_seconds is not None):
        raise ConfigError("heal --max-rounds/--max-seconds: only with --watch", key="--watch")


def _heal_watch(ctx: Ctx, interval: float, max_rounds: int | None, max_seconds: float | None, lock_ttl: float,
                say: Callable[[str], None]) -> HealOutcome:
    clock = ctx.clock
    deadline = None if max_seconds is None else clock.monotonic() + max_seconds
    rounds, failures, last = 0, 0, {}
    totals: dict[str, list[str]] = {"replaced": [], "registered": [], "discarded": []}
    proxy_changes = 0
    while True:
        rounds += 1
        try:
            last = _heal_round(ctx, lock_ttl)
            for key in totals:
                totals[key] += last.get(key) or []
            proxy_changes += 1 if last.get("proxy_changed") else 0
            if last.get("skipped") or last.get("replaced") or last.get("registered") or last.get("proxy_changed"):
                say(f"heal round {rounds}: {_summary(ctx, last)}")
        except LockHeld as exc:
            say(f"heal round {rounds}: busy, waiting for the next round: {exc}")
            last = {"skipped": str(exc)}
        except CdlibError as exc:  # keep watching: the next round starts from what it finds
            failures += 1
            say(f"heal round {rounds} failed: {exc}")
            last = {"error": str(exc)}
        if max_rounds is not None and rounds >= max_rounds:
            break
        remaining = None if deadline is None else deadline - clock.monotonic()
        if remaining is not None and remaining <= 0:
            break
        clock.sleep(interval if remaining is None else min(interval, remaining))
    data = dict(last, **totals, proxy_changes=proxy_changes)
    data.pop("error", None)
    data["proxy_changed"] = proxy_changes > 0
    out = _heal_outcome(ctx, data, rounds=rounds, failures=failures)
    out.message = f"heal watch ended after {rounds} round(s): {len(totals['replaced'])} instance(s) replaced, " \
                  f"{proxy_changes} proxy change(s), {failures} failed round(s)"
    return out


def _heal_outcome(ctx: Ctx, data: dict[str, Any], rounds: int, failures: int) -> HealOutcome:
    data = dict(data, rounds=rounds, failures=failures)
    return HealOutcome("heal", ctx.service, True, 0, _summary(ctx, data), list(ctx.steps), data)


def _summary(ctx: Ctx, d: dict[str, Any]) -> str:
    if d.get("skipped"):
        return f"{ctx.service}: nothing changed: {d['skipped']}"
    what = []
    if d.get("replaced"):
        what.append("replaced " + ", ".join(d["replaced"]))
    if d.get("registered"):
        what.append("registered " + ", ".join(d["registered"]))
    if d.get("discarded"):
        what.append("removed " + ", ".join(d["discarded"]))
    what.append("proxy reloaded" if d.get("proxy_changed") else "proxy unchanged")
    head = f"{ctx.service} {d.get('color')}: {d.get('running', 0)} of {d.get('wanted', 0)} instance(s) run"
    tail = "; ".join(what) if len(what) > 1 or d.get("proxy_changed") else "nothing to repair"
    return f"{head}; {tail}" + (f"; {d['note']}" if d.get("note") else "")


def _heal_round(ctx: Ctx, lock_ttl: float) -> dict[str, Any]:
    store, service = ctx.ports.store, ctx.service
    busy = _open_release(ctx)
    if busy:
        return {"skipped": busy}
    live = live_record(store, service)
    if live is None:
        return {"skipped": f"nothing of {service} is live: nothing to heal"}
    found = _survey(ctx, live)
    if not found.pop("work"):  # nothing to repair: no lock taken, so a release starting now is not refused
        return found
    key = keys.lock(service)
    lock = store.acquire_lock(key, holder_for(ctx, purpose="heal"), lock_ttl, wait=0.0, poll=ctx.lock_policy.poll)
    hb = heartbeat_of(ctx)
    hb.hold_lock(store, key, lock.token, lock_ttl)
    try:
        busy = _open_release(ctx)  # opened (and maybe abandoned) between the first look and the lock
        live = live_record(store, service)
        if busy or live is None:
            return {"skipped": busy or f"nothing of {service} is live: nothing to heal"}
        return _repair(ctx, live)
    finally:
        hb.drop_lock(key, lock.token)
        try:
            store.release_lock(key, lock.token)
        except CdlibError:
            pass  # it expires; its holder (this process, done) reads as gone


def _open_release(ctx: Ctx) -> str | None:
    j = Journal.load(ctx.ports.store, ctx.service)
    if j is None:
        return None
    what = "scale" if j.record.extra.get("verb") == "scale" else "release"
    return (f"{what} {j.id} of {ctx.service} is open ({j.phase}); heal leaves the service to it (an abandoned "
            "one is finished by 'cdlib rollback')")


def _survey(ctx: Ctx, live: dict[str, Any]) -> dict[str, Any]:
    """Read only: whether anything needs repair ("work"), and the round's result when nothing does."""
    store, runtime, service = ctx.ports.store, ctx.ports.runtime, ctx.service
    color = live["color"]
    wanted, source = live_replicas(store, service, live)
    regs = {r["name"]: r for r in store.registrations(service, color)}
    insts = {i.name: i for i in runtime.instances(service, color)}
    target = max(wanted, max((index_of(service, color, n) or 0 for n in regs), default=0))
    expected = [instance_name(service, color, n) for n in range(1, target + 1)]
    running = [n for n in expected if n in insts and insts[n].running]
    misregistered = [n for n in running if n not in regs
                     or (regs[n].get("address"), int(regs[n].get("port") or 0)) != (insts[n].address, insts[n].port)]
    above = [n for n in insts if (index_of(service, color, n) or 0) > target]
    work = len(running) < len(expected) or bool(misregistered or above) or _proxy_stale(ctx)
    out: dict[str, Any] = {"work": work, "color": color, "wanted": wanted, "replicas_source": source,
                           "running": len(running), "replaced": [], "registered": [], "discarded": [],
                           "proxy_changed": False}
    if target > wanted:
        out["note"] = f"{target - wanted} registered instance(s) above the stored count; run 'cdlib scale {target}' " \
                      f"or 'cdlib scale {wanted}'"
    return out


def _proxy_stale(ctx: Ctx) -> bool:
    """Whether 'proxy apply' would change the proxy (read only: no proxy lock)."""
    from . import proxyctl

    found, _ = proxyctl.healthy_backends(ctx)
    if any(not b.servers for b in found):
        return any(b.service == ctx.service for b in found if not b.servers)  # another's: apply refuses anyway
    # the proxy's own answer, as 'proxy apply' asks it: a proxy that died, or a replica Swarm replaced
    # (it starts without a configuration), needs the apply as much as a changed text does
    return ctx.ports.proxy.plan_apply(ctx.ports.proxy.render(found))[0] != "none"


def _repair(ctx: Ctx, live: dict[str, Any]) -> dict[str, Any]:
    store, runtime, service = ctx.ports.store, ctx.ports.runtime, ctx.service
    color, release, image = live["color"], live.get("release", ""), live.get("image", "")
    wanted, source = live_replicas(store, service, live)
    regs = {r["name"]: r for r in store.registrations(service, color)}
    insts = {i.name: i for i in runtime.instances(service, color)}
    registered_top = max((index_of(service, color, n) or 0 for n in regs), default=0)
    # a registered instance is in the proxy: heal never stops one, even above the stored count
    target = max(wanted, registered_top)
    expected = [instance_name(service, color, n) for n in range(1, target + 1)]
    dead = [n for n in expected if n not in insts or not insts[n].running]
    above = [n for n, i in insts.items() if (index_of(service, color, n) or 0) > target]
    out: dict[str, Any] = {"color": color, "wanted": wanted, "replicas_source": source, "replaced": [],
                           "registered": [], "discarded": [], "proxy_changed": False}
    if target > wanted:
        out["note"] = f"{target - wanted} registered instance(s) above the stored count; run 'cdlib scale {target}' " \
                      f"or 'cdlib scale {wanted}'"
    t0 = time.monotonic()
    if dead or any(insts[n].running for n in above):
        pinned = {n: int(r["port"]) for n, r in regs.items() if str(r.get("port", "")).isdigit()}
        running = runtime.scale(request_for(ctx, color, release, image, target, pinned), target)
        insts = {i.name: i for i in running}
        fresh = [insts[n] for n in dead if n in insts]
        h = ctx.spec.health
        runtime.wait_healthy(fresh, h.path, h.timeout, h.interval)
        out["replaced"] = dead
        ctx.emit(StepReport("heal", "done", time.monotonic() - t0,
                            "started again " + ", ".join(dead) if dead else "stopped instances above the count"))
    for name in expected:
        inst = insts.get(name)
        if inst is None or not inst.running:
            continue
        reg = regs.get(name)
        if reg is None or (reg.get("address"), int(reg.get("port") or 0)) != (inst.address, inst.port):
            store.register(service, color, name, release_steps.registration_of(ctx, inst.to_dict()))
            out["registered"].append(name)
    stopped_above = [i.name for i in runtime.instances(service, color)
                     if (index_of(service, color, i.name) or 0) > target and not i.running]
    if stopped_above:
        out["discarded"] = runtime.discard(service, color, stopped_above)
    from . import proxyctl  # renders from the registry what 'proxy apply' renders (healthy servers only)

    try:
        applied = proxyctl.apply(ctx)
        out["proxy_changed"] = bool(applied.data.get("changed"))
    except ProxyError as exc:  # another live service without a healthy backend: its problem, not ours
        if service in (exc.data.get("services") or [service]):
            raise
        out["note"] = "; ".join(filter(None, [out.get("note"), f"proxy not applied: {exc}"]))
    out["running"] = sum(1 for n in expected if n in insts and insts[n].running)
    return out


# -- scale ------------------------------------------------------------------------------------------
def parse_replicas(value: object) -> tuple[str, int]:
    """'3' / 3 -> ('', 3); '+2' -> ('+', 2); '-1' -> ('-', 1). ConfigError (exit 2) otherwise."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    m = REPLICAS_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ConfigError(f"scale REPLICAS: expected a count N, or +N / -N relative to the live color's, got "
                          f"{shown}", key="REPLICAS")
    return m.group(1), int(m.group(2))


def target_of(change: tuple[str, int], current: int) -> int:
    sign, n = change
    target = current + n if sign == "+" else current - n if sign == "-" else n
    if not MIN_REPLICAS <= target <= MAX_REPLICAS:
        asked = f"{sign}{n} from {current}" if sign else str(n)
        raise ConfigError(f"scale REPLICAS: {asked} gives {target}; expected a count from {MIN_REPLICAS} to "
                          f"{MAX_REPLICAS}", key="REPLICAS")
    return target


def scale(ctx: Ctx, replicas: object, *, lock_wait: float = 0.0, lock_ttl: float = DEFAULT_LOCK_TTL) -> ScaleOutcome:
    """Run ``replicas`` instances of the live color (N, +N or -N): every input is checked before the
    first change (exit 2); a held lock is exit 3; a failure rolls the change back (exit 1, or 4)."""
    change = parse_replicas(replicas)
    check_lock_times(lock_wait, lock_ttl)
    store, service = ctx.ports.store, ctx.service
    live = live_record(store, service)
    if live is None:
        raise UsageError(f"scale: nothing of {service} is live; release it first", key="live")
    j = Journal.load(store, service)
    if j is not None:
        raise UsageError(f"scale: {service} has an open release {j.id} ({j.phase}); finish it or run "
                         "'cdlib rollback' first", key="release")
    current, _ = live_replicas(store, service, live)
    target = target_of(change, current)
    if target == current:
        return ScaleOutcome("scale", service, True, 0, f"{service} {live['color']} runs {current} instance(s) "
                            "already: nothing changed", [], _scale_data(live, current, target))
    if target > current and ctx.spec.target.host_ports[1] - ctx.spec.target.host_ports[0] + 1 < 2 * target:
        low, high = ctx.spec.target.host_ports
        raise ConfigError(f"scale REPLICAS: {target} instances need target.host_ports of at least {2 * target} "
                          f"ports (both colors run side by side during a release), got {low}-{high}",
                          key="REPLICAS")
    preflight(ctx)
    ctx.ports.runtime.ping()
    with working(ctx):
        return _scale(ctx, live, current, target, lock_wait, lock_ttl)


def _scale_data(live: dict[str, Any], current: int, target: int, **more: Any) -> dict[str, Any]:
    return dict({"color": live["color"], "release": live.get("release"), "image": live.get("image"),
                 "previous": current, "replicas": target}, **more)


def _scale(ctx: Ctx, live: dict[str, Any], current: int, target: int, lock_wait: float,
           lock_ttl: float) -> ScaleOutcome:
    store, service = ctx.ports.store, ctx.service
    scale_id = jr.new_release_id()
    holder = holder_for(ctx, release=scale_id, image=live.get("image"), purpose=f"scale {current} -> {target}")
    key = keys.lock(service)
    lock = store.acquire_lock(key, holder, lock_ttl, wait=lock_wait, poll=ctx.lock_policy.poll)
    ctx.lock_token = lock.token
    hb = heartbeat_of(ctx)
    hb.hold_lock(store, key, lock.token, lock_ttl)
    try:
        j = Journal.load(store, service)
        now = live_record(store, service)
        if j is not None or now != live:  # a release came and went between the checks and the lock
            raise UsageError(f"scale: {service} changed meanwhile ("
                             + (f"release {j.id} is open" if j else "the live color changed")
                             + "); run 'cdlib status' and scale again", key="live")
        ctx.journal = Journal.create(store, service, ReleaseRecord(
            id=scale_id, service=service, image=live.get("image") or "?", color=live["color"], previous=live,
            holder=holder, lock_token=lock.token, lock_ttl=lock_ttl,
            prior={"live": raw_value(store, keys.live(service))},
            extra={"verb": "scale", "replicas": {"from": current, "to": target}}))
        ctx.open_journal.phase = SCALING
        ctx.open_journal.save()
    except (Exception, plan.Interrupted, KeyboardInterrupt):
        hb.drop_lock(key, lock.token)
        store.release_lock(key, lock.token)
        ctx.lock_token = None
        raise
    ctx.emit(StepReport("open", "done", 0.0, f"scale {scale_id}: {service} {live['color']} from {current} to "
                                             f"{target} instance(s)"))
    try:
        return _scale_steps(ctx, live, current, target)
    except ProxyBusy as exc:
        return _rolled_back(ctx, live, current, target, plan._reason(exc))
    except (LockHeld, UndoIncomplete):
        raise
    except (Exception, plan.Interrupted) as exc:
        if ctx.journal is None or ctx.closed:
            raise
        return _rolled_back(ctx, live, current, target, plan._reason(exc))


def _rolled_back(ctx: Ctx, live: dict[str, Any], current: int, target: int, reason: str) -> ScaleOutcome:
    out = rollback_open(ctx, reason)
    message = out.message
    if out.exit_code == 1:
        message = (f"scale of {ctx.service} {live['color']} from {current} to {target} failed: {reason}; rolled "
                   f"back, {current} instance(s) run as before")
    return ScaleOutcome("scale", ctx.service, False, out.exit_code, message, list(ctx.steps),
                        _scale_data(live, current, current, scale=ctx.rec.id))


def _scale_steps(ctx: Ctx, live: dict[str, Any], current: int, target: int) -> ScaleOutcome:
    j = ctx.open_journal

    def proxy() -> None:
        with proxy_lock(ctx.ports.store, j.id, f"scale {ctx.service}", heartbeat=ctx.heartbeat,
                        service=ctx.service, policy=ctx.lock_policy):
            run_steps(ctx, [PROXY_STEP])

    if target > current:
        run_steps(ctx, [SCALE_STEP, HEALTH_STEP, REGISTER_UP_STEP])
        proxy()
        run_steps(ctx, [REPLICAS_STEP])
    else:
        run_steps(ctx, [REGISTER_DOWN_STEP])
        proxy()
        run_steps(ctx, [SCALE_STEP, REPLICAS_STEP])
    ctx.check()
    message = f"{ctx.service} {live['color']} runs {target} instance(s) (was {current})"
    j.close("scaled", message)
    ctx.closed = True
    release_locks(ctx, j)
    discarded: list[str] = []
    if target < current:
        step = j.step(StepName.REGISTER)
        doomed = list((step.data if step else {}).get("doomed") or [])
        t0 = time.monotonic()
        try:
            discarded = ctx.ports.runtime.discard(ctx.service, live["color"], doomed)
            ctx.emit(StepReport("discard", "done", time.monotonic() - t0, "removed " + ", ".join(discarded)))
        except CdlibError as exc:  # the scale is done; 'heal' removes stopped instances above the count
            ctx.emit(StepReport("discard", "done", time.monotonic() - t0, f"warning: stopped instances kept: {exc}"))
    scaled = j.step(StepName.SCALE)
    started = (scaled.data.get("instances") if scaled is not None else None) or []
    return ScaleOutcome("scale", ctx.service, True, 0, message, list(ctx.steps),
                        _scale_data(live, current, target, scale=j.id, instances=started, discarded=discarded))


def _change(ctx: Ctx) -> tuple[int, int]:
    r = ctx.rec.extra.get("replicas") or {}
    return int(r["from"]), int(r["to"])


def intent_scale(ctx: Ctx) -> dict[str, Any]:
    """Everything the undo needs, from the journal alone: the color, its release and image, both
    counts, the instances that existed (the undo of a scale up removes only the ones it created) and
    the ports they are pinned to."""
    current, target = _change(ctx)
    live = ctx.rec.previous or {}
    existed = ctx.ports.runtime.instances(ctx.service, ctx.rec.color)
    pinned = _registration_ports(ctx, ctx.rec.color)
    pinned.update({i.name: i.port for i in existed if i.port})
    return {"color": ctx.rec.color, "release": live.get("release", ""), "image": ctx.rec.image, "from": current,
            "to": target, "existed": [i.name for i in existed], "pinned": pinned}


def do_scale(ctx: Ctx, data: dict[str, Any]) -> dict[str, Any]:
    req = request_for(ctx, data["color"], data["release"], data["image"], data["to"], data["pinned"])
    running = ctx.ports.runtime.scale(req, data["to"])
    return {"instances": [i.to_dict() for i in running]}


def undo_scale(ctx: Ctx, data: dict[str, Any]) -> None:
    """Back to the prior count: instances 1..from run (stopped ones start again on their pinned
    ports, vanished ones are created on them), those above are stopped, and the ones this scale
    created are removed. Idempotent."""
    if not data.get("color"):
        return
    service, color, before = ctx.service, data["color"], int(data["from"])
    runtime = ctx.ports.runtime
    req = request_for(ctx, color, data["release"], data["image"], before, dict(data.get("pinned") or {}))
    running = runtime.scale(req, before)
    existed = set(data.get("existed") or [])
    created = [i.name for i in runtime.instances(service, color)
               if (index_of(service, color, i.name) or 0) > before and i.name not in existed]
    if created:
        runtime.discard(service, color, created)
    if before > int(data["to"]):  # a scale down undone: the restarted ones must answer before the proxy has them
        h = ctx.spec.health
        runtime.wait_healthy(running, h.path, h.timeout, h.interval)


def do_health(ctx: Ctx, data: dict[str, Any]) -> dict[str, Any]:
    step = ctx.open_journal.step(StepName.SCALE)
    instances = [Instance.from_dict(d) for d in (step.data.get("instances") or [])] if step else []
    h = ctx.spec.health
    seconds = ctx.ports.runtime.wait_healthy(instances, h.path, h.timeout, h.interval)
    return {"seconds": round(seconds, 3)}


def intent_register(ctx: Ctx) -> dict[str, Any]:
    """The exact prior registrations and spec key (release_steps.undo_register restores them), and,
    scaling down, the instances that go."""
    data: dict[str, Any] = {"prior": release_steps._prior_registrations(ctx, ctx.rec.color),
            "prior_spec": raw_value(ctx.ports.store, keys.spec(ctx.service))}
    current, target = _change(ctx)
    if target < current:
        data["doomed"] = ctx.ports.runtime.doomed(ctx.service, ctx.rec.color, target)
    return data


def do_register_up(ctx: Ctx, data: dict[str, Any]) -> dict[str, Any]:
    step = ctx.open_journal.step(StepName.SCALE)
    added = []
    for inst in (step.data.get("instances") or []) if step else []:
        record = release_steps.registration_of(ctx, inst)
        prior = data["prior"].get(inst["name"])
        if prior is None or _same_place(prior, record) is False:
            ctx.ports.store.register(ctx.service, ctx.rec.color, inst["name"], record)
            added.append(inst["name"])
    return {"registered": added}


def _same_place(raw: str, record: dict[str, Any]) -> bool:
    import json

    try:
        old = json.loads(raw)
    except ValueError:
        return False
    return (old.get("address"), int(old.get("port") or 0)) == (record["address"], int(record["port"]))


def do_register_down(ctx: Ctx, data: dict[str, Any]) -> dict[str, Any]:
    for name in data.get("doomed") or []:
        ctx.ports.store.deregister(ctx.service, ctx.rec.color, name)
    return {"deregistered": list(data.get("doomed") or [])}


def intent_proxy(ctx: Ctx) -> dict[str, Any]:
    """The exact prior configuration and the text rendered from the registry (which has the new
    registrations already), under the proxy lock; release_steps.undo_proxy restores the prior bytes."""
    proxy = ctx.ports.proxy
    prior = proxy.read_config()
    text = proxy.render(backends(ctx.ports.store))
    return {"prior": None if prior is None else base64.b64encode(prior).decode("ascii"), "text": text}


def do_proxy(ctx: Ctx, data: dict[str, Any]) -> dict[str, Any]:
    proxy = ctx.ports.proxy
    current = proxy.read_config()
    if current is not None and current == data["text"].encode("utf-8"):
        return {"changed": False}
    timings = proxy.apply(data["text"])
    return {"changed": True, "timings": {k: round(v, 3) for k, v in (timings or {}).items()}}


def intent_replicas(ctx: Ctx) -> dict[str, Any]:
    return {"prior": raw_value(ctx.ports.store, keys.replicas(ctx.service))}


def do_replicas(ctx: Ctx, data: dict[str, Any]) -> dict[str, Any]:
    _, target = _change(ctx)
    value = replicas_value(target, ctx.rec.color, ctx.rec.id)
    ctx.ports.store.put_json(keys.replicas(ctx.service), value)
    return {"value": value}


def undo_replicas(ctx: Ctx, data: dict[str, Any]) -> None:
    release_steps.undo_restore_keys(ctx, {"prior": {keys.replicas(ctx.service): data.get("prior")}})


def _list(key: str) -> Callable[[dict[str, Any]], str]:
    def describe(data: dict[str, Any]) -> str:
        items = data.get(key) or []
        return ", ".join(i["name"] + f" ({i['address']}:{i['port']})" if isinstance(i, dict) else str(i)
                         for i in items) or "-"
    return describe


SCALE_STEP = plan.Step(StepName.SCALE, do_scale, intent=intent_scale, describe=_list("instances"))
HEALTH_STEP = plan.Step(StepName.HEALTH, do_health, describe=lambda d: f"healthy after {d.get('seconds', 0):.2f}s")
REGISTER_UP_STEP = plan.Step(StepName.REGISTER, do_register_up, intent=intent_register,
                             describe=lambda d: "registered " + _list("registered")(d))
REGISTER_DOWN_STEP = plan.Step(StepName.REGISTER, do_register_down, intent=intent_register,
                               describe=lambda d: "de-registered " + _list("deregistered")(d))
PROXY_STEP = plan.Step(StepName.PROXY, do_proxy, intent=intent_proxy,
                       describe=lambda d: "validated, swapped, reloaded, drained" if d.get("changed")
                       else "unchanged")
REPLICAS_STEP = plan.Step(StepName.REPLICAS, do_replicas, intent=intent_replicas,
                          describe=lambda d: f"{d['value']['replicas']} stored" if d.get("value") else "")
