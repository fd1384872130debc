"""What the nginx and HAProxy rendering tests share: the backends of the golden scenarios, the
golden-file check, and the inputs every proxy must refuse the same way.

The golden files (tests/golden/nginx/*.conf, tests/golden/haproxy/*.cfg) show the same scenarios in
each proxy's language and double as documentation of what cdlib writes. They are rewritten only
when CDLIB_UPDATE_GOLDEN=1 is set; otherwise a difference fails the test.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cdlib.errors import ProxyError
from cdlib.model import Backend, Routes
from cdlib.proxy.base import Proxy

GOLDEN_ROOT = Path(__file__).resolve().parents[1] / "golden"
LISTEN = "127.0.0.1:8880"
SCENARIOS = ("no-backends", "one-path-two-servers", "two-services-hosts", "override-template")


def demo(color: str = "blue", servers=(("127.0.0.1", 32001), ("127.0.0.1", 32002)), **routes) -> Backend:
    return Backend("demo", color, "r-0001", Routes(**(routes or {"paths": ("/demo/",)})), tuple(servers))


def api() -> Backend:
    return Backend("api", "green", "r-0042", Routes(paths=("/api",), hosts=("api.example.com", "*.api.test")),
                   (("10.0.0.7", 8080),), health_path="/health")


TLS_LISTEN = "127.0.0.1:8443"


def edge_backends() -> list[Backend]:
    """The edge scenario: a host-routed service with its own certificate, the redirect to HTTPS,
    long reads and large bodies; a path-routed one with a certificate and short timeouts; a plain
    one (the certificate files are only named: a golden renders the template's own output)."""
    shop = Backend("shop", "green", "r-0007", Routes(
        paths=(), hosts=("shop.example.com",), read_timeout=3600.0, send_timeout=120.0, max_body=50 * 1048576,
        tls_cert="/etc/cdlib/tls/shop.pem", tls_key="/etc/cdlib/tls/shop.key", https_redirect=True),
        (("127.0.0.1", 32011),))
    reports = Backend("reports", "blue", "r-0003", Routes(
        paths=("/reports",), connect_timeout=0.5, read_timeout=2.5, max_body=0,
        tls_cert="/etc/cdlib/tls/reports.pem", tls_key="/etc/cdlib/tls/reports.key"), (("127.0.0.1", 32021),))
    return [shop, reports, demo()]


def golden_text(name: str, make: Callable[[Path | None], Proxy], override: Path) -> str:
    """The configuration of one scenario; ``make(template)`` builds the adapter, ``override`` is
    the user's template the last scenario extends the packaged one with."""
    scenarios = {
        "no-backends": lambda: make(None).render([]),
        "one-path-two-servers": lambda: make(None).render([demo()]),
        "two-services-hosts": lambda: make(None).render([demo(), api()]),
        "override-template": lambda: make(override).render([demo()]),
    }
    return scenarios[name]()


def check_golden(path: Path, text: str) -> None:
    if os.environ.get("CDLIB_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} is missing: run with CDLIB_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(encoding="utf-8"), f"{path} differs (CDLIB_UPDATE_GOLDEN=1 rewrites it)"


def override_error(make: Callable[[Path | None], Proxy], override: Path, text: str) -> str:
    """The message of the ProxyError that rendering with this override template raises."""
    override.write_text(text)
    with pytest.raises(ProxyError) as info:
        make(override).render([])
    return str(info.value)


def assert_injection_names_the_template_line(proxy: Proxy, template_name: str) -> None:
    """A value that would end a directive fails in the template, and the error says where."""
    bad = Backend("demo", "blue", "r", Routes(paths=("/d;/",)), (("127.0.0.1", 1),))
    with pytest.raises(ProxyError) as info:
        proxy.render([bad])
    assert f"{template_name}, line" in str(info.value)
    assert info.value.line is not None


# (backends, words of the ProxyError): what no proxy can serve, refused before any template runs
CONFLICTS = [
    ([demo(), demo("green")], "two backends for service 'demo'"),
    ([demo(), Backend("other", "blue", "r", Routes(paths=("/demo",)), ())], "both route the path /demo/"),
    ([api(), Backend("web", "blue", "r", Routes(hosts=("api.example.com",)), ())], "both route the host"),
    ([demo(paths=("/_cdlib/x",))], "reserved"),
    ([demo(servers=(("127.0.0.1", 0),))], "not from 1 to 65535"),
]

BAD_LISTENS = ["", "host:80", "1.2.3.4:99999", "80;"]
