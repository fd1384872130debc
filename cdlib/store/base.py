"""The store port: a small key-value interface every registry can honour.

Adapters implement five primitives (get, list, put with compare-and-set and optional TTL, delete
with compare-and-set, close). The lock, the release journal and the registrations are built on them
here and in the core, so every adapter gets the same semantics; an adapter may override the lock with
its registry's native mechanism (etcd leases, Consul sessions) as long as the contract suite passes.

Versions are opaque positive integers that change on every write of a key (a row counter in SQLite,
``mod_revision`` in etcd, ``ModifyIndex`` in Consul). ``expect=0`` means "the key must not exist".
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass

from .. import keys
from ..errors import ConflictError, LockHeld, StoreError


@dataclass(frozen=True)
class Entry:
    key: str
    value: str
    version: int

    def json(self):
        return json.loads(self.value)


@dataclass(frozen=True)
class Lock:
    key: str
    token: str
    holder: dict
    taken_over: dict | None = None  # the expired holder record this lock replaced, if any


def default_holder(**extra) -> dict:
    """Who holds a lock: user@host, the Jenkins build when there is one, and when."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"
    holder = {
        "who": f"{user}@{socket.gethostname()}",
        "pid": os.getpid(),
        "build": os.environ.get("BUILD_TAG") or os.environ.get("BUILD_NUMBER") or "",
        "build_url": os.environ.get("BUILD_URL", ""),
        "since": time.time(),
    }
    holder.update({k: v for k, v in extra.items() if v is not None})
    return holder


class Store(ABC):
    """Key-value store with compare-and-set. Every method raises StoreError (or ConflictError)."""

    kind = "store"

    # -- primitives every adapter implements ----------------------------------------------------
    @abstractmethod
    def get(self, key: str) -> Entry | None: ...

    @abstractmethod
    def list(self, prefix: str) -> list[Entry]:
        """Every live entry under prefix, sorted by key."""

    @abstractmethod
    def put(self, key: str, value: str, *, expect: int | None = None, ttl: float | None = None) -> int:
        """Write; with expect, only if the key's version is expect (0: absent). Returns the new
        version. Raises ConflictError when the condition fails. With ttl, the key disappears unless
        written again within ttl seconds."""

    @abstractmethod
    def delete(self, key: str, *, expect: int | None = None) -> bool:
        """Delete; with expect, only if the version matches (ConflictError otherwise).
        Returns whether a key was deleted."""

    @abstractmethod
    def watch(self, prefix: str, since_version: int, timeout: float) -> int | None:
        """Block until a key under prefix is written or deleted after since_version; return the
        version of that change (or a newer one), or None when timeout passes first. since_version 0
        answers at once when anything exists under prefix. A return is a hint to re-read, never
        proof of a particular change (keys that expire by TTL may wake nobody)."""

    def close(self) -> None:
        pass

    def describe(self) -> str:
        """Where the store is, for messages; never includes a secret."""
        return self.kind

    # -- helpers -----------------------------------------------------------------------------------
    def get_json(self, key: str):
        entry = self.get(key)
        return None if entry is None else entry.json()

    def put_json(self, key: str, value, *, expect: int | None = None, ttl: float | None = None) -> int:
        return self.put(key, json.dumps(value, sort_keys=True, separators=(",", ":")), expect=expect, ttl=ttl)

    def delete_prefix(self, prefix: str) -> int:
        n = 0
        for entry in self.list(prefix):
            n += self.delete(entry.key)
        return n

    # -- registrations: healthy instances, what the proxy configuration is rendered from -------------
    def register(self, service: str, color: str, name: str, record: dict, ttl: float | None = None) -> None:
        """Register one healthy instance (record: name, address, port, release, image, health_url...).
        With ttl the registration disappears unless written again in time (a crashed deploy leaves
        nothing behind for longer); Consul also gets an agent service with an HTTP check it runs."""
        self.put_json(keys.instance(service, color, name), record, ttl=ttl)

    def deregister(self, service: str, color: str, name: str) -> None:
        self.delete(keys.instance(service, color, name))

    def registrations(self, service: str, color: str | None = None) -> list[dict]:
        """Registered instances, sorted by color and name; color and name come from the key."""
        out = []
        for entry in self.list(keys.instances(service, color)):
            reg_color, name = entry.key.rsplit("/", 2)[-2:]
            out.append(dict(entry.json(), color=reg_color, name=name))
        return out

    def registry_health(self, service: str) -> dict[str, str] | None:
        """The registry's own view of each instance's health (name -> passing/warning/critical), for
        registries that run checks themselves (Consul); None for the others."""
        return None

    # -- the lock: CAS on a record with an expiry; adapters may use native leases instead ------
    def acquire_lock(self, key: str, holder: dict, ttl: float, wait: float = 0.0,
                     poll: float = 0.5) -> Lock:
        """Take the lock or raise LockHeld with the holder's record. An expired lock is taken over
        (the returned Lock names the previous holder in taken_over). With wait, retry until then."""
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            try:
                return self.try_lock(key, holder, ttl)
            except LockHeld:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(poll, max(0.01, deadline - time.monotonic())))

    def try_lock(self, key: str, holder: dict, ttl: float) -> Lock:
        """One attempt: take the lock or raise LockHeld. Adapters with native leases or sessions
        override this (and refresh_lock/release_lock), keeping the record and LockHeld semantics."""
        token = uuid.uuid4().hex
        record = dict(holder, token=token, expires=time.time() + ttl)
        current = self.get(key)
        taken_over = None
        if current is not None:
            previous = current.json()
            if previous.get("expires", 0) > time.time():
                raise LockHeld(_held_message(key, previous), holder=_public(previous))
            taken_over = _public(previous)
        try:
            self.put_json(key, record, expect=current.version if current else 0)
        except ConflictError:
            now = self.get_json(key) or {}
            raise LockHeld(_held_message(key, now), holder=_public(now)) from None
        return Lock(key, token, _public(record), taken_over)

    def refresh_lock(self, key: str, token: str, ttl: float) -> None:
        current = self.get(key)
        if current is None or current.json().get("token") != token:
            raise LockHeld(f"the lock {key} is no longer held by this release (it expired and was "
                           "taken over); run 'cdlib status' to see who holds it", key=key)
        record = dict(current.json(), expires=time.time() + ttl)
        try:
            self.put_json(key, record, expect=current.version)
        except ConflictError:
            raise LockHeld(f"the lock {key} changed hands while it was refreshed", key=key) from None

    def release_lock(self, key: str, token: str) -> bool:
        current = self.get(key)
        if current is None or current.json().get("token") != token:
            return False
        try:
            return self.delete(key, expect=current.version)
        except ConflictError:
            return False

    def lock_info(self, key: str) -> dict | None:
        record = self.get_json(key)
        if record is None:
            return None
        info = _public(record)
        info["expired"] = record.get("expires", 0) <= time.time()
        return info

    def holds_lock(self, key: str, token: str) -> bool:
        record = self.get_json(key)
        return bool(record) and record.get("token") == token and record.get("expires", 0) > time.time()


def _public(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "token"}


def _held_message(key: str, holder: dict) -> str:
    service = key.split("/")[2] if key.count("/") >= 3 else key
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
    parts = [f"another release of {service} is running: held by {holder.get('who', '?')} since {when}"]
    if holder.get("release"):
        parts.append(f"release {holder['release']}")
    if holder.get("image"):
        parts.append(f"image {holder['image']}")
    if holder.get("build"):
        parts.append(f"build {holder['build']}")
    return "; ".join(parts) + " (wait with --lock-wait SECONDS, or run 'cdlib rollback' if it is abandoned)"


def tls_failure(exc: BaseException) -> str | None:
    """The short reason when exc (or anything it wraps) is a TLS failure, e.g. 'certificate verify
    failed', or 'unexpected EOF' when https meets a plain-http endpoint; None otherwise."""
    import ssl

    seen, todo, wrapped = set(), [exc], False
    while todo:
        cur = todo.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLError):
            reason = getattr(cur, "reason", None) or getattr(cur, "strerror", None) or type(cur).__name__
            return " ".join(str(reason).replace("_", " ").lower().split())[:120]
        wrapped = wrapped or type(cur).__name__ == "SSLError"
        todo.extend([cur.__cause__, cur.__context__, getattr(cur, "reason", None),
                     *[a for a in getattr(cur, "args", ()) if isinstance(a, BaseException)]])
    return "TLS handshake failed" if wrapped else None


def wrap(kind: str, what: str, exc: Exception) -> StoreError:
    """Translate a client exception into a one-line StoreError (never with a secret in it)."""
    text = " ".join(str(exc).split())[:300]
    return StoreError(f"{kind} store: {what} failed: {type(exc).__name__}: {text}", store=kind)
