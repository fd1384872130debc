"""One behavioural suite for every test runner, so the in-memory fake stays honest.

The same expectations run against MemoryRunner (scripted), CommandRunner (a busybox script on the
agent) and ContainerRunner (the same script in a ``FROM scratch`` test image; needs dockerd, marked
integration). The script prints the environment it sees, checks ``TEST_TYPE`` against what its
suite expects, fetches ``TARGET_URL`` from a tiny HTTP server this module runs on 127.0.0.1, writes a
JUnit file of its own into ``JUNIT_DIR`` and exits with the code its suite asks for. Each test works
on its own service name (``cdlibt-tr-<random>``); test containers are removed through the Docker
SDK directly, not through the code under test, and the image is removed at the end.
"""

from __future__ import annotations

import http.server
import json
import secrets
import shutil
import socket
import stat
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cdlib.config import SuiteSpec
from cdlib.errors import TestRunnerError
from cdlib.model import TEST_TYPES
from cdlib.testrun.base import TestRun, TestRunner
from cdlib.testrun.command import CommandRunner
from cdlib.testrun.container import LABEL, ContainerRunner
from cdlib.testrun.memory import MemoryRunner
from tests.support.registry import free_port

BUSYBOX = "/bin/busybox"
ENV_MARK = "cdlibt-env "
TARGET_TEXT = "cdlibt-target-answer"

SUITE_SCRIPT = f"""\
#!/bin/busybox sh
bb=/bin/busybox
for name in TEST_TYPE TARGET_URL CDLIB_SERVICE CDLIBT_SUITE_ENV CDLIBT_RUN_ENV CDLIBT_PASSED CDLIBT_HOST_ONLY; do
  eval "echo \\"{ENV_MARK}$name=\\$$name\\""
done
if [ "$TEST_TYPE" != "$CDLIBT_EXPECT_TYPE" ]; then echo "cdlibt: wrong TEST_TYPE $TEST_TYPE"; exit 5; fi
if [ -n "$CDLIBT_LINES" ]; then
  i=1; while [ "$i" -le "$CDLIBT_LINES" ]; do echo "cdlibt-line $i"; i=$((i + 1)); done
fi
if [ -n "$CDLIBT_SLEEP" ]; then $bb sleep "$CDLIBT_SLEEP"; fi
if [ -n "$TARGET_URL" ]; then
  body=$($bb wget -q -O - "$TARGET_URL") || {{ echo "cdlibt: cannot fetch $TARGET_URL"; exit 3; }}
  case "$body" in
    *{TARGET_TEXT}*) echo "cdlibt: target answered" ;;
    *) echo "cdlibt: unexpected answer from $TARGET_URL"; exit 4 ;;
  esac
fi
if [ -n "$JUNIT_DIR" ]; then
  echo '<testsuite name="cdlibt.own" tests="1" failures="0"><testcase classname="cdlibt" name="own"/></testsuite>' \\
    > "$JUNIT_DIR/cdlibt-own.xml"
fi
exit "${{CDLIBT_EXIT:-0}}"
"""

DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
COPY suite.sh /suite.sh
CMD ["/suite.sh"]
"""




# -- the target the suites test ------------------------------------------------------------------
class Target:
    """An HTTP server on 127.0.0.1 that answers ``/`` and counts the requests it served."""

    def __init__(self):
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the name http.server calls
                hits.append(self.path)
                body = f"{TARGET_TEXT}\n".encode() if self.path == "/" else b"not here\n"
                self.send_response(200 if self.path == "/" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def target():
    server = Target()
    yield server
    server.close()


# -- the suite: a script on disk and the same script in an image --------------------------------
@pytest.fixture(scope="module")
def script_dir():
    directory = Path(tempfile.mkdtemp(prefix="cdlibt-suite-"))
    script = directory / "suite.sh"
    script.write_text(SUITE_SCRIPT)
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    shutil.copy2(BUSYBOX, directory / "busybox")
    (directory / "Dockerfile").write_text(DOCKERFILE)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _docker_client():
    import docker

    return docker.from_env()


@pytest.fixture(scope="module")
def test_image(script_dir):
    tag = f"cdlibt-testrun:{secrets.token_hex(4)}"
    client = _docker_client()
    try:
        client.images.build(path=str(script_dir), tag=tag, rm=True, forcerm=True)
        yield tag
    finally:
        try:
            client.images.remove(tag, force=True)
        finally:
            client.close()


def _test_containers(service: str) -> list:
    client = _docker_client()
    try:
        return client.containers.list(all=True, filters={"label": f"cdlib.service={service}"})
    finally:
        client.close()


def _remove_test_containers(service: str) -> None:
    for container in _test_containers(service):
        container.remove(force=True)


# -- one harness per adapter ----------------------------------------------------------------------
@dataclass
class Harness:
    kind: str
    runner: TestRunner
    service: str
    script_dir: Path
    image: str | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def executes(self) -> bool:
        """Whether a real suite runs (and so really fetches the target and writes its own report)."""
        return self.kind != "memory"

    def suite(self, type_: str = "pre-integration", *, exit_code: int = 0, form: str = "list",
              sleep: float | None = None, lines: int | None = None, timeout: float = 60.0,
              unstable: bool = False) -> SuiteSpec:
        env = {"CDLIBT_EXPECT_TYPE": type_, "CDLIBT_EXIT": str(exit_code), "CDLIBT_SUITE_ENV": "from-suite"}
        if sleep is not None:
            env["CDLIBT_SLEEP"] = str(sleep)
        if lines is not None:
            env["CDLIBT_LINES"] = str(lines)
        if self.kind == "memory":
            self.runner.results[type_] = "timeout" if sleep is not None and sleep > timeout else exit_code
            if lines is not None:
                self.runner.outputs[type_] = "\n".join(f"cdlibt-line {i}" for i in range(1, lines + 1))
        return SuiteSpec(type=type_, command=self._command(form), timeout=timeout, unstable=unstable,
                         env=tuple(sorted(env.items())), workdir=self.script_dir)

    def _command(self, form: str):
        if self.kind == "container":
            return ("/suite.sh",) if form == "list" else "/bin/busybox sh /suite.sh"
        return (str(self.script_dir / "suite.sh"),) if form == "list" else "./suite.sh"

    def run(self, suite: SuiteSpec, target_url: str, junit_path: Path | None = None) -> TestRun:
        return TestRun(service=self.service, suite=suite, target_url=target_url,
                       env=(("CDLIBT_RUN_ENV", "from-run"),), junit_path=junit_path, image=self.image)

    def seen(self, result) -> dict[str, str]:
        """The environment the suite saw: what the script printed, or what the fake recorded."""
        if self.kind == "memory":
            return self.runner.runs[-1].environment()
        seen = {}
        for line in result.output.splitlines():
            if line.startswith(ENV_MARK):
                name, _, value = line[len(ENV_MARK):].partition("=")
                seen[name] = value
        return seen

    def unstartable(self) -> tuple[TestRun, str]:
        """A run of a suite that cannot be started at all, and what the error must say."""
        suite = self.suite()
        if self.kind == "memory":
            self.runner.results[suite.type] = TestRunnerError("suite pre-integration: cdlibt scripted failure")
            return self.run(suite, ""), "cdlibt scripted failure"
        if self.kind == "command":
            missing = SuiteSpec(type=suite.type, command=("cdlibt-no-such-program", "--flag"),
                                workdir=self.script_dir)
            return self.run(missing, ""), "suite pre-integration .*'cdlibt-no-such-program' not found"
        image = f"127.0.0.1:{free_port()}/cdlibt-missing:{secrets.token_hex(3)}"
        run = TestRun(service=self.service, suite=suite, target_url="", image=image)
        return run, f"test image {image} not found locally and cannot be pulled"


@pytest.fixture(params=["memory", "command", pytest.param("container", marks=pytest.mark.integration)])
def harness(request, script_dir):
    service = f"cdlibt-tr-{secrets.token_hex(4)}"
    lines: list[str] = []
    if request.param == "memory":
        yield Harness("memory", MemoryRunner(), service, script_dir)
        return
    if request.param == "command":
        yield Harness("command", CommandRunner(on_output=lines.append), service, script_dir, lines=lines)
        return
    image = request.getfixturevalue("test_image")
    try:
        yield Harness("container", ContainerRunner(on_output=lines.append), service, script_dir,
                      image=image, lines=lines)
    finally:
        leftovers = _test_containers(service)
        _remove_test_containers(service)
    assert leftovers == [], "the runner left test containers behind"


# -- contract -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["list", "string"])
def test_a_passing_suite_sees_its_environment_and_reaches_the_target(harness, target, form):
    hits_before = len(target.hits)
    result = harness.runner.run(harness.run(harness.suite(form=form), target.url))

    assert (result.suite, result.passed, result.exit_code) == ("pre-integration", True, 0), result.output
    assert result.target_url == target.url
    assert result.duration >= 0 and result.junit_path is None and not result.unstable_ok
    seen = harness.seen(result)
    assert seen["TEST_TYPE"] == "pre-integration"
    assert seen["TARGET_URL"] == target.url
    assert seen["CDLIB_SERVICE"] == harness.service
    assert seen["CDLIBT_SUITE_ENV"] == "from-suite"
    assert seen["CDLIBT_RUN_ENV"] == "from-run"
    if harness.executes:
        assert "cdlibt: target answered" in result.output
        assert target.hits[hits_before:] == ["/"]
        assert "cdlibt: target answered" in harness.lines  # streamed as well as kept


def test_a_suite_gets_its_pass_env_and_nothing_else_of_the_agent_and_its_values_are_masked(
        harness, target, tmp_path, monkeypatch):
    from dataclasses import replace

    from cdlib import secrets as secret_values

    monkeypatch.setenv("CDLIBT_PASSED", "cdlibt-passed-s3cret")
    monkeypatch.setenv("CDLIBT_HOST_ONLY", "cdlibt-host-only")
    suite = replace(harness.suite(), pass_env=("CDLIBT_PASSED", "CDLIBT_NOT_SET"))
    reports = tmp_path / "reports"
    try:
        result = harness.runner.run(harness.run(suite, target.url, reports))
        assert result.passed, result.output
        seen = harness.seen(result)
        assert seen.get("CDLIBT_HOST_ONLY", "") == ""  # not inherited
        assert "CDLIBT_NOT_SET" not in seen
        if harness.executes:
            # the suite saw the value and printed it; what cdlib kept, streamed and wrote is masked
            assert seen["CDLIBT_PASSED"] == "***"
            assert "cdlibt-passed-s3cret" not in result.output + "\n".join(harness.lines)
            assert f"{ENV_MARK}CDLIBT_PASSED=***" in harness.lines
        else:
            assert seen["CDLIBT_PASSED"] == "cdlibt-passed-s3cret"
        assert "cdlibt-passed-s3cret" in secret_values.values()
        summary = Path(result.junit_path).read_text()
        assert "cdlibt-passed-s3cret" not in summary
    finally:
        secret_values.reset()


@pytest.mark.parametrize("suite_type", TEST_TYPES)
def test_every_suite_type_is_passed_through(harness, target, suite_type):
    url = "" if suite_type == "pre-deployment" else target.url
    result = harness.runner.run(harness.run(harness.suite(suite_type), url))
    assert result.passed and result.suite == suite_type, result.output
    assert harness.seen(result)["TEST_TYPE"] == suite_type
    assert harness.seen(result)["TARGET_URL"] == url


def test_a_failing_suite_reports_its_exit_code(harness, target):
    result = harness.runner.run(harness.run(harness.suite(exit_code=3, unstable=True), target.url))
    assert (result.passed, result.exit_code) == (False, 3)
    assert result.unstable_ok is True


def test_a_suite_past_its_timeout_is_killed_and_reported(harness, target):
    started = time.monotonic()
    result = harness.runner.run(harness.run(harness.suite(sleep=30, timeout=1), target.url))
    assert (result.passed, result.exit_code) == (False, 124)
    assert "timed out after 1s" in result.output
    assert time.monotonic() - started < 15


def test_only_the_tail_of_the_output_is_kept(harness, target):
    result = harness.runner.run(harness.run(harness.suite(lines=300), target.url))
    assert result.passed, result.output
    kept = result.output.splitlines()
    assert len(kept) <= 200
    assert "cdlibt-line 300" in kept
    assert "cdlibt-line 100" not in kept


def test_junit_reports_are_written_and_the_suites_own_are_kept(harness, target, tmp_path):
    report_dir = tmp_path / "junit"
    report_dir.mkdir()
    (report_dir / "earlier.xml").write_text("<testsuite name='earlier' tests='0'/>")
    result = harness.runner.run(harness.run(harness.suite(exit_code=2), target.url, junit_path=report_dir))

    summary = report_dir / f"cdlib-{harness.service}-pre-integration.xml"
    assert result.junit_path == str(summary)
    root = ET.parse(summary).getroot()
    suite_el = root.find("testsuite")
    assert suite_el.get("name") == f"cdlib.{harness.service}.pre-integration"
    assert (suite_el.get("tests"), suite_el.get("failures"), suite_el.get("errors")) == ("1", "1", "0")
    case = suite_el.find("testcase")
    assert (case.get("classname"), case.get("name")) == (f"cdlib.{harness.service}", "pre-integration")
    assert case.find("failure").get("message") == "exit code 2"
    assert (report_dir / "earlier.xml").exists()
    if harness.executes:
        assert harness.seen(result)["TEST_TYPE"] == "pre-integration"
        own = ET.parse(report_dir / "cdlibt-own.xml").getroot()
        assert own.get("name") == "cdlibt.own"


def test_a_suite_that_cannot_start_raises(harness):
    run, message = harness.unstartable()
    with pytest.raises(TestRunnerError, match=message):
        harness.runner.run(run)


# -- container only -------------------------------------------------------------------------------------
@pytest.fixture
def container_service():
    service = f"cdlibt-tr-{secrets.token_hex(4)}"
    yield service
    _remove_test_containers(service)


def _suite(command=None, **env) -> SuiteSpec:
    env.setdefault("CDLIBT_EXPECT_TYPE", "post-integration")
    return SuiteSpec(type="post-integration", command=command, env=tuple(sorted(env.items())), timeout=60)


@pytest.mark.integration
def test_container_runs_the_image_default_command_with_labels_and_init(test_image, target, container_service):
    seen: list[dict] = []
    runner = ContainerRunner()
    original = runner._create

    def spy(client, image, command, env, name, run):
        container = original(client, image, command, env, name, run)
        container.reload()
        seen.append({"name": container.name, "labels": container.labels,
                     "init": container.attrs["HostConfig"].get("Init"),
                     "network": container.attrs["HostConfig"].get("NetworkMode"),
                     "cmd": container.attrs["Config"].get("Cmd")})
        return container

    runner._create = spy
    result = runner.run(TestRun(container_service, _suite(), target.url, image=test_image))
    assert result.passed, result.output
    assert len(seen) == 1
    assert seen[0]["name"].startswith(f"cdlib-test-{container_service}-post-integration-")
    assert seen[0]["labels"][LABEL] == "1"
    assert (seen[0]["init"], seen[0]["network"], seen[0]["cmd"]) == (True, "host", ["/suite.sh"])
    assert _test_containers(container_service) == []


@pytest.mark.integration
def test_container_falls_back_to_the_suite_image(test_image, target, container_service):
    from cdlib.config import ImageSpec

    repo, _, tag = test_image.partition(":")
    suite = SuiteSpec(type="post-integration", image=ImageSpec(repo, tag),
                      env=(("CDLIBT_EXPECT_TYPE", "post-integration"),))
    result = ContainerRunner().run(TestRun(container_service, suite, target.url))
    assert result.passed, result.output
    assert "cdlibt: target answered" in result.output


@pytest.mark.integration
def test_container_on_a_bridge_network_cannot_reach_the_hosts_loopback(test_image, target, container_service):
    runner = ContainerRunner(network="bridge")
    result = runner.run(TestRun(container_service, _suite(), target.url, image=test_image))
    assert (result.passed, result.exit_code) == (False, 3)
    assert f"cdlibt: cannot fetch {target.url}" in result.output


@pytest.mark.integration
def test_container_is_removed_when_the_caller_is_interrupted(test_image, target, container_service):
    runner = ContainerRunner()

    def interrupted(container, run):
        assert len(_test_containers(container_service)) == 1
        raise KeyboardInterrupt

    runner._wait = interrupted
    with pytest.raises(KeyboardInterrupt):
        runner.run(TestRun(container_service, _suite(CDLIBT_SLEEP="30"), target.url, image=test_image))
    assert _test_containers(container_service) == []


@pytest.mark.integration
def test_container_command_that_cannot_be_split_is_refused(test_image, container_service):
    with pytest.raises(TestRunnerError, match="cannot split the command"):
        ContainerRunner().run(TestRun(container_service, _suite("/suite.sh 'unclosed"), "", image=test_image))
    assert _test_containers(container_service) == []


@pytest.mark.integration
def test_container_runner_without_an_engine_raises(container_service, tmp_path):
    runner = ContainerRunner(docker_host=f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(TestRunnerError, match="cannot reach the Docker engine"):
        runner.run(TestRun(container_service, _suite(), "", image="cdlibt-any:1"))


def test_container_runner_keeps_a_password_in_the_host_url_out_of_messages(container_service):
    runner = ContainerRunner(docker_host=f"tcp://cdlibt:cdlibt-secret@127.0.0.1:{free_port()}")
    assert "cdlibt-secret" not in repr(runner)
    with pytest.raises(TestRunnerError, match="cannot reach the Docker engine") as caught:
        runner.run(TestRun(container_service, _suite(), "", image="cdlibt-any:1"))
    assert "cdlibt-secret" not in str(caught.value)
    assert "cdlibt@127.0.0.1" in str(caught.value)


@pytest.mark.integration
def test_container_anonymous_volumes_go_with_the_container(test_image, target, container_service, tmp_path):
    """An image with a VOLUME line gets an anonymous volume per run: it is removed with the container."""
    tag = f"cdlibt-testrun-volume:{secrets.token_hex(4)}"
    (tmp_path / "Dockerfile").write_text(f"FROM {test_image}\nVOLUME /cdlibt-data\n")
    client = _docker_client()
    volumes: list[str] = []
    runner = ContainerRunner()
    original = runner._create

    def spy(client_, image, command, env, name, run):
        container = original(client_, image, command, env, name, run)
        container.reload()
        volumes.extend(m["Name"] for m in container.attrs["Mounts"] if m.get("Type") == "volume")
        return container

    runner._create = spy
    try:
        client.images.build(path=str(tmp_path), tag=tag, rm=True, forcerm=True)
        result = runner.run(TestRun(container_service, _suite(), target.url, image=tag))
        assert result.passed, result.output
        assert len(volumes) == 1
        assert client.volumes.list(filters={"name": volumes[0]}) == []
    finally:
        for name in volumes:
            for volume in client.volumes.list(filters={"name": name}):
                volume.remove(force=True)
        client.images.remove(tag, force=True)
        client.close()


@pytest.mark.integration
def test_container_created_but_answer_lost_is_removed(test_image, target, container_service):
    """The engine created the container but its answer never arrived: nothing is left behind."""
    import requests

    runner = ContainerRunner()
    original = runner._create

    def lost(client, image, command, env, name, run):
        original(client, image, command, env, name, run)
        raise requests.exceptions.ReadTimeout("cdlibt: the answer was lost")

    runner._create = lost
    with pytest.raises(TestRunnerError, match="cannot start the test image"):
        runner.run(TestRun(container_service, _suite(), target.url, image=test_image))
    assert _test_containers(container_service) == []


class _CutPullEngine:
    """Enough of the Engine API for the SDK to connect; the test image is missing, and the pull's
    streamed answer is cut mid-chunk (read straight from urllib3, not wrapped by requests)."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.05)
        self.url = f"tcp://127.0.0.1:{self.server.getsockname()[1]}"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, name="cdlibt-engine", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.server.close()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            with conn, conn.makefile("rb") as f:
                self._serve(conn, f)

    @staticmethod
    def _serve(conn: socket.socket, f) -> None:
        while line := f.readline():
            length = 0
            while (header := f.readline()) not in (b"\r\n", b""):
                if header.lower().startswith(b"content-length:"):
                    length = int(header.split(b":", 1)[1])
            f.read(length)
            path = line.split()[1].decode()
            if "/images/create" in path:
                first = b'{"status":"Pulling"}\r\n'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(first):x}\r\n".encode() + first
                             + b"\r\n40\r\n{\"status\":")
                return
            status, body = ("404 Not Found", {"message": "No such image"}) if "/images/" in path else (
                "200 OK", {"ApiVersion": "1.41", "Version": "20.10.24"})
            data = json.dumps(body).encode()
            conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(data)}\r\n\r\n".encode() + data)


def test_container_pull_cut_off_is_a_test_runner_error(container_service):
    engine = _CutPullEngine()
    runner = ContainerRunner(docker_host=engine.url)
    try:
        with pytest.raises(TestRunnerError, match="cannot be pulled") as caught:
            runner.run(TestRun(container_service, _suite(), "", image="cdlibt-any:1"))
        assert caught.value.__cause__ is not None
    finally:
        runner.close()
        engine.close()


def test_container_runner_imports_docker_lazily():
    import subprocess
    import sys

    code = "import sys, cdlib.testrun.container, cdlib.testrun.command; print('docker' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- memory only ----------------------------------------------------------------------------------------
def test_memory_runner_scripts_results_per_suite_type_and_records_runs(tmp_path):
    runner = MemoryRunner(results={"pre-integration": False, "post-integration": 7}, default=True)
    pre = SuiteSpec(type="pre-integration", command="x", env=(("CDLIBT_A", "1"),))
    post = SuiteSpec(type="post-integration", command="x")
    deploy = SuiteSpec(type="pre-deployment", command="x")

    r1 = runner.run(TestRun("cdlibt-mem", pre, "http://127.0.0.1:1234/", junit_path=tmp_path))
    r2 = runner.run(TestRun("cdlibt-mem", post, "http://proxy/"))
    r3 = runner.run(TestRun("cdlibt-mem", deploy, ""))

    assert [(r.passed, r.exit_code) for r in (r1, r2, r3)] == [(False, 1), (False, 7), (True, 0)]
    assert runner.target_urls == ["http://127.0.0.1:1234/", "http://proxy/", ""]
    assert runner.environments[0] == {"CDLIBT_A": "1", "TARGET_URL": "http://127.0.0.1:1234/",
                                      "TEST_TYPE": "pre-integration", "CDLIB_SERVICE": "cdlibt-mem"}
    assert [r.suite.type for r in runner.runs_of("post-integration")] == ["post-integration"]
    assert r1.junit_path == str(tmp_path / "cdlib-cdlibt-mem-pre-integration.xml")
    assert ET.parse(r1.junit_path).getroot().find("testsuite").get("failures") == "1"


def test_memory_runner_refuses_a_script_it_cannot_play():
    runner = MemoryRunner(results={"pre-integration": "sometimes"})
    with pytest.raises(ValueError, match="cannot script"):
        runner.run(TestRun("cdlibt-mem", SuiteSpec(type="pre-integration", command="x"), ""))
