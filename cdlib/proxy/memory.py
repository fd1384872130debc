"""In-memory proxy: the reference implementation of the proxy contract, for unit tests.

Its configuration is a deterministic JSON document of the backends, so a test can read exactly
what would be served. ``route()`` resolves a request the way the nginx configuration does (host
routes first, then the longest path prefix, the prefix stripped; ``= /prefix`` redirects), which
lets the contract suite send the same requests through both adapters and keeps this fake honest.
``request()`` answers from that resolution (round robin over the servers, the probe header when
asked), so the core's probe runs unchanged against it.

The proxy starts with no configuration at all; ``restore(None)`` returns it to that state.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType

from ..errors import ProxyError
from ..model import Backend
from ..render import cfg_token
from .base import PROBE_HEADER, UPSTREAM_HEADER, Proxy, http_get
from .managed import HEALTH_PATH, check_backends

FORMAT = "cdlib-memory-proxy/1"


@dataclass(frozen=True)
class Routed:
    """Where a request would go: a backend and the path it would see, or a fixed answer."""

    status: int = 200
    service: str | None = None
    color: str | None = None
    servers: tuple[tuple[str, int], ...] = ()
    path: str = "/"
    location: str | None = None  # redirect target for 301
    body: str = ""


class MemoryProxy(Proxy):
    kind = "memory"

    def __init__(self, directory: str | os.PathLike | None = None, url: str = "http://proxy.memory.invalid",
                 initial: bytes | None = None, forward: bool = False):
        # accepted like the file-based adapters' first argument, so every proxy is built the same
        # way; the memory proxy writes nothing there
        self.dir = Path(directory) if directory is not None else None
        self._url = url
        self._config: bytes | None = initial
        self._prior: bytes | None = None  # the configuration before the last apply (old workers)
        self._turn = itertools.count()
        self.running = False
        self.last_good: bytes | None = None
        self.applies: list[str] = []  # every text that became active through apply()
        self.restores: list[bytes | None] = []  # every prior handed to restore()
        self.refused: list[str] = []  # texts refused by validation or by an injected failure
        self.reloads = 0
        # set to an error message (or True) to make the next apply fail after its swap, as a reload
        # failure would: the previous configuration stays active and ProxyError is raised
        self.fail_next_apply: str | bool | None = None
        self.fail_next_restore: str | bool | None = None
        # set to True to make request() answer as the configuration before the last apply would:
        # old workers that still serve the old color (a probe must then fail)
        self.answer_from_old = False
        self.forward = forward
        # set to a ConfigError to make preflight() raise it (a missing binary, a broken template)
        self.fail_preflight: BaseException | None = None
        self.preflights = 0

    def url(self) -> str:
        return self._url

    def read_config(self) -> bytes | None:
        return self._config

    def render(self, backends: Sequence[Backend]) -> str:
        check_backends(backends)
        items = []
        for b in sorted(backends, key=lambda b: str(b.service)):
            items.append({
                "service": cfg_token(b.service), "color": cfg_token(b.color),
                "release": cfg_token(b.release or "-"), "upstream": cfg_token(b.upstream),
                "paths": [cfg_token(p) for p in b.routes.paths],
                "hosts": [cfg_token(h) for h in b.routes.hosts],
                "servers": sorted({(cfg_token(a), int(cfg_token(p))) for a, p in b.servers}),
                "health_path": cfg_token(b.health_path),
            })
        return json.dumps({"format": FORMAT, "backends": items}, indent=2, sort_keys=True) + "\n"

    def apply(self, text: str) -> dict:
        self._validate(text)
        if self.fail_next_apply:
            message = self.fail_next_apply if isinstance(self.fail_next_apply, str) else "injected failure"
            self.fail_next_apply = None
            self.refused.append(text)
            raise ProxyError(f"memory proxy: {message}; the previous configuration was put back")
        prior = self._config
        self._config = text.encode("utf-8")
        self._prior = prior
        self.running = True
        self.reloads += 1
        self.last_good = prior
        self.applies.append(text)
        return {"validate": 0.0, "reload": 0.0, "drain": 0.0}

    def restore(self, prior: bytes | None) -> None:
        self.restores.append(prior)
        if prior is not None:
            self._validate(prior.decode("utf-8", "replace"))
        if self.fail_next_restore:
            message = self.fail_next_restore if isinstance(self.fail_next_restore, str) else "injected failure"
            self.fail_next_restore = None
            raise ProxyError(f"memory proxy: {message}")
        if self._config == prior and self.running == (prior is not None):
            return  # nothing to restore: no reload, as with the managed proxies
        self._prior = self._config
        self._config = prior
        self.running = prior is not None  # None: the state before anything was served, no proxy
        self.reloads += 1

    def preflight(self) -> None:
        self.preflights += 1
        if self.fail_preflight is not None:
            raise self.fail_preflight

    def ensure_running(self) -> None:
        if self._config is None:
            self._config = self.render([]).encode("utf-8")
        self.running = True

    def stop(self) -> bool:
        was, self.running = self.running, False
        return was

    def status(self) -> dict:
        return {"kind": self.kind, "url": self.url(), "running": self.running, "served": self.served}

    # -- what tests read ----------------------------------------------------------------------------
    @property
    def backends(self) -> list[dict]:
        """The backends of the active configuration (empty when there is none)."""
        return self._backends_of(self._config)

    def _backends_of(self, config: bytes | None) -> list[dict]:
        if config is None:
            return []
        return self._parse(config.decode("utf-8"))["backends"]

    @property
    def served(self) -> dict[str, str]:
        """service -> the color the active configuration routes it to."""
        return {b["service"]: b["color"] for b in self.backends}

    def request(self, path: str, headers: dict | None = None, timeout: float = 3.0) -> tuple[int, dict, bytes]:
        """Answer as the port's HTTP request through a real proxy would.

        Status 0 when not running; a redirect is returned, not followed, and error bodies are empty,
        as with the port's urllib-based request. With ``forward=True`` the request really goes to the chosen
        server (round robin, the next one when a server does not answer, 502 when none does);
        otherwise the body names the service, color, server and path. ``X-Cdlib-Probe: 1`` adds the
        upstream and color headers.
        """
        if not self.running:
            return 0, {}, b""
        wanted = {k.lower(): v for k, v in (headers or {}).items()}
        config = self._prior if self.answer_from_old else self._config
        routed = self.route(path, wanted.get("host"), config=config)
        if routed.location:  # the redirect is the answer, as with the port's request
            return 301, {"Location": routed.location}, b""
        if not routed.servers:
            return routed.status, {}, b""
        first = next(self._turn)
        out: dict[str, str]
        status, out, body, server = 502, {}, b"", ""
        for i in range(len(routed.servers)):
            address, port = routed.servers[(first + i) % len(routed.servers)]
            server = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            if not self.forward:
                status, out = 200, {}
                body = f"{routed.service} {routed.color} {server} {routed.path}\n".encode()
                break
            status, out, body = http_get(f"http://{server}{routed.path}", headers or {}, timeout)
            if status not in (0, 502, 503):
                break
        status = 502 if status == 0 else status
        out = {k: v for k, v in out.items() if k.lower() not in ("x-cdlib-upstream", "x-cdlib-color")}
        if wanted.get(PROBE_HEADER.lower()) == "1":
            out[UPSTREAM_HEADER] = server
            out["X-Cdlib-Color"] = routed.color or ""
        return status, out, body if status < 400 else b""

    def route(self, path: str, host: str | None = None, *, config: bytes | None | EllipsisType = ...) -> Routed:
        """Resolve one request against the active configuration (or ``config``), as the nginx
        template does: host routes, the health path, the longest path prefix (stripped)."""
        if not self.running:
            raise ProxyError("memory proxy: not running")
        backends = self._backends_of(self._config if config is ... else config)
        path_only = path.split("?", 1)[0]
        if host:
            name = host.split(":", 1)[0].lower()
            for b in backends:
                if any(_host_matches(h, name) for h in b["hosts"]):
                    return self._to(b, path)
        if path_only == HEALTH_PATH:
            return Routed(status=200, body="ok\n")
        best: tuple[int, dict, str] | None = None
        for b in backends:
            for p in b["paths"]:
                prefix = p.rstrip("/") + "/"
                if prefix != "/" and path_only == prefix[:-1]:
                    query = path[len(path_only):]
                    return Routed(status=301, location=prefix + query)
                if path_only.startswith(prefix) and (best is None or len(prefix) > best[0]):
                    best = (len(prefix), b, prefix)
        if best is not None:
            return self._to(best[1], "/" + path[best[0]:])
        if backends:
            return Routed(status=404, body="no route for this path\n")
        return Routed(status=503, body="no service is routed yet\n")

    @staticmethod
    def _to(b: dict, path: str) -> Routed:
        servers = tuple((a, p) for a, p in b["servers"])
        if not servers:
            return Routed(status=503, service=b["service"], color=b["color"],
                          body=f"no running instance of {b['service']}\n")
        return Routed(service=b["service"], color=b["color"], servers=servers, path=path)

    # -- validation ----------------------------------------------------------------------------------
    def _validate(self, text: str) -> None:
        try:
            self._parse(text)
        except ProxyError:
            self.refused.append(text)
            raise

    @staticmethod
    def _parse(text: str) -> dict:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProxyError(f"memory proxy refused the new configuration: not JSON ({exc.msg} at line "
                             f"{exc.lineno})") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("backends"), list):
            raise ProxyError(f"memory proxy refused the new configuration: expected a {FORMAT} document")
        for b in doc["backends"]:
            if not isinstance(b, dict) or not {"service", "color", "paths", "hosts", "servers"} <= set(b):
                raise ProxyError("memory proxy refused the new configuration: a backend lacks "
                                 "service, color, paths, hosts or servers")
        return doc


def _host_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern
