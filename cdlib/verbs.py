"""The verbs: deploy, test, switch, cleanup, rollback, release, status, color, history.

Each verb that changes the world runs the steps of ``cdlib.steps`` inside the release transaction of
``cdlib.transaction`` (open, guard, roll back, close), under the locks of ``cdlib.locks``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import journal as jr
from . import keys, plan
from .context import Ctx
from .errors import (
    EXIT_UNDO_INCOMPLETE,
    CdlibError,
    ConfigError,
    LockHeld,
    StoreError,
    TestsFailed,
    UsageError,
)
from .journal import Journal
from .locks import DEFAULT_LOCK_TTL, adopt, check_lock_times, proxy_lock, why_free, working
from .model import TEST_TYPES, Instance, StepReport, other_color
from .registry import live_record, revert_target
from .results import ColorOutcome, HealOutcome, HistoryOutcome, ReleaseOutcome, ScaleOutcome, StatusOutcome
from .steps import CLEANUP_STEPS, DEPLOY_STEPS, REVERT_STEPS, SWITCH_STEPS, started_instances
from .store.base import ALIVE
from .testrun.base import TestRun
from .transaction import (
    close_success,
    finish_leftovers,
    guard,
    make_outcome,
    open_release,
    require_open,
    rollback_open,
    run_steps,
)


def deploy(ctx: Ctx, *, lock_wait: float = 0.0, lock_ttl: float = DEFAULT_LOCK_TTL) -> ReleaseOutcome:
    """Open a release; start the next color beside the live one; wait until healthy; register it."""
    def body() -> ReleaseOutcome:
        open_release(ctx, ctx.spec.image.ref, lock_wait, lock_ttl)
        run_steps(ctx, DEPLOY_STEPS)
        ctx.open_journal.phase = jr.DEPLOYED
        ctx.open_journal.save()
        return make_outcome(ctx, "deploy", True, 0, f"{ctx.service} {ctx.rec.color} is up and healthy beside the "
                        "live color; next: 'cdlib test pre-integration', then 'cdlib switch'",
                        instances=started_instances(ctx))
    with working(ctx):
        return guard(ctx, "deploy", body)


def switch(ctx: Ctx, *, busy_proxy_fails: bool = False) -> ReleaseOutcome:
    """Point the proxy at the new color, prove it answers through the proxy, then store it as live.
    A busy proxy lock leaves the release deployed (exit 3) unless busy_proxy_fails (release)."""
    def body() -> ReleaseOutcome:
        j = require_open(ctx, (jr.DEPLOYED,), "switch")
        with proxy_lock(ctx.ports.store, j.id, f"switch {ctx.service}", heartbeat=ctx.heartbeat,
                        service=ctx.service, policy=ctx.lock_policy):
            j.phase = jr.SWITCHING
            j.save()
            run_steps(ctx, SWITCH_STEPS)
        j.phase = jr.SWITCHED
        j.save()
        return make_outcome(ctx, "switch", True, 0, f"{ctx.service} now serves {j.record.color} through "
                        f"{ctx.ports.proxy.url()}; next: 'cdlib test post-integration', then 'cdlib cleanup'")
    with working(ctx):
        return guard(ctx, "switch", body, busy_proxy_fails=busy_proxy_fails)


def cleanup(ctx: Ctx) -> ReleaseOutcome:
    """Stop and de-register the old color (kept stopped for a quick rollback); close the release."""
    with working(ctx):
        return _cleanup(ctx)


def _cleanup(ctx: Ctx) -> ReleaseOutcome:
    j = require_open(ctx, (jr.SWITCHED, jr.CLEANING), "cleanup")
    j.phase = jr.CLEANING
    j.save()
    try:
        run_steps(ctx, CLEANUP_STEPS)
        ctx.check()
    except (Exception, plan.Interrupted) as exc:
        return make_outcome(ctx, "cleanup", False, EXIT_UNDO_INCOMPLETE,
                        f"cleanup of {ctx.service} failed: {plan._reason(exc)}; {j.record.color} is live and "
                        "the release stays open: fix the cause and run 'cdlib cleanup' again")
    try:
        close_success(ctx)
    except StoreError as exc:
        return make_outcome(ctx, "cleanup", False, EXIT_UNDO_INCOMPLETE,
                        f"cleanup of {ctx.service} could not close release {j.id} ({exc}); {j.record.color} is "
                        "live and the release stays open: run 'cdlib cleanup' again")
    return make_outcome(ctx, "cleanup", True, 0, f"{ctx.service} release {j.id} is done: {j.record.color} is live")


def run_tests(ctx: Ctx, test_type: str, *, target_url: str | None = None, junit: Path | None = None,
              rollback_on_failure: bool = True) -> ReleaseOutcome:
    """Run one suite. Inside an open release, a failure (unless the suite is marked unstable) rolls
    the release back. The release's locks are refreshed while the suite runs, however long it takes."""
    if test_type not in TEST_TYPES:
        raise ConfigError(f"test: TYPE must be pre-deployment, pre-integration or post-integration, "
                          f"got {test_type!r}", key="TYPE")
    with working(ctx):
        return _run_tests(ctx, test_type, target_url, junit, rollback_on_failure)


def _run_tests(ctx: Ctx, test_type: str, target_url: str | None, junit: Path | None,
               rollback_on_failure: bool) -> ReleaseOutcome:
    spec = ctx.spec
    suite = spec.tests.get(test_type)
    if test_type != "pre-deployment":
        phases = (jr.DEPLOYED,) if test_type == "pre-integration" else (jr.SWITCHED,)
        require_open(ctx, phases, f"test {test_type}")
    if suite is None:
        ctx.emit(StepReport(f"test {test_type}", "skipped", 0.0, f"no {test_type} suite in the descriptor"))
        return make_outcome(ctx, "test", True, 0, f"no {test_type} suite for {spec.name}", tests=[])

    def body() -> ReleaseOutcome:
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
            return make_outcome(ctx, "test", True, 0, msg, tests=[result.to_dict()])
        error = TestsFailed(f"{test_type} tests failed (exit {result.exit_code})", result=result.to_dict())
        if ctx.journal is None or not rollback_on_failure:
            return make_outcome(ctx, "test", False, 1, f"{spec.name}: {error}", tests=[result.to_dict()])
        raise error

    outcome = guard(ctx, "test", body, rollback_on_failure)
    if not outcome.ok and "tests" not in outcome.data and ctx.journal is not None:
        outcome.data["tests"] = ctx.journal.record.tests[-1:]
    return outcome


def _test_target(ctx: Ctx, test_type: str) -> tuple[dict[str, Any], str]:
    if test_type == "pre-deployment":
        return {}, ""
    if test_type == "pre-integration":
        urls = [Instance.from_dict(i).url for i in started_instances(ctx)]
        return {"TARGET_URLS": " ".join(urls), "CDLIB_COLOR": ctx.rec.color, "CDLIB_RELEASE": ctx.rec.id}, urls[0]
    routes = ctx.spec.routes
    base = ctx.ports.proxy.url()
    env = {"CDLIB_COLOR": ctx.rec.color, "CDLIB_RELEASE": ctx.rec.id, "PROXY_URL": base}
    if routes.paths:
        return env, base + routes.paths[0]
    env["TARGET_HOST"] = routes.hosts[0]
    return env, base + "/"


def _junit_path(ctx: Ctx, test_type: str) -> Path | None:
    d = ctx.ports.junit_dir
    return None if d is None else Path(d) / f"cdlib-{ctx.service}-{test_type}.xml"


def rollback(ctx: Ctx, *, to: str | None = None, previous: bool = False, lock_wait: float = 0.0,
             lock_ttl: float = DEFAULT_LOCK_TTL) -> ReleaseOutcome:
    """With an open release: undo it from its journal. Without one, no release changes: only what a
    killed close or a killed suite left behind is finished (set-aside instances of closed releases,
    test containers whose process is gone, a lock whose holder is gone). Returning to an earlier
    release takes ``previous`` (the release before the live one) or ``to`` (a release from history):
    resume its stopped color when it is still there, else deploy its image again; then switch and clean
    up, without test suites."""
    check_lock_times(lock_wait, lock_ttl)
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
        raise LockHeld(f"{j.what} {j.id} of {ctx.service} is still running in process {holder['pid']} "
                       f"({holder.get('build') or holder.get('who')}); wait for it to finish or fail (it rolls "
                       "itself back), or stop it and run 'cdlib rollback'", holder=holder)
    with working(ctx):
        try:
            adopt(ctx, j)
        except LockHeld:
            pass  # the lock went (expired, taken, removed): the journal's compare-and-set still guards the undo
        ctx.journal = j
        out = rollback_open(ctx, "rollback requested")
        if out.exit_code == 1:
            out.ok, out.exit_code = True, 0
            out.message = out.message.replace("failed: rollback requested; rolled back", "rolled back")
            finish_leftovers(ctx)
            out.steps = list(ctx.steps)
        return out


def _nothing_open(ctx: Ctx) -> ReleaseOutcome:
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
            done.append(f"{what} of release {removed.get('release') or '?'} ({why_free(removed)})")
            ctx.emit(StepReport("leftovers", "done", time.monotonic() - t0, f"removed {done[-1]}"))
    done += finish_leftovers(ctx)
    msg = f"{ctx.service} has no open release: nothing to roll back"
    if done:
        msg += f"; finished what an interrupted release left: {', '.join(done)}"
    msg += "; to return to the previous release, run 'cdlib rollback --previous'"
    return ReleaseOutcome("rollback", ctx.service, True, 0, msg, list(ctx.steps), {"release": None, "leftovers": done})


def _revert(ctx: Ctx, to: str | None, lock_wait: float, lock_ttl: float) -> ReleaseOutcome:
    target = revert_target(ctx.ports.store, ctx.service, to)

    def body() -> ReleaseOutcome:
        open_release(ctx, target["image"], lock_wait, lock_ttl, revert_of=target["id"])
        color = ctx.rec.color
        stopped = [i for i in ctx.ports.runtime.instances(ctx.service, color)
                   if not i.running and i.image == target["image"]]
        steps = DEPLOY_STEPS
        if stopped and len({i.release for i in stopped}) == 1:
            release = stopped[0].release
            def resume_intent(c: Ctx, r: str = release) -> dict[str, Any]:
                return {"release": r}
            steps = [plan.Step(s.name, s.do, intent=resume_intent if s.name == "resume"
                               else s.intent, describe=s.describe) for s in REVERT_STEPS]
        run_steps(ctx, steps)
        ctx.open_journal.phase = jr.DEPLOYED
        with proxy_lock(ctx.ports.store, ctx.open_journal.id, f"switch {ctx.service}", heartbeat=ctx.heartbeat,
                        service=ctx.service, policy=ctx.lock_policy):
            run_steps(ctx, SWITCH_STEPS)
        ctx.open_journal.phase = jr.SWITCHED
        ctx.open_journal.save()
        out = _cleanup(ctx)
        out.verb = "rollback"
        if out.ok:
            out.message = f"{ctx.service} is back on {target['image']} (release {target['id']}) as {color}"
        return out
    with working(ctx):
        return guard(ctx, "rollback", body, busy_proxy_fails=True)


def release(ctx: Ctx, *, lock_wait: float = 0.0, lock_ttl: float = DEFAULT_LOCK_TTL) -> ReleaseOutcome:
    """deploy -> pre-integration tests -> switch -> post-integration tests -> cleanup, in one process
    and under one heartbeat; any failure rolls everything back."""
    with working(ctx):
        tests: list[Any] = []
        verbs: tuple[Callable[[], ReleaseOutcome], ...] = (lambda: deploy(ctx, lock_wait=lock_wait, lock_ttl=lock_ttl),
                     lambda: run_tests(ctx, "pre-integration"),
                     lambda: switch(ctx, busy_proxy_fails=True),
                     lambda: run_tests(ctx, "post-integration"),
                     lambda: cleanup(ctx))
        for verb in verbs:
            out = verb()
            tests += out.data.get("tests", [])
            if not out.ok:
                out.verb = "release"
                out.data["tests"] = tests
                return out
        out.verb = "release"
        out.message = (f"released {ctx.spec.image.ref} as {ctx.rec.color}: {ctx.service} answers through "
                       f"{ctx.ports.proxy.url()}" + (ctx.spec.routes.paths[0] if ctx.spec.routes.paths else ""))
        out.data["tests"] = tests
        return out


def status(ctx: Ctx, *, check_health: bool = True) -> StatusOutcome:
    store, s = ctx.ports.store, ctx.spec
    live = live_record(store, s.name)
    j = Journal.load(store, s.name)
    lock = store.lock_info(keys.lock(s.name))
    regs = store.registrations(s.name)
    data = {"live": live, "next_color": other_color(live["color"] if live else None),
            "open_release": None, "lock": lock, "registered": regs}
    if j is not None:
        data["open_release"] = {"id": j.id, "phase": j.phase, "color": j.record.color,
                                "image": j.record.image,
                                "steps": [{"name": st.name.value, "state": st.state} for st in j.steps]}
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
    data["proxy"] = _proxy_status(ctx)
    if live:
        from .healing import live_replicas

        count, source = live_replicas(store, s.name, live)
        data["replicas"] = {"count": count, "source": source}
    msg = (f"{s.name}: live {live['color']} ({live.get('image')})" if live else f"{s.name}: nothing live yet")
    if j is not None:
        msg += f"; open release {j.id} ({j.phase})"
    return StatusOutcome("status", s.name, True, 0, msg, [], data)


def _proxy_status(ctx: Ctx) -> dict[str, Any]:
    """The proxy's own view (kind, URL, each replica's configuration digest where it has replicas)
    and which way its next change would go (runtime or reload) and why. A proxy that cannot be read
    is reported, not raised (a registration without an address included): status still shows the rest."""
    from .proxyctl import switch_plan

    try:
        return dict(ctx.ports.proxy.status(), next_change=switch_plan(ctx))
    except CdlibError as exc:
        return {"kind": ctx.spec.proxy.kind, "error": str(exc)}
    except (KeyError, TypeError, ValueError) as exc:  # a malformed registration: drift shows which
        return {"kind": ctx.spec.proxy.kind, "error": f"cannot render from the registry: {type(exc).__name__} {exc}"}


def color(ctx: Ctx, *, next_color: bool = False) -> ColorOutcome:
    live = live_record(ctx.ports.store, ctx.service)
    current = live["color"] if live else None
    value = other_color(current) if next_color else current
    return ColorOutcome("color", ctx.service, True, 0, value or "", [], {"color": value, "live": current})


def history(ctx: Ctx, *, limit: int | None = 20) -> HistoryOutcome:
    entries = jr.history(ctx.ports.store, ctx.service, limit)
    return HistoryOutcome("history", ctx.service, True, 0, f"{len(entries)} release(s)", [], {"history": entries})


def heal(ctx: Ctx, *, watch: bool = False, interval: float = 30.0, max_rounds: int | None = None,
         max_seconds: float | None = None, log: Callable[[str], None] | None = None) -> HealOutcome:
    """Bring the live color back to its replica count: dead instances started again on their
    pinned ports, registrations and the proxy repaired (cdlib.healing)."""
    from . import healing

    return healing.heal(ctx, watch=watch, interval=interval, max_rounds=max_rounds, max_seconds=max_seconds,
                        log=log)


def scale(ctx: Ctx, replicas: object, *, lock_wait: float = 0.0, lock_ttl: float = DEFAULT_LOCK_TTL) -> ScaleOutcome:
    """Run N, +N or -N instances of the live color, journaled like a release (cdlib.healing)."""
    from . import healing

    return healing.scale(ctx, replicas, lock_wait=lock_wait, lock_ttl=lock_ttl)
