"""The release transaction: open (checks, lock, record), claim, guard, roll back, close, and the
leftovers a killed process left behind.

Failure classes:
- before the switch: the new color is removed, what was set aside is put back: the world is as it was;
- after the switch: the previous proxy configuration is restored byte for byte and reloaded, the
  live color is restored, then the new color is removed;
- during cleanup: the record stays open and the live color is never touched; re-run ``cleanup``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import journal as jr
from . import keys, plan
from .context import Ctx
from .errors import (
    EXIT_UNDO_INCOMPLETE,
    CdlibError,
    LockHeld,
    NothingToRollBack,
    StoreError,
    UndoIncomplete,
    UsageError,
)
from .journal import Journal
from .locks import (
    DEFAULT_LOCK_TTL,
    ProxyBusy,
    adopt,
    check_lock_times,
    heartbeat_of,
    holder_for,
    owner_gone,
    proxy_lock,
    release_locks,
    why_free,
)
from .model import StepReport, other_color
from .record import ReleaseRecord, StepName
from .registry import check_routes
from .results import ReleaseOutcome
from .runtime.base import ASIDE
from .steps import UNDO, keep_registrations, registration_of, started_instances, stop_keeping_registrations


def preflight(ctx: Ctx) -> None:
    """The proxy's own checks (binary, template, listen address) before the lock is taken: a release
    that could never switch fails as bad input, with nothing changed."""
    check = getattr(ctx.ports.proxy, "preflight", None)
    if callable(check):
        check()


def open_release(ctx: Ctx, image: str, lock_wait: float, lock_ttl: float, revert_of: str | None = None) -> None:
    store, s = ctx.ports.store, ctx.spec
    check_lock_times(lock_wait, lock_ttl)
    check_routes(ctx)
    preflight(ctx)
    ctx.ports.runtime.ping()  # an unreachable engine fails the release before anything is changed
    release_id = jr.new_release_id()
    holder = holder_for(ctx, release=release_id, image=image)
    lock = store.acquire_lock(keys.lock(s.name), holder, lock_ttl, wait=lock_wait, poll=ctx.lock_policy.poll)
    ctx.lock_token = lock.token
    hb = heartbeat_of(ctx)
    hb.hold_lock(store, keys.lock(s.name), lock.token, lock_ttl)
    try:
        abandoned = Journal.load(store, s.name)
        if lock.taken_over is not None and abandoned is None:
            ctx.emit(StepReport("take-over", "done", 0.0, f"took the lock of {s.name} over: "
                                f"release {lock.taken_over.get('release') or '?'} left it ({why_free(lock.taken_over)})"))
        if abandoned is not None:
            # the lock was free, expired or left by a dead process, yet a release is open: undo it first
            why = why_free(lock.taken_over)
            ctx.emit(StepReport("take-over", "done", 0.0,
                                f"release {abandoned.id} was abandoned ({why}); rolling it back first"))
            ctx.journal = abandoned  # its lock token is stale: releasing it is a no-op
            out = rollback_open(ctx, f"taken over: {why}")
            if out.exit_code == EXIT_UNDO_INCOMPLETE:
                raise UndoIncomplete(f"the abandoned release {abandoned.id} of {s.name} could not be fully rolled "
                                     "back; fix the cause and run 'cdlib rollback'")
            ctx.journal, ctx.closed = None, False
        finish_leftovers(ctx)
        live = store.get(keys.live(s.name))
        prev = live.json() if live else None
        color = other_color(prev["color"] if prev else None)
        ctx.journal = Journal.create(store, s.name, ReleaseRecord(
            id=release_id, service=s.name, image=image, color=color, previous=prev, holder=holder,
            lock_token=lock.token, lock_ttl=lock_ttl, revert_of=revert_of,
            prior={"live": live.value if live else None},
        ))
    except (Exception, plan.Interrupted, KeyboardInterrupt):
        hb.drop_lock(keys.lock(s.name), lock.token)
        store.release_lock(keys.lock(s.name), lock.token)
        ctx.lock_token = None
        raise
    ctx.emit(StepReport("open", "done", 0.0, f"release {release_id}: {image} as {color}"
                        + (f" beside {prev['color']} ({prev.get('image', '?')})" if prev else " (first release)")))


def require_open(ctx: Ctx, phases: tuple[str, ...], verb: str) -> Journal:
    j = Journal.load(ctx.ports.store, ctx.service)
    if j is None:
        raise UsageError(f"{ctx.service} has no open release; run 'cdlib deploy' first")
    if j.phase not in phases:
        raise UsageError(f"{verb}: release {j.id} of {ctx.service} is {j.phase}; {verb} needs it to be "
                         + " or ".join(phases))
    adopt(ctx, j)
    ctx.journal = j
    ttl = j.record.lock_ttl or DEFAULT_LOCK_TTL
    if j.phase in (jr.DEPLOYED, jr.SWITCHED) and j.done(StepName.REGISTER):
        for inst in started_instances(ctx):  # the release goes on: so do its registrations
            ctx.ports.store.register(ctx.service, j.record.color, inst["name"], registration_of(ctx, inst),
                                     ttl=ttl)
        keep_registrations(ctx)
    return j


def run_steps(ctx: Ctx, steps: list[plan.Step]) -> None:
    """plan.run, with a check before every step that the verb still holds its locks."""
    assert ctx.journal is not None, "run_steps needs an open release"
    plan.run(ctx, ctx.journal, [_checked(s) for s in steps], ctx.emit)


def _checked(step: plan.Step) -> plan.Step:
    def intent(c: Ctx, original: Callable[[Any], dict[str, Any]] | None = step.intent) -> dict[str, Any]:
        c.check()
        return original(c) if original else {}
    return plan.Step(step.name, step.do, intent=intent, describe=step.describe)


def rollback_open(ctx: Ctx, reason: str) -> ReleaseOutcome:
    """Undo the open release in ctx.journal; close it; release every lock it held; return the
    outcome (exit 1, or 4)."""
    j = ctx.journal
    assert j is not None, "rollback_open needs an open release"
    stop_keeping_registrations(ctx)
    _claim(j)
    try:
        failed = _undo_all(ctx, j)
    except plan.Interrupted:  # a second SIGTERM while undoing: what is left stays on record
        failed = ["the rest (interrupted)"]
    if failed:
        _save_phase(j, jr.STUCK)
        msg = (f"{j.what} {j.id} of {ctx.service} failed ({reason}) and the undo of {', '.join(failed)} failed "
               "too: a person is needed; fix the cause and run 'cdlib rollback' again")
        return make_outcome(ctx, "rollback", False, EXIT_UNDO_INCOMPLETE, msg)
    try:
        j.close("rolled-back", reason)
    except StoreError as exc:  # undone, but still on record: exit 4, and 'rollback' closes it
        return make_outcome(ctx, "rollback", False, EXIT_UNDO_INCOMPLETE,
                        f"{j.what} {j.id} of {ctx.service} failed ({reason}) and was undone, but its record could "
                        f"not be closed ({exc}); run 'cdlib rollback' again")
    ctx.closed = True
    release_locks(ctx, j)
    prev = j.record.previous
    where = f"{prev['color']} ({prev.get('image')}) is live" if prev else "nothing is live"
    return make_outcome(ctx, "rollback", False, 1, f"{j.what} {j.id} of {ctx.service} failed: {reason}; rolled back, "
                    f"{where} as before")


def _undo_all(ctx: Ctx, j: Journal) -> list[str]:
    """Undo the journal; under the proxy lock when the proxy step is among the undos (the store may
    be away: then the undos run without it, as well as they can). When another proxy change holds
    the lock past the wait, nothing is undone (removing the new color while the proxy may still
    route to it would drop requests): the record stays open for the next 'rollback'."""
    touches_proxy = any(s.name in (StepName.PROXY, StepName.LIVE) and s.state in jr.NEEDS_UNDO for s in j.steps)
    if not touches_proxy:
        return plan.undo(ctx, j, UNDO, ctx.emit)
    try:
        with proxy_lock(ctx.ports.store, j.id, f"rollback {ctx.service}", heartbeat=ctx.heartbeat,
                        service=ctx.service, policy=ctx.lock_policy):
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


def finish_leftovers(ctx: Ctx) -> list[str]:
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
            done += remove(ctx.service, owner_gone)
        except CdlibError as exc:
            ctx.emit(StepReport("leftovers", "done", time.monotonic() - t0, f"warning: test containers kept: {exc}"))
    if done:
        ctx.emit(StepReport("leftovers", "done", time.monotonic() - t0, "removed " + ", ".join(done)))
    return done


def close_success(ctx: Ctx) -> None:
    j = ctx.journal
    assert j is not None, "close_success needs an open release"
    runtime = ctx.ports.runtime
    stop_keeping_registrations(ctx)
    j.close("released")
    ctx.closed = True
    if ctx.heartbeat is not None:
        ctx.heartbeat.drop_lock(keys.lock(ctx.service), j.record.lock_token)
    ctx.ports.store.release_lock(keys.lock(ctx.service), j.record.lock_token or "")  # "": no lock's token
    t0 = time.monotonic()
    try:
        removed = runtime.remove(ctx.service, j.record.color, aside=True)
    except CdlibError as exc:  # leftovers only cost disk; the release is done
        ctx.emit(StepReport("close", "done", time.monotonic() - t0, f"warning: set-aside instances kept: {exc}"))
        return
    ctx.emit(StepReport("close", "done", time.monotonic() - t0,
                        "release closed" + (f"; removed {', '.join(removed)}" if removed else "")))


def make_outcome(ctx: Ctx, verb: str, ok: bool, code: int, message: str, **data: Any) -> ReleaseOutcome:
    rec = ctx.journal.record if ctx.journal else None
    base = {"release": rec.id, "color": rec.color, "image": rec.image,
            "previous_color": (rec.previous or {}).get("color")} if rec is not None else {}
    base.update(data)
    return ReleaseOutcome(verb, ctx.service, ok, code, message, list(ctx.steps), base)


def guard(ctx: Ctx, verb: str, body: Callable[[], ReleaseOutcome], rollback_on_failure: bool = True,
           busy_proxy_fails: bool = False) -> ReleaseOutcome:
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


def _roll_back(ctx: Ctx, verb: str, reason: str) -> ReleaseOutcome:
    outcome = rollback_open(ctx, reason)
    outcome.verb = verb
    return outcome
