"""Store URLs: the one parser behind the descriptor's ``store``, ``$CDLIB_STORE``, ``--store``,
``wiring.open_store`` and the etcd and Consul adapters.

    memory:  memory://anything                  a store that lives as long as the process
    sqlite:///abs/path.db  sqlite://rel/path.db  the embedded default
    etcd://host[:port][,host[:port]...]          etcds:// for TLS; no host: $ETCDCTL_ENDPOINTS
    consul://host[:port]                         consuls:// for TLS; no host: $CONSUL_HTTP_ADDR

A bad URL is a :class:`StoreURLError`: a ConfigError (exit code 2, nothing changed) that is also a
StoreError, which is what the adapters have always raised for it. Messages never contain a user or
a password: credentials belong in ``ETCDCTL_USER``/``ETCDCTL_PASSWORD`` or ``CONSUL_HTTP_TOKEN``.

No I/O and no client library here: the CLI checks URLs before it imports anything heavy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from ..errors import ConfigError, StoreError
from ..netaddr import parse_hostport
from ..redact import redact_url, shorten

DEFAULT_PORTS = {"etcd": 2379, "consul": 8500}
ADDRESS_VARIABLES = {"etcd": "ETCDCTL_ENDPOINTS", "consul": "CONSUL_HTTP_ADDR"}
CREDENTIAL_HINTS = {"etcd": "put etcd credentials in ETCDCTL_USER and ETCDCTL_PASSWORD",
                    "consul": "put the Consul ACL token in CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE"}
SCHEMES = ("memory", "sqlite", "etcd", "etcds", "consul", "consuls")
EXPECTED = ("sqlite:///path, etcd://host:port[,host:port], etcds://..., consul://host:port, consuls://... "
            "or memory:")
MAX_URL = 4096

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class StoreURLError(ConfigError, StoreError):
    """A store URL or a registry address variable that cannot be used: bad input (exit code 2)."""

    exit_code = ConfigError.exit_code
    problem: str  # the problem without the field's name (set by _fail)


@dataclass(frozen=True)
class StoreURL:
    scheme: str  # one of SCHEMES
    hosts: tuple[tuple[str, int], ...] = ()  # etcd/consul; empty: the registry's own environment decides
    path: str = ""  # sqlite: the database file (percent-decoded)

    @property
    def kind(self) -> str:
        return self.scheme.rstrip("s") if self.scheme in ("etcds", "consuls") else self.scheme

    @property
    def tls(self) -> bool:
        return self.scheme in ("etcds", "consuls")


def redact(url: object) -> str:
    """A store URL as a message shows it: :func:`cdlib.redact.redact_url`, cut to 80 characters."""
    return redact_url(url, 80)


def _fail(field: str, problem: str, **data) -> StoreURLError:
    err = StoreURLError(f"{field}: {problem}", key=field, **data)
    err.problem = " ".join(problem.split())
    return err


def parse(url: object, field: str = "store") -> StoreURL:
    """Check a store URL; raise StoreURLError naming ``field`` (never echoing credentials)."""
    if not isinstance(url, str):
        raise _fail(field, f"expected {EXPECTED}, got a {type(url).__name__}")
    shown = redact(url)
    if not url:
        raise _fail(field, f"expected {EXPECTED}, got an empty value")
    if len(url) > MAX_URL:
        raise _fail(field, f"expected {EXPECTED} of at most {MAX_URL} characters, got {len(url)}")
    if _CONTROL_RE.search(url):
        raise _fail(field, f"expected {EXPECTED} without control characters, got {shown!r}")
    scheme, sep, rest = url.partition(":")
    if scheme not in SCHEMES or not sep:
        raise _fail(field, f"expected {EXPECTED}, got {shown!r}")
    if scheme == "memory":
        if rest and not rest.startswith("//"):
            raise _fail(field, f"expected memory: or memory://NAME, got {shown!r}")
        return StoreURL("memory")
    if not rest.startswith("//"):
        raise _fail(field, f"expected {scheme}://..., got {shown!r}")
    rest = rest[2:]
    if scheme == "sqlite":
        if "@" in rest.split("/", 1)[0]:  # sqlite://user:password@/path: a file has no credentials
            raise _fail(field, f"expected sqlite:///path/to/state.db with no user or password, got {shown!r}")
        path = unquote(rest)
        if not path.strip("/") or _CONTROL_RE.search(path):
            raise _fail(field, f"expected sqlite:///path/to/state.db (absolute) or sqlite://rel/path.db, got {shown!r}")
        return StoreURL("sqlite", path=path)
    kind = scheme.rstrip("s")
    netloc, slash, tail = rest.partition("/")
    if "@" in rest:
        raise _fail(field, f"expected no user or password in the URL (URLs end up in logs): "
                           f"{CREDENTIAL_HINTS[kind]}, got {shown!r}")
    if tail or "?" in netloc or "#" in netloc:
        raise _fail(field, f"expected {scheme}://host:port with no path, query or fragment, got {shown!r}")
    if not netloc:
        return StoreURL(scheme)
    items = netloc.split(",")
    if kind == "consul" and len(items) > 1:
        raise _fail(field, f"expected one Consul address (consul://host:port), got {shown!r}")
    hosts = []
    for item in items:
        if not item:
            raise _fail(field, f"expected a comma-separated list of host:port with no empty entry, got {shown!r}")
        hostport = parse_hostport(item, DEFAULT_PORTS[kind])
        if hostport is None:
            raise _fail(field, f"expected host:port with a host name or IP address and a port from 1 to 65535, "
                               f"got {shorten(item, 60)!r} in {shown!r}")
        hosts.append(hostport)
    return StoreURL(scheme, tuple(hosts))


def registry_address(url: str, kind: str, env, usage: str) -> tuple[StoreURL, tuple[tuple[str, int], ...], bool]:
    """The hosts an etcd or Consul store URL names, or those of the registry's own environment when it
    names none (registry_hosts), and whether TLS was asked for: (the parsed URL, hosts, tls). A URL of
    another kind is a StoreURLError naming the forms this store takes (``usage``)."""
    parsed = parse(url or f"{kind}://", "store")
    if parsed.kind != kind:
        raise StoreURLError(f"{kind} store: unsupported URL {redact(url)!r}; use {usage}", key="store", store=kind)
    if parsed.hosts:
        return parsed, parsed.hosts, parsed.tls
    hosts, env_tls = registry_hosts(kind, env)
    return parsed, hosts, parsed.tls or env_tls


def registry_hosts(kind: str, env) -> tuple[tuple[tuple[str, int], ...], bool]:
    """The addresses an etcd:// or consul:// URL without a host uses: ETCDCTL_ENDPOINTS or
    CONSUL_HTTP_ADDR (127.0.0.1:2379 / 127.0.0.1:8500 when unset). Returns (hosts, tls) where tls
    says an https:// address asked for TLS."""
    var = ADDRESS_VARIABLES[kind]
    raw = (env.get(var) or "").strip()
    default = (("127.0.0.1", DEFAULT_PORTS[kind]),)
    if not raw:
        return default, False
    shown = redact(raw)
    if _CONTROL_RE.search(raw) or len(raw) > MAX_URL:
        raise _fail(var, f"expected host:port or http(s)://host:port without control characters, got {shown!r}")
    if "@" in raw:  # user:password@ would reach every message through describe()
        raise _fail(var, f"expected no user or password (addresses end up in logs): {CREDENTIAL_HINTS[kind]}, "
                         f"got {shown!r}")
    tls = False
    hosts = []
    items = raw.split(",") if kind == "etcd" else [raw]
    for item in items:
        item = item.strip()
        if not item:
            continue
        scheme, sep, rest = item.partition("://")
        if sep:
            if scheme == "unix" and kind == "consul":
                raise _fail(var, f"expected host:port: a unix socket is not supported, got {shown!r}")
            if scheme not in ("http", "https"):
                raise _fail(var, f"expected host:port or http(s)://host:port, got {shown!r}")
            tls = tls or scheme == "https"
            item = rest
        item = item.rstrip("/")
        hostport = parse_hostport(item, DEFAULT_PORTS[kind])
        if hostport is None:
            raise _fail(var, f"expected host:port with a host name or IP address and a port from 1 to 65535, "
                             f"got {shorten(item, 60)!r}")
        hosts.append(hostport)
    if not hosts:
        raise _fail(var, f"expected at least one host:port, got {shown!r}")
    return tuple(hosts), tls


def check(url: object, field: str = "store", env=None) -> StoreURL:
    """parse(), and for an etcd/consul URL without a host, the registry's address variable too."""
    parsed = parse(url, field)
    if parsed.kind in ADDRESS_VARIABLES and not parsed.hosts and env is not None:
        registry_hosts(parsed.kind, env)
    return parsed
