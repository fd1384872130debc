"""The proxy port.

The core gives the proxy the backends to serve (every service's live color, with one override
during a switch); the adapter renders its whole configuration from a Jinja2 template, writes it to
a staged file, validates it, swaps it in by rename, reloads, and waits until the workers that ran
before the reload have exited (stopping the old color earlier drops requests). Any failure restores
the previous file byte for byte and reloads. The probe through the proxy is done by the core.

Rendered configurations make the proxy answer a probe request (header ``X-Cdlib-Probe: 1``) with
``X-Cdlib-Upstream: <address:port of the server that answered>``, so the core can prove that the
new color, and not the old one, served the request. Normal clients never see the header.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from ..model import Backend

PROBE_HEADER = "X-Cdlib-Probe"
UPSTREAM_HEADER = "X-Cdlib-Upstream"


class Proxy(ABC):
    kind = "proxy"

    @abstractmethod
    def url(self) -> str:
        """The base URL clients use, e.g. http://127.0.0.1:8880"""

    @abstractmethod
    def read_config(self) -> bytes | None:
        """The exact bytes of the active configuration, None when there is none yet."""

    @abstractmethod
    def render(self, backends: Sequence[Backend]) -> str:
        """The whole configuration for these backends. Pure: no I/O besides the template."""

    @abstractmethod
    def apply(self, text: str) -> dict:
        """Validate, swap in, reload (starting the proxy when it is not running), wait for the
        pre-reload workers to exit. On any failure the previous file is restored and reloaded and
        ProxyError is raised. Returns timings: {"validate": s, "reload": s, "drain": s}."""

    @abstractmethod
    def restore(self, prior: bytes | None) -> None:
        """Put exactly these bytes back as the active configuration and reload (None: the empty
        configuration the proxy starts with). Idempotent."""

    def plan_apply(self, text: str) -> tuple[str, str]:
        """How apply(text) would change the running proxy, and why: ("none", why) when text is
        the active configuration already, ("runtime", why) when the proxy can take it without a
        reload (only the servers of existing backends change), ("reload", why) otherwise. Pure
        apart from reading the active configuration; ``status`` and ``proxy render`` show it."""
        current = self.read_config()
        if current is not None and current == text.encode():
            return "none", "the configuration is unchanged"
        return "reload", f"{self.kind} applies every change with a reload"

    def request(self, path: str, headers: dict | None = None, timeout: float = 3.0) -> tuple[int, dict, bytes]:
        """One GET through the proxy: (status, headers, first 64 KiB of the body). Status 0 means no
        answer at all. The switch's probe uses it; memory adapters answer from their own state."""
        return http_get(self.url() + path, headers or {}, timeout)

    def ensure_running(self) -> None:
        """Start the proxy when it is not running (private instances only)."""

    def preflight(self) -> None:
        """Check what a switch will need before a release changes anything (the binary, the
        template, a validation of what it renders, on temporary files only); ConfigError naming
        the descriptor field (proxy.binary, proxy.template, proxy.listen), never quoting a file.
        The default has nothing to check."""

    def status(self) -> dict:
        return {"kind": self.kind, "url": self.url()}

    def describe(self) -> str:
        return self.kind


def http_get(url: str, headers: dict, timeout: float) -> tuple[int, dict, bytes]:
    """(status, headers, first 64 KiB of the body); status 0 when nothing answered. A redirect is
    an answer, not followed: the probe must see what the proxy itself sent (its upstream header),
    not what another address answers (an HTTPS redirect's target may not even resolve here)."""
    import urllib.error  # on first use: commands that probe nothing do not pay for it
    import urllib.request

    class _Stay(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None  # the 3xx comes back as an HTTPError with its own status and headers

    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.build_opener(_Stay()).open(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read(65536)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()) if exc.headers else {}, b""
    except (urllib.error.URLError, OSError, ValueError):
        return 0, {}, b""
