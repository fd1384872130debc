"""A Consul agent double: the parts of Consul's HTTP API that cdlib uses, with Consul's documented behaviour.

Consul cannot be installed on the test machines, so the Consul adapter is tested against this server.
It follows hashicorp/consul's API documentation and agent code rather
than what the adapter happens to need, so the adapter cannot lean on a convenient mistake:

- KV: GET (exact, ``?recurse``, ``?keys`` + ``?separator``, ``?raw``), PUT (``?cas``, ``?flags``,
  ``?acquire``, ``?release``), DELETE (``?recurse``, ``?cas``); base64 ``Value`` (null when empty);
  ``CreateIndex``/``ModifyIndex``/``LockIndex``/``Flags``/``Session``; tombstones, so a prefix's index
  does not go backwards after a delete; a PUT that changes nothing keeps ModifyIndex; the 512 KiB limit.
- ``PUT /v1/txn`` with the KV verbs (set, cas, lock, unlock, get, get-tree, check-index, check-session,
  check-not-exists, delete, delete-tree, delete-cas): 200 with Results, 409 with every failing op.
- Blocking queries (``?index=&wait=``) on KV, health, catalog and session reads: answer at once when the
  caller's index is behind, otherwise hold until the index moves or the wait elapses (Go durations;
  default 5m, capped at 10m, plus up to wait/16 of jitter). ``X-Consul-Index`` is never 0.
- Sessions: create (Name, Node, LockDelay, Behavior, TTL, NodeChecks/Checks/ServiceChecks), renew (404
  once gone), destroy, info, list, node. Invalidation (destroy, TTL, a bound check going critical or
  being deregistered) releases or deletes the held keys and starts the per-key lock-delay.
  A real server only expires a TTL session after **2 x TTL**; the double expires after
  ``ttl_multiplier x TTL`` (default 1, so tests stay fast; pass 2 to mimic a server exactly).
- Agent services and checks: register (case-insensitive and snake_case keys, as py-consul sends them),
  deregister (404 for an unknown id), HTTP, TCP and TTL checks that the double really runs at their
  interval; new checks start critical, and a re-registered one keeps its last status even over an
  explicit Status; DeregisterCriticalServiceAfter with a configurable minimum
  (Consul's is one minute) and reaper period (Consul's is 30 s).
- ``/v1/health/service/NAME`` (``?passing``, ``?tag``), ``/v1/catalog/services``,
  ``/v1/catalog/service/NAME``, ``/v1/agent/services``, ``/v1/agent/checks``, ``/v1/status/leader``.
- ACLs: with ``acl_token``, a request without that token (``X-Consul-Token``, ``?token=`` or
  ``Authorization: Bearer``) gets 403 ``ACL not found``; tokens in ``read_only_tokens`` may read but a
  write gets 403 ``Permission denied: token with AccessorID '...' lacks permission ...`` (409 entries
  inside a transaction).

Not implemented (answered with an error rather than silently ignored): ``?filter=`` expressions,
``?near=``, non-KV transaction ops, prepared queries, Connect.

``requests_log`` records every request (method, path, query without any token, status) so tests and
benchmarks can count round trips.
"""

from __future__ import annotations

import base64
import json
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_VALUE_SIZE = 524288
MAX_TXN_OPS = 128
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
MAX_LOCK_DELAY = 60.0
MAX_SESSION_TTL = 86400.0
SERF_CHECK = "serfHealth"
ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_META_KEY = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


class ApiError(Exception):
    """An error answer: plain-text body, as Consul sends them."""

    def __init__(self, status: int, text: str, headers: dict | None = None):
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or {}


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration for the forms Consul accepts (``10s``, ``1500ms``, ``1m30s``)."""
    text = text.strip()
    if text in ("0", ""):
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            raise ValueError(text)
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ValueError(text)
    return total


def format_duration(seconds: float) -> str:
    """Go's Duration.String() for the values the double prints (``10s``, ``1m30s``, ``500ms``)."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:g}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    out = ""
    if hours:
        out += f"{int(hours)}h"
    if hours or minutes:
        out += f"{int(minutes)}m"
    return out + f"{secs:g}s"


def _parse_bool(text: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(text)


def _field(obj: dict | None, name: str, default=None):
    """Consul matches request JSON keys case-insensitively and accepts snake_case aliases."""
    if not obj:
        return default
    wanted = name.lower().replace("_", "")
    for key, value in obj.items():
        if key.lower().replace("_", "") == wanted:
            return value
    return default


def _uint(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise ApiError(500, f'strconv.ParseUint: parsing "{text}": invalid syntax') from None
    if value < 0 or value >= 2**64:
        raise ApiError(500, f'strconv.ParseUint: parsing "{text}": value out of range')
    return value


@dataclass
class Check:
    check_id: str
    name: str
    service_id: str = ""
    service_name: str = ""
    service_tags: list = field(default_factory=list)
    kind: str = ""  # http, tcp, ttl, or "" for the node's serfHealth
    status: str = "critical"
    output: str = ""
    notes: str = ""
    interval: float = 0.0
    timeout: float = 10.0
    ttl: float = 0.0
    http: str = ""
    method: str = "GET"
    header: dict = field(default_factory=dict)
    body: str = ""
    tcp: str = ""
    deregister_after: float | None = None
    critical_since: float | None = None
    next_run: float = 0.0
    ttl_deadline: float | None = None
    running: bool = False
    create_index: int = 0
    modify_index: int = 0

    def api(self, node: str) -> dict:
        return {
            "Node": node, "CheckID": self.check_id, "Name": self.name, "Status": self.status,
            "Notes": self.notes, "Output": self.output, "ServiceID": self.service_id,
            "ServiceName": self.service_name, "ServiceTags": list(self.service_tags), "Type": self.kind,
            "Interval": format_duration(self.interval) if self.interval else "",
            "Timeout": format_duration(self.timeout) if self.kind in ("http", "tcp") else "",
            "ExposedPort": 0, "Definition": {}, "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in separate writes: without TCP_NODELAY each keep-alive request waits
    # ~40 ms for the client's delayed ACK (Nagle), which no real Consul agent does
    disable_nagle_algorithm = True
    server_version = "Consul-double"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass

    def _serve(self, method: str):
        double: ConsulDouble = self.server.double  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload, headers = double.handle(method, self.path, dict(self.headers.items()), body, length)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._serve("GET")

    def do_PUT(self):  # noqa: N802
        self._serve("PUT")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def do_DELETE(self):  # noqa: N802
        self._serve("DELETE")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _KVTxn:
    """KV writes against a working copy, so a transaction can be rolled back as a whole.

    Single-op HTTP requests use it too, so PUT/DELETE and /v1/txn share one implementation of Consul's
    state-store rules (kvsSetTxn, kvsSetCASTxn, kvsLockTxn, kvsUnlockTxn, kvsDeleteCASTxn, ...).
    """

    def __init__(self, double: ConsulDouble):
        self.double = double
        self.kv = dict(double._kv)
        self.tombstones = dict(double._tombstones)
        self.idx = double._index + 1
        self.changed = False

    def entry(self, key: str) -> dict | None:
        return self.kv.get(key)

    def _write(self, key: str, value: bytes, flags: int, session: str, lock_index: int) -> dict:
        existing = self.kv.get(key)
        new = {
            "Key": key, "Value": value, "Flags": flags, "Session": session, "LockIndex": lock_index,
            "CreateIndex": existing["CreateIndex"] if existing else self.idx,
            "ModifyIndex": self.idx,
        }
        if existing is not None and all(existing[k] == new[k] for k in ("Value", "Flags", "Session",
                                                                         "LockIndex")):
            return existing  # an identical write changes nothing and wakes nobody (consul#5885)
        self.kv[key] = new
        self.tombstones.pop(key, None)
        self.changed = True
        return new

    def set(self, key: str, value: bytes, flags: int) -> dict:
        existing = self.kv.get(key)
        session = existing["Session"] if existing else ""
        lock_index = existing["LockIndex"] if existing else 0
        return self._write(key, value, flags, session, lock_index)

    def cas(self, key: str, value: bytes, flags: int, index: int) -> dict | None:
        existing = self.kv.get(key)
        if index == 0 and existing is not None:
            return None
        if index != 0 and (existing is None or existing["ModifyIndex"] != index):
            return None
        return self.set(key, value, flags)

    def lock(self, key: str, value: bytes, flags: int, session: str) -> dict | None:
        if not session:
            raise ValueError("missing session")
        if session not in self.double._sessions:
            raise ValueError(f'invalid session "{session}"')
        existing = self.kv.get(key)
        if existing is None:
            lock_index = 1
        elif existing["Session"] == session:
            lock_index = existing["LockIndex"]
        elif existing["Session"]:
            return None
        else:
            lock_index = existing["LockIndex"] + 1
        return self._write(key, value, flags, session, lock_index)

    def unlock(self, key: str, value: bytes, flags: int, session: str) -> dict | None:
        if not session:
            raise ValueError("missing session")
        existing = self.kv.get(key)
        if existing is None or existing["Session"] != session:
            return None
        return self._write(key, value, flags, "", existing["LockIndex"])

    def delete(self, key: str) -> None:
        if key in self.kv:
            del self.kv[key]
            self.tombstones[key] = self.idx
            self.changed = True

    def delete_cas(self, key: str, index: int) -> bool:
        existing = self.kv.get(key)
        if existing is None or existing["ModifyIndex"] != index:
            return existing is None  # Consul: a CAS delete of a missing key reports success
        self.delete(key)
        return True

    def delete_tree(self, prefix: str) -> None:
        for key in [k for k in self.kv if k.startswith(prefix)]:
            self.delete(key)

    def commit(self) -> None:
        if not self.changed:
            return
        d = self.double
        d._kv = self.kv
        d._tombstones = self.tombstones
        d._index = self.idx
        d._table_index["kvs"] = self.idx
        d._cond.notify_all()


class ConsulDouble:
    """A threaded HTTP server on 127.0.0.1 that answers like a single-node Consul agent and server."""

    def __init__(self, *, acl_token: str | None = None, read_only_tokens: tuple[str, ...] = (),
                 session_ttl_min: float = 10.0, ttl_multiplier: float = 1.0,
                 deregister_critical_min: float = 60.0, reap_interval: float = 30.0,
                 check_interval_min: float = 1.0, wait_jitter: bool = True, tick: float = 0.05,
                 node: str = "cdlibt-consul", datacenter: str = "dc1", host: str = "127.0.0.1", port: int = 0):
        self.acl_token = acl_token
        self.read_only_tokens = tuple(read_only_tokens)
        self.session_ttl_min = session_ttl_min
        self.ttl_multiplier = ttl_multiplier
        self.deregister_critical_min = deregister_critical_min
        self.reap_interval = reap_interval
        self.check_interval_min = check_interval_min
        self.wait_jitter = wait_jitter
        self.tick = tick
        self.node = node
        self.datacenter = datacenter
        self.node_id = str(uuid.uuid4())
        self._host, self._port = host, port
        self.requests_log: list[dict] = []
        self._cond = threading.Condition(threading.RLock())
        self._index = 10
        self._table_index = {"kvs": 1, "tombstones": 1, "sessions": 1, "services": 5, "checks": 5, "nodes": 5}
        self._kv: dict[str, dict] = {}
        self._tombstones: dict[str, int] = {}
        self._lock_delay: dict[str, float] = {}
        self._sessions: dict[str, dict] = {}
        self._session_deadline: dict[str, float] = {}
        self._services: dict[str, dict] = {}
        self._checks: dict[str, Check] = {
            SERF_CHECK: Check(SERF_CHECK, "Serf Health Status", status="passing", output="Agent alive and reachable",
                              create_index=5, modify_index=5),
        }
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._last_reap = time.monotonic()

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> ConsulDouble:
        self._server = _Server((self._host, self._port), _Handler)
        self._server.double = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="consul-double", daemon=True)
        self._thread.start()
        self._ticker = threading.Thread(target=self._tick_loop, name="consul-double-ticker", daemon=True)
        self._ticker.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in (self._thread, self._ticker):
            if thread is not None:
                thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> ConsulDouble:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "the double is not started"
        return self._server.server_address[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    # -- inspection helpers for tests ----------------------------------------------------------
    @property
    def index(self) -> int:
        with self._cond:
            return self._index

    def session_ids(self) -> list[str]:
        with self._cond:
            return sorted(self._sessions)

    def kv_snapshot(self) -> dict[str, bytes]:
        with self._cond:
            return {k: v["Value"] for k, v in self._kv.items()}

    # -- request entry point -----------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers: dict, body: bytes, length: int):
        parts = urllib.parse.urlsplit(raw_path)
        path = urllib.parse.unquote(parts.path)
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        query: dict[str, list[str]] = {}
        for name, value in pairs:
            query.setdefault(name, []).append(value)
        base_headers = {"X-Consul-Default-Acl-Policy": "deny" if self.acl_token else "allow"}
        try:
            token = self._token(query, headers)
            status, payload, extra = self._route(method, path, query, parts.query, body, length, token)
            ctype = extra.pop("Content-Type", "application/json")
            if not isinstance(payload, bytes):
                indent = 4 if "pretty" in query else None
                payload = json.dumps(payload, indent=indent).encode()
            out = {**base_headers, "Content-Type": ctype, **extra}
        except ApiError as exc:
            status, payload = exc.status, exc.text.encode()
            out = {**base_headers, "Content-Type": "text/plain; charset=utf-8", **exc.headers}
        logged = "&".join(f"{k}={v}" for k, v in pairs if k != "token")
        self.requests_log.append({"method": method, "path": path, "query": logged, "status": status})
        return status, payload, out

    def _token(self, query, headers) -> str:
        if "token" in query:
            return query["token"][0]
        lowered = {k.lower(): v for k, v in headers.items()}
        if lowered.get("x-consul-token"):
            return lowered["x-consul-token"]
        auth = lowered.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return ""

    def _authorize(self, token: str, write: bool, permission: str, resource: str) -> None:
        if not self.acl_token:
            return
        if token == self.acl_token:
            return
        if token in self.read_only_tokens:
            if write:
                raise ApiError(403, self._denied_text(token, permission, resource))
            return
        raise ApiError(403, "ACL not found")

    def _denied_text(self, token: str, permission: str, resource: str) -> str:
        accessor = str(uuid.uuid5(uuid.NAMESPACE_OID, token))
        return f"Permission denied: token with AccessorID '{accessor}' lacks permission '{permission}' on \"{resource}\""

    def _route(self, method, path, query, raw_query, body, length, token):
        routes = [
            (r"/v1/kv/(.*)", ("GET", "PUT", "DELETE"), self._kv_endpoint),
            (r"/v1/txn", ("PUT",), self._txn_endpoint),
            (r"/v1/session/create", ("PUT",), self._session_create),
            (r"/v1/session/destroy/(.+)", ("PUT",), self._session_destroy),
            (r"/v1/session/renew/(.+)", ("PUT",), self._session_renew),
            (r"/v1/session/info/(.+)", ("GET",), self._session_info),
            (r"/v1/session/list", ("GET",), self._session_list),
            (r"/v1/session/node/(.+)", ("GET",), self._session_node),
            (r"/v1/agent/service/register", ("PUT",), self._service_register),
            (r"/v1/agent/service/deregister/(.+)", ("PUT",), self._service_deregister),
            (r"/v1/agent/services", ("GET",), self._agent_services),
            (r"/v1/agent/checks", ("GET",), self._agent_checks),
            (r"/v1/agent/check/(pass|warn|fail)/(.+)", ("PUT",), self._check_ttl_update),
            (r"/v1/agent/check/update/(.+)", ("PUT",), self._check_update),
            (r"/v1/health/service/(.+)", ("GET",), self._health_service),
            (r"/v1/catalog/services", ("GET",), self._catalog_services),
            (r"/v1/catalog/service/(.+)", ("GET",), self._catalog_service),
            (r"/v1/status/leader", ("GET",), self._status_leader),
        ]
        for pattern, methods, handler in routes:
            match = re.fullmatch(pattern, path)
            if not match:
                continue
            if method not in methods:
                raise ApiError(405, f"method {method} not allowed", {"Allow": ", ".join(methods)})
            if not path.startswith("/v1/status/"):
                self._authorize(token, write=False, permission="", resource="")
            request = _Request(method, query, raw_query, body, length, token, match.groups())
            return handler(request)
        raise ApiError(404, "Invalid URL path: not a recognized HTTP API endpoint")

    # -- shared read machinery ---------------------------------------------------------------------
    def _blocking(self, req: _Request, compute):
        """Run compute() (-> index, payload) as Consul's blocking query does."""
        if "stale" in req.query and "consistent" in req.query:
            raise ApiError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        min_index = 0
        if "index" in req.query:
            try:
                min_index = int(req.first("index"))
                if min_index < 0:
                    raise ValueError
            except ValueError:
                raise ApiError(400, "Invalid index") from None
        wait = DEFAULT_WAIT
        if "wait" in req.query:
            try:
                wait = parse_duration(req.first("wait"))
            except ValueError:
                raise ApiError(400, "Invalid wait time") from None
            if wait <= 0:
                wait = DEFAULT_WAIT
        wait = min(wait, MAX_WAIT)
        if self.wait_jitter:
            wait += random.uniform(0, wait / 16)
        with self._cond:
            index, payload = compute()
            if min_index > 0:
                deadline = time.monotonic() + wait
                while index <= min_index and not self._stopping.is_set():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                    index, payload = compute()
        return max(1, index), payload

    def _read_headers(self, index: int) -> dict:
        return {"X-Consul-Index": str(max(1, index)), "X-Consul-Knownleader": "true",
                "X-Consul-Lastcontact": "0", "X-Consul-Effective-Consistency": "leader"}

    # -- KV -----------------------------------------------------------------------------------------
    def _kv_table_index(self) -> int:
        return max(self._table_index["kvs"], 1)

    def _prefix_index(self, prefix: str) -> int:
        if prefix == "":
            return self._kv_table_index()
        lindex = 0
        for key, entry in self._kv.items():
            if key.startswith(prefix):
                lindex = max(lindex, entry["ModifyIndex"])
        for key, idx in self._tombstones.items():
            if key.startswith(prefix):
                lindex = max(lindex, idx)
        return lindex or self._kv_table_index()

    @staticmethod
    def _entry_api(entry: dict, with_value: bool = True) -> dict:
        out = {
            "LockIndex": entry["LockIndex"], "Key": entry["Key"], "Flags": entry["Flags"],
            "Value": base64.b64encode(entry["Value"]).decode() if with_value and entry["Value"] else None,
            "CreateIndex": entry["CreateIndex"], "ModifyIndex": entry["ModifyIndex"],
        }
        if entry["Session"]:
            out["Session"] = entry["Session"]
        return out

    def _kv_endpoint(self, req: _Request):
        key = req.groups[0]
        if req.method == "GET":
            return self._kv_get(req, key)
        self._authorize(req.token, write=True, permission="key:write", resource=key)
        if req.method == "PUT":
            return self._kv_put(req, key)
        return self._kv_delete(req, key)

    def _kv_get(self, req: _Request, key: str):
        keys_mode = "keys" in req.query
        recurse = "recurse" in req.query or keys_mode
        if not recurse and key == "":
            raise ApiError(400, "Missing key name")
        separator = req.first("separator", req.first("seperator", ""))

        def compute():
            if not recurse:
                entry = self._kv.get(key)
                if entry is None:
                    return self._kv_table_index(), None
                return entry["ModifyIndex"], entry
            entries = [self._kv[k] for k in sorted(self._kv) if k.startswith(key)]
            return self._prefix_index(key), entries

        index, data = self._blocking(req, compute)
        headers = self._read_headers(index)
        if not recurse:
            if data is None:
                raise ApiError(404, "", headers)
            if "raw" in req.query:
                headers.update({"Content-Type": "text/plain", "X-Content-Type-Options": "nosniff",
                                "Content-Security-Policy": "sandbox"})
                return 200, data["Value"], headers
            return 200, [self._entry_api(data)], headers
        if keys_mode:
            names: list[str] = []
            for entry in data:
                name = entry["Key"]
                if separator:
                    cut = name.find(separator, len(key))
                    if cut >= 0:
                        name = name[: cut + len(separator)]
                if name not in names:
                    names.append(name)
            if not names and key != "":
                raise ApiError(404, "", headers)
            return 200, names, headers
        if not data:
            raise ApiError(404, "", headers)
        return 200, [self._entry_api(e) for e in data], headers

    def _kv_put(self, req: _Request, key: str):
        if key == "":
            raise ApiError(400, "Missing key name")
        modes = [m for m in ("cas", "acquire", "release") if m in req.query]
        if len(modes) > 1:
            raise ApiError(400, f"Conflicting flags: {req.raw_query}")
        if req.length > MAX_VALUE_SIZE:
            raise ApiError(413, f"Request body({req.length} bytes) too large, max size: {MAX_VALUE_SIZE} bytes. "
                                "See https://www.consul.io/docs/agent/config/config-files#kv_max_value_size.")
        flags = _uint(req.first("flags")) if "flags" in req.query else 0
        with self._cond:
            txn = _KVTxn(self)
            if "cas" in req.query:
                ok = txn.cas(key, req.body, flags, _uint(req.first("cas"))) is not None
            elif "acquire" in req.query:
                session = req.first("acquire")
                if session not in self._sessions:
                    raise ApiError(500, f'invalid session "{session}"')
                if self._lock_delayed(key):
                    ok = False
                else:
                    ok = txn.lock(key, req.body, flags, session) is not None
            elif "release" in req.query:
                ok = txn.unlock(key, req.body, flags, req.first("release")) is not None
            else:
                txn.set(key, req.body, flags)
                ok = True
            if ok:
                txn.commit()
        return 200, ok, {}

    def _kv_delete(self, req: _Request, key: str):
        recurse = "recurse" in req.query
        if recurse and "cas" in req.query:
            raise ApiError(400, "Conflicting flags: cas can't be used with recurse")
        if not recurse and key == "":
            raise ApiError(400, "Missing key name")
        with self._cond:
            txn = _KVTxn(self)
            ok = True
            if recurse:
                txn.delete_tree(key)
            elif "cas" in req.query:
                ok = txn.delete_cas(key, _uint(req.first("cas")))
            else:
                txn.delete(key)
            txn.commit()
        return 200, ok, {}

    def _lock_delayed(self, key: str) -> bool:
        until = self._lock_delay.get(key)
        if until is None:
            return False
        if until <= time.monotonic():
            del self._lock_delay[key]
            return False
        return True

    # -- transactions -------------------------------------------------------------------------------
    _TXN_WRITES = {"set", "cas", "lock", "unlock", "delete", "delete-tree", "delete-cas"}

    def _txn_endpoint(self, req: _Request):
        try:
            ops = json.loads(req.body or b"null")
            if not isinstance(ops, list):
                raise ValueError("expected a JSON array of operations")
        except ValueError as exc:
            raise ApiError(400, f"Failed to parse body: {exc}") from None
        if len(ops) > MAX_TXN_OPS:
            raise ApiError(413, f"Transaction contains too many operations ({len(ops)} > {MAX_TXN_OPS})")
        parsed = []
        for op in ops:
            kv = _field(op, "KV")
            if kv is None:
                parsed.append(None)
                continue
            value = _field(kv, "Value")
            try:
                raw = base64.b64decode(value, validate=True) if value else b""
            except ValueError as exc:
                raise ApiError(400, f"Failed to parse body: {exc}") from None
            if len(raw) > MAX_VALUE_SIZE:
                raise ApiError(413, f'Value for key "{_field(kv, "Key", "")}" is too large '
                                    f"({len(raw)} > {MAX_VALUE_SIZE} bytes)")
            parsed.append({"verb": _field(kv, "Verb", ""), "key": _field(kv, "Key", ""), "value": raw,
                           "flags": int(_field(kv, "Flags", 0) or 0), "index": int(_field(kv, "Index", 0) or 0),
                           "session": _field(kv, "Session", "") or ""})
        writes = any(p is not None and p["verb"] in self._TXN_WRITES for p in parsed)
        with self._cond:
            txn = _KVTxn(self)
            results, errors = [], []
            for i, op in enumerate(parsed):
                try:
                    results.extend(self._txn_op(txn, op, req.token))
                except ValueError as exc:
                    errors.append({"OpIndex": i, "What": str(exc)})
            if errors:
                return 409, {"Results": None, "Errors": errors}, {}
            if writes:
                txn.commit()
        headers = {} if writes else {"X-Consul-Knownleader": "true", "X-Consul-Lastcontact": "0"}
        return 200, {"Results": results, "Errors": None}, headers

    def _txn_op(self, txn: _KVTxn, op: dict | None, token: str) -> list[dict]:
        if op is None:
            raise ValueError("operation not supported by the Consul test double (KV operations only)")
        verb, key = op["verb"], op["key"]
        if verb in self._TXN_WRITES and self.acl_token and token != self.acl_token:
            raise ValueError(self._denied_text(token, "key:write", key))

        def result(entry: dict | None, with_value: bool = False) -> list[dict]:
            return [] if entry is None else [{"KV": self._entry_api(entry, with_value)}]

        if verb == "set":
            return result(txn.set(key, op["value"], op["flags"]))
        if verb == "cas":
            entry = txn.cas(key, op["value"], op["flags"], op["index"])
            if entry is None:
                raise ValueError(f'failed to set key "{key}", index is stale')
            return result(entry)
        if verb == "lock":
            if self._lock_delayed(key):
                raise ValueError(f'failed to lock key "{key}" due to lock delay')
            entry = txn.lock(key, op["value"], op["flags"], op["session"])
            if entry is None:
                raise ValueError(f'failed to lock key "{key}", lock is already held')
            return result(entry)
        if verb == "unlock":
            entry = txn.unlock(key, op["value"], op["flags"], op["session"])
            if entry is None:
                raise ValueError(f'failed to unlock key "{key}", lock isn\'t held, or is held by another session')
            return result(entry)
        if verb in ("get", "get-or-empty"):
            entry = txn.entry(key)
            if entry is None and verb == "get":
                raise ValueError(f'key "{key}" doesn\'t exist')
            if entry is None:
                entry = {"Key": key, "Value": b"", "Flags": 0, "Session": "", "LockIndex": 0,
                         "CreateIndex": 0, "ModifyIndex": 0}
            return result(entry, with_value=True)
        if verb == "get-tree":
            return [{"KV": self._entry_api(txn.kv[k])} for k in sorted(txn.kv) if k.startswith(key)]
        if verb == "check-index":
            entry = txn.entry(key)
            if entry is None:
                raise ValueError(f'failed to check index, key "{key}" doesn\'t exist')
            if entry["ModifyIndex"] != op["index"]:
                raise ValueError(f'failed index check for key "{key}", current modify index '
                                 f'{entry["ModifyIndex"]} != {op["index"]}')
            return result(entry)
        if verb == "check-session":
            entry = txn.entry(key)
            if entry is None:
                raise ValueError(f'failed to check session, key "{key}" doesn\'t exist')
            if entry["Session"] != op["session"]:
                raise ValueError(f'failed session check for key "{key}", current session '
                                 f'"{entry["Session"]}" != "{op["session"]}"')
            return result(entry)
        if verb == "check-not-exists":
            if txn.entry(key) is not None:
                raise ValueError(f'key "{key}" exists')
            return []
        if verb == "delete":
            txn.delete(key)
            return []
        if verb == "delete-tree":
            txn.delete_tree(key)
            return []
        if verb == "delete-cas":
            if not txn.delete_cas(key, op["index"]):
                raise ValueError(f'failed to delete key "{key}", index is stale')
            return []
        raise ValueError(f'unknown KV verb "{verb}"')

    # -- sessions -----------------------------------------------------------------------------------
    def _session_create(self, req: _Request):
        self._authorize(req.token, write=True, permission="session:write", resource=self.node)
        try:
            spec = json.loads(req.body) if req.body.strip() else {}
        except ValueError as exc:
            raise ApiError(400, f"Request decode failed: {exc}") from None
        node = _field(spec, "Node") or self.node
        if node != self.node:
            raise ApiError(500, "Missing node registration")
        behavior = _field(spec, "Behavior") or "release"
        if behavior not in ("release", "delete"):
            raise ApiError(500, f"Invalid Behavior setting '{behavior}'")
        lock_delay = self._parse_lock_delay(_field(spec, "LockDelay"))
        ttl_text = _field(spec, "TTL") or ""
        ttl = 0.0
        if ttl_text:
            try:
                ttl = parse_duration(ttl_text)
            except ValueError:
                raise ApiError(500, f"Session TTL '{ttl_text}' invalid: time: invalid duration") from None
            if ttl != 0 and not (self.session_ttl_min <= ttl <= MAX_SESSION_TTL):
                raise ApiError(500, f"Invalid Session TTL '{int(ttl * 1e9)}', must be between "
                                    f"[{format_duration(self.session_ttl_min)}=24h0m0s]")
        legacy = _field(spec, "Checks")
        node_checks = _field(spec, "NodeChecks")
        if node_checks is None:
            node_checks = legacy if legacy is not None else [SERF_CHECK]
        service_checks = [_field(c, "ID") for c in (_field(spec, "ServiceChecks") or [])]
        with self._cond:
            for check_id in list(node_checks) + service_checks:
                check = self._checks.get(check_id)
                if check is None:
                    raise ApiError(500, f"Missing check '{check_id}' registration")
                if check.status == "critical":
                    raise ApiError(500, f"Check '{check_id}' is in critical state")
            sid = str(uuid.uuid4())
            self._index += 1
            self._sessions[sid] = {
                "ID": sid, "Name": _field(spec, "Name") or "", "Node": node,
                "LockDelay": int(lock_delay * 1e9), "Behavior": behavior, "TTL": ttl_text if ttl else "",
                "NodeChecks": list(node_checks),
                "ServiceChecks": [{"ID": c, "Namespace": ""} for c in service_checks] or None,
                "CreateIndex": self._index, "ModifyIndex": self._index,
            }
            if ttl:
                self._session_deadline[sid] = time.monotonic() + ttl * self.ttl_multiplier
            self._table_index["sessions"] = self._index
            self._cond.notify_all()
        return 200, {"ID": sid}, {}

    @staticmethod
    def _parse_lock_delay(value) -> float:
        if value is None or value == "":
            return 15.0
        if isinstance(value, (int, float)):
            seconds = float(value) if value < 1000 else value / 1e9
        else:
            try:
                seconds = parse_duration(str(value))
            except ValueError:
                raise ApiError(400, f"Request decode failed: invalid lock delay '{value}'") from None
        return min(max(0.0, seconds), MAX_LOCK_DELAY)

    def _session_destroy(self, req: _Request):
        self._authorize(req.token, write=True, permission="session:write", resource=self.node)
        with self._cond:
            self._invalidate(req.groups[0])
        return 200, True, {}

    def _session_renew(self, req: _Request):
        self._authorize(req.token, write=True, permission="session:write", resource=self.node)
        sid = req.groups[0]
        with self._cond:
            session = self._sessions.get(sid)
            if session is None:
                raise ApiError(404, f"Session id '{sid}' not found")
            if session["TTL"]:
                ttl = parse_duration(session["TTL"])
                self._session_deadline[sid] = time.monotonic() + ttl * self.ttl_multiplier
            return 200, [dict(session)], {}

    def _session_info(self, req: _Request):
        sid = req.groups[0]

        def compute():
            session = self._sessions.get(sid)
            return self._table_index["sessions"], [dict(session)] if session else []

        index, data = self._blocking(req, compute)
        return 200, data, self._read_headers(index)

    def _session_list(self, req: _Request):
        def compute():
            return self._table_index["sessions"], [dict(s) for s in self._sessions.values()]

        index, data = self._blocking(req, compute)
        return 200, data, self._read_headers(index)

    def _session_node(self, req: _Request):
        node = req.groups[0]

        def compute():
            return self._table_index["sessions"], [dict(s) for s in self._sessions.values() if s["Node"] == node]

        index, data = self._blocking(req, compute)
        return 200, data, self._read_headers(index)

    def _invalidate(self, sid: str) -> None:
        """Destroy a session: release or delete its keys and start their lock-delay (caller holds the lock)."""
        session = self._sessions.pop(sid, None)
        self._session_deadline.pop(sid, None)
        if session is None:
            return
        txn = _KVTxn(self)
        delay = session["LockDelay"] / 1e9
        for key, entry in list(txn.kv.items()):
            if entry["Session"] != sid:
                continue
            if session["Behavior"] == "delete":
                txn.delete(key)
            else:
                txn.kv[key] = dict(entry, Session="", ModifyIndex=txn.idx)
                txn.changed = True
            if delay > 0:
                self._lock_delay[key] = time.monotonic() + delay
        txn.commit()
        self._index += 1
        self._table_index["sessions"] = self._index
        self._cond.notify_all()

    # -- agent services and checks ------------------------------------------------------------------
    def _service_register(self, req: _Request):
        try:
            spec = json.loads(req.body or b"{}")
        except ValueError as exc:
            raise ApiError(400, f"Request decode failed: {exc}") from None
        name = _field(spec, "Name")
        if not name:
            raise ApiError(400, "Missing service name")
        self._authorize(req.token, write=True, permission="service:write", resource=name)
        sid = _field(spec, "ID") or name
        address = _field(spec, "Address") or ""
        if address in ("0.0.0.0", "::", "[::]"):
            raise ApiError(400, f"Invalid service address: {address}")
        meta = _field(spec, "Meta") or {}
        self._validate_meta(meta)
        definitions = []
        if _field(spec, "Check"):
            definitions.append(_field(spec, "Check"))
        definitions.extend(_field(spec, "Checks") or [])
        tags = list(_field(spec, "Tags") or [])
        with self._cond:
            previous = self._services.get(sid)
            checks = [self._build_check(d, sid, name, tags, i, len(definitions))
                      for i, d in enumerate(definitions, start=1)]
            self._index += 1
            self._services[sid] = {
                "ID": sid, "Service": name, "Tags": tags, "Meta": dict(meta), "Port": int(_field(spec, "Port") or 0),
                "Address": address, "TaggedAddresses": _field(spec, "TaggedAddresses") or None,
                "Weights": _field(spec, "Weights") or {"Passing": 1, "Warning": 1},
                "EnableTagOverride": bool(_field(spec, "EnableTagOverride") or False),
                "Kind": _field(spec, "Kind") or "", "Datacenter": self.datacenter,
                "CreateIndex": previous["CreateIndex"] if previous else self._index, "ModifyIndex": self._index,
            }
            new_ids = {c.check_id for c in checks}
            if "replace-existing-checks" in req.query:
                for check_id in [c for c, chk in self._checks.items() if chk.service_id == sid and c not in new_ids]:
                    self._remove_check(check_id)
            for check in checks:
                old = self._checks.get(check.check_id)
                if old is not None:  # Consul restores the last state even over an explicit Status
                    check.status, check.output, check.critical_since = old.status, old.output, old.critical_since
                    check.create_index = old.create_index
                self._checks[check.check_id] = check
            self._table_index["services"] = self._table_index["checks"] = self._index
            self._cond.notify_all()
        return 200, b"", {}

    @staticmethod
    def _validate_meta(meta: dict) -> None:
        if len(meta) > 64:
            raise ApiError(400, "Invalid Service Meta: Node metadata cannot contain more than 64 key/value pairs")
        for key, value in meta.items():
            if not _META_KEY.match(key):
                raise ApiError(400, f"Invalid Service Meta: Key contains invalid characters: {key}")
            if key.startswith("consul-"):
                raise ApiError(400, f"Invalid Service Meta: Key prefix 'consul-' is reserved for internal use: {key}")
            if len(str(value)) > 512:
                raise ApiError(400, f"Invalid Service Meta: Value is too long (limit: 512 characters): {key}")

    def _build_check(self, spec: dict, sid: str, name: str, tags: list, n: int, total: int) -> Check:
        check_id = _field(spec, "CheckID") or _field(spec, "ID") or (f"service:{sid}" if total == 1
                                                                    else f"service:{sid}:{n}")
        status = _field(spec, "Status") or ""
        if status and status not in ("passing", "warning", "critical"):
            raise ApiError(400, "Status for checks must 'passing', 'warning', 'critical'")
        check = Check(check_id, _field(spec, "Name") or f"Service '{name}' check", service_id=sid,
                      service_name=name, service_tags=list(tags), status=status or "critical",
                      notes=_field(spec, "Notes") or "")
        try:
            if _field(spec, "HTTP"):
                check.kind, check.http = "http", _field(spec, "HTTP")
                check.method = _field(spec, "Method") or "GET"
                check.header = _field(spec, "Header") or {}
                check.body = _field(spec, "Body") or ""
            elif _field(spec, "TCP"):
                check.kind, check.tcp = "tcp", _field(spec, "TCP")
            elif _field(spec, "TTL"):
                check.kind, check.ttl = "ttl", parse_duration(_field(spec, "TTL"))
            else:
                raise ApiError(400, "Invalid check: TTL must be > 0 for TTL checks, or an HTTP/TCP target "
                                    "with an interval is needed (the double supports HTTP, TCP and TTL checks)")
            if check.kind in ("http", "tcp"):
                interval = parse_duration(str(_field(spec, "Interval") or "0"))
                if interval <= 0:
                    raise ApiError(400, "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, or TCP checks")
                check.interval = max(interval, self.check_interval_min)
                check.timeout = parse_duration(str(_field(spec, "Timeout") or "10s"))
            after = _field(spec, "DeregisterCriticalServiceAfter")
            if after:
                check.deregister_after = max(parse_duration(str(after)), self.deregister_critical_min)
        except ValueError as exc:
            raise ApiError(400, f"Invalid check: bad duration {exc}") from None
        now = time.monotonic()
        check.next_run = now
        if check.status == "critical":
            check.critical_since = now
        if check.kind == "ttl":
            check.ttl_deadline = now + check.ttl
        check.create_index = check.modify_index = self._index + 1
        return check

    def _remove_check(self, check_id: str) -> None:
        self._checks.pop(check_id, None)
        for sid, session in list(self._sessions.items()):
            bound = list(session["NodeChecks"] or []) + [c["ID"] for c in session["ServiceChecks"] or []]
            if check_id in bound:
                self._invalidate(sid)

    def _service_deregister(self, req: _Request):
        sid = req.groups[0]
        with self._cond:
            service = self._services.get(sid)
            self._authorize(req.token, write=True, permission="service:write",
                            resource=service["Service"] if service else sid)
            if service is None:
                raise ApiError(404, f'Unknown service ID "{sid}". Ensure that the service ID is passed, '
                                    "not the service name.")
            self._deregister(sid)
        return 200, b"", {}

    def _deregister(self, sid: str) -> None:
        self._services.pop(sid, None)
        for check_id in [c for c, chk in self._checks.items() if chk.service_id == sid]:
            self._remove_check(check_id)
        self._index += 1
        self._table_index["services"] = self._table_index["checks"] = self._index
        self._cond.notify_all()

    def _agent_services(self, req: _Request):
        with self._cond:
            out = {}
            for sid, svc in self._services.items():
                item = {k: v for k, v in svc.items() if k not in ("CreateIndex", "ModifyIndex", "Kind")}
                if not item["TaggedAddresses"]:
                    item.pop("TaggedAddresses")
                out[sid] = item
        return 200, out, {}

    def _agent_checks(self, req: _Request):
        with self._cond:
            out = {cid: c.api(self.node) for cid, c in self._checks.items() if cid != SERF_CHECK}
        return 200, out, {}

    def _check_ttl_update(self, req: _Request):
        verb, check_id = req.groups
        status = {"pass": "passing", "warn": "warning", "fail": "critical"}[verb]
        return self._set_ttl_status(req, check_id, status, req.first("note", ""))

    def _check_update(self, req: _Request):
        try:
            spec = json.loads(req.body or b"{}")
        except ValueError as exc:
            raise ApiError(400, f"Request decode failed: {exc}") from None
        status = _field(spec, "Status") or ""
        if status not in ("passing", "warning", "critical"):
            raise ApiError(400, "Invalid check status: '" + status + "'")
        return self._set_ttl_status(req, req.groups[0], status, _field(spec, "Output") or "")

    def _set_ttl_status(self, req: _Request, check_id: str, status: str, output: str):
        with self._cond:
            check = self._checks.get(check_id)
            self._authorize(req.token, write=True, permission="service:write",
                            resource=check.service_name if check else check_id)
            if check is None:
                raise ApiError(404, f'Unknown check ID "{check_id}". Ensure that the check ID is passed, '
                                    "not the check name.")
            if check.kind != "ttl":
                raise ApiError(500, f'CheckID "{check_id}" does not have associated TTL')
            check.ttl_deadline = time.monotonic() + check.ttl
            self._set_status(check, status, output)
        return 200, b"", {}

    def _set_status(self, check: Check, status: str, output: str) -> None:
        """Record a check result; a change bumps the index, and going critical invalidates sessions."""
        check.output = output
        if check.status == status:
            return
        check.status = status
        check.critical_since = time.monotonic() if status == "critical" else None
        self._index += 1
        check.modify_index = self._index
        self._table_index["checks"] = self._index
        if status == "critical":
            for sid, session in list(self._sessions.items()):
                bound = list(session["NodeChecks"] or []) + [c["ID"] for c in session["ServiceChecks"] or []]
                if check.check_id in bound:
                    self._invalidate(sid)
        self._cond.notify_all()

    # -- health and catalog -------------------------------------------------------------------------
    def _node_api(self) -> dict:
        return {"ID": self.node_id, "Node": self.node, "Address": "127.0.0.1", "Datacenter": self.datacenter,
                "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"}, "Meta": {"consul-network-segment": ""},
                "CreateIndex": 5, "ModifyIndex": 5}

    def _service_api(self, svc: dict) -> dict:
        return {"ID": svc["ID"], "Service": svc["Service"], "Tags": list(svc["Tags"]), "Address": svc["Address"],
                "Meta": dict(svc["Meta"]), "Port": svc["Port"], "Weights": svc["Weights"],
                "EnableTagOverride": svc["EnableTagOverride"], "Kind": svc["Kind"],
                "TaggedAddresses": svc["TaggedAddresses"], "Datacenter": self.datacenter,
                "CreateIndex": svc["CreateIndex"], "ModifyIndex": svc["ModifyIndex"]}

    def _health_index(self) -> int:
        return max(self._table_index["services"], self._table_index["checks"], self._table_index["nodes"])

    def _health_service(self, req: _Request):
        if "filter" in req.query:
            raise ApiError(500, "filter expressions are not supported by the Consul test double")
        if "near" in req.query:
            raise ApiError(500, "?near is not supported by the Consul test double")
        name = req.groups[0]
        passing = False
        if "passing" in req.query:
            text = req.first("passing")
            try:
                passing = True if text == "" else _parse_bool(text)
            except ValueError:
                raise ApiError(400, f"Invalid value for ?passing: {text}") from None
        tags = req.query.get("tag", [])

        def compute():
            out = []
            for sid in sorted(self._services):
                svc = self._services[sid]
                if svc["Service"] != name or not all(t in svc["Tags"] for t in tags):
                    continue
                checks = [c for c in self._checks.values() if c.service_id == sid or c.service_id == ""]
                if passing and any(c.status != "passing" for c in checks):
                    continue
                out.append({"Node": self._node_api(), "Service": self._service_api(svc),
                            "Checks": [c.api(self.node) for c in checks]})
            return self._health_index(), out

        index, data = self._blocking(req, compute)
        return 200, data, self._read_headers(index)

    def _catalog_services(self, req: _Request):
        def compute():
            out: dict[str, list[str]] = {"consul": []}
            for svc in self._services.values():
                tags = out.setdefault(svc["Service"], [])
                tags.extend(t for t in svc["Tags"] if t not in tags)
            return self._table_index["services"], out

        index, data = self._blocking(req, compute)
        return 200, data, self._read_headers(index)

    def _catalog_service(self, req: _Request):
        name = req.groups[0]
        tag = req.first("tag", None)

        def compute():
            out = []
            node = self._node_api()
            for sid in sorted(self._services):
                svc = self._services[sid]
                if svc["Service"] != name or (tag is not None and tag not in svc["Tags"]):
                    continue
                out.append({
                    "ID": node["ID"], "Node": node["Node"], "Address": node["Address"], "Datacenter": self.datacenter,
                    "TaggedAddresses": node["TaggedAddresses"], "NodeMeta": node["Meta"], "ServiceID": svc["ID"],
                    "ServiceName": svc["Service"], "ServiceTags": list(svc["Tags"]),
                    "ServiceAddress": svc["Address"], "ServicePort": svc["Port"], "ServiceMeta": dict(svc["Meta"]),
                    "ServiceWeights": svc["Weights"], "ServiceEnableTagOverride": svc["EnableTagOverride"],
                    "ServiceKind": svc["Kind"], "ServiceProxy": {}, "ServiceConnect": {},
                    "CreateIndex": svc["CreateIndex"], "ModifyIndex": svc["ModifyIndex"],
                })
            return self._table_index["services"], out

        index, data = self._blocking(req, compute)
        return 200, data, self._read_headers(index)

    def _status_leader(self, req: _Request):
        return 200, "127.0.0.1:8300", {}

    # -- time: session TTLs, TTL checks, HTTP/TCP check runs, the critical-service reaper ----------
    def _tick_loop(self) -> None:
        while not self._stopping.wait(self.tick):
            now = time.monotonic()
            due: list[Check] = []
            with self._cond:
                for sid, deadline in list(self._session_deadline.items()):
                    if deadline <= now:
                        self._invalidate(sid)
                for check in list(self._checks.values()):
                    if check.kind == "ttl" and check.ttl_deadline is not None and check.ttl_deadline <= now:
                        check.ttl_deadline = None
                        output = "TTL expired"
                        if check.output and check.status != "critical":
                            output = f"TTL expired (last output before timeout follows): {check.output}"
                        self._set_status(check, "critical", output)
                    elif check.kind in ("http", "tcp") and not check.running and check.next_run <= now:
                        check.running = True
                        check.next_run = now + check.interval
                        due.append(check)
                if now - self._last_reap >= self.reap_interval:
                    self._last_reap = now
                    self._reap(now)
            for check in due:
                threading.Thread(target=self._run_check, args=(check,), daemon=True).start()

    def _reap(self, now: float) -> None:
        for sid in list(self._services):
            for check in [c for c in self._checks.values() if c.service_id == sid]:
                if (check.deregister_after is not None and check.status == "critical"
                        and check.critical_since is not None and now - check.critical_since >= check.deregister_after):
                    self._deregister(sid)
                    break

    def _run_check(self, check: Check) -> None:
        try:
            status, output = self._probe_http(check) if check.kind == "http" else self._probe_tcp(check)
        except Exception as exc:  # a probe must never kill the double
            status, output = "critical", f"check failed: {exc}"
        with self._cond:
            check.running = False
            if self._checks.get(check.check_id) is check:
                self._set_status(check, status, output)

    @staticmethod
    def _probe_http(check: Check) -> tuple[str, str]:
        headers = {k: (v[0] if isinstance(v, list) and v else v) for k, v in (check.header or {}).items()}
        headers.setdefault("User-Agent", "Consul Health Check")
        data = check.body.encode() if check.body else None
        request = urllib.request.Request(check.http, data=data, headers=headers, method=check.method)
        try:
            with urllib.request.urlopen(request, timeout=check.timeout) as resp:
                code, reason, body = resp.status, resp.reason, resp.read(4096)
        except urllib.error.HTTPError as exc:
            code, reason, body = exc.code, exc.reason, exc.read(4096)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return "critical", f'{check.method} "{check.http}": {reason}'
        output = f"HTTP {check.method} {check.http}: {code} {reason} Output: {body.decode(errors='replace')}"
        if 200 <= code < 300:
            return "passing", output
        if code == 429:
            return "warning", output
        return "critical", output

    @staticmethod
    def _probe_tcp(check: Check) -> tuple[str, str]:
        host, _, port = check.tcp.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=check.timeout):
                return "passing", f"TCP connect {check.tcp}: Success"
        except OSError as exc:
            return "critical", f"dial tcp {check.tcp}: {exc}"


@dataclass
class _Request:
    method: str
    query: dict[str, list[str]]
    raw_query: str
    body: bytes
    length: int
    token: str
    groups: tuple

    def first(self, name: str, default: str | None = "") -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


__all__ = ["ConsulDouble", "format_duration", "parse_duration"]
