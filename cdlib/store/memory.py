"""In-memory store: the reference implementation of the store contract, for unit tests.

TTLs and lock expiry follow ``clock`` (wall-clock seconds) when a test sets one, so expiry is
rehearsed by moving the clock instead of waiting."""

from __future__ import annotations

import threading
import time

from ..errors import ConflictError
from .base import Entry, Store


class MemoryStore(Store):
    kind = "memory"

    def __init__(self):
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

    def _alive(self, key: str):
        item = self._data.get(key)
        if item is not None and item[2] is not None and item[2] <= self.now():
            del self._data[key]
            return None
        return item

    def get(self, key):
        with self._mutex:
            self.ops += 1
            item = self._alive(key)
            return None if item is None else Entry(key, item[0], item[1])

    def list(self, prefix):
        with self._mutex:
            self.ops += 1
            out = []
            for key in sorted(k for k in self._data if k.startswith(prefix)):
                item = self._alive(key)
                if item is not None:
                    out.append(Entry(key, item[0], item[1]))
            return out

    def put(self, key, value, *, expect=None, ttl=None):
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
        deadline = time.monotonic() + max(0.0, timeout)
        with self._changed:
            self.ops += 1
            while True:
                newer = [rev for rev, key in self._log if rev > since_version and key.startswith(prefix)]
                if newer:
                    return max(newer)
                if self._log and since_version < self._log[0][0] - 1:
                    return self._rev  # changes after since_version were trimmed from the log: re-read
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def snapshot(self) -> dict[str, str]:
        """Every live key and value: what tests compare before and after a failed release."""
        return {e.key: e.value for e in self.list("")}
