"""Keep what a verb holds alive while it works: its locks and the TTLs of its release's registrations.

A lock is refreshed only by a process that works under it, so a lock that nobody refreshes has a
dead or stuck holder. One daemon thread per verb refreshes every item every ttl/3 (the fraction is
the lock policy's, ``cdlib.context.LockPolicy``; the service lock,
the store-wide proxy lock while it is held, the registrations that carry the release's TTL), so a
test suite may run for a day under a one-hour lock. A refresh that finds a lock lost (taken over
after it expired, deleted) is recorded; the verb calls check() between steps and fails there, before
acting again, instead of going on without the lock. A store error is retried at the next beat.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .clock import Clock, as_clock
from .errors import CdlibError, LockHeld, ReleaseFailed

if TYPE_CHECKING:
    from .store.base import Store


class LockLost(ReleaseFailed):
    """The verb's lock was taken over or removed while it worked: it must not act again."""


@dataclass
class _Item:
    name: str
    refresh: Callable[[], None]
    interval: float
    due: float
    lock: bool  # a lock: losing it (LockHeld) makes the verb fail; other items only log
    token: str | None = None  # the lock's token


class Heartbeat:
    """Refresh registered items from a daemon thread until stop(). beat(now) runs one pass (tests).
    Due times follow clock.monotonic(); the thread waits for them on real time (with a manual clock,
    a test runs the passes itself with beat())."""

    def __init__(self, clock: Clock | None = None, name: str = "cdlib-heartbeat", fraction: float = 1 / 3):
        self.clock = as_clock(clock)
        self.name = name
        self.fraction = fraction  # a lock of ttl seconds is refreshed every ttl x fraction
        self._items: dict[str, _Item] = {}
        self._mutex = threading.RLock()  # held while an item refreshes: drop() waits for it
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: LockLost | None = None
        self.errors: list[str] = []  # refreshes that failed for another reason (retried)

    # -- what to refresh ------------------------------------------------------------------------------
    def hold_lock(self, store: Store, key: str, token: str, ttl: float) -> None:
        """Refresh the lock key (token) every ttl x fraction (ttl/3) while held."""
        self.add(f"lock {key}", lambda: store.refresh_lock(key, token, ttl), ttl * self.fraction, lock=True,
                 token=token)

    def add(self, name: str, refresh: Callable[[], None], interval: float, lock: bool = False,
            token: str | None = None) -> None:
        interval = max(0.05, interval)
        with self._mutex:
            self._items[name] = _Item(name, refresh, interval, self.clock.monotonic() + interval, lock, token)
        self._wake.set()

    def drop(self, name: str) -> None:
        """Stop refreshing name; when this returns, its refresh is not running and never runs again."""
        with self._mutex:
            self._items.pop(name, None)

    def drop_lock(self, key: str, token: str | None = None) -> None:
        """Stop refreshing the lock key; with token, only when it is that token's (a verb that rolls
        back an abandoned release before opening its own keeps refreshing its own lock)."""
        with self._mutex:
            item = self._items.get(f"lock {key}")
            if item is not None and (token is None or item.token == token):
                del self._items[item.name]

    def holds(self, name: str) -> bool:
        with self._mutex:
            return name in self._items

    # -- the verb's side ----------------------------------------------------------------------------
    def check(self) -> None:
        """Raise LockLost when a refresh found a lock lost: called before every step."""
        if self.lost is not None:
            raise self.lost

    # -- the thread ---------------------------------------------------------------------------------
    def beat(self, now: float | None = None) -> None:
        """Refresh every item that is due."""
        now = self.clock.monotonic() if now is None else now
        with self._mutex:
            for item in [i for i in self._items.values() if i.due <= now]:
                if self._items.get(item.name) is not item:
                    continue
                try:
                    item.refresh()
                except LockHeld as exc:
                    if item.lock:
                        self._items.pop(item.name, None)
                        if self.lost is None:
                            self.lost = LockLost(f"{item.name[5:]} was lost while this process worked ({exc}); "
                                                 "stopping before the next step")
                        continue
                    self.errors.append(str(exc))
                except CdlibError as exc:  # the store is away: try again soon, at the latest before expiry
                    self.errors.append(str(exc))
                    item.due = now + min(item.interval, 5.0)
                    continue
                except Exception as exc:  # noqa: BLE001 - the thread must keep refreshing the other items
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                item.due = now + item.interval
            del self.errors[:-20]  # the latest are enough to explain a lost lock

    def _next_due(self) -> float | None:
        with self._mutex:
            return min((i.due for i in self._items.values()), default=None)

    def _run(self) -> None:
        while not self._stopped.is_set():
            due = self._next_due()
            timeout = None if due is None else max(0.0, due - self.clock.monotonic())
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stopped.is_set():
                return
            self.beat()

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stopped.is_set()

    def start(self) -> Heartbeat:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread; when this returns, no refresh runs any more."""
        self._stopped.set()
        self._wake.set()
        with self._mutex:
            self._items.clear()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self._thread = None
