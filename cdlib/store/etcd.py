"""etcd v3 store adapter, through etcd3gw and etcd's grpc-gateway (imported lazily).

etcd 3.4 serves the gateway on ``/v3/``; the path is passed explicitly so no discovery request is made.
Versions are a key's ``mod_revision``. Compare-and-set is a transaction comparing ``mod_revision`` (or
``create_revision == 0`` for "must not exist"); TTL keys are attached to a lease. The lock record is
attached to a lease as well, so a killed holder cannot keep it: the lease expires and the key goes.

Endpoints come from the URL (``etcd://h1:2379,h2:2379``, ``etcds://`` for TLS) or, when the URL names no
host, from ``ETCDCTL_ENDPOINTS``; TLS files from ``ETCDCTL_CACERT``/``ETCDCTL_CERT``/``ETCDCTL_KEY``;
credentials from ``ETCDCTL_USER`` (``user:password``, or the password in ``ETCDCTL_PASSWORD``).
A request that cannot connect moves on to the next endpoint; one that timed out is not retried, since
a write may have been applied.
"""

from __future__ import annotations

import base64
import json
import math
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ConflictError, LockHeld, StoreError, causes
from ..extras import require
from .base import Entry, Store, tls_failure

Handle = Any  # the lock handle of Store: the key-value dict etcd returned (mod_revision, lease)

DEFAULT_ENDPOINT = "127.0.0.1:2379"
API_PATH = "/v3/"
LOCK_LEASE_FACTOR = 2  # the lock's lease outlives its record's expiry, so a contender sees who it replaces


def _b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode()


def _unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode()


def _prefix_end(prefix: str) -> bytes:
    """The range end that selects every key starting with prefix (etcd's ``--prefix``)."""
    data = bytearray(prefix.encode())
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return bytes(data)
        data.pop()
    return b"\0"  # empty prefix (or all 0xff): every key


class _AuthFailed(Exception):
    pass


class EtcdStore(Store):
    kind = "etcd"

    def __init__(self, url: str = "etcd://", *, timeout: float = 5.0, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        self.timeout = timeout
        self.protocol, self.endpoints = _endpoints(url, env)
        self._ca = env.get("ETCDCTL_CACERT") or None
        self._cert = env.get("ETCDCTL_CERT") or None
        self._key = env.get("ETCDCTL_KEY") or None
        self.user, self._password = _credentials(env)
        self._clients: dict[str, Any] = {}  # endpoint -> etcd3gw client (untyped)
        self._current = 0

    def describe(self) -> str:
        scheme = "etcds" if self.protocol == "https" else "etcd"
        return f"{scheme}://{','.join(self.endpoints)}"

    def __repr__(self) -> str:
        user = f", user={self.user!r}" if self.user else ""
        return f"EtcdStore({self.describe()!r}{user})"

    # -- plumbing -----------------------------------------------------------------------------------
    def _client(self, endpoint: str):
        client = self._clients.get(endpoint)
        if client is None:
            etcd3gw = require("etcd3gw", "etcd")  # lazy: the CLI must not pay for client imports it does not use

            host, port = _split_hostport(endpoint)
            client = etcd3gw.client(host=host, port=port, protocol=self.protocol, ca_cert=self._ca,
                                    cert_key=self._key, cert_cert=self._cert, timeout=self.timeout,
                                    api_path=API_PATH)
            if self.user:
                self._authenticate(client)
            self._clients[endpoint] = client
        return client

    def _authenticate(self, client) -> None:
        ex = require("etcd3gw.exceptions", "etcd")

        try:
            result = client.post(client.get_url("/auth/authenticate"),
                                 json={"name": self.user, "password": self._password or ""})
        except ex.Etcd3Exception as exc:
            if isinstance(exc, (ex.ConnectionFailedError, ex.ConnectionTimeoutError)):
                raise
            raise _AuthFailed(_etcd_message(exc)) from exc
        client.session.headers["Authorization"] = result["token"]

    def _call(self, what: str, fn, *, resend: bool = True):
        """Run fn(client) on the current endpoint, moving on to the next one when it cannot connect,
        and translate every client exception into a StoreError. A request that may have reached etcd
        before its connection broke is sent again elsewhere only when resend says that is harmless: a
        compare-and-set sent twice would fail against its own first write."""
        ex = require("etcd3gw.exceptions", "etcd")
        import requests

        where = f"etcd store {','.join(self.endpoints)}"
        last: Exception | None = None
        for attempt in range(len(self.endpoints)):
            endpoint = self.endpoints[(self._current + attempt) % len(self.endpoints)]
            try:
                client = self._client(endpoint)
                try:
                    result = fn(client)
                except ex.Etcd3Exception as exc:
                    if self.user and "invalid auth token" in _etcd_message(exc):
                        self._authenticate(client)  # simple tokens expire (--auth-token-ttl): log in again
                        result = fn(client)
                    else:
                        raise
                self._current = (self._current + attempt) % len(self.endpoints)
                return result
            except (ConflictError, LockHeld, StoreError):
                raise
            except _AuthFailed as exc:
                raise StoreError(f"{where}: authentication failed for user {self.user!r}; check ETCDCTL_USER",
                                 store=self.kind) from exc
            except (ex.ConnectionFailedError, requests.exceptions.ConnectionError, ex.ConnectionTimeoutError,
                    requests.exceptions.Timeout) as exc:
                tls = tls_failure(exc)
                if tls:
                    raise StoreError(f"{where}: TLS with {endpoint} failed ({tls}); check ETCDCTL_CACERT, "
                                     "ETCDCTL_CERT, ETCDCTL_KEY and that the endpoint speaks https (etcds://)",
                                     store=self.kind) from exc
                unsent = _never_sent(exc)
                timed_out = isinstance(exc, (ex.ConnectionTimeoutError, requests.exceptions.Timeout))
                if unsent or (not timed_out and (unsent is None or resend)):
                    last = exc
                    self._clients.pop(endpoint, None)
                    continue
                if timed_out:
                    raise StoreError(f"{where}: cannot reach etcd ({what} timed out after {self.timeout:g}s); "
                                     "check ETCDCTL_ENDPOINTS / the store URL and that etcd is running",
                                     store=self.kind) from exc
                raise StoreError(f"{where}: the connection to {endpoint} broke during {what}, which may or may "
                                 "not have been applied; check that etcd is healthy and run 'cdlib status'",
                                 store=self.kind) from exc
            except ex.Etcd3Exception as exc:
                message = _etcd_message(exc)
                if "permission denied" in message or "user name is empty" in message or "auth" in message:
                    who = f"user {self.user!r}" if self.user else "no user (set ETCDCTL_USER)"
                    raise StoreError(f"{where}: {what} refused for {who}: {message}; check ETCDCTL_USER and the "
                                     "user's role on cdlib/", store=self.kind) from exc
                raise StoreError(f"{where}: {what} failed: {message}", store=self.kind) from exc
            except (requests.exceptions.RequestException, ValueError, KeyError) as exc:
                text = " ".join(str(exc).split())[:300]
                raise StoreError(f"{where}: {what} failed: {type(exc).__name__}: {text}", store=self.kind) from exc
            except OSError as exc:  # requests refuses a missing CA or client certificate file with a bare OSError
                text = " ".join(str(exc).split())[:300]
                raise StoreError(f"{where}: {what} failed: {text}; check ETCDCTL_CACERT, ETCDCTL_CERT and "
                                 "ETCDCTL_KEY", store=self.kind) from exc
        raise StoreError(f"{where}: cannot reach etcd ({what}: connection failed on every endpoint); check "
                         "ETCDCTL_ENDPOINTS / the store URL and that etcd is running", store=self.kind) from last

    def _post(self, what: str, path: str, payload: dict, *, resend: bool = True) -> dict:
        return self._call(what, lambda c: c.post(c.get_url(path), json=payload), resend=resend)

    def _txn(self, what: str, compare: list, success: list, failure: list | None = None) -> dict:
        txn = {"compare": compare, "success": success, "failure": failure or []}
        return self._call(what, lambda c: c.transaction(txn), resend=False)

    @staticmethod
    def _compare(key: str, expect: int) -> dict:
        if expect == 0:
            return {"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}
        return {"key": _b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": int(expect)}

    def _range(self, key: str, prefix: bool = False, **extra) -> dict:
        payload = {"key": _b64(key or "\0"), **extra}
        if prefix:
            payload["range_end"] = _b64(_prefix_end(key))
            payload.update(sort_order="ASCEND", sort_target="KEY")
        return self._post(f"{'list' if prefix else 'get'} {key}", "/kv/range", payload)

    def _raw(self, key: str) -> dict | None:
        kvs = self._range(key).get("kvs") or []
        return kvs[0] if kvs else None

    # -- leases ---------------------------------------------------------------------------------------
    def _grant(self, ttl: float) -> tuple[int, int]:
        seconds = max(1, math.ceil(ttl))
        result = self._post("lease grant", "/lease/grant", {"TTL": seconds, "ID": 0})
        return int(result["ID"]), seconds

    def _revoke_quietly(self, lease: int | None) -> None:
        if not lease:
            return
        try:
            self._post("lease revoke", "/kv/lease/revoke", {"ID": int(lease)})
        except StoreError:
            pass  # it expires on its own

    def _keepalive(self, lease: int) -> bool:
        result = self._post("lease keepalive", "/lease/keepalive", {"ID": int(lease)})
        return int((result.get("result") or {}).get("TTL", -1) or -1) > 0

    # -- primitives -----------------------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        raw = self._raw(key)
        return None if raw is None else _entry(raw)

    def list(self, prefix: str) -> list[Entry]:
        kvs = self._range(prefix, prefix=True).get("kvs") or []
        return sorted((_entry(kv) for kv in kvs), key=lambda e: e.key)

    def put(self, key: str, value: str, *, expect: int | None = None, ttl: float | None = None) -> int:
        lease = self._grant(ttl)[0] if ttl else None
        request = {"key": _b64(key), "value": _b64(str(value)), "prev_kv": True}
        if lease:
            request["lease"] = lease
        if expect is None:
            result = self._txn(f"put {key}", [], [{"request_put": request}])
        else:
            result = self._txn(f"put {key}", [self._compare(key, expect)], [{"request_put": request}])
            if not result.get("succeeded"):
                self._revoke_quietly(lease)
                raise ConflictError(f"etcd store: {key} changed concurrently", key=key)
        previous = ((result.get("responses") or [{}])[0].get("response_put") or {}).get("prev_kv") or {}
        self._revoke_replaced([previous], keep=lease)
        return int(result["header"]["revision"])

    def delete(self, key: str, *, expect: int | None = None) -> bool:
        request = {"request_delete_range": {"key": _b64(key), "prev_kv": True}}
        if expect is None:
            result = self._post(f"delete {key}", "/kv/deleterange", {"key": _b64(key), "prev_kv": True},
                                resend=False)
        else:
            txn = self._txn(f"delete {key}", [self._compare(key, expect)], [] if expect == 0 else [request])
            if not txn.get("succeeded"):
                raise ConflictError(f"etcd store: {key} changed concurrently", key=key)
            if expect == 0:
                return False
            result = (txn.get("responses") or [{}])[0].get("response_delete_range") or {}
        self._revoke_replaced(result.get("prev_kvs") or [])
        return int(result.get("deleted", 0) or 0) > 0

    def _revoke_replaced(self, previous: Iterable[dict], keep: int | None = None) -> None:
        """Revoke the lease a key was written with once the key left it (overwritten or deleted). Every
        lease here is granted for one write of one key, so it holds nothing else; left alone, each TTL
        registration refresh would keep one more lease alive for a whole TTL."""
        for kv in previous:
            lease = int(kv.get("lease") or 0)
            if lease and lease != keep:
                self._revoke_quietly(lease)

    def close(self) -> None:
        for client in self._clients.values():
            try:
                client.session.close()
            except Exception:  # closing is best effort  # noqa: BLE001
                pass
        self._clients.clear()

    # -- the lock's primitive: a leased key with the holder record (the rules are in Store) --------------
    def _lock_read(self, key: str) -> tuple[dict, Handle] | None:
        raw = self._raw(key)
        return None if raw is None else (_record(raw), raw)

    def _lock_write(self, key: str, record: dict, ttl: float, handle: Handle | None) -> bool:
        """Compare-and-set the record on a lease of LOCK_LEASE_FACTOR x ttl: it expires (``expires``)
        at ttl as in every store, and the key itself goes when the lease does, so a killed holder frees
        it. A refresh keeps the lease alive when its TTL is unchanged, else moves the key to a new one."""
        previous = _record(handle) if handle else {}
        refresh = bool(previous) and previous.get("token") == record.get("token")
        old_lease = int(previous.get("lease") or 0)
        wanted = max(1, math.ceil(ttl * LOCK_LEASE_FACTOR))
        new_lease = None
        if refresh and old_lease and previous.get("lease_ttl") == wanted and self._keepalive(old_lease):
            lease = old_lease
        else:
            new_lease, wanted = self._grant(ttl * LOCK_LEASE_FACTOR)
            lease = new_lease
        record.update(lease=lease, lease_ttl=wanted)
        version = int(handle["mod_revision"]) if handle else 0
        put = {"request_put": {"key": _b64(key), "value": _b64(_dump(record)), "lease": lease}}
        try:
            result = self._txn(f"lock {key}", [self._compare(key, version)], [put])
        except BaseException:
            if not refresh:
                # the write may have been applied; its caller will never release it: revoking the lease
                # removes such a record instead of blocking every release for 2 x ttl
                self._revoke_quietly(new_lease)
            raise
        if not result.get("succeeded"):
            self._revoke_quietly(new_lease)
            return False
        if old_lease and old_lease != lease:
            self._revoke_quietly(old_lease)  # it held only this key, which now has another lease
        return True

    def _lock_delete(self, key: str, handle: Handle) -> bool:
        request = {"request_delete_range": {"key": _b64(key)}}
        result = self._txn(f"release lock {key}", [self._compare(key, int(handle["mod_revision"]))], [request])
        if not result.get("succeeded"):
            return False
        self._revoke_quietly(_record(handle).get("lease"))
        return True

    # -- watch ----------------------------------------------------------------------------------------
    def watch(self, prefix: str, since_version: int, timeout: float) -> int | None:
        """Block until a key under prefix changes after revision since_version; return the revision of
        that change, or None when timeout passes first.

        A range read first answers at once when a key was written after since_version. Otherwise a
        gateway watch from since_version + 1 (from the current revision + 1 when since_version is 0 or not
        behind; etcd3gw's watch, through the grpc-gateway's streaming /v3/watch) reports the first put or
        delete. When since_version has been compacted away, etcd
        cancels such a watch, so that case is detected beforehand and answered with the current
        revision: the caller re-reads, which is always safe."""
        since = max(0, int(since_version or 0))
        ranged = self._range(prefix, prefix=True, keys_only=True)
        head = int(ranged["header"]["revision"])
        newest = max((int(kv["mod_revision"]) for kv in ranged.get("kvs") or []), default=0)
        if newest > since:
            return newest
        if since == 0 or since >= head:
            # nothing under the prefix to report (since 0: nothing exists): only later changes count; a watch
            # from revision 1 would replay old history, or be cancelled by etcd once it is compacted
            return self._watch_events(prefix, head + 1, timeout)
        if self._compacted(prefix, since):
            return head
        found = self._watch_events(prefix, since + 1, timeout)
        # a change at or before head (keys since deleted) is reported as head: a re-read covers them all,
        # where the first one's own revision would make the caller step through history one call at a time
        return None if found is None else max(found, head)

    def _compacted(self, prefix: str, revision: int) -> bool:
        ex = require("etcd3gw.exceptions", "etcd")

        def probe(client):
            try:
                client.post(client.get_url("/kv/range"), json={
                    "key": _b64(prefix or "\0"), "range_end": _b64(_prefix_end(prefix)), "revision": revision,
                    "count_only": True})  # on the prefix itself: a user may read nothing else
                return False
            except ex.Etcd3Exception as exc:
                if "compacted" in _etcd_message(exc):
                    return True
                raise

        return self._call("watch", probe)

    def _watch_events(self, prefix: str, start: int, timeout: float) -> int | None:
        start_key = (prefix or "\0").encode()

        def run(client):
            events, cancel = client.watch(start_key, range_end=_prefix_end(prefix), start_revision=start)
            timer = threading.Timer(max(0.0, timeout), cancel)
            timer.daemon = True
            timer.start()
            try:
                for event in events:
                    return int(event["kv"]["mod_revision"])
                return None
            finally:
                timer.cancel()
                cancel()

        return self._call(f"watch {prefix}", run)


def _entry(kv: dict) -> Entry:
    return Entry(_unb64(kv["key"]), _unb64(kv.get("value")), int(kv["mod_revision"]))


def _record(kv: dict) -> dict:
    try:
        record = json.loads(_unb64(kv.get("value")) or "{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _dump(record: dict) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def _never_sent(exc: BaseException) -> bool | None:
    """True when the request never left for the endpoint (refused, unresolvable, connect timeout);
    False when it may have reached etcd before the connection broke or the answer timed out; None when
    no transport error is involved (etcd itself answered, e.g. 503 unavailable)."""
    import requests
    import urllib3.exceptions as u3

    transport = False
    for cur in causes(exc):
        if isinstance(cur, (u3.ConnectTimeoutError, requests.exceptions.ConnectTimeout)):
            return True  # urllib3's NewConnectionError (refused, DNS) is a ConnectTimeoutError too
        transport = transport or isinstance(cur, (requests.exceptions.RequestException, u3.HTTPError))
    return False if transport else None


def _etcd_message(exc) -> str:
    """The gateway's error text ({"error": "etcdserver: ..."}), or the exception's own."""
    detail = getattr(exc, "detail_text", None) or ""
    try:
        data = json.loads(detail)
        text = data.get("error") or data.get("message") or detail
    except (ValueError, AttributeError):
        text = detail or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:300]


def _split_hostport(endpoint: str) -> tuple[str, int]:
    from ..netaddr import parse_hostport

    found = parse_hostport(endpoint, 2379)
    if found is None:
        raise StoreError(f"etcd store: bad endpoint {endpoint!r}; check ETCDCTL_ENDPOINTS / the store URL",
                         store="etcd")
    return found


def _endpoints(url: str, env) -> tuple[str, list[str]]:
    """etcd://h:p[,h:p], etcds://..., or ETCDCTL_ENDPOINTS when the URL names no host (127.0.0.1:2379
    when that is unset too). A bad URL or variable is a StoreURLError (exit code 2)."""
    from ..netaddr import format_hostport
    from .url import registry_address

    _, hosts, tls = registry_address(url, "etcd", env, "etcd://host:port[,host:port] or etcds://...")
    return ("https" if tls else "http"), [format_hostport(h, p) for h, p in hosts]


def _credentials(env) -> tuple[str | None, str | None]:
    user = env.get("ETCDCTL_USER", "")
    if not user:
        return None, None
    name, sep, password = user.partition(":")
    if not sep:
        password = env.get("ETCDCTL_PASSWORD", "")
    return name, password
