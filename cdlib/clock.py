"""Time, passed in: the wall clock (lock expiry, record stamps), the monotonic clock (deadlines) and
sleep (wait loops) of the stores, the locks and the polls.

The real clock is the default everywhere. A manual clock stands still until it is moved: sleep()
moves it at once instead of waiting, so a wait of minutes runs in no time and an expiry is rehearsed
by moving the clock. Waits on another thread (a store's watch, a heartbeat's thread) stay on real
time: a manual clock cannot tell when the other thread has done its work.
"""

from __future__ import annotations

import threading
import time
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
    ``slept`` lists every sleep, so a test can tell that a wait happened and how long it was."""

    def __init__(self, start: float | None = None):
        self._mutex = threading.Lock()
        self._wall = time.time() if start is None else float(start)
        self._mono = 0.0
        self.slept: list[float] = []

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
        """Move both clocks forward (never back)."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back: {seconds}")
        with self._mutex:
            self._wall += seconds
            self._mono += seconds

    def __call__(self) -> float:  # usable where a wall-clock function is expected
        return self.now()

    def __repr__(self) -> str:
        return f"ManualClock(now={self._wall:.3f}, monotonic={self._mono:.3f})"


def as_clock(clock: Clock | None) -> Clock:
    """clock, or the real one when None."""
    return REAL if clock is None else clock
