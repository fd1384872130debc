"""Consul KV store adapter (py-consul, imported lazily).

Versions are Consul's ``ModifyIndex``. Writes go through ``PUT /v1/txn`` (sent by py-consul's transport
with our token header, because ``txn.put`` itself drops the token): a transaction returns the entry it
wrote, so ``put`` learns its new ModifyIndex in the same round trip instead of a racy read-after-write,
and compare-and-set, lock hand-over and delete-if-version are atomic.

TTL keys and the lock use sessions with ``Behavior=delete`` and ``LockDelay=0``: the key is acquired by a
session with a TTL, and disappears when the session is invalidated. Consul only expires a TTL session
after **twice** its TTL, and never below its ``session_ttl_min`` (10 s by default), so a TTL key may
outlive its TTL by up to 2 x max(ttl, 10 s). The lock therefore also keeps ``expires`` in its record, and
follows the rules of every store (``Store.try_lock``): this adapter only supplies the primitive.
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

from ..errors import ConflictError, LockHeld, StoreError
from ..extras import require
from .base import Entry, Store, tls_failure

Handle = Any  # the lock handle of Store: the KV entry Consul returned (ModifyIndex, Session)

DEFAULT_PORT = 8500
MAX_SESSION_TTL = 86400.0
_TRUE = {"1", "t", "true", "yes"}
_FALSE = {"0", "f", "false", "no"}


def _parse_bool(text: str) -> bool | None:
    text = text.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


class ConsulStore(Store):
    """Store on a Consul agent. All keys are relative (no leading '/')."""

    kind = "consul"

    def __init__(self, url: str = "consul://", *, token: str | None = None, timeout: float = 10.0,
                 session_ttl_min: float = 10.0, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        self.timeout = timeout
        self.session_ttl_min = session_ttl_min
        self.host, self.port, self.scheme = _address(url, env)
        self._token = token if token is not None else _token_from_env(env, self.describe())
        self._verify, self._cert = _tls_from_env(env)
        self._client = None

    # -- plumbing -----------------------------------------------------------------------------------
    def describe(self) -> str:
        return f"{'consuls' if self.scheme == 'https' else 'consul'}://{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"ConsulStore({self.describe()!r})"

    @property
    def client(self):
        if self._client is None:
            consul = require("consul", "consul")  # lazy: the CLI must not pay for client imports it does not use

            client = consul.Consul(host=self.host, port=self.port, token=self._token, scheme=self.scheme,
                                   verify=self._verify, cert=self._cert, connections_timeout=self.timeout)
            # py-consul lets CONSUL_HTTP_TOKEN override the token argument; ours is already resolved
            client.token = self._token
            self._client = client
        return self._client

    def _call(self, what: str, fn):
        consul = require("consul", "consul")
        import requests
        from consul.exceptions import ACLDisabled

        where = f"consul store {self.describe()}"
        try:
            return fn()
        except (ConflictError, LockHeld, StoreError):
            raise
        except consul.ACLPermissionDenied as exc:
            raise self._denied() from exc
        except ACLDisabled as exc:
            raise StoreError(f"{where}: {what} refused: ACL support disabled", store=self.kind) from exc
        except requests.exceptions.Timeout as exc:
            raise StoreError(f"{where}: cannot reach the agent ({what} timed out after {self.timeout:g}s); "
                             "check CONSUL_HTTP_ADDR / the store URL and that Consul is running",
                             store=self.kind) from exc
        except requests.exceptions.ConnectionError as exc:
            tls = tls_failure(exc)
            if tls:
                raise StoreError(f"{where}: TLS with the agent failed ({tls}); check CONSUL_CACERT, "
                                 "CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY, CONSUL_HTTP_SSL and that the address speaks "
                                 "https", store=self.kind) from exc
            raise StoreError(f"{where}: cannot reach the agent ({what}: connection failed); "
                             "check CONSUL_HTTP_ADDR / the store URL and that Consul is running",
                             store=self.kind) from exc
        except (consul.ConsulException, requests.exceptions.RequestException, ValueError) as exc:
            text = self._scrub(" ".join(str(exc).split()))[:300]
            raise StoreError(f"{where}: {what} failed: {type(exc).__name__}: {text}", store=self.kind) from exc
        except OSError as exc:  # requests refuses a missing CA or client certificate file with a bare OSError
            text = self._scrub(" ".join(str(exc).split()))[:300]
            raise StoreError(f"{where}: {what} failed: {text}; check CONSUL_CACERT, CONSUL_CLIENT_CERT and "
                             "CONSUL_CLIENT_KEY", store=self.kind) from exc

    def _denied(self) -> StoreError:
        return StoreError(f"consul store {self.describe()}: permission denied (ACL token rejected or lacking "
                          "key:write on cdlib/); check CONSUL_HTTP_TOKEN", store=self.kind)

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    @staticmethod
    def _check_key(key: str) -> None:
        if key.startswith("/"):
            raise StoreError(f"consul store: key {key!r} starts with '/'; Consul keys are relative",
                             store="consul")

    def _txn(self, what: str, ops: list[dict]) -> tuple[bool, list[dict], list[dict]]:
        """One ``PUT /v1/txn``: (applied, results, errors). A rollback (409) is not an exception here."""
        from consul.callback import CB
        from consul.exceptions import ClientError

        body = json.dumps(ops)

        def run():
            try:
                data = self.client.http.put(CB.json(), "/v1/txn", data=body, headers=self.client.prepare_headers())
            except ClientError as exc:
                text = str(exc)
                if not text.startswith("409 "):
                    raise
                errors = (json.loads(text[4:]) or {}).get("Errors") or []
                whats = " ".join(e.get("What", "") for e in errors)
                if "Permission denied" in whats or "ACL not found" in whats:
                    raise self._denied() from exc
                return False, [], errors
            return True, (data or {}).get("Results") or [], []

        return self._call(what, run)

    def _get_raw(self, key: str) -> dict | None:
        self._check_key(key)
        return self._call(f"get {key}", lambda: self.client.kv.get(key))[1]

    # -- primitives -----------------------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        raw = self._get_raw(key)
        return None if raw is None else _entry(raw)

    def list(self, prefix: str) -> list[Entry]:
        self._check_key(prefix)
        _, items = self._call(f"list {prefix}", lambda: self.client.kv.get(prefix, recurse=True))
        return sorted((_entry(item) for item in items or []), key=lambda e: e.key)

    def put(self, key: str, value: str, *, expect: int | None = None, ttl: float | None = None) -> int:
        self._check_key(key)
        if ttl:
            return self._put_with_session(key, str(value), expect, ttl)
        if expect is None:
            op = _kv("set", key, value)
        else:
            op = _kv("cas", key, value, index=expect)
        ok, results, _ = self._txn(f"put {key}", [op])
        if not ok:
            raise ConflictError(f"consul store: {key} changed concurrently", key=key)
        written = _result(results, key)
        if written.get("Session"):
            # the key was written with a TTL before: detach it from that session so it stays
            return self._detach(key, str(value), written)
        return int(written["ModifyIndex"])

    def _detach(self, key: str, value: str, written: dict) -> int:
        session = written["Session"]
        ok, results, _ = self._txn(f"put {key}", [
            _kv("check-index", key, index=written["ModifyIndex"]),
            _kv("unlock", key, value, session=session),
        ])
        if not ok:  # a concurrent writer came in between: our write stands at its own version
            return int(written["ModifyIndex"])
        self._destroy_quietly(session)
        return int(_result(results, key)["ModifyIndex"])

    def _put_with_session(self, key: str, value: str, expect: int | None, ttl: float) -> int:
        for _ in range(5):  # an unconditional put retries when it loses a race; a CAS put does not
            current = self._get_raw(key)
            version = int(current["ModifyIndex"]) if current else 0
            if expect is not None and version != expect:
                raise ConflictError(f"consul store: {key} changed concurrently", key=key)
            session = self._create_session(f"cdlib ttl {key}", ttl)
            ops = [_kv("check-index", key, index=version) if current else _kv("check-not-exists", key)]
            old = (current or {}).get("Session")
            if old:
                ops.append(_kv("unlock", key, value, session=old))
            ops.append(_kv("lock", key, value, session=session))
            ok, results, _ = self._txn(f"put {key}", ops)
            if ok:
                if old:
                    self._destroy_quietly(old)
                return int(_result(results, key)["ModifyIndex"])
            self._destroy_quietly(session)
            if expect is not None:
                raise ConflictError(f"consul store: {key} changed concurrently", key=key)
        raise ConflictError(f"consul store: {key} kept changing while it was written with a TTL", key=key)

    def delete(self, key: str, *, expect: int | None = None) -> bool:
        self._check_key(key)
        if expect == 0:
            ok, _, _ = self._txn(f"delete {key}", [_kv("check-not-exists", key)])
            if not ok:
                raise ConflictError(f"consul store: {key} changed concurrently", key=key)
            return False
        if expect is None:
            ops = [_kv("get", key), _kv("delete", key)]
        else:
            ops = [_kv("check-index", key, index=expect), _kv("delete", key)]
        ok, results, _ = self._txn(f"delete {key}", ops)
        if not ok:
            if expect is None:
                return False  # the key did not exist
            raise ConflictError(f"consul store: {key} changed concurrently", key=key)
        session = _result(results, key).get("Session")
        if session:
            self._destroy_quietly(session)
        return True

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.http.session.close()
            except Exception:  # closing is best effort  # noqa: BLE001
                pass
            self._client = None

    # -- sessions -------------------------------------------------------------------------------------
    def _session_ttl(self, ttl: float) -> float:
        return min(max(float(ttl), self.session_ttl_min), MAX_SESSION_TTL)

    def _create_session(self, name: str, ttl: float) -> str:
        """A TTL session that deletes what it holds when it dies, with no lock-delay.

        Sent through py-consul's transport rather than session.create(), which only accepts whole
        seconds from 10 up: a test agent may allow a lower session_ttl_min.
        """
        from consul.callback import CB

        seconds = self._session_ttl(ttl)
        ttl_text = f"{int(seconds)}s" if seconds == int(seconds) else f"{math.ceil(seconds * 1000)}ms"
        body = json.dumps({"Name": name, "Behavior": "delete", "LockDelay": "0s", "TTL": ttl_text})
        return self._call("session create", lambda: self.client.http.put(
            CB.json(is_id=True), "/v1/session/create", data=body, headers=self.client.prepare_headers()))

    def _destroy_quietly(self, session: str) -> None:
        try:
            self._call("session destroy", lambda: self.client.session.destroy(session))
        except StoreError:
            pass  # the session dies with its TTL anyway

    # -- the lock's primitive: a session-held key with the holder record (the rules are in Store) ---------
    def _lock_read(self, key: str) -> tuple[dict, Handle] | None:
        """A key whose session is gone reads as expired, whatever its record still says."""
        self._check_key(key)
        raw = self._get_raw(key)
        if raw is None:
            return None
        record = _record(raw)
        return (record if raw.get("Session") else dict(record, expires=0)), raw

    def _lock_write(self, key: str, record: dict, ttl: float, handle: Handle | None) -> bool:
        """Compare-and-set the record on a TTL session: a refresh renews the session when its TTL is
        unchanged, else (and on a take-over) the key moves to a new session in the same transaction."""
        previous = _record(handle) if handle else {}
        refresh = bool(previous) and previous.get("token") == record.get("token")
        session = (handle or {}).get("Session") or ""
        want = self._session_ttl(ttl)
        ops = [_kv("check-index", key, index=handle["ModifyIndex"]) if handle else _kv("check-not-exists", key)]
        new_session = None
        if refresh and session and previous.get("session") == session and previous.get("session_ttl") == want:
            if not self._renew(session):
                return False  # the session expired: the key went with it
            ops.append(_kv("set", key, _dump(record)))
        else:
            new_session = self._create_session(f"cdlib lock {key}", ttl)
            record.update(session=new_session, session_ttl=want)
            if session:
                ops.append(_kv("unlock", key, _dump(record), session=session))
            ops.append(_kv("lock", key, _dump(record), session=new_session))
        try:
            ok, _, _ = self._txn(f"lock {key}", ops)
        except BaseException:
            if not refresh and new_session:
                # the write may have been applied; its caller will never release it: destroying the session
                # deletes such a record instead of leaving it (and the session) for 2 x ttl
                self._destroy_quietly(new_session)
            raise
        if not ok:
            if new_session:
                self._destroy_quietly(new_session)
            return False
        if new_session and session:
            self._destroy_quietly(session)
        return True

    def _lock_delete(self, key: str, handle: Handle) -> bool:
        session = handle.get("Session") or ""
        ops = [_kv("check-index", key, index=handle["ModifyIndex"])]
        if session:
            ops.append(_kv("unlock", key, _value(handle), session=session))
        ops.append(_kv("delete", key))
        ok, _, _ = self._txn(f"release lock {key}", ops)
        if ok and session:
            self._destroy_quietly(session)
        return ok

    def _renew(self, session: str) -> bool:
        consul = require("consul", "consul")

        def run():
            try:
                self.client.session.renew(session)
                return True
            except consul.NotFound:
                return False

        return self._call("session renew", run)

    # -- watch ----------------------------------------------------------------------------------------
    # -- registrations: KV (what the proxy renders) plus an agent service with an HTTP check ---------
    def register(self, service: str, color: str, name: str, record: dict, ttl: float | None = None) -> None:
        """The KV registration, then an agent service whose HTTP check Consul runs itself, removed by
        Consul after DeregisterCriticalServiceAfter when the instance stays dead (what Registrator
        never did). The service ID is the instance name; tags carry the color and the release."""
        super().register(service, color, name, record, ttl=ttl)
        body = {
            "ID": name, "Name": service, "Tags": [color, f"release-{record.get('release', '')}"],
            "Address": record.get("address", ""), "Port": int(record.get("port", 0)),
            "Meta": {"cdlib_color": color, "cdlib_release": str(record.get("release", ""))[:500],
                     "cdlib_image": str(record.get("image", ""))[:500]},
        }
        if record.get("health_url"):
            body["Check"] = {"HTTP": record["health_url"], "Interval": "5s", "Timeout": "2s",
                             "DeregisterCriticalServiceAfter": "1m", "Status": "passing"}
        self._agent("PUT", "/v1/agent/service/register", f"register service {name}", body)

    def deregister(self, service: str, color: str, name: str) -> None:
        super().deregister(service, color, name)
        self._agent("PUT", f"/v1/agent/service/deregister/{name}", f"deregister service {name}", None,
                    missing_ok=True)

    def registry_health(self, service: str) -> dict[str, str] | None:
        def run():
            _, nodes = self.client.health.service(service)
            return nodes
        nodes = self._call(f"read the health of {service}", run) or []
        order = {"passing": 0, "warning": 1, "critical": 2}
        out = {}
        for node in nodes:
            checks = [c.get("Status", "critical") for c in node.get("Checks", [])]
            worst = max(checks, key=lambda st: order.get(st, 2), default="passing")
            out[node["Service"]["ID"]] = worst
        return out

    def _agent(self, method: str, path: str, what: str, body: dict | None, missing_ok: bool = False) -> None:
        """An agent endpoint through py-consul's transport with our token header (a 404 on
        deregister means the agent already forgot the service: the goal is reached)."""
        from consul.callback import CB

        def run():
            found = self.client.http.put(CB.boolean(), path, data=None if body is None else json.dumps(body),
                                         headers=self.client.prepare_headers())
            if found is False and not missing_ok:
                raise StoreError(f"consul store {self.describe()}: {what} failed: not found", store=self.kind)
        self._call(what, run)

    def watch(self, prefix: str, since_version: int, timeout: float) -> int | None:
        """Block until something under prefix changes after since_version; return the new index, or
        None when timeout passes first. A blocking query on the prefix: index 0 is clamped to 1 (0 never
        blocks), and an index that went backwards (snapshot restore, tombstone reaping) counts as a change,
        so the caller re-reads."""
        self._check_key(prefix)
        since = max(1, int(since_version or 0))
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            wait = f"{max(1, int(remaining * 1000))}ms"
            index, _ = self._call(f"watch {prefix}", lambda w=wait: self.client.kv.get(
                prefix, index=since, wait=w, recurse=True, keys=True))
            index = int(index or 0)
            if index > since or 0 < index < since:
                return index
            # same index: the wait elapsed (or a spurious wake-up); loop until our own deadline


def _value(raw: dict) -> str:
    value = raw.get("Value")
    return value.decode() if isinstance(value, bytes) else (value or "")


def _entry(raw: dict) -> Entry:
    return Entry(raw["Key"], _value(raw), int(raw["ModifyIndex"]))


def _record(raw: dict) -> dict:
    try:
        record = json.loads(_value(raw) or "{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _dump(record: dict) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def _kv(verb: str, key: str, value: str | None = None, *, index: int | None = None,
        session: str | None = None) -> dict:
    op: dict = {"Verb": verb, "Key": key}
    if value is not None:
        op["Value"] = base64.b64encode(str(value).encode()).decode()
    if index is not None:
        op["Index"] = int(index)
    if session is not None:
        op["Session"] = session
    return {"KV": op}


def _result(results: list[dict], key: str) -> dict:
    """The last entry a transaction reports for key (the state after every op)."""
    for item in reversed(results):
        kv = item.get("KV") or {}
        if kv.get("Key") == key:
            return kv
    return {}


def _address(url: str, env) -> tuple[str, int, str]:
    """consul://host:port, consuls://host:port, or CONSUL_HTTP_ADDR when the URL names no host
    (127.0.0.1:8500 when that is unset too). A bad URL or variable is a StoreURLError (exit code 2)."""
    from .url import registry_address

    parsed, hosts, tls = registry_address(url, "consul", env, "consul://host:port or consuls://host:port")
    if parsed.scheme == "consul" and _parse_bool(env.get("CONSUL_HTTP_SSL", "")):
        tls = True
    host, port = hosts[0]
    return host, port, ("https" if tls else "http")


def _token_from_env(env, where: str) -> str | None:
    """CONSUL_HTTP_TOKEN_FILE wins over CONSUL_HTTP_TOKEN, as in Consul's own CLI."""
    path = env.get("CONSUL_HTTP_TOKEN_FILE", "").strip()
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip() or None
        except OSError as exc:
            raise StoreError(f"consul store {where}: cannot read CONSUL_HTTP_TOKEN_FILE {path}: {exc.strerror}",
                             store="consul") from exc
    return env.get("CONSUL_HTTP_TOKEN", "").strip() or None


def _tls_from_env(env) -> tuple[bool | str, tuple[str, str] | None]:
    verify: bool | str = True
    if _parse_bool(env.get("CONSUL_HTTP_SSL_VERIFY", "")) is False:
        verify = False
    elif env.get("CONSUL_CACERT"):
        verify = env["CONSUL_CACERT"]
    cert = None
    if env.get("CONSUL_CLIENT_CERT") and env.get("CONSUL_CLIENT_KEY"):
        cert = (env["CONSUL_CLIENT_CERT"], env["CONSUL_CLIENT_KEY"])
    return verify, cert
