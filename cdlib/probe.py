"""The probe through the proxy: the new color must answer, proven by the upstream the proxy reports."""

from __future__ import annotations

from .clock import Clock, as_clock
from .config import ServiceSpec
from .errors import ProxyError
from .model import Backend
from .proxy.base import PROBE_HEADER, UPSTREAM_HEADER, Proxy


def probe(spec: ServiceSpec, proxy: Proxy, backend: Backend, clock: Clock | None = None) -> float:
    """Request the service through the proxy until the new color answers, consecutively, as many
    times as it has instances (at least 3). Proven by the upstream address the proxy reports back;
    with probe.expect, the body must contain that text too. Returns the seconds it took (on clock)."""
    clock = as_clock(clock)
    path = spec.probe.path or spec.health.path
    headers = {PROBE_HEADER: "1"}
    if backend.routes.paths:
        path = backend.routes.paths[0].rstrip("/") + path
    else:
        headers["Host"] = backend.routes.hosts[0].replace("*.", "probe.")
    expected = {f"{a}:{p}" for a, p in backend.servers}
    need = max(3, len(backend.servers))
    t0 = clock.monotonic()
    streak, last = 0, "no answer"
    while True:
        ok, last = _probe_once(proxy, path, headers, expected, spec.probe.expect)
        streak = streak + 1 if ok else 0
        if streak >= need:
            return clock.monotonic() - t0
        if clock.monotonic() - t0 > spec.probe.timeout:
            raise ProxyError(f"probe through the proxy failed for {spec.name} after {spec.probe.timeout:g}s: "
                             f"{proxy.url()}{path} {last}; the previous configuration was restored", path=path)
        if not ok:
            clock.sleep(0.1)


def _probe_once(proxy: Proxy, path: str, headers: dict[str, str], expected: set[str], expect: str | None) -> tuple[bool, str]:
    status, resp_headers, body = proxy.request(path, headers)
    if status == 0:
        return False, "did not answer"
    upstream = next((v for k, v in resp_headers.items() if k.lower() == UPSTREAM_HEADER.lower()), "")
    served_by = upstream.split(",")[-1].strip().split(" ")[-1] if upstream else ""
    served_by = served_by.replace("[", "").replace("]", "")  # nginx brackets IPv6 ([::1]:80), HAProxy does not
    if not 200 <= status < 400:
        return False, f"answered {status}" + (f" from {served_by}" if served_by else "")
    if served_by not in expected:
        return False, f"answered {status} from {served_by or 'an unknown upstream'}, not the new color"
    if expect and expect.encode() not in body:
        return False, f"answered {status} without {expect!r} in the body"
    return True, f"answered {status} from {served_by}"
