"""The store port: a small key-value interface every registry can honour.

Adapters implement five primitives (get, list, put with compare-and-set and optional TTL, delete
with compare-and-set, close). The lock, the release journal and the registrations are built on them
here and in the core, so every adapter gets the same semantics. The lock rules are written once, here;
an adapter with native expiry (etcd leases, Consul sessions) supplies only the lock's primitive: read
the record with a handle, compare-and-set it with an expiry, delete it.

Versions are opaque positive integers that change on every write of a key (a row counter in SQLite,
``mod_revision`` in etcd, ``ModifyIndex`` in Consul). ``expect=0`` means "the key must not exist".
"""

from __future__ import annotations

import builtins
import json
import os
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import keys
from ..clock import REAL, Clock
from ..errors import ConflictError, LockHeld, StoreError, causes


@dataclass(frozen=True)
class Entry:
    key: str
    value: str
    version: int

    def json(self) -> Any:
        return json.loads(self.value)


@dataclass(frozen=True)
class Lock:
    key: str
    token: str
    holder: dict
    taken_over: dict | None = None  # the record of the holder this lock replaced (dead or expired), if any


# -- who holds a lock, and whether that process still works ------------------------------------------------
ALIVE, GONE, UNKNOWN = "alive", "gone", "unknown"
# tokens of the locks this process holds while one of its verbs works under them; a record naming this
# process whose token is not here was left by a verb of this process that is over (see forget_lock)
_WORKING: set[str] = set()
_WORKING_MUTEX = threading.Lock()


def forget_lock(token: str) -> None:
    """This process no longer works under the lock (the verb that held it is over). A record that still
    names this process then reads as a dead holder's, like one left by a killed process."""
    with _WORKING_MUTEX:
        _WORKING.discard(token)


def _user() -> str:
    name = os.environ.get("USER") or os.environ.get("LOGNAME")
    if name:
        return name
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError, OSError, AttributeError):
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, boot id + start time) of a process on this host (Linux); None where unknown. The
    start time tells a reused pid from the process that held a lock, the state a zombie from a live one."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return fields[0], f"{boot}:{fields[19]}"
    except (OSError, IndexError):
        return None


_OWN_IDENTITY: list = []


def _own_identity() -> str | None:
    if not _OWN_IDENTITY or _OWN_IDENTITY[0][0] != os.getpid():  # computed again after a fork
        stat = _proc_stat(os.getpid())
        _OWN_IDENTITY[:] = [(os.getpid(), stat[1] if stat else None)]
    return _OWN_IDENTITY[0][1]


def default_holder(**extra) -> dict:
    """Who holds a lock: user@host (the login name, else the uid's name, else the uid), the host and
    process (pid and its start time, so a dead or reused pid is recognised), the Jenkins build when
    there is one, and since when."""
    host = socket.gethostname()
    holder = {
        "who": f"{_user()}@{host}",
        "host": host,
        "pid": os.getpid(),
        "proc": _own_identity(),
        "build": os.environ.get("BUILD_TAG") or os.environ.get("BUILD_NUMBER") or "",
        "build_url": os.environ.get("BUILD_URL", ""),
        "since": time.time(),
    }
    holder.update({k: v for k, v in extra.items() if v is not None})
    return holder


def holder_state(record: dict) -> str:
    """ALIVE: the holder's process runs on this host (never taken over). GONE: it ran on this host and
    is dead (its pid is gone, a zombie, or reused by another process; or it is this very process and
    the verb that held the lock is over): taken over at once. UNKNOWN: another host, no pid, or a lock
    parked between the stages of a release: taken over only once expired."""
    if record.get("parked"):
        return UNKNOWN
    host = record.get("host") or str(record.get("who", "")).rpartition("@")[2]
    if host != socket.gethostname():
        return UNKNOWN
    pid = record.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return UNKNOWN
    if pid == os.getpid():
        token = record.get("token")
        if token is None:
            return ALIVE  # a public record: no way to tell, so the safe answer
        with _WORKING_MUTEX:
            return ALIVE if token in _WORKING else GONE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return GONE
    except PermissionError:
        pass  # another user's process: it exists
    except OSError:
        return UNKNOWN
    stat = _proc_stat(pid)
    if stat is not None:
        if stat[0] in ("Z", "X"):
            return GONE
        if record.get("proc") and stat[1] != record["proc"]:
            return GONE  # the pid now belongs to another process
    return ALIVE


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

    def registrations(self, service: str, color: str | None = None) -> builtins.list[dict]:
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

    # -- the lock: the rules live here; adapters supply only the primitive -----------------------------
    # A lock is a record (holder, token, expires) written with compare-and-set. An adapter with native
    # expiry (etcd leases, Consul sessions) overrides _lock_read/_lock_write/_lock_delete to attach the
    # record to its lease or session; every rule below is the same for all stores.
    # the store's time (cdlib.clock): lock expiry and the lock wait follow it; None is the real clock.
    # A bare function moves only the wall clock (expiry), the wait stays on real time.
    clock: Clock | Callable[[], float] | None = None

    def now(self) -> float:
        clock = self.clock
        if clock is None:
            return time.time()
        return clock.now() if isinstance(clock, Clock) else clock()

    def timer(self) -> Clock:
        """The clock the store's wait loops measure and sleep with."""
        return self.clock if isinstance(self.clock, Clock) else REAL

    def _lock_read(self, key: str) -> tuple[dict, Any] | None:
        """The lock record and a handle for compare-and-set (here: the key's version), or None."""
        entry = self.get(key)
        if entry is None:
            return None
        try:
            record = entry.json()
        except ValueError:
            record = {}
        return (record if isinstance(record, dict) else {}), entry.version

    def _lock_write(self, key: str, record: dict, ttl: float, handle: Any | None) -> bool:
        """Write record when the key is still as read (handle; None: absent), with an expiry of at
        least ttl; False when it changed. May add fields (lease, session) to record."""
        try:
            self.put_json(key, record, expect=handle or 0)
            return True
        except ConflictError:
            return False

    def _lock_delete(self, key: str, handle: Any) -> bool:
        try:
            return self.delete(key, expect=handle)
        except ConflictError:
            return False

    def acquire_lock(self, key: str, holder: dict, ttl: float, wait: float = 0.0,
                     poll: float = 0.5) -> Lock:
        """Take the lock or raise LockHeld with the holder's record. A lock whose holder is gone is
        taken over at once, an expired one unless its holder is provably alive (the returned Lock
        names the previous holder in taken_over). With wait, retry every poll seconds until then."""
        clock = self.timer()
        deadline = clock.monotonic() + max(0.0, wait)
        while True:
            try:
                return self.try_lock(key, holder, ttl)
            except LockHeld:
                if clock.monotonic() >= deadline:
                    raise
                clock.sleep(min(poll, max(0.01, deadline - clock.monotonic())))

    def _verdict(self, record: dict) -> tuple[str, bool]:
        """(holder state, whether the lock may be taken over)."""
        state = holder_state(record)
        expired = record.get("expires", 0) <= self.now()
        return state, state == GONE or (state == UNKNOWN and expired)

    def try_lock(self, key: str, holder: dict, ttl: float) -> Lock:
        """One attempt: take the lock or raise LockHeld."""
        current = self._lock_read(key)
        taken_over = None
        if current is not None:
            state, free = self._verdict(current[0])
            if not free:
                raise LockHeld(_held_message(key, current[0], state), holder=_public(current[0], state))
            taken_over = _public(current[0], state)
        token = uuid.uuid4().hex
        record = dict(holder, token=token, expires=self.now() + ttl)
        record.pop("parked", None)
        with _WORKING_MUTEX:
            _WORKING.add(token)  # before the write: a record naming this process is never read as dead
        try:
            written = self._lock_write(key, record, ttl, current[1] if current else None)
        except BaseException:
            forget_lock(token)
            raise
        if not written:
            forget_lock(token)
            now = self._lock_read(key)
            held = now[0] if now else {}
            state = holder_state(held) if held else UNKNOWN
            raise LockHeld(_held_message(key, held, state), holder=_public(held, state))
        return Lock(key, token, _public(record), taken_over)

    def refresh_lock(self, key: str, token: str, ttl: float, **changes) -> None:
        """Extend the lock by ttl from now; changes update the holder record (None removes a field):
        a stage adopting the lock of its release writes its own pid, the end of a stage parks it.
        Raises LockHeld when the lock is no longer this token's."""
        current = self._lock_read(key)
        if current is None or current[0].get("token") != token:
            raise LockHeld(f"the lock {key} is no longer held by this release (it expired or its holder was "
                           "found dead, and it was taken over); run 'cdlib status' to see who holds it", key=key)
        record = dict(current[0], expires=self.now() + ttl)
        for name, value in changes.items():
            if value is None:
                record.pop(name, None)
            else:
                record[name] = value
        if changes.get("pid") is not None and not record.get("parked"):
            with _WORKING_MUTEX:
                _WORKING.add(token)
        if not self._lock_write(key, record, ttl, current[1]):
            raise LockHeld(f"the lock {key} changed hands while it was refreshed", key=key)

    def release_lock(self, key: str, token: str) -> bool:
        forget_lock(token)
        current = self._lock_read(key)
        if current is None or current[0].get("token") != token:
            return False
        return self._lock_delete(key, current[1])

    def break_lock(self, key: str, accept: Callable[[dict], bool] = lambda record: True,
                   unexpired: bool = False) -> dict | None:
        """Remove the lock when it could be taken over (its holder is gone, or it expired and its holder
        is not provably alive; with unexpired, whenever its holder is not provably alive) and
        accept(holder record) agrees: what 'rollback' does with a lock that a killed process left
        behind. Returns the removed holder record, or None."""
        current = self._lock_read(key)
        if current is None:
            return None
        state, free = self._verdict(current[0])
        if unexpired:
            free = state != ALIVE
        if not free or not accept(_public(current[0], state)):
            return None
        return _public(current[0], state) if self._lock_delete(key, current[1]) else None

    def lock_info(self, key: str) -> dict | None:
        current = self._lock_read(key)
        if current is None:
            return None
        record = current[0]
        info = _public(record, holder_state(record))
        info["expired"] = record.get("expires", 0) <= self.now()
        return info

    def holds_lock(self, key: str, token: str) -> bool:
        current = self._lock_read(key)
        return current is not None and current[0].get("token") == token and \
            current[0].get("expires", 0) > self.now()


def _public(record: dict, state: str | None = None) -> dict:
    out = {k: v for k, v in record.items() if k != "token"}
    if state is not None:
        out["state"] = state
    return out


def _held_message(key: str, holder: dict, state: str = UNKNOWN) -> str:
    service = key.split("/")[2] if key.count("/") >= 3 else key
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
    proxy = key == keys.PROXY_LOCK
    what = "another proxy change is running" if proxy else f"another release of {service} is running"
    pid = holder.get("pid")
    process = f"pid {pid}" if pid else "pid unknown"
    if holder.get("parked"):
        process += ", between stages"
    elif state == ALIVE:
        process += ", running on this host"
    parts = [f"{what}: held by {holder.get('who', '?')} ({process}) since {when}"]
    if holder.get("release"):
        parts.append(f"release {holder['release']}")
    if holder.get("image"):
        parts.append(f"image {holder['image']}")
    if holder.get("build"):
        parts.append(f"build {holder['build']}")
    if proxy:
        return "; ".join(parts) + " (a switch holds it for seconds; a dead holder's is taken over at once)"
    return "; ".join(parts) + " (wait with --lock-wait SECONDS, or run 'cdlib rollback' if it is abandoned)"


def tls_failure(exc: BaseException) -> str | None:
    """The short reason when exc (or anything it wraps) is a TLS failure, e.g. 'certificate verify
    failed', or 'unexpected EOF' when https meets a plain-http endpoint; None otherwise.

    A plain-http endpoint that closes on the client's hello may also reset the connection (it closed
    with the hello unread), which the client sees as ECONNRESET inside the handshake rather than an
    SSLError; how often depends on timing, so that case is a TLS failure too."""
    import ssl

    wrapped = False
    for cur in causes(exc):
        if isinstance(cur, ssl.SSLError):
            reason = getattr(cur, "reason", None) or getattr(cur, "strerror", None) or type(cur).__name__
            return " ".join(str(reason).replace("_", " ").lower().split())[:120]
        if isinstance(cur, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)) and _in_handshake(cur):
            return "connection reset during the handshake"
        wrapped = wrapped or type(cur).__name__ == "SSLError"
    return "TLS handshake failed" if wrapped else None


def _in_handshake(exc: BaseException) -> bool:
    """Whether exc was raised inside the standard library's TLS handshake (ssl.SSLSocket.do_handshake)."""
    import ssl
    import traceback  # only on this error path: a store is opened by every verb

    return any(frame.f_code.co_name == "do_handshake" and frame.f_code.co_filename == ssl.__file__
               for frame, _ in traceback.walk_tb(exc.__traceback__))


def wrap(kind: str, what: str, exc: Exception) -> StoreError:
    """Translate a client exception into a one-line StoreError (never with a secret in it)."""
    text = " ".join(str(exc).split())[:300]
    return StoreError(f"{kind} store: {what} failed: {type(exc).__name__}: {text}", store=kind)
