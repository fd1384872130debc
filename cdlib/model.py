"""Values with no I/O: colors, names, instances, routes, backends, test results.

Everything that ends up in a container name, a proxy configuration or a store key is checked here
against a strict pattern, so a path or a host name can never inject a directive into nginx.conf or
a key into another service's prefix.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ProxyError
from .netaddr import format_hostport

COLORS = ("blue", "green")

# Every pattern is anchored with \Z (not $, which also matches before a trailing newline) and is
# ASCII only (re.ASCII; explicit classes), so .match() and .fullmatch() both take the whole value and
# a look-alike letter from another script is refused.
SERVICE_RE = re.compile(r"(?:[a-z][a-z0-9-]{0,38}[a-z0-9]|[a-z])\Z", re.ASCII)
# an URL path prefix: unreserved characters and '/', nothing nginx or HAProxy would interpret
PATH_RE = re.compile(r"/[A-Za-z0-9._~/-]{0,200}\Z", re.ASCII)
HOST_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
HOST_RE = re.compile(rf"(?:\*\.)?{HOST_LABEL}(?:\.{HOST_LABEL})*\Z", re.ASCII)
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z", re.ASCII)
# the test suites a descriptor can define, in the order a release runs them: the one list (config, the CLI
# and the verbs read it)
TEST_TYPES = ("pre-deployment", "pre-integration", "post-integration")


def other_color(color: str | None) -> str:
    """The color a new release goes to: the one that is not live (blue when nothing is)."""
    if color is None:
        return COLORS[0]
    if color not in COLORS:
        raise ValueError(f"unknown color {color!r}")
    return COLORS[1] if color == COLORS[0] else COLORS[0]


def valid_service_name(name: object) -> bool:
    return isinstance(name, str) and bool(SERVICE_RE.fullmatch(name))


def instance_name(service: str, color: str, index: int) -> str:
    return f"{service}-{color}-{index}"


# the edge settings of a route (Routes' fields after paths and hosts), their types and defaults
ROUTE_TIMEOUT_DEFAULTS = {"connect_timeout": 3.0, "read_timeout": 60.0, "send_timeout": 60.0}  # seconds
DEFAULT_MAX_BODY = 1048576  # bytes (nginx's own default of client_max_body_size, 1m)


@dataclass(frozen=True)
class Routes:
    """Where the proxy sends traffic for one service, and how: path prefixes and/or host names, then
    the edge settings of those routes (the descriptor's ``routes.timeouts``, ``routes.max_body`` and
    ``routes.tls``).

    The timeouts are seconds (connecting to a server; between two reads of its answer; between two
    writes of the request to it); ``max_body`` is the largest request body in bytes; ``tls_cert`` and
    ``tls_key`` are absolute paths of a PEM certificate (chain) and its key, both or neither: with
    them the routes are also served over HTTPS on ``proxy.tls_listen``, and ``https_redirect`` sends
    plain-HTTP requests there (301). The whole value travels through the store in the service's spec
    key, so every service's settings reach the shared proxy's configuration.
    """

    paths: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    connect_timeout: float = ROUTE_TIMEOUT_DEFAULTS["connect_timeout"]
    read_timeout: float = ROUTE_TIMEOUT_DEFAULTS["read_timeout"]
    send_timeout: float = ROUTE_TIMEOUT_DEFAULTS["send_timeout"]
    max_body: int = DEFAULT_MAX_BODY
    tls_cert: str | None = None
    tls_key: str | None = None
    https_redirect: bool = False

    @property
    def tls(self) -> bool:
        """Whether these routes are served over HTTPS too."""
        return self.tls_cert is not None and self.tls_key is not None

    def to_dict(self) -> dict[str, Any]:
        return {"paths": list(self.paths), "hosts": list(self.hosts),
                "connect_timeout": self.connect_timeout, "read_timeout": self.read_timeout,
                "send_timeout": self.send_timeout, "max_body": self.max_body,
                "tls_cert": self.tls_cert, "tls_key": self.tls_key, "https_redirect": self.https_redirect}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Routes:
        """The value :meth:`to_dict` wrote. A spec key written before the edge settings existed (only
        paths and hosts) gets their defaults. A value of the wrong type (a spec key edited in the
        store) raises ProxyError naming it, as the renderers do for an unsafe value: it never reaches a
        configuration file."""
        out: dict[str, Any] = {}
        for name, default in ROUTE_TIMEOUT_DEFAULTS.items():
            value = data.get(name)
            if value is None:
                out[name] = default
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6:
                raise ProxyError(f"routes.{name} in the store is {value!r}: expected seconds, a positive number")
            else:
                out[name] = float(value)
        body = data.get("max_body")
        if body is None:
            body = DEFAULT_MAX_BODY
        elif isinstance(body, bool) or not isinstance(body, int) or body < 0:
            raise ProxyError(f"routes.max_body in the store is {body!r}: expected a number of bytes")
        cert, key = data.get("tls_cert"), data.get("tls_key")
        for name, value in (("tls_cert", cert), ("tls_key", key)):
            if value is not None and not isinstance(value, str):
                raise ProxyError(f"routes.{name} in the store is {value!r}: expected a file path")
        redirect = data.get("https_redirect", False)
        if not isinstance(redirect, bool):
            raise ProxyError(f"routes.https_redirect in the store is {redirect!r}: expected true or false")
        return cls(tuple(data.get("paths", ())), tuple(data.get("hosts", ())), max_body=body, tls_cert=cert,
                   tls_key=key, https_redirect=redirect, **out)


@dataclass(frozen=True)
class Instance:
    """One container (or Swarm task) of one color of one service."""

    name: str
    service: str
    color: str
    release: str
    image: str
    address: str
    port: int
    state: str = "running"  # running | exited | created | restarting | ...
    id: str = ""

    @property
    def url(self) -> str:
        return f"http://{format_hostport(self.address, self.port)}"

    @property
    def running(self) -> bool:
        return self.state == "running"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Instance:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class Backend:
    """What the proxy needs to route one service: its routes and the servers of one color."""

    service: str
    color: str
    release: str
    routes: Routes
    servers: tuple[tuple[str, int], ...]
    health_path: str = "/"

    @property
    def upstream(self) -> str:
        # nginx upstream / HAProxy backend name: both parts are validated names
        return f"{self.service}_{self.color}"


@dataclass(frozen=True)
class TestResult:
    __test__ = False

    suite: str
    passed: bool
    exit_code: int
    duration: float
    target_url: str
    output: str = ""  # the tail of what the suite printed
    junit_path: str | None = None
    skipped: bool = False
    unstable_ok: bool = False  # the descriptor allows a failure to mark the build UNSTABLE only

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StepReport:
    """One line of human output / one entry of the JSON result."""

    name: str
    status: str  # done | failed | undone | undo-failed | skipped
    seconds: float = 0.0
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 3),
                "detail": self.detail}


@dataclass
class Outcome:
    """What a verb returns: enough for the CLI to print, to write JSON, and to pick an exit code."""

    verb: str
    service: str
    ok: bool = True
    exit_code: int = 0
    message: str = ""
    steps: list[StepReport] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"verb": self.verb, "service": self.service, "ok": self.ok,
                "exit_code": self.exit_code, "message": self.message,
                "steps": [s.to_dict() for s in self.steps], **self.data}
