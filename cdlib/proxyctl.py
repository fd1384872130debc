"""The proxy driven by the registry: ``proxy render``, ``proxy apply`` and ``proxy watch``.

What consul-template did for docker-flow, with its sharp edges filed off: the configuration is
rendered from every service's live color and its *healthy* registered instances; it is never written
when a live service would be left without a backend; it is validated, swapped, reloaded and drained
by the proxy adapter, and the previous file comes back on any failure; ``watch`` reloads only when
the rendered text changed, debounces bursts of registry changes, and also re-checks instance health
on a timer, which is what heals routing when an instance dies without the registry noticing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from . import journal as jr
from . import keys
from .context import Ctx
from .errors import CdlibError, ConfigError, ProxyError
from .locks import proxy_lock
from .model import Backend, Instance, StepReport
from .registry import backends, registered_backend
from .results import ProxyOutcome


def healthy_backends(ctx: Ctx) -> tuple[list[Backend], dict[str, list[str]]]:
    """Every live backend with its unhealthy servers left out; and service -> the servers left out.
    Health is the registry's own view where it has one (Consul), else the runtime's health check
    (an HTTP GET of the health path) of each registered instance."""
    store = ctx.ports.store
    out, dropped = [], {}
    for backend in backends(store):
        regs = {(r["address"], int(r["port"])): r for r in store.registrations(backend.service, backend.color)}
        verdict = store.registry_health(backend.service)
        if verdict is not None:
            ok = {s for s, r in regs.items() if verdict.get(r["name"]) == "passing"}
        else:
            runtime = ctx.ports.runtime
            insts = {s: Instance(r["name"], backend.service, backend.color, r.get("release", ""), r.get("image", ""),
                                 s[0], s[1]) for s, r in regs.items()}
            with ThreadPoolExecutor(max_workers=min(16, max(1, len(insts)))) as pool:
                checks = pool.map(lambda i, rt=runtime, path=backend.health_path: rt.check_health(i, path, 2.0),
                                  insts.values())
                results = dict(zip(insts, checks, strict=True))
            ok = {s for s, good in results.items() if good}
        servers = tuple(s for s in backend.servers if s in ok)
        if len(servers) != len(backend.servers):
            dropped[backend.service] = [f"{a}:{p}" for a, p in backend.servers if (a, p) not in ok]
        out.append(replace(backend, servers=servers))
    return out, dropped


def render(ctx: Ctx) -> ProxyOutcome:
    # a template the binary would refuse (or any file that is not one, such as /etc/shadow) is bad
    # input: refused before a byte of what it renders is printed
    ctx.ports.proxy.preflight()
    text = ctx.ports.proxy.render(backends(ctx.ports.store))
    mode, why = ctx.ports.proxy.plan_apply(text)
    return ProxyOutcome("proxy", ctx.service, True, 0, text, [], {"config": text, "apply": {"mode": mode, "why": why}})


def switch_plan(ctx: Ctx) -> dict[str, str]:
    """How the proxy would take the next change for this service, and why: the switch of the open
    release to its registered color when it has one, else an apply of the registry as it is."""
    store, proxy = ctx.ports.store, ctx.ports.proxy
    record = store.get_json(keys.release(ctx.service)) or {}
    override = None
    color = record.get("color")
    if color and record.get("phase") not in (jr.SWITCHING, jr.ROLLING_BACK):
        override = registered_backend(store, ctx.service, color, str(record.get("id", "")))
    mode, why = proxy.plan_apply(proxy.render(backends(store, override)))
    return {"mode": mode, "why": why, "for": "the switch of the open release" if override else "an apply"}


def apply(ctx: Ctx, *, force: bool = False) -> ProxyOutcome:
    """Render from the registry; refuse when a live service has no healthy backend; write only a
    changed configuration (or always, with force)."""
    ctx.ports.proxy.preflight()  # a proxy that can never accept what cdlib renders is bad input
    with proxy_lock(ctx.ports.store, purpose=f"proxy apply from {ctx.service}", policy=ctx.lock_policy):
        return _apply(ctx, force)


def _apply(ctx: Ctx, force: bool) -> ProxyOutcome:
    t0 = time.monotonic()
    proxy = ctx.ports.proxy
    found, dropped = healthy_backends(ctx)
    empty = sorted(b.service for b in found if not b.servers)
    if empty:
        raise ProxyError(f"refusing to write the proxy configuration: no healthy backend for the live color of "
                         f"{', '.join(empty)}; the current configuration stays", services=empty)
    text = proxy.render(found)
    # the proxy says whether it runs this text already (a proxy with replicas: every replica does;
    # a replica that was replaced and started empty needs the apply)
    if not force and proxy.plan_apply(text)[0] == "none":
        step = StepReport("proxy apply", "skipped", time.monotonic() - t0, "unchanged")
        ctx.emit(step)
        return ProxyOutcome("proxy", ctx.service, True, 0, "the proxy configuration is up to date", [step],
                       {"changed": False, "dropped": dropped})
    timings = proxy.apply(text)
    detail = ", ".join(f"{s}: left out {', '.join(v)}" for s, v in sorted(dropped.items())) or "all backends healthy"
    step = StepReport("proxy apply", "done", time.monotonic() - t0, detail)
    ctx.emit(step)
    return ProxyOutcome("proxy", ctx.service, True, 0, f"applied the proxy configuration for {len(found)} service(s)",
                   [step], {"changed": True, "dropped": dropped, "timings": timings})


def _switching(ctx: Ctx) -> list[str]:
    """Services whose release is between its proxy step and its live-color write right now: their
    registry and proxy disagree on purpose for that moment, so watch leaves the proxy alone. Such a
    phase counts only while the proxy lock is held: a process killed mid-switch leaves the phase
    behind for good, and the other services' routing must still heal meanwhile."""
    store = ctx.ports.store
    names = {keys.service_of(e.key) for e in store.list(keys.ROOT) if e.key.endswith("/release")}
    busy = []
    for name in sorted(n for n in names if n):
        record = store.get_json(keys.release(name)) or {}
        if record.get("phase") in (jr.SWITCHING, jr.ROLLING_BACK):
            busy.append(name)
    if busy:
        lock = store.lock_info(keys.PROXY_LOCK)
        if lock is None or lock.get("expired") or lock.get("state") == "gone":
            return []
    return busy


def watch(ctx: Ctx, *, debounce: float = 1.0, interval: float = 10.0, max_seconds: float | None = None,
          once: bool = False, log: Callable[[str], None] = print) -> ProxyOutcome:
    """Keep the proxy in line with the registry until stopped (SIGTERM/SIGINT) or max_seconds."""
    for name, value, low in (("--debounce", debounce, 0.0), ("--interval", interval, 0.05)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
            # an interval of 0 would re-render and health-check every backend in a tight loop
            raise ConfigError(f"proxy watch {name}: expected a number of seconds from {low:g}, got {value!r}",
                              key=name)
    if max_seconds is not None and (not isinstance(max_seconds, (int, float)) or not math.isfinite(max_seconds)
                                    or max_seconds < 0):
        raise ConfigError(f"proxy watch --max-seconds: expected a number of seconds from 0, got {max_seconds!r}",
                          key="--max-seconds")
    ctx.ports.proxy.preflight()
    store, clock = ctx.ports.store, ctx.clock
    deadline = None if max_seconds is None else clock.monotonic() + max_seconds
    since, applied, failures = 0, 0, 0
    while True:
        try:
            busy = _switching(ctx)
            if busy:
                log(f"waiting: {', '.join(busy)} is switching")
            else:
                out = apply(ctx)
                if out.data.get("changed"):
                    applied += 1
                    log(out.message + (f" ({out.steps[0].detail})" if out.steps else ""))
        except CdlibError as exc:  # keep the last good configuration and keep watching
            failures += 1
            log(f"not applied: {exc}")
        if once:
            break
        remaining = None if deadline is None else deadline - clock.monotonic()
        if remaining is not None and remaining <= 0:
            break
        wait = interval if remaining is None else min(interval, remaining)
        try:
            changed = store.watch(keys.ROOT, since, wait)
        except CdlibError as exc:
            failures += 1
            log(f"registry unavailable: {exc}")
            clock.sleep(min(wait, 2.0))
            continue
        if changed is not None:
            since = changed
            settle = clock.monotonic() + debounce  # a burst of changes makes one reload
            while clock.monotonic() < settle:
                try:
                    more = store.watch(keys.ROOT, since, max(0.0, settle - clock.monotonic()))
                except CdlibError as exc:  # a registry blip must not end the watch: apply what we have
                    failures += 1
                    log(f"registry unavailable: {exc}")
                    break
                if more is None:
                    break
                since = more
    failed_once = once and failures > 0
    return ProxyOutcome("proxy", ctx.service, not failed_once, 1 if failed_once else 0,
                   f"watch ended: {applied} reload(s), {failures} failure(s)",
                   [], {"applied": applied, "failures": failures})
