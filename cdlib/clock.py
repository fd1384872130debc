"""Time, passed in: the wall clock (lock expiry, record stamps), the monotonic clock (deadlines) and
sleep (wait loops) of the stores, the locks and the polls.

The real clock is the default everywhere. A manual clock stands still until it is moved: sleep()
moves it at once instead of waiting, so a wait of minutes runs in no time and an expiry is rehearsed
by moving the clock. What another process would do meanwhile is scheduled on the clock
(``schedule``) and happens when the clock passes its time, so a wait for a change (the memory
store's watch) ends exactly when the change is made. A heartbeat's thread stays on real time.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (what lock records and registrations expire by)."""

    def monotonic(self) -> float:
        """Seconds that never go back (what deadlines are measured with)."""

    def sleep(self, seconds: float) -> None:
        """Let seconds pass."""


class RealClock:
    """The clock of the machine."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "RealClock()"


REAL = RealClock()


class ManualClock:
    """A clock that moves only when told: advance(seconds), or sleep(seconds), which returns at once.

    ``now`` starts at the machine's time (records stamped with it read as recent), ``monotonic`` at 0.
    ``slept`` lists every sleep, so a test can tell that a wait happened and how long it was.
    ``schedule(delay, fn)`` runs fn when the clock passes that time, in time order, in the thread
    that moves the clock: what another process does while a verb waits."""

    def __init__(self, start: float | None = None):
        self._mutex = threading.Lock()
        self._wall = time.time() if start is None else float(start)
        self._mono = 0.0
        self._due: list[tuple[float, int, Callable[[], object]]] = []  # (monotonic time, order, fn)
        self._order = itertools.count()
        self.slept: list[float] = []

    def schedule(self, delay: float, fn: Callable[[], object]) -> None:
        """Run fn once the clock has moved delay seconds from now."""
        if delay < 0:
            raise ValueError(f"a clock does not go back: {delay}")
        with self._mutex:
            heapq.heappush(self._due, (self._mono + delay, next(self._order), fn))

    def next_due(self) -> float | None:
        """Seconds until the next scheduled call (None: nothing is scheduled)."""
        with self._mutex:
            return max(0.0, self._due[0][0] - self._mono) if self._due else None

    def now(self) -> float:
        with self._mutex:
            return self._wall

    def monotonic(self) -> float:
        with self._mutex:
            return self._mono

    def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        with self._mutex:
            self.slept.append(seconds)
        self.advance(seconds)
        time.sleep(0)  # let other threads run, as a real sleep would

    def advance(self, seconds: float) -> None:
        """Move both clocks forward (never back), running the scheduled calls it passes, each at
        its own time and outside the clock's lock (a call may read the clock or schedule another)."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back: {seconds}")
        with self._mutex:
            target = self._mono + seconds
        while True:
            with self._mutex:
                if not self._due or self._due[0][0] > target:
                    self._move(target)
                    return
                at, _, fn = heapq.heappop(self._due)
                self._move(max(at, self._mono))
            fn()

    def _move(self, mono: float) -> None:
        self._wall += mono - self._mono
        self._mono = mono

    def __call__(self) -> float:  # usable where a wall-clock function is expected
        return self.now()

    def __repr__(self) -> str:
        return f"ManualClock(now={self._wall:.3f}, monotonic={self._mono:.3f})"


def as_clock(clock: Clock | None) -> Clock:
    """clock, or the real one when None."""
    return REAL if clock is None else clock
