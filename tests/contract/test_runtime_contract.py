"""One behavioural suite for every runtime adapter, so the in-memory fake stays honest.

Each test runs against MemoryRuntime, DockerRuntime and SwarmRuntime (the Docker and Swarm runs need
dockerd and are marked integration; the Swarm one runs on a single-node swarm on loopback that
tests.support.swarm starts when the engine is not in one). A test works on its own service name
(``cdlibt-rt-<random>``, ``cdlibsw-rt-<random>`` on Swarm) and removes every container (service,
set-aside spec) of it afterwards, through the Docker SDK directly rather than through the code under test.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from cdlib.errors import RuntimeBackendError, Unhealthy
from cdlib.runtime.base import LABEL_COLOR, LABEL_INDEX, LABEL_RELEASE, LABEL_SERVICE, StartRequest, is_aside
from cdlib.runtime.docker import DockerRuntime, _auth_config, _SdkEngine, redact_host
from cdlib.runtime.memory import MemoryRuntime
from cdlib.runtime.swarm import SwarmRuntime
from tests.support.churn import TEST_LABEL, Churn
from tests.support.images import PORT, SWARM_HEALTH, build_busybox_web_image, write_context
from tests.support.registry import free_port, private_registry
from tests.support.swarm import remove_swarm_objects, swarm_manager  # noqa: F401 - a fixture


@dataclass
class Harness:
    kind: str
    runtime: object
    image: str
    service: str
    # a stopped instance that is started again comes back on the same port (Swarm in dnsrr mode:
    # a new task, a new host port)
    stable_ports: bool = True

    def request(self, color: str = "blue", release: str = "r1", replicas: int = 2, **kw) -> StartRequest:
        return StartRequest(service=self.service, color=color, release=release, image=self.image, port=PORT,
                            replicas=replicas, stop_timeout=2, **kw)

    def make_unhealthy(self, instances) -> str:
        """Arrange for instances to fail their health check; return the path to probe."""
        if self.kind == "memory":
            for i in instances:
                self.runtime.healthy[i.name] = False
            return "/health"
        return "/no-such-page"  # busybox httpd answers 404


def _docker_client():
    return docker.from_env()


def _remove_service_containers(service: str) -> None:
    client = _docker_client()
    try:
        for c in client.containers.list(all=True, filters={"label": f"{LABEL_SERVICE}={service}"}):
            c.remove(force=True, v=True)
    finally:
        client.close()


@pytest.fixture(scope="session")
def docker_web_image():
    """A busybox web image built once for the session through the adapter under test."""
    tag = f"cdlibt-web:{secrets.token_hex(4)}"
    runtime = DockerRuntime()
    build_busybox_web_image(runtime, tag, "v1", health_interval=SWARM_HEALTH)
    runtime.close()
    yield tag
    client = _docker_client()
    try:
        client.images.remove(tag, force=True)
    finally:
        client.close()


class SdkDockerRuntime(DockerRuntime):
    """The Docker runtime as it talks to a remote engine (TCP with TLS, ssh): through the SDK."""

    @property
    def _engine(self):
        return _SdkEngine(self._client.api)


@pytest.fixture(params=["memory", pytest.param("docker", marks=pytest.mark.integration),
                        pytest.param("docker-sdk", marks=pytest.mark.integration),
                        pytest.param("swarm", marks=pytest.mark.integration)])
def harness(request):
    service = f"cdlibt-rt-{secrets.token_hex(3)}"
    if request.param == "memory":
        yield Harness("memory", MemoryRuntime(), "cdlibt-web:memory", service)
        return
    if request.param == "swarm":
        request.getfixturevalue("swarm_manager")
        image = request.getfixturevalue("docker_web_image")
        service = f"cdlibsw-rt-{secrets.token_hex(3)}"
        swarm = SwarmRuntime()
        try:
            yield Harness("swarm", swarm, image, service, stable_ports=swarm.stable_ports)
        finally:
            swarm.close()
            remove_swarm_objects(service)
        return
    image = request.getfixturevalue("docker_web_image")
    runtime = DockerRuntime() if request.param == "docker" else SdkDockerRuntime()
    try:
        yield Harness("docker", runtime, image, service)
    finally:
        runtime.close()
        _remove_service_containers(service)


# -- start and list --------------------------------------------------------------------------------
def test_start_creates_named_labelled_replicas(harness):
    rt = harness.runtime
    started = rt.start(harness.request(replicas=2))
    svc = harness.service
    assert [i.name for i in started] == [f"{svc}-blue-1", f"{svc}-blue-2"]
    for i in started:
        assert (i.service, i.color, i.release, i.image) == (svc, "blue", "r1", harness.image)
        assert i.running and i.address == "127.0.0.1" and i.port > 0 and i.id
    assert len({i.port for i in started}) == 2
    assert rt.instances(svc) == started
    rt.wait_healthy(started, "/health", timeout=10)


def test_instances_filter_by_color_and_release(harness):
    rt, svc = harness.runtime, harness.service
    blue = rt.start(harness.request("blue", "r1", replicas=2))
    green = rt.start(harness.request("green", "r2", replicas=1))
    assert [i.name for i in rt.instances(svc, "blue")] == [i.name for i in blue]
    assert [i.name for i in rt.instances(svc, release="r2")] == [i.name for i in green]
    assert rt.instances(svc, "green", "r1") == []
    assert [i.name for i in rt.instances(svc)] == sorted(i.name for i in blue + green)
    assert rt.instances(f"{svc}x") == []


def test_start_is_idempotent_for_the_same_release(harness):
    rt = harness.runtime
    first = rt.start(harness.request(replicas=2))
    again = rt.start(harness.request(replicas=2))
    assert [(i.name, i.id, i.port) for i in again] == [(i.name, i.id, i.port) for i in first]
    assert len(rt.instances(harness.service)) == 2


def test_start_refuses_a_name_held_by_another_release(harness):
    rt = harness.runtime
    first = rt.start(harness.request(release="r1", replicas=1))
    with pytest.raises(RuntimeBackendError, match="set aside"):
        rt.start(harness.request(release="r2", replicas=1))
    assert [(i.id, i.release, i.running) for i in rt.instances(harness.service)] == [(first[0].id, "r1", True)]


def test_start_honours_first_index(harness):
    rt = harness.runtime
    started = rt.start(harness.request(replicas=2, first_index=3))
    assert [i.name for i in started] == [f"{harness.service}-blue-3", f"{harness.service}-blue-4"]


# -- stop, resume, remove --------------------------------------------------------------------------
def test_stop_and_resume(harness):
    rt, svc = harness.runtime, harness.service
    started = rt.start(harness.request(replicas=2))
    assert rt.stop(svc, "blue") == [i.name for i in started]
    stopped = rt.instances(svc, "blue")
    assert [i.running for i in stopped] == [False, False]
    assert [i.port for i in stopped] == [0, 0]
    assert rt.stop(svc, "blue") == []
    resumed = rt.resume(svc, "blue")
    assert [i.name for i in resumed] == [i.name for i in started]
    assert all(i.running and i.port > 0 for i in resumed)
    assert [i.id for i in resumed] == [i.id for i in started]
    if harness.stable_ports:
        # the same ports as before the stop: a proxy config restored byte for byte still reaches them
        assert [i.port for i in resumed] == [i.port for i in started]
    else:  # each resumed instance on a port of its own, known when resume returns
        assert len({i.port for i in resumed}) == len(resumed)
    rt.wait_healthy(resumed, "/health", timeout=10)


def test_stop_only_touches_the_given_release(harness):
    rt, svc = harness.runtime, harness.service
    rt.start(harness.request("blue", "r1", replicas=1))
    assert rt.stop(svc, "blue", release="r0") == []
    assert rt.instances(svc)[0].running


def test_remove_by_release(harness):
    rt, svc = harness.runtime, harness.service
    blue = rt.start(harness.request("blue", "r1", replicas=2))
    green = rt.start(harness.request("green", "r2", replicas=1))
    assert rt.remove(svc, "green", release="r1") == []
    assert rt.remove(svc, "blue", release="r1") == [i.name for i in blue]
    assert rt.instances(svc, "blue", include_aside=True) == []
    assert [i.name for i in rt.instances(svc)] == [i.name for i in green]
    assert rt.remove(svc, "blue", release="r1") == []


# -- set aside ---------------------------------------------------------------------------------------
def test_set_aside_and_restore_round_trip(harness):
    rt, svc = harness.runtime, harness.service
    old = rt.start(harness.request("blue", "r1", replicas=2))
    aside = rt.set_aside(svc, "blue", "r2")
    assert aside == [f"{i.name}.aside-r2" for i in old]
    assert rt.set_aside(svc, "blue", "r2") == []  # a second call is a no-op
    assert rt.instances(svc, "blue") == []
    listed = rt.instances(svc, "blue", include_aside=True)
    assert [(i.name, i.release, i.id) for i in listed] == [(n, "r1", i.id) for n, i in zip(aside, old, strict=True)]

    new = rt.start(harness.request("blue", "r2", replicas=2))  # the names are free again
    assert [i.name for i in new] == [i.name for i in old]
    assert rt.set_aside(svc, "blue", "r2") == []  # the release's own instances stay put
    with pytest.raises(RuntimeBackendError, match="taken"):
        rt.restore_aside(svc, "blue", "r2")

    assert rt.remove(svc, "blue", release="r2") == [i.name for i in new]
    assert rt.restore_aside(svc, "blue", "r2") == [i.name for i in old]
    assert rt.restore_aside(svc, "blue", "r2") == []
    back = rt.instances(svc, "blue", include_aside=True)
    assert [(i.name, i.release, i.id) for i in back] == [(i.name, "r1", i.id) for i in old]


def test_restore_aside_leaves_other_releases_alone(harness):
    rt, svc = harness.runtime, harness.service
    rt.start(harness.request("blue", "r1", replicas=1))
    rt.set_aside(svc, "blue", "r2")
    assert rt.restore_aside(svc, "blue", "r3") == []
    assert [i.name for i in rt.instances(svc, include_aside=True)] == [f"{svc}-blue-1.aside-r2"]


def test_remove_aside_only(harness):
    rt, svc = harness.runtime, harness.service
    rt.start(harness.request("blue", "r1", replicas=2))
    aside = rt.set_aside(svc, "blue", "r2")
    new = rt.start(harness.request("blue", "r2", replicas=2))
    assert rt.remove(svc, "blue", release="r3", aside=True) == []
    assert rt.remove(svc, "blue", aside=True) == aside
    remaining = rt.instances(svc, "blue", include_aside=True)
    assert [(i.name, i.release) for i in remaining] == [(i.name, "r2") for i in new]
    assert not any(is_aside(i.name) for i in remaining)


def test_stop_and_resume_ignore_set_aside_instances(harness):
    rt, svc = harness.runtime, harness.service
    rt.start(harness.request("blue", "r1", replicas=1))
    rt.stop(svc, "blue")
    rt.set_aside(svc, "blue", "r2")
    assert rt.resume(svc, "blue") == []
    assert [i.running for i in rt.instances(svc, include_aside=True)] == [False]


# -- health --------------------------------------------------------------------------------------------
def test_wait_healthy_succeeds_on_healthy_instances(harness):
    started = harness.runtime.start(harness.request(replicas=2))
    seconds = harness.runtime.wait_healthy(started, "/health", timeout=10)
    assert 0 <= seconds < 10


def test_wait_healthy_raises_unhealthy_after_the_timeout(harness):
    started = harness.runtime.start(harness.request(replicas=2))
    path = harness.make_unhealthy(started[1:])
    t0 = time.monotonic()
    with pytest.raises(Unhealthy) as err:
        harness.runtime.wait_healthy(started, path, timeout=0.6, interval=0.1)
    assert 0.5 <= time.monotonic() - t0 < 5
    expected = [i.name for i in started[1:]] if harness.kind == "memory" else [i.name for i in started]
    assert err.value.instances == expected


def test_a_stopped_instance_is_not_healthy(harness):
    rt, svc = harness.runtime, harness.service
    started = rt.start(harness.request(replicas=1))
    rt.stop(svc, "blue")
    assert not rt.check_health(started[0], "/health", timeout=0.5)


# -- the in-memory fake's own hooks --------------------------------------------------------------------
def test_memory_fail_next_raises_once():
    rt = MemoryRuntime()
    rt.fail_next["start"] = RuntimeBackendError("boom")
    req = StartRequest(service="cdlibt-m", color="blue", release="r1", image="x:1", port=80, replicas=1)
    with pytest.raises(RuntimeBackendError, match="boom"):
        rt.start(req)
    assert rt.instances("cdlibt-m") == []
    assert [i.name for i in rt.start(req)] == ["cdlibt-m-blue-1"]
    assert [c[0] for c in rt.calls] == ["start", "instances", "start"]


def test_memory_build_and_push():
    rt = MemoryRuntime()
    image_id = rt.build_image("/ctx", "Dockerfile", ["reg:5000/a:1", "reg:5000/a:latest"], {"CDLIB_TAG": "1"})
    assert rt.images == {"reg:5000/a:1": image_id, "reg:5000/a:latest": image_id}
    assert rt.push_image("reg:5000/a:1").startswith("sha256:")
    with pytest.raises(RuntimeBackendError, match="no such image"):
        rt.push_image("reg:5000/b:1")


# -- Docker only: what the engine actually got ---------------------------------------------------------
@pytest.fixture
def docker_harness(docker_web_image):
    service = f"cdlibt-rt-{secrets.token_hex(3)}"
    runtime = DockerRuntime()
    try:
        yield Harness("docker", runtime, docker_web_image, service)
    finally:
        runtime.close()
        _remove_service_containers(service)


@pytest.mark.integration
def test_docker_container_configuration(docker_harness):
    h = docker_harness
    started = h.runtime.start(h.request(replicas=1, env=(("GREETING", "hi"),), labels=(("team", "web"),)))
    client = _docker_client()
    try:
        attrs = client.containers.get(started[0].name).attrs
    finally:
        client.close()
    labels = attrs["Config"]["Labels"]
    assert {k: labels[k] for k in (LABEL_SERVICE, LABEL_COLOR, LABEL_RELEASE, LABEL_INDEX, "team")} == {
        LABEL_SERVICE: h.service, LABEL_COLOR: "blue", LABEL_RELEASE: "r1", LABEL_INDEX: "1", "team": "web"}
    env = dict(e.split("=", 1) for e in attrs["Config"]["Env"])
    assert (env["GREETING"], env["CDLIB_SERVICE"], env["CDLIB_COLOR"], env["CDLIB_RELEASE"]) == (
        "hi", h.service, "blue", "r1")
    host = attrs["HostConfig"]
    assert host["Init"] is True
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    # the host port is pinned in the binding (from the request's range), not left to the engine
    assert host["PortBindings"][f"{PORT}/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(started[0].port)}]
    assert 20000 <= started[0].port <= 29999
    assert attrs["NetworkSettings"]["Ports"][f"{PORT}/tcp"][0]["HostPort"] == str(started[0].port)
    with urllib.request.urlopen(f"{started[0].url}/version", timeout=5) as resp:
        assert resp.read().decode().strip() == "v1"


@pytest.mark.integration
def test_docker_instances_are_only_the_colored_containers_of_the_service(docker_harness):
    """A test suite's container (cdlib.testrun.container) carries the service label as well: it is
    not an instance, so status must not list it, running or left behind."""
    h = docker_harness
    started = h.runtime.start(h.request(replicas=1))
    client = _docker_client()
    try:
        client.containers.create(h.image, name=f"cdlib-test-{h.service}-pre-integration-{secrets.token_hex(4)}",
                                 labels={"cdlib.test": "1", LABEL_SERVICE: h.service, "cdlib.suite": "pre-integration"})
    finally:
        client.close()
    assert [i.name for i in h.runtime.instances(h.service, include_aside=True)] == [started[0].name]
    assert [i.name for i in h.runtime.instances(h.service, "blue")] == [started[0].name]


def test_docker_knows_the_test_suite_label():
    from cdlib.runtime.base import LABEL_TEST
    from cdlib.testrun.container import LABEL

    assert LABEL_TEST == LABEL == TEST_LABEL


@pytest.mark.integration
def test_docker_on_the_local_socket_imports_no_client_library(docker_web_image):
    """The SDK, requests and urllib3 take longer to import than a release's calls take: on a
    local engine, the runtime does without them."""
    service = f"cdlibt-rt-{secrets.token_hex(3)}"
    code = (f"import sys\nfrom cdlib.runtime.docker import DockerRuntime\nfrom cdlib.runtime.base import StartRequest\n"
            f"rt = DockerRuntime()\nrt.ping()\n"
            f"s = rt.start(StartRequest({service!r}, 'blue', 'r1', {docker_web_image!r}, {PORT}, 2, stop_timeout=2))\n"
            f"rt.wait_healthy(s, '/health', 10)\n"
            f"assert rt.instances({service!r}) == s\n"
            f"assert rt.stop({service!r}, 'blue') == [i.name for i in s]\n"
            f"assert [i.port for i in rt.resume({service!r}, 'blue')] == [i.port for i in s]\n"
            f"assert rt.set_aside({service!r}, 'blue', 'r2') and rt.restore_aside({service!r}, 'blue', 'r2')\n"
            f"assert rt.remove({service!r}, 'blue') == [i.name for i in s]\n"
            f"print(sorted(m for m in ('docker', 'requests', 'urllib3') if m in sys.modules))\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              cwd=Path(__file__).resolve().parents[2])
    finally:
        _remove_service_containers(service)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.integration
@pytest.mark.parametrize("via_sdk", [False, True], ids=["local", "sdk"])
def test_docker_every_method_tolerates_containers_that_vanish(docker_harness, via_sdk):
    """While the engine creates and removes labelled containers (test suites of this service,
    instances of another service), every method answers right, and none of them fails."""
    h = docker_harness
    if via_sdk:
        h.runtime.close()
        h.runtime = SdkDockerRuntime()
    rt, svc = h.runtime, h.service
    blue = [f"{svc}-blue-1", f"{svc}-blue-2"]
    with Churn(h.image, svc) as churn:
        for n in range(3):
            old, new = f"r{2 * n + 1}", f"r{2 * n + 2}"
            started = rt.start(h.request("blue", old, replicas=2))
            assert [i.name for i in started] == blue
            assert rt.instances(svc) == started
            assert [i.id for i in rt.start(h.request("blue", old, replicas=2))] == [i.id for i in started]
            rt.wait_healthy(started, "/health", timeout=10)
            assert rt.stop(svc, "blue") == blue
            assert rt.set_aside(svc, "blue", new) == [f"{b}.aside-{new}" for b in blue]
            fresh = rt.start(h.request("blue", new, replicas=2))
            assert [(i.name, i.release) for i in rt.instances(svc)] == [(b, new) for b in blue]
            assert [i.name for i in rt.instances(svc, include_aside=True)] == sorted(
                blue + [f"{b}.aside-{new}" for b in blue])
            assert rt.stop(svc, "blue", release=new) == blue
            resumed = rt.resume(svc, "blue", release=new)
            assert [(i.name, i.port) for i in resumed] == [(i.name, i.port) for i in fresh]
            rt.wait_healthy(resumed, "/health", timeout=10)
            assert rt.remove(svc, "blue", release=new) == blue
            assert rt.restore_aside(svc, "blue", new) == blue
            back = rt.instances(svc)
            assert [(i.name, i.release, i.id, i.running) for i in back] == [
                (i.name, old, i.id, False) for i in started]
            assert rt.resume(svc, "blue", release=old) == rt.instances(svc)
            assert rt.remove(svc, "blue", aside=True) == []
            assert rt.remove(svc, "blue") == blue
            assert rt.instances(svc, include_aside=True) == []
    assert churn.done > churn.warm_up and churn.errors == []
    assert rt.instances(churn.other, include_aside=True) == []


@pytest.mark.integration
def test_docker_start_on_a_network(docker_harness):
    h = docker_harness
    client = _docker_client()
    network = client.networks.create(f"cdlibt-net-{secrets.token_hex(3)}")
    try:
        started = h.runtime.start(h.request(replicas=1, network=network.name))
        attrs = client.containers.get(started[0].name).attrs
        assert list(attrs["NetworkSettings"]["Networks"]) == [network.name]
        h.runtime.wait_healthy(started, "/health", timeout=10)
    finally:
        _remove_service_containers(h.service)
        network.remove()
        client.close()


@pytest.mark.integration
def test_docker_build_failure_reports_the_last_error_line():
    tmp = Path(tempfile.mkdtemp(prefix="cdlibt-ctx-"))
    try:
        shutil.copy2("/bin/busybox", tmp / "busybox")
        (tmp / "Dockerfile").write_text('FROM scratch\nCOPY busybox /bin/busybox\n'
                                        'RUN ["/bin/busybox", "sh", "-c", "echo broken-step >&2; exit 3"]\n')
        with pytest.raises(RuntimeBackendError, match="returned a non-zero code: 3") as err:
            DockerRuntime().build_image(str(tmp), "Dockerfile", [f"cdlibt-broken:{secrets.token_hex(3)}"])
        assert "\n" not in str(err.value)
        with pytest.raises(RuntimeBackendError, match="not a directory"):
            DockerRuntime().build_image(str(tmp / "missing"), "Dockerfile", ["cdlibt-broken:x"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.integration
def test_docker_build_tags_every_tag(docker_web_image):
    client = _docker_client()
    tags = [f"cdlibt-web:{secrets.token_hex(3)}", f"cdlibt-web-alias:{secrets.token_hex(3)}"]
    try:
        tmp = Path(tempfile.mkdtemp(prefix="cdlibt-ctx-"))
        try:
            write_context(tmp, "v2")
            image_id = DockerRuntime().build_image(str(tmp), "Dockerfile", tags, {"CDLIB_TAG": "v2"})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        assert image_id.startswith("sha256:")
        assert {client.images.get(t).id for t in tags} == {image_id}
    finally:
        for t in tags:
            with contextlib.suppress(docker.errors.ImageNotFound):  # the build may not have made it
                client.images.remove(t, force=True)
        client.close()


@pytest.mark.integration
def test_docker_push_then_pull_when_missing(docker_harness):
    h = docker_harness
    client = _docker_client()
    with private_registry() as registry:
        ref = f"{registry}/cdlibt-web:{secrets.token_hex(3)}"
        client.images.get(h.image).tag(ref)
        try:
            digest = h.runtime.push_image(ref)
            repo, tag = ref.split("/", 1)[1].rsplit(":", 1)
            manifest = urllib.request.Request(
                f"http://{registry}/v2/{repo}/manifests/{tag}", method="HEAD",
                headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
            with urllib.request.urlopen(manifest, timeout=5) as resp:
                assert resp.headers["Docker-Content-Digest"] == digest
            client.images.remove(ref)  # start must pull it back from the registry
            started = h.runtime.start(StartRequest(service=h.service, color="blue", release="r1", image=ref,
                                                   port=PORT, replicas=1, stop_timeout=2))
            assert started[0].image == ref
            h.runtime.wait_healthy(started, "/health", timeout=10)
            missing = f"{registry}/cdlibt-nothing:{secrets.token_hex(3)}"
            with pytest.raises(RuntimeBackendError, match=f"pull image {missing}"):
                h.runtime.start(StartRequest(service=h.service, color="green", release="r1", image=missing,
                                             port=PORT, replicas=1))
        finally:
            _remove_service_containers(h.service)
            with contextlib.suppress(docker.errors.ImageNotFound):  # removed by the test already
                client.images.remove(ref, force=True)
            client.close()


@pytest.mark.integration
def test_docker_push_to_an_absent_registry_fails_clearly(docker_web_image):
    client = _docker_client()
    ref = f"127.0.0.1:{free_port()}/cdlibt-web:{secrets.token_hex(3)}"
    client.images.get(docker_web_image).tag(ref)
    try:
        with pytest.raises(RuntimeBackendError, match=f"push of {ref} failed"):
            DockerRuntime().push_image(ref)
    finally:
        client.images.remove(ref, force=True)
        client.close()


@pytest.mark.integration
def test_docker_push_failure_with_registry_credentials_does_not_show_them(docker_web_image, monkeypatch):
    monkeypatch.setenv("CDLIB_REGISTRY_USER", "cdlibt-user")
    monkeypatch.setenv("CDLIB_REGISTRY_PASSWORD", "cdlibt-s3cret-pw")
    client = _docker_client()
    ref = f"127.0.0.1:{free_port()}/cdlibt-web:{secrets.token_hex(3)}"
    client.images.get(docker_web_image).tag(ref)
    try:
        with pytest.raises(RuntimeBackendError) as err:
            DockerRuntime().push_image(ref)
        assert "cdlibt-s3cret-pw" not in str(err.value) and "cdlibt-s3cret-pw" not in json.dumps(err.value.data)
    finally:
        client.images.remove(ref, force=True)
        client.close()


# -- Docker: errors are translated ---------------------------------------------------------------------
def test_docker_unreachable_engine_raises_runtime_backend_error():
    rt = DockerRuntime(docker_host="unix:///nonexistent.sock", timeout=2)
    with pytest.raises(RuntimeBackendError, match="cannot reach unix:///nonexistent.sock") as err:
        rt.instances("cdlibt-x")
    assert "check DOCKER_HOST" in str(err.value)
    assert err.value.__cause__ is not None
    assert not isinstance(err.value, docker.errors.DockerException)
    for call in (lambda: rt.start(StartRequest("cdlibt-x", "blue", "r1", "cdlibt-web:1", PORT, 1)),
                 lambda: rt.stop("cdlibt-x", "blue"), lambda: rt.push_image("cdlibt-web:1")):
        with pytest.raises(RuntimeBackendError, match="cannot reach"):
            call()


def test_docker_unreachable_tcp_host_hides_the_password():
    rt = DockerRuntime(docker_host=f"tcp://cdlibt:s3cret@127.0.0.1:{free_port()}", timeout=2)
    assert rt.describe().startswith("tcp://cdlibt@127.0.0.1:")
    with pytest.raises(RuntimeBackendError) as err:
        rt.instances("cdlibt-x")
    assert "s3cret" not in str(err.value)


def test_registry_credentials_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("CDLIB_REGISTRY_USER", raising=False)
    monkeypatch.delenv("CDLIB_REGISTRY_PASSWORD", raising=False)
    assert _auth_config() is None
    monkeypatch.setenv("CDLIB_REGISTRY_USER", "ci")
    assert _auth_config() is None  # a user without a password is not a credential
    monkeypatch.setenv("CDLIB_REGISTRY_PASSWORD", "pw")
    assert _auth_config() == {"username": "ci", "password": "pw"}


def test_redact_host():
    assert redact_host("ssh://deploy:pw@build-1:22") == "ssh://deploy@build-1:22"
    assert redact_host("unix:///var/run/docker.sock") == "unix:///var/run/docker.sock"
    assert redact_host("tcp://10.0.0.5:2376") == "tcp://10.0.0.5:2376"


# -- Docker: a stream that breaks off mid-answer -----------------------------------------------------
class _BrokenEngine:
    """Just enough of the Engine API on a loopback port for the SDK to connect (``/version``,
    ``/_ping``); the streamed answers of build and push then stall, are cut mid-chunk, or end in
    half a JSON object. These are read straight from urllib3, not through requests."""

    def __init__(self, mode: str):
        self.mode = mode
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.05)  # accept() wakes up to see close()
        self.url = f"tcp://127.0.0.1:{self.server.getsockname()[1]}"
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._accept, name="cdlibt-engine", daemon=True)]
        self.threads[0].start()

    def close(self) -> None:
        self.stop.set()
        self.server.close()
        for t in self.threads:
            t.join(5)

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            t = threading.Thread(target=self._serve, args=(conn,), name="cdlibt-engine-conn", daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as f:
            while not self.stop.is_set():
                line = f.readline()
                if not line:
                    return
                headers = {}
                while (h := f.readline()) not in (b"\r\n", b""):
                    name, _, value = h.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                self._read_body(f, headers)
                path = line.split()[1].decode()
                if "/build" in path or "/push" in path:
                    self._broken_stream(conn)
                    return
                body = json.dumps({"ApiVersion": "1.41", "Version": "20.10.24"}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)

    @staticmethod
    def _read_body(f, headers: dict) -> None:
        if headers.get("transfer-encoding") == "chunked":
            while (size := int(f.readline().strip() or b"0", 16)) > 0:
                f.read(size + 2)
            f.readline()
        elif headers.get("content-length"):
            f.read(int(headers["content-length"]))

    def _broken_stream(self, conn: socket.socket) -> None:
        first = b'{"stream":"Step 1/1"}\r\n'
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + f"{len(first):x}\r\n".encode() + first + b"\r\n")
        if self.mode == "stall":
            self.stop.wait(5)
        elif self.mode == "cut":
            conn.sendall(b"40\r\n{\"stream\":")
        else:  # half a JSON object, then the end of the stream
            conn.sendall(b'a\r\n{"stream":\r\n0\r\n\r\n')


@pytest.mark.parametrize("operation, mode", [("push", "stall"), ("push", "cut"), ("push", "half-json"),
                                             ("build", "cut"), ("build", "half-json")])
def test_docker_a_stream_that_breaks_off_is_a_runtime_backend_error(tmp_path, operation, mode):
    engine = _BrokenEngine(mode)
    rt = DockerRuntime(docker_host=engine.url, timeout=1)
    try:
        with pytest.raises(RuntimeBackendError, match=f"docker runtime: {operation}") as err:
            if operation == "push":
                rt.push_image("127.0.0.1:5999/cdlibt-web:1")
            else:
                (tmp_path / "Dockerfile").write_text("FROM scratch\n")
                rt.build_image(str(tmp_path), "Dockerfile", ["cdlibt-web:broken"])
        assert err.value.__cause__ is not None
        assert "\n" not in str(err.value)
    finally:
        rt.close()
        engine.close()


# -- Swarm only: the exact spec through every undo, interrupted calls, scaling ---------------------------
@pytest.fixture
def swarm_harness(swarm_manager, docker_web_image):  # noqa: F811 - the fixture
    service = f"cdlibsw-rt-{secrets.token_hex(3)}"
    runtime = SwarmRuntime()
    try:
        yield Harness("swarm", runtime, docker_web_image, service, stable_ports=False)
    finally:
        runtime.close()
        remove_swarm_objects(service)


def _spec(name: str) -> dict:
    client = _docker_client()
    try:
        return client.api.inspect_service(name)["Spec"]
    finally:
        client.close()


def _aside_configs(service: str) -> list[str]:
    client = _docker_client()
    try:
        return sorted(c["Spec"]["Name"] for c in client.api.configs(filters={"label": f"{LABEL_SERVICE}={service}"}))
    finally:
        client.close()


@pytest.mark.integration
def test_swarm_stop_resume_set_aside_and_restore_give_back_the_exact_spec(swarm_harness):
    h = swarm_harness
    rt, svc, name = h.runtime, h.service, f"{h.service}-blue"
    rt.start(h.request(replicas=2, env=(("GREETING", "hi"),), labels=(("team", "web"),)))
    before = _spec(name)
    assert before["TaskTemplate"]["ContainerSpec"]["Image"] == h.image
    assert before["Mode"] == {"Replicated": {"Replicas": 2}}
    assert before["EndpointSpec"]["Mode"] == "dnsrr"
    rt.stop(svc, "blue")
    stopped = _spec(name)
    assert stopped["Mode"] == {"Replicated": {"Replicas": 0}} and stopped["Labels"] == before["Labels"]
    rt.resume(svc, "blue")
    assert _spec(name) == before
    rt.stop(svc, "blue")
    assert rt.set_aside(svc, "blue", "r2") == [f"{name}-1.aside-r2", f"{name}-2.aside-r2"]
    assert _aside_configs(svc) == [f"{name}.aside-r2"]
    assert rt.instances(svc) == []
    assert rt.restore_aside(svc, "blue", "r2") == [f"{name}-1", f"{name}-2"]
    assert _spec(name) == stopped
    assert _aside_configs(svc) == []
    assert [i.running for i in rt.resume(svc, "blue")] == [True, True]
    assert _spec(name) == before


@pytest.mark.integration
def test_swarm_set_aside_and_restore_interrupted_between_two_calls_are_finished_by_the_next(swarm_harness,
                                                                                        monkeypatch):
    h = swarm_harness
    rt, svc, name = h.runtime, h.service, f"{h.service}-blue"
    rt.start(h.request(replicas=1))
    before = _spec(name)
    api = rt._api
    real_remove_service, real_remove_config = api.remove_service, api.remove_config

    def killed(*args, **kw):
        raise RuntimeBackendError("killed here")
    # set aside: the spec is saved and the service scaled to 0 (to be removed once its tasks are
    # reaped), then the process dies before the service is removed
    monkeypatch.setattr(api, "remove_service", killed)
    with pytest.raises(RuntimeBackendError, match="killed here"):
        rt.set_aside(svc, "blue", "r2")
    assert _aside_configs(svc) == [f"{name}.aside-r2"]
    assert _spec(name)["Mode"] == {"Replicated": {"Replicas": 0}}
    # a rollback at that point gives the service its exact spec back
    assert rt.restore_aside(svc, "blue", "r2") == [f"{name}-1"]
    assert _aside_configs(svc) == [] and _spec(name) == before
    with pytest.raises(RuntimeBackendError, match="killed here"):
        rt.set_aside(svc, "blue", "r2")
    assert _aside_configs(svc) == [f"{name}.aside-r2"]
    monkeypatch.setattr(api, "remove_service", real_remove_service)
    assert rt.set_aside(svc, "blue", "r2") == [f"{name}-1.aside-r2"]  # the next call finishes it
    # restore: the service is back, then the process dies before the saved spec is deleted
    monkeypatch.setattr(api, "remove_config", killed)
    with pytest.raises(RuntimeBackendError, match="killed here"):
        rt.restore_aside(svc, "blue", "r2")
    assert _spec(name) == before
    monkeypatch.setattr(api, "remove_config", real_remove_config)
    assert rt.restore_aside(svc, "blue", "r2") == [f"{name}-1"]
    assert _aside_configs(svc) == [] and _spec(name) == before
    assert rt.restore_aside(svc, "blue", "r2") == []


@pytest.mark.integration
def test_swarm_scale_changes_the_count_a_resume_brings_back(swarm_harness):
    h = swarm_harness
    rt, svc, name = h.runtime, h.service, f"{h.service}-blue"
    req = h.request(replicas=1)
    rt.start(req)
    up = rt.scale(req, 3)
    assert [i.name for i in up] == [f"{name}-1", f"{name}-2", f"{name}-3"] and all(i.running for i in up)
    assert _spec(name)["Labels"]["cdlib.replicas"] == "3"
    assert rt.doomed(svc, "blue", 2) == [f"{name}-3"]
    down = rt.scale(req, 2)
    assert len(down) == 2 and all(i.running and i.port for i in down)
    assert rt.discard(svc, "blue", [f"{name}-3"]) == []
    rt.wait_healthy(down, "/health", timeout=10)
    rt.stop(svc, "blue")
    assert len(rt.resume(svc, "blue")) == 2
