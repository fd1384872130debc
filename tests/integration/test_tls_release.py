"""HTTPS at the edge, through the real nginx and HAProxy: a service released with routes.tls answers
over HTTPS with its certificate (chosen by SNI), plain HTTP is redirected to HTTPS, a certificate
renewed in place (same files, new content) is served after `cdlib proxy apply`, and a wrong path or a
key that does not match its certificate is exit 2 with one line naming the field and nothing changed.

Certificates are made at test time with openssl (tests/support/certs.py). Each case has its own
service (cdlibt-…), proxy on free ports in a short temporary directory and SQLite store; everything
is removed after.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.integration.conftest import Service
from tests.support.certs import make_pair
from tests.support.images import build_busybox_web_image
from tests.support.registry import free_port

pytestmark = pytest.mark.integration

IMAGE = "cdlibt-tls-web"  # images of this module's own (other sessions remove the shared ones when they end)


class TlsService(Service):
    """A test service routed by host name over HTTPS."""

    def __init__(self, directory: Path, docker_client, proxy_kind: str):
        super().__init__(directory, docker_client, proxy_kind=proxy_kind)
        self.host = f"{self.name}.test"
        self.tls_port = free_port()
        certs = directory / "certs"
        self.pair = make_pair(certs, "site", hosts=(self.host,))
        self.other = make_pair(certs, "other", hosts=(self.host,))  # a renewal, and a key that does not match
        self.write_tls()

    def write_tls(self, cert: str = "certs/site.pem", key: str = "certs/site.key", redirect: bool = True) -> None:
        descriptor = json.loads(self.file.read_text())
        descriptor["image"]["repository"] = IMAGE
        descriptor.pop("tests", None)  # the shared suite requests TARGET_URL without the route's Host header
        descriptor["routes"] = {"hosts": [self.host], "tls": {"cert": cert, "key": key, "redirect": redirect}}
        descriptor["proxy"]["tls_listen"] = f"127.0.0.1:{self.tls_port}"
        self.file.write_text(json.dumps(descriptor, indent=2))

    def https(self, path: str = "/version") -> tuple[int, str, bytes]:
        """(status, body, the DER certificate the proxy presented) of a GET over HTTPS with SNI."""
        context = ssl.create_default_context(cafile=str(self.pair.cert))
        context.check_hostname = False  # the certificate in use may be the renewed one
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", self.tls_port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=self.host) as tls:
            der = tls.getpeercert(binary_form=True) or b""
            conn = http.client.HTTPConnection(self.host, self.tls_port, timeout=5)
            conn.sock = tls
            conn.request("GET", path, headers={"Host": self.host})
            resp = conn.getresponse()
            return resp.status, resp.read().decode().strip(), der

    def http(self, path: str = "/version") -> tuple[int, str]:
        """(status, Location) of a plain-HTTP GET for the host (no redirect followed)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path, headers={"Host": self.host})
            resp = conn.getresponse()
            resp.read()
            return resp.status, resp.getheader("Location") or ""
        finally:
            conn.close()


def der_of(pem: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.read_text())


@pytest.fixture(scope="module")
def tls_images(docker_client) -> Iterator[str]:
    for version in ("v1", "v2"):
        build_busybox_web_image(docker_client, f"{IMAGE}:{version}", version)
    yield IMAGE
    for version in ("v1", "v2"):
        try:
            docker_client.images.remove(f"{IMAGE}:{version}", force=True)
        except Exception:
            pass


@pytest.fixture(params=["nginx", "haproxy"])
def tls_service(request, docker_client, tls_images) -> Iterator[TlsService]:
    short = Path(tempfile.mkdtemp(prefix="cdlibtls-"))
    svc = TlsService(short, docker_client, request.param)
    try:
        yield svc
    finally:
        svc.teardown()
        shutil.rmtree(short, ignore_errors=True)


def test_https_release_renewal_and_refused_files(tls_service):
    svc = tls_service
    svc.write_tls(redirect=False)
    svc.cli("release", "--tag", "v1", check=True)
    status, body, der = svc.https()
    assert (status, body) == (200, "v1")
    assert der == der_of(svc.pair.cert)
    assert svc.http() == (200, "")  # no redirect asked for: plain HTTP is served too

    # refused before anything changes: a wrong path, then the key of another certificate
    before = svc.snapshot()
    for cert, key, field in (("certs/missing.pem", "certs/site.key", "routes.tls.cert"),
                             ("certs/site.pem", "certs/other.key", "routes.tls.key")):
        svc.write_tls(cert, key, redirect=False)
        proc = svc.cli("release", "--tag", "v2")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.count("\n") == 1 and f"{field}: expected" in proc.stderr, proc.stderr
        assert "PRIVATE KEY" not in proc.stderr + proc.stdout
        assert svc.snapshot() == before
    svc.write_tls(redirect=False)

    # a release over HTTPS switches like any other
    svc.cli("release", "--tag", "v2", check=True)
    assert svc.https()[:2] == (200, "v2")

    # the certificate renewed in place: same files, new content; proxy apply reloads with it
    config_before, first_cert = svc.nginx_conf(), svc.pair.cert.read_bytes()
    shutil.copyfile(svc.other.cert, svc.pair.cert)
    shutil.copyfile(svc.other.key, svc.pair.key)
    proc = svc.cli("proxy", "apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert svc.nginx_conf() != config_before  # the digest of the files is in the text
    status, body, der = svc.https()
    assert (status, body) == (200, "v2")
    assert der == der_of(svc.other.cert)

    # a renewal gone wrong (the old certificate with the new key): the proxy refuses the file, the
    # running configuration stays as it was and keeps serving the certificate it loaded
    renewed = svc.nginx_conf()
    svc.pair.cert.write_bytes(first_cert)
    proc = svc.cli("proxy", "apply")
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1, proc.stdout + proc.stderr
    assert "PRIVATE KEY" not in proc.stdout + proc.stderr
    assert svc.nginx_conf() == renewed
    assert svc.https()[2] == der_of(svc.other.cert)


def test_plain_http_is_redirected_to_https(tls_service):
    """routes.tls.redirect, rendered from the registry of a released service by the proxy adapter."""
    from cdlib import registry
    from cdlib.config import load
    from cdlib.wiring import open_proxy, open_store

    svc = tls_service
    svc.write_tls(redirect=False)
    svc.cli("release", "--tag", "v1", check=True)
    svc.write_tls(redirect=True)
    spec = load(svc.file, env={})
    store = open_store(svc.store_url)
    try:
        backends = [replace(b, routes=spec.routes) if b.service == svc.name else b for b in registry.backends(store)]
    finally:
        store.close()
    proxy = open_proxy(spec)
    proxy.apply(proxy.render(backends))
    assert svc.http("/version?x=1") == (301, f"https://{svc.host}:{svc.tls_port}/version?x=1")
    assert svc.https()[:2] == (200, "v1")
