"""The locks a verb works under: the service lock (taken at open, adopted by each later stage,
parked between stages) and the store-wide proxy lock; the heartbeat that refreshes them while a
verb works. The lock algorithm itself is the store's (``cdlib.store.base``)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import keys, plan
from .context import Ctx, LockPolicy
from .errors import CdlibError, ConfigError, LockHeld, StoreError
from .heartbeat import Heartbeat
from .journal import Journal
from .store.base import ALIVE, GONE, Store, default_holder, forget_lock, holder_state

DEFAULT_LOCK_TTL = LockPolicy.ttl  # the times of the locks are the context's LockPolicy


MIN_LOCK_TTL = 10.0  # refreshed every ttl/3: below this, a busy store or a paused VM loses the lock


def check_lock_times(lock_wait: float, lock_ttl: float) -> None:
    """The lock is refreshed every ttl/3 while its holder works: a TTL below MIN_LOCK_TTL (or NaN)
    would let another process take the release over while it runs, and the registrations vanish.
    Refused before anything changes."""
    if isinstance(lock_ttl, bool) or not isinstance(lock_ttl, (int, float)) or not math.isfinite(lock_ttl) \
            or lock_ttl < MIN_LOCK_TTL:
        raise ConfigError(f"--lock-ttl: expected a number of seconds from {MIN_LOCK_TTL:g}, got {lock_ttl!r}",
                          key="--lock-ttl")
    if not isinstance(lock_wait, (int, float)) or not math.isfinite(lock_wait) or lock_wait < 0:
        raise ConfigError(f"--lock-wait: expected a number of seconds from 0, got {lock_wait!r}", key="--lock-wait")


def holder_for(ctx: Ctx, **extra: Any) -> dict[str, Any]:
    return default_holder(service=ctx.service, **extra)


def heartbeat_of(ctx: Ctx) -> Heartbeat:
    if ctx.heartbeat is None:  # a helper called outside a verb (tests): refresh nothing in the background
        ctx.heartbeat = _heartbeat(ctx)
    return ctx.heartbeat


def _heartbeat(ctx: Ctx, name: str = "cdlib-heartbeat") -> Heartbeat:
    return Heartbeat(clock=ctx.clock, name=name, fraction=ctx.lock_policy.heartbeat_fraction)


def why_free(taken_over: dict[str, Any] | None) -> str:
    if taken_over is None:
        return "its lock was free"
    if taken_over.get("state") == GONE:
        return f"its process {taken_over.get('pid')} on {taken_over.get('host') or taken_over.get('who')} is gone"
    return "its lock expired"


def adopt(ctx: Ctx, j: Journal) -> None:
    """This process now works under the release's lock: its pid in the holder record (so a kill is
    recognised), refreshed by the heartbeat. Raises LockHeld when the lock was lost, or when another
    live process on this host works under it right now (two processes never drive one release)."""
    store, key = ctx.ports.store, keys.lock(ctx.service)
    info = store.lock_info(key) or {}
    if info.get("state") == ALIVE and info.get("pid") != os.getpid():
        raise LockHeld(f"{j.what} {j.id} of {ctx.service} is being driven by process {info.get('pid')} "
                       f"({info.get('build') or info.get('who')}); wait for it to finish", holder=info)
    ttl = j.record.lock_ttl or DEFAULT_LOCK_TTL
    me = holder_for(ctx)
    token = j.record.lock_token or ""  # a record without a token: no lock has an empty one, LockHeld
    store.refresh_lock(key, token, ttl, parked=None,
                       **{k: me[k] for k in ("who", "host", "pid", "proc", "build", "build_url")})
    ctx.lock_token = j.record.lock_token
    heartbeat_of(ctx).hold_lock(store, key, token, ttl)


@contextmanager
def working(ctx: Ctx) -> Iterator[None]:
    """Run a verb with a heartbeat (refreshing its locks and registration TTLs); stop it when the verb
    ends. A release the verb leaves open (a stage done, an undo incomplete) has its lock parked: no
    process works under it until the next stage adopts it, so it is taken over only once it expires.
    A process killed mid-verb leaves its own pid in the record: a dead holder, taken over at once
    (in tests, an exception that nothing in cdlib catches stands for the kill: nothing is parked)."""
    if ctx.heartbeat is not None and ctx.heartbeat.running:  # a stage of 'release': the release owns it
        yield
        return
    ctx.heartbeat = _heartbeat(ctx, name=f"cdlib-heartbeat-{ctx.service}").start()
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
            store.refresh_lock(key, token, ctx.rec.lock_ttl or DEFAULT_LOCK_TTL, parked=True)
    except CdlibError:
        pass  # lost, or the store is away: the record names this process, which is about to end


def release_locks(ctx: Ctx, j: Journal) -> None:
    """Every lock the closed release held: the service lock (its token is in the record) and the
    store-wide proxy lock when its holder record names this release and that process does not work
    any more (killed between taking the proxy lock and writing the proxy step's intent)."""
    store = ctx.ports.store
    if ctx.heartbeat is not None:
        ctx.heartbeat.drop_lock(keys.lock(ctx.service), j.record.lock_token)
    try:
        store.release_lock(keys.lock(ctx.service), j.record.lock_token or "")  # "": no lock's token
        store.break_lock(keys.PROXY_LOCK, lambda holder: holder.get("release") == j.id, unexpired=True)
    except StoreError:
        pass  # a lock left behind here names a closed release: the next taker finds its holder gone or expired


class ProxyBusy(LockHeld):
    """Another proxy change held the proxy lock for longer than the wait."""


@contextmanager
def proxy_lock(store: Store, release: str | None = None, purpose: str = "", wait: float | None = None,
               heartbeat: Heartbeat | None = None, service: str | None = None,
               policy: LockPolicy | None = None) -> Iterator[None]:
    """Hold the store-wide proxy lock: one proxy change (render, apply, live write) at a time across
    services and machines, refreshed by the heartbeat while held. A lock whose holder is gone (a
    process killed mid-switch) is taken over at once; a live holder's is waited for (policy's
    proxy_lock_wait unless wait is given, on the store's clock), even of the same release (a second
    process racing). Raises ProxyBusy when the wait runs out."""
    policy = policy or LockPolicy()
    holder = default_holder(release=release, purpose=purpose, service=service)
    try:
        lock = store.acquire_lock(keys.PROXY_LOCK, holder, policy.proxy_lock_ttl,
                                  wait=policy.proxy_lock_wait if wait is None else wait, poll=policy.poll)
    except LockHeld as busy:
        raise ProxyBusy(f"the proxy is busy: {busy}", **busy.data) from None
    own = heartbeat is None or not heartbeat.running
    beat = Heartbeat(clock=store.timer(), name="cdlib-heartbeat-proxy", fraction=policy.heartbeat_fraction).start() \
        if heartbeat is None or own else heartbeat
    beat.hold_lock(store, keys.PROXY_LOCK, lock.token, policy.proxy_lock_ttl)
    try:
        yield
    except (Exception, plan.Interrupted, KeyboardInterrupt, SystemExit):
        _let_go_of_proxy(store, beat, own, lock.token, release=True)
        raise
    except BaseException:  # killed: the record stays, naming a process that no longer works under it
        _let_go_of_proxy(store, beat, own, lock.token, release=False)
        raise
    _let_go_of_proxy(store, beat, own, lock.token, release=True)


def _let_go_of_proxy(store: Store, beat: Heartbeat, own: bool, token: str, release: bool) -> None:
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


def owner_gone(owner: dict[str, Any]) -> bool:
    """owner: host, pid (and proc) of the process that started a test container."""
    return holder_state({k: owner.get(k) for k in ("host", "pid", "proc")}) == GONE
