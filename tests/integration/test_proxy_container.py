"""The proxy as a container and as a Swarm service, against the real dockerd.

A busybox service is released through a containerized nginx and a containerized HAProxy under load
(no request may fail); a refused configuration leaves every replica's bytes as they were; a proxy
service with two replicas on this one node (host network, replica n on the listen port + n - 1)
takes a change on both replicas or on neither. Every container and service here is named
``cdlibpx-t…`` and removed at the end.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import docker
import pytest

from cdlib import swarmremoval
from cdlib.errors import ProxyError
from cdlib.model import Backend, Routes
from cdlib.proxy.container import ContainerProxy, DockerEngine, ServiceProxy
from tests.integration.conftest import Service
from tests.support.images import build_busybox_web_image
from tests.support.load import Load
from tests.support.registry import free_port
from tests.support.swarm import swarm_manager  # noqa: F401 - the session fixture

pytestmark = pytest.mark.integration

BROKEN = {"nginx": '{% extends "nginx.conf.j2" %}\n{% block http_extra %}\n    cdlibt_no_such_directive on;\n'
                   '{% endblock %}\n',
          "haproxy": '{% extends "haproxy.cfg.j2" %}\n{% block global_extra %}\n    cdlibt_no_such_keyword on\n'
                     '{% endblock %}\n'}
# a template whose every replica also listens on one more fixed port: the first replica to reload
# takes it, so the second one's reload fails to bind it (the host network is one namespace)
EXTRA_LISTEN = '{% extends "nginx.conf.j2" %}\n{% block http_extra %}\n    server {\n        listen 127.0.0.1:PORT;\n' \
               '        return 204;\n    }\n{% endblock %}\n'


WEB = "cdlibpxt-web"  # this module's own service image (another session may remove the shared one)


@pytest.fixture(scope="module")
def px_web_images(docker_client):
    tags = {v: f"{WEB}:{v}" for v in ("v1", "v2")}
    for version, tag in tags.items():
        build_busybox_web_image(docker_client, tag, version)
    yield tags
    for tag in tags.values():
        try:
            docker_client.images.remove(tag, force=True)
        except docker.errors.APIError:
            pass


@pytest.fixture(scope="session")
def proxy_images():
    engine = DockerEngine()
    try:
        for kind in ("nginx", "haproxy"):
            engine.ensure_image(kind)
    finally:
        engine.close()


def remove_proxies(prefix: str) -> None:
    client = docker.from_env()
    try:
        try:
            services = client.api.services()
        except docker.errors.APIError:  # the engine is in no swarm (any more): no service to remove
            services = []
        swarmremoval.remove_services(client.api, [s["ID"] for s in services if s["Spec"]["Name"].startswith(prefix)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            left = [c for c in client.api.containers(all=True) if any(n.lstrip("/").startswith(prefix)
                                                                       for n in c["Names"])]
            for c in left:
                if "com.docker.swarm.service.id" not in (c.get("Labels") or {}):
                    client.api.remove_container(c["Id"], force=True)
            if not left:
                return
            time.sleep(0.2)
    finally:
        client.close()


class Named:
    """Backend servers in threads that answer with their name."""

    def __init__(self):
        self.servers: list[ThreadingHTTPServer] = []

    def start(self, name: str) -> tuple[str, int]:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                body = name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.servers.append(server)
        return server.server_address[:2]

    def close(self):
        for s in self.servers:
            s.shutdown()
            s.server_close()


@pytest.fixture
def named():
    n = Named()
    yield n
    n.close()


def backend(server, color: str) -> Backend:
    return Backend("cdlibt-px", color, f"r-{color}", Routes(("/px/",), ()), (server,))


def get(port: int, path: str = "/px/") -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


def free_pair() -> int:
    """A port p with p + 1 free too (the second replica's)."""
    for _ in range(50):
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
                return p
            except OSError:
                continue
    raise RuntimeError("no two free ports in a row")


# -- a release through a proxy container --------------------------------------------------------------
@pytest.fixture(params=["nginx", "haproxy"])
def container_service(request, tmp_path, docker_client, px_web_images, proxy_images):
    svc = Service(tmp_path, docker_client, proxy_kind=request.param)
    name = f"cdlibpx-t-{svc.name}"
    data = json.loads(svc.file.read_text())
    data["image"]["repository"] = WEB
    data["proxy"] = {"kind": request.param, "listen": f"127.0.0.1:{svc.port}", "run": "container", "name": name}
    svc.file.write_text(json.dumps(data, indent=2))
    svc.px_name = name
    yield svc
    svc.teardown()
    remove_proxies(name)


def test_release_under_load_through_a_proxy_container_drops_nothing(container_service):
    svc = container_service
    code, out = svc.cli_json("release", "--tag", "v1")
    assert code == 0, out
    assert svc.get() == (200, "v1")
    with Load(svc.url + "version") as load:
        time.sleep(0.5)
        code, out = svc.cli_json("release", "--tag", "v2")
        time.sleep(0.5)
    assert code == 0, out
    assert load.sent > 20
    assert load.failed == [], f"{len(load.failed)} of {load.sent} requests failed: {load.failed[:5]}"
    assert "v1" in load.bodies and load.bodies[-1] == "v2"
    # the proxy ran in its container, not as a process of this machine
    assert not svc.proxy_dir.exists()
    info = svc.docker.api.inspect_container(svc.px_name)
    assert info["State"]["Running"] and info["HostConfig"]["NetworkMode"] == "host"
    code, out = svc.cli_json("status")
    replicas = out["proxy"]["replicas"]
    assert [r["name"] for r in replicas] == [svc.px_name]
    assert len(replicas[0]["digest"]) == 64


def test_rollback_puts_the_container_config_back_byte_for_byte(container_service):
    svc = container_service
    svc.cli("release", "--tag", "v1", check=True)
    proxy = ContainerProxy(svc.proxy_kind, name=svc.px_name, listen=f"127.0.0.1:{svc.port}")
    try:
        before = proxy.read_config()
        code, out = svc.cli_json("release", "--tag", "v2", env={"FAIL_TEST_TYPE": "post-integration"})
        assert code == 1, out
        assert proxy.read_config() == before
        assert svc.get() == (200, "v1")
    finally:
        proxy.close()


# -- refused configurations ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_a_refused_template_leaves_every_replica_unchanged(kind, tmp_path, named, proxy_images, swarm_manager):  # noqa: F811
    port = free_pair()
    name = f"cdlibpx-t-refused-{kind}-{port}"
    good = ServiceProxy(kind, name=name, listen=f"127.0.0.1:{port}", replicas=2, drain_timeout=5)
    broken_template = tmp_path / "broken.j2"
    broken_template.write_text(BROKEN[kind])
    broken = ServiceProxy(kind, name=name, listen=f"127.0.0.1:{port}", replicas=2, template=broken_template)
    try:
        alpha = named.start("alpha")
        good.apply(good.render([backend(alpha, "blue")]))
        before = {r.name: r.read() for r in good._replicas()}
        assert len(before) == 2 and len(set(before.values())) == 2  # each replica its own listen line
        with pytest.raises(ProxyError, match="refused"):
            broken.apply(broken.render([backend(named.start("beta"), "green")]))
        assert {r.name: r.read() for r in good._replicas()} == before
        assert get(port) == "alpha" and get(port + 1) == "alpha"
    finally:
        good.stop()
        good.close()
        broken.close()
        remove_proxies(name)


# -- a proxy service with two replicas -------------------------------------------------------------------
def test_service_with_two_replicas_switches_all_or_nothing(tmp_path, named, proxy_images, swarm_manager):  # noqa: F811
    port = free_pair()
    name = f"cdlibpx-t-svc-{port}"
    proxy = ServiceProxy("nginx", name=name, listen=f"127.0.0.1:{port}", replicas=2, drain_timeout=5)
    extra = free_port()
    template = tmp_path / "extra.j2"
    template.write_text(EXTRA_LISTEN.replace("PORT", str(extra)))
    clashing = ServiceProxy("nginx", name=name, listen=f"127.0.0.1:{port}", replicas=2, template=template,
                            reload_timeout=15)
    try:
        alpha, beta = named.start("alpha"), named.start("beta")
        proxy.apply(proxy.render([backend(alpha, "blue")]))
        assert get(port) == "alpha" and get(port + 1) == "alpha"
        digests = [r["digest"] for r in proxy.status()["replicas"]]
        assert len(digests) == 2 and None not in digests

        # all: both replicas take the change
        proxy.apply(proxy.render([backend(beta, "green")]))
        assert get(port) == "beta" and get(port + 1) == "beta"
        after = {r.name: r.read() for r in proxy._replicas()}
        assert [r["digest"] for r in proxy.status()["replicas"]] != digests

        # or nothing: replica 1 reloads and binds the extra port, replica 2's reload cannot bind it;
        # replica 1 is put back byte for byte and both still route to beta
        with pytest.raises(ProxyError, match="put back"):
            clashing.apply(clashing.render([backend(alpha, "blue")]))
        assert {r.name: r.read() for r in proxy._replicas()} == after
        assert get(port) == "beta" and get(port + 1) == "beta"
        with socket.socket() as s:
            s.bind(("127.0.0.1", extra))  # released again by replica 1's restored configuration

        # a removal killed after it stopped the tasks: the next change removes the service and creates it again
        api = docker.from_env().api
        try:
            swarmremoval.wait_at_rest(api, swarmremoval.stop_tasks(api, name))
        finally:
            api.close()
        proxy.apply(proxy.render([backend(alpha, "blue")]))
        assert get(port) == "alpha" and get(port + 1) == "alpha"
        assert [r["listen"] for r in proxy.status()["replicas"]] == [f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"]
    finally:
        proxy.stop()
        proxy.close()
        clashing.close()
        remove_proxies(name)


def test_release_under_load_through_a_two_replica_proxy_service_drops_nothing(tmp_path, docker_client, px_web_images,
                                                                               proxy_images, swarm_manager):  # noqa: F811
    svc = Service(tmp_path, docker_client)
    svc.port = free_pair()
    name = f"cdlibpx-t-svc-{svc.name}"
    data = json.loads(svc.file.read_text())
    data["image"]["repository"] = WEB
    data["proxy"] = {"kind": "nginx", "listen": f"127.0.0.1:{svc.port}", "run": "service", "name": name,
                     "replicas": 2}
    svc.file.write_text(json.dumps(data, indent=2))
    second = svc.url.replace(f":{svc.port}/", f":{svc.port + 1}/")
    try:
        svc.cli("release", "--tag", "v1", check=True)
        with Load(svc.url + "version", threads=2) as first_load, Load(second + "version", threads=2) as second_load:
            time.sleep(0.5)
            code, out = svc.cli_json("release", "--tag", "v2")
            time.sleep(0.5)
        assert code == 0, out
        for load in (first_load, second_load):
            assert load.failed == [], f"{len(load.failed)} of {load.sent} requests failed: {load.failed[:5]}"
            assert "v1" in load.bodies and load.bodies[-1] == "v2"
        code, out = svc.cli_json("status")
        replicas = out["proxy"]["replicas"]
        assert [r["listen"] for r in replicas] == [f"127.0.0.1:{svc.port}", f"127.0.0.1:{svc.port + 1}"]
        assert all(len(r["digest"]) == 64 for r in replicas) and replicas[0]["digest"] != replicas[1]["digest"]

        # Swarm replaces a replica whose container died; the new task starts without a configuration,
        # so it serves nothing until heal (like 'proxy apply') gives it its file
        killed = _task_container(docker_client, name, slot=2)
        docker_client.containers.get(killed).kill()
        deadline = time.monotonic() + 60
        while _task_container(docker_client, name, slot=2) in (None, killed):
            assert time.monotonic() < deadline, "Swarm did not replace the killed proxy replica within 60 s"
            time.sleep(0.2)
        code, out = svc.cli_json("status")
        assert out["proxy"]["next_change"]["mode"] == "reload", out["proxy"]
        code, out = svc.cli_json("heal")
        assert code == 0 and out["proxy_changed"] is True and out["replaced"] == [], out
        code, out = svc.cli_json("status")
        assert [r["digest"] for r in out["proxy"]["replicas"]] == [r["digest"] for r in replicas]
        assert get(svc.port + 1, "/" + svc.name + "/version") == "v2\n"
    finally:
        svc.teardown()
        remove_proxies(name)


def _task_container(docker_client, service: str, slot: int) -> str | None:
    """The container of the service's running task in slot, None when there is none yet."""
    for t in docker_client.api.tasks(filters={"service": service, "desired-state": "running"}):
        if t.get("Slot") == slot and t["Status"]["State"] == "running":
            return t["Status"].get("ContainerStatus", {}).get("ContainerID")
    return None


# -- HTTPS through a proxy container and a proxy service ---------------------------------------------------
def tls_listing(docker_client, container: str) -> list[str]:
    """``<mode> <owner> <name>`` of /cdlib/tls and of everything in it (links as links)."""
    out = docker_client.api.exec_create(container, ["/bin/busybox", "sh", "-c",
                                                    "cd /cdlib/tls && /bin/busybox stat -c '%a %U %F %n' . *"])
    text = docker_client.api.exec_start(out["Id"]).decode()
    return sorted(text.splitlines())


def https_get(port: int, host: str, path: str = "/version") -> tuple[int, str, bytes]:
    """(status, body, the DER certificate presented) of a GET over HTTPS with SNI ``host``."""
    import http.client
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False  # self-signed; the test compares the certificate itself
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True) or b""
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.sock = tls
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode().strip(), der


def der_of(pem) -> bytes:
    import ssl

    return ssl.PEM_cert_to_DER_cert(pem.read_text())


@pytest.fixture(params=["nginx", "haproxy"])
def tls_container_service(request, tmp_path, docker_client, px_web_images, proxy_images):
    from tests.support.certs import make_pair

    svc = Service(tmp_path, docker_client, proxy_kind=request.param)
    svc.px_name = f"cdlibpx-t-tls-{svc.name}"
    svc.host = f"{svc.name}.test"
    svc.tls_port = free_port()
    svc.pair = make_pair(tmp_path / "certs", "site", hosts=(svc.host,))
    svc.other = make_pair(tmp_path / "certs", "other", hosts=(svc.host,))
    data = json.loads(svc.file.read_text())
    data["image"]["repository"] = WEB
    data.pop("tests", None)  # the shared suite requests TARGET_URL without the route's Host header
    data["routes"] = {"hosts": [svc.host], "tls": {"cert": "certs/site.pem", "key": "certs/site.key"}}
    data["proxy"] = {"kind": request.param, "listen": f"127.0.0.1:{svc.port}", "run": "container",
                     "name": svc.px_name, "tls_listen": f"127.0.0.1:{svc.tls_port}"}
    svc.file.write_text(json.dumps(data, indent=2))
    yield svc
    svc.teardown()
    remove_proxies(svc.px_name)


def test_https_release_renewal_and_refused_key_through_a_proxy_container(tls_container_service):
    svc = tls_container_service
    svc.cli("release", "--tag", "v1", check=True)
    status, body, der = https_get(svc.tls_port, svc.host)
    assert (status, body, der) == (200, "v1", der_of(svc.pair.cert))
    # the files are root's only in the container, named by their content; nothing of them on this machine's disk
    listing = tls_listing(svc.docker, svc.px_name)
    assert "700 root directory ." in listing
    files = [line for line in listing if "regular file" in line]
    assert len(files) == 2 and all(line.startswith("600 root regular file ") for line in files)
    assert not svc.proxy_dir.exists()

    svc.cli("release", "--tag", "v2", check=True)  # a switch over HTTPS
    assert https_get(svc.tls_port, svc.host)[:2] == (200, "v2")

    # renewed in place (same files, new content): proxy apply delivers it and reloads
    proxy = ContainerProxy(svc.proxy_kind, name=svc.px_name, listen=f"127.0.0.1:{svc.port}",
                           tls_listen=f"127.0.0.1:{svc.tls_port}")
    try:
        before = proxy.read_config()
        first_cert = svc.pair.cert.read_bytes()
        svc.pair.cert.write_bytes(svc.other.cert.read_bytes())
        svc.pair.key.write_bytes(svc.other.key.read_bytes())
        proc = svc.cli("proxy", "apply")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        renewed = proxy.read_config()
        assert renewed != before
        assert https_get(svc.tls_port, svc.host) == (200, "v2", der_of(svc.other.cert))
        listing = tls_listing(svc.docker, svc.px_name)

        # a renewal gone wrong (the old certificate with the new key): refused, nothing changed
        svc.pair.cert.write_bytes(first_cert)
        proc = svc.cli("proxy", "apply")
        assert proc.returncode != 0 and proc.stderr.count("\n") == 1, proc.stdout + proc.stderr
        assert "PRIVATE KEY" not in proc.stdout + proc.stderr
        assert proxy.read_config() == renewed and tls_listing(svc.docker, svc.px_name) == listing
        assert https_get(svc.tls_port, svc.host) == (200, "v2", der_of(svc.other.cert))
    finally:
        proxy.close()


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_https_through_a_proxy_service_renewal_and_a_key_the_replica_refuses(kind, tmp_path, named, docker_client,
                                                                            proxy_images, swarm_manager):  # noqa: F811
    from cdlib.model import Routes as R
    from tests.support.certs import make_pair

    port, tls_port = free_port(), free_port()
    name = f"cdlibpx-t-tlssvc-{kind}-{port}"
    proxy = ServiceProxy(kind, name=name, listen=f"127.0.0.1:{port}", tls_listen=f"127.0.0.1:{tls_port}",
                         mode="global", drain_timeout=5)
    host = f"cdlibt-{port}.test"
    pair = make_pair(tmp_path / "certs", "site", hosts=(host,))
    other = make_pair(tmp_path / "certs", "other", hosts=(host,))
    alpha = named.start("alpha")
    b = Backend("cdlibt-tls", "blue", "r-blue", R((), (host,), tls_cert=str(pair.cert), tls_key=str(pair.key)),
                (alpha,))
    try:
        proxy.apply(proxy.render([b]))
        assert https_get(tls_port, host, "/") == (200, "alpha", der_of(pair.cert))
        replica, = proxy._replicas()
        first_text, first_cert = replica.read(), pair.cert.read_bytes()

        # renewed: every replica gets the new files, keeps the previous ones, and serves the new certificate
        pair.cert.write_bytes(other.cert.read_bytes())
        pair.key.write_bytes(other.key.read_bytes())
        proxy.apply(proxy.render([b]))
        assert https_get(tls_port, host, "/") == (200, "alpha", der_of(other.cert))
        renewed = replica.read()
        assert renewed != first_text and len(replica.tls_present()) >= 4

        # the old certificate with the new key, past the descriptor's check: the binary in the replica
        # refuses it, and the configuration and the TLS files stay as they were
        before = (replica.read(), tls_listing(docker_client, replica.container))
        pair.cert.write_bytes(first_cert)
        with pytest.raises(ProxyError, match="refused") as info:
            proxy.apply(proxy.render([b]))
        assert "PRIVATE KEY" not in str(info.value)
        assert (replica.read(), tls_listing(docker_client, replica.container)) == before
        assert https_get(tls_port, host, "/") == (200, "alpha", der_of(other.cert))
    finally:
        proxy.stop()
        proxy.close()
        remove_proxies(name)
