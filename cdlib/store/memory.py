"""In-memory store: the reference implementation of the store contract, for unit tests.

TTLs, lock expiry and the lock wait follow ``clock`` (``cdlib.clock``; a manual clock in tests),
so expiry is rehearsed by moving the clock instead of waiting. A watch on a manual clock moves the
clock to the next change scheduled on it (``ManualClock.schedule``) or to its timeout, so a test of
a watch loop runs in no time and ends the same way every run; on the real clock it waits for another
thread's write. ``inject`` makes a primitive fail (before or after it acts) so tests rehearse a store
that breaks in the middle of a release without replacing its methods."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..clock import Clock
from ..errors import ConflictError
from .base import Entry, Store

PRIMITIVES = ("get", "list", "put", "delete", "watch")


@dataclass
class _Failure:
    method: str
    exc: BaseException | Callable[[], BaseException]
    when: Callable[..., bool] | None
    times: int | None  # None: every matching call
    after: bool  # the call acts, then fails (a process killed right after a write)

    def error(self) -> BaseException:
        return self.exc if isinstance(self.exc, BaseException) else self.exc()


class MemoryStore(Store):
    kind = "memory"

    def __init__(self, clock: Clock | None = None):
        self.clock = clock
        self._failures: list[_Failure] = []
        self._data: dict[str, tuple[str, int, float | None]] = {}
        self._rev = 0
        self._mutex = threading.RLock()
        self._changed = threading.Condition(self._mutex)
        self._log: list[tuple[int, str]] = []  # (revision, key) of every put and delete
        self.ops = 0  # round trips, for benchmarks and tests

    def _record(self, key: str) -> int:
        self._rev += 1
        self._log.append((self._rev, key))
        del self._log[:-10000]
        self._changed.notify_all()
        return self._rev

    # -- failures on demand ------------------------------------------------------------------------------
    def inject(self, method: str, exc: BaseException | Callable[[], BaseException], *,
               when: Callable[..., bool] | None = None, times: int | None = 1,
               after: bool = False) -> Callable[[], None]:
        """Make the primitive method (get, list, put, delete, watch) raise exc: on the calls for which
        when(*args, **kwargs) is true (every call without when), times times (None: until removed);
        with after, the call acts first (a write that happened, then the process died). exc may be a
        function that makes the exception. Returns the function that removes the failure."""
        if method not in PRIMITIVES:
            raise ValueError(f"memory store: no primitive {method!r} to fail (one of {', '.join(PRIMITIVES)})")
        failure = _Failure(method, exc, when, times, after)
        with self._mutex:
            self._failures.append(failure)

        def remove() -> None:
            with self._mutex:
                if failure in self._failures:
                    self._failures.remove(failure)
        return remove

    def _fails(self, method: str, *args, **kwargs) -> _Failure | None:
        """The failure due for this call: raised here when it comes before the call, else returned."""
        with self._mutex:
            failure = next((f for f in self._failures if f.method == method
                            and (f.when is None or f.when(*args, **kwargs))), None)
            if failure is None:
                return None
            if failure.times is not None:
                failure.times -= 1
                if failure.times <= 0:
                    self._failures.remove(failure)
        if not failure.after:
            raise failure.error()
        return failure

    def _alive(self, key: str):
        item = self._data.get(key)
        if item is not None and item[2] is not None and item[2] <= self.now():
            del self._data[key]
            return None
        return item

    def get(self, key):
        failure = self._fails("get", key)
        with self._mutex:
            self.ops += 1
            item = self._alive(key)
            found = None if item is None else Entry(key, item[0], item[1])
        if failure is not None:
            raise failure.error()
        return found

    def list(self, prefix):
        failure = self._fails("list", prefix)
        with self._mutex:
            self.ops += 1
            out = []
            for key in sorted(k for k in self._data if k.startswith(prefix)):
                item = self._alive(key)
                if item is not None:
                    out.append(Entry(key, item[0], item[1]))
        if failure is not None:
            raise failure.error()
        return out

    def put(self, key, value, *, expect=None, ttl=None):
        failure = self._fails("put", key, value, expect=expect, ttl=ttl)
        rev = self._put(key, value, expect, ttl)
        if failure is not None:
            raise failure.error()
        return rev

    def _put(self, key, value, expect, ttl) -> int:
        with self._mutex:
            self.ops += 1
            item = self._alive(key)
            version = item[1] if item else 0
            if expect is not None and version != expect:
                raise ConflictError(f"memory store: {key} changed concurrently", key=key)
            rev = self._record(key)
            self._data[key] = (str(value), rev, self.now() + ttl if ttl else None)
            return rev

    def delete(self, key, *, expect=None):
        failure = self._fails("delete", key, expect=expect)
        existed = self._delete(key, expect)
        if failure is not None:
            raise failure.error()
        return existed

    def _delete(self, key, expect) -> bool:
        with self._mutex:
            self.ops += 1
            item = self._alive(key)
            if expect is not None and (item[1] if item else 0) != expect:
                raise ConflictError(f"memory store: {key} changed concurrently", key=key)
            existed = self._data.pop(key, None) is not None
            if existed:
                self._record(key)
            return existed

    def watch(self, prefix, since_version, timeout):
        failure = self._fails("watch", prefix, since_version, timeout)
        changed = self._watch(prefix, since_version, timeout)
        if failure is not None:
            raise failure.error()
        return changed

    def _watch(self, prefix, since_version, timeout):
        manual = getattr(self.clock, "next_due", None)
        if manual is not None:
            return self._watch_manual(prefix, since_version, timeout, manual)
        deadline = time.monotonic() + max(0.0, timeout)
        with self._changed:
            self.ops += 1
            while True:
                found = self._newer(prefix, since_version)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def _watch_manual(self, prefix, since_version, timeout, next_due):
        """The watch on a manual clock: move it to the next scheduled call (which may write) or to the
        timeout, whichever comes first; the store's lock is not held while the clock moves."""
        clock = self.clock
        deadline = clock.monotonic() + max(0.0, timeout)
        with self._mutex:
            self.ops += 1
        while True:
            with self._mutex:
                found = self._newer(prefix, since_version)
            if found is not None:
                return found
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                return None
            due = next_due()
            clock.sleep(remaining if due is None else min(due, remaining))

    def _newer(self, prefix, since_version):
        newer = [rev for rev, key in self._log if rev > since_version and key.startswith(prefix)]
        if newer:
            return max(newer)
        if self._log and since_version < self._log[0][0] - 1:
            return self._rev  # changes after since_version were trimmed from the log: re-read
        return None

    def snapshot(self) -> dict[str, str]:
        """Every live key and value: what tests compare before and after a failed release."""
        return {e.key: e.value for e in self.list("")}
