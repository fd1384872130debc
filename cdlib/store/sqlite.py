"""The embedded default store: one SQLite file, no server, safe across processes on one machine.

Compare-and-set runs inside ``BEGIN IMMEDIATE`` transactions, so two processes (two Jenkins stages,
or two releases) never both win. Versions come from one revision counter, so they only grow. One
connection serves every thread of a process, one statement sequence at a time.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from ..errors import ConflictError, StoreError
from .base import Entry, Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    version INTEGER NOT NULL,
    expires REAL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS changes (rev INTEGER PRIMARY KEY, key TEXT NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0);
"""


class SqliteStore(Store):
    kind = "sqlite"

    def __init__(self, path: str | os.PathLike, timeout: float = 30.0):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"sqlite store: cannot open {self.path}: {exc}; check the path in "
                             "CDLIB_STORE and that its directory is writable", store="sqlite") from exc
        self.ops = 0
        # the connection is shared by threads (check_same_thread=False): a transaction is a sequence of
        # statements on it, so two threads interleaving them would commit or roll back each other's writes
        self._mutex = threading.RLock()

    def describe(self):
        return f"sqlite:///{self.path}"

    def _run(self, what, fn):
        with self._mutex:
            self.ops += 1
            try:
                return fn()
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(f"sqlite store {self.path}: {what} failed: {exc}", store="sqlite") from exc
            except BaseException:
                # SIGTERM (plan.Interrupted) or Ctrl-C between BEGIN IMMEDIATE and COMMIT: an open
                # transaction would keep the write lock, blocking every other process for the busy
                # timeout, and make this connection's next BEGIN fail
                self._rollback()
                raise

    def _rollback(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def get(self, key):
        def q():
            row = self._db.execute("SELECT value, version FROM kv WHERE key=? AND "
                                   "(expires IS NULL OR expires > ?)", (key, time.time())).fetchone()
            return None if row is None else Entry(key, row[0], row[1])
        return self._run(f"get {key}", q)

    def list(self, prefix):
        def q():
            rows = self._db.execute(
                "SELECT key, value, version FROM kv WHERE substr(key, 1, ?) = ? AND "
                "(expires IS NULL OR expires > ?) ORDER BY key", (len(prefix), prefix, time.time()))
            return [Entry(*row) for row in rows]
        return self._run(f"list {prefix}", q)

    def _version(self, key):
        row = self._db.execute("SELECT version FROM kv WHERE key=? AND (expires IS NULL OR expires > ?)",
                               (key, time.time())).fetchone()
        return row[0] if row else 0

    def _bump(self, key: str) -> int:
        """Next revision, recorded in the change log that watch() reads (kept to 10,000 entries)."""
        self._db.execute("UPDATE meta SET value = value + 1 WHERE name='revision'")
        rev = self._db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()[0]
        self._db.execute("INSERT INTO changes (rev, key) VALUES (?, ?)", (rev, key))
        if rev % 1000 == 0:
            self._db.execute("DELETE FROM changes WHERE rev <= ?", (rev - 10000,))
        return rev

    def watch(self, prefix, since_version, timeout, poll: float = 0.05):
        """Polls the change log (SQLite has no notifications); wakes within poll seconds."""
        deadline = time.monotonic() + max(0.0, timeout)

        def q():
            row = self._db.execute("SELECT max(rev), (SELECT min(rev) FROM changes) FROM changes WHERE rev > ? "
                                   "AND substr(key, 1, ?) = ?", (since_version, len(prefix), prefix)).fetchone()
            newest, oldest = row
            if newest is None and oldest is not None and since_version < oldest - 1:
                # the log was trimmed past since_version: answer with the current revision (re-read)
                return self._db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()[0]
            return newest
        while True:
            found = self._run(f"watch {prefix}", q)
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))

    def put(self, key, value, *, expect=None, ttl=None):
        def q():
            self._db.execute("BEGIN IMMEDIATE")
            if expect is not None and self._version(key) != expect:
                self._db.execute("ROLLBACK")
                raise ConflictError(f"sqlite store: {key} changed concurrently", key=key)
            rev = self._bump(key)
            self._db.execute("INSERT OR REPLACE INTO kv (key, value, version, expires) VALUES (?,?,?,?)",
                             (key, str(value), rev, time.time() + ttl if ttl else None))
            self._db.execute("COMMIT")
            return rev
        return self._run(f"put {key}", q)

    def delete(self, key, *, expect=None):
        def q():
            self._db.execute("BEGIN IMMEDIATE")
            if expect is not None and self._version(key) != expect:
                self._db.execute("ROLLBACK")
                raise ConflictError(f"sqlite store: {key} changed concurrently", key=key)
            live = self._version(key) != 0
            self._db.execute("DELETE FROM kv WHERE key=?", (key,))
            if live:
                self._bump(key)
            self._db.execute("COMMIT")
            return live
        return self._run(f"delete {key}", q)

    def close(self):
        try:
            self._db.close()
        except sqlite3.Error:
            pass
