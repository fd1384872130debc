"""Run a suite as a test image (``tests.<type>.image`` in cdlib.yml) on a Docker engine.

The container joins the host network by default, so a ``TARGET_URL`` on 127.0.0.1 (the new color
published on loopback, or the local proxy) means the same inside the suite as on the agent. It runs
with an init process (a busybox or shell script as PID 1 would ignore SIGTERM), is labelled
``cdlib.test=1`` so a crashed agent's leftovers can be found, and is removed whatever happens,
Ctrl-C included. When a JUnit directory is asked for, the suite gets ``JUNIT_DIR`` inside the
container and the XML files it leaves there are copied out through the engine's archive API, which
works for remote engines too (a bind mount would name a path on the engine's host, not the agent).

The container's environment holds only the suite's own env, what cdlib sets for the run and the
``pass_env`` variables (see :mod:`cdlib.testrun.base`); nothing else of the agent's. Every line of
its output is masked (:mod:`cdlib.secrets`) before it is streamed or kept.
"""

from __future__ import annotations

import io
import secrets
import shlex
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from .. import secrets as secret_values
from ..errors import TestRunnerError
from ..model import TestResult
from ..redact import redact_url
from . import junit
from .base import TestRun, TestRunner

OutputCallback = Callable[[str], None]
CONTAINER_JUNIT_DIR = "/cdlib-junit"
LABEL = "cdlib.test"


def _redact(text: object) -> str:
    """Drop the password of any URL (ssh://user:secret@host -> ssh://user@host) from a message."""
    return redact_url(text)


def _engine_errors() -> tuple[type[BaseException], ...]:
    """What talking to the engine can raise. A streamed answer (a pull) is read straight from
    urllib3, so its timeouts and cut connections are not wrapped in requests' exceptions."""
    import docker
    import requests
    import urllib3

    return (docker.errors.DockerException, docker.errors.StreamParseError, requests.RequestException,
            urllib3.exceptions.HTTPError)


class ContainerRunner(TestRunner):
    """``on_output`` is called with each line as the suite prints it, from a log-following thread."""

    kind = "container"

    def __init__(self, docker_host: str | None = None, *, network: str | None = "host", init: bool = True,
                 on_output: OutputCallback | None = None, pull: bool = True,
                 tail_lines: int = junit.TAIL_LINES, kill_wait: float = 10.0):
        self.docker_host = docker_host  # None: DOCKER_HOST or the local engine
        self.network = network  # "host", a network name, or None for the engine's default bridge
        self.init = init
        self.on_output = on_output
        self.pull = pull
        self.tail_lines = tail_lines
        self.kill_wait = kill_wait
        self._client = None

    def __repr__(self) -> str:
        host = _redact(self.docker_host) if self.docker_host else None
        return f"ContainerRunner(docker_host={host!r}, network={self.network!r})"

    # -- engine ------------------------------------------------------------------------------
    def _where(self) -> str:
        if self.docker_host:
            return _redact(self.docker_host)
        return "the local engine (DOCKER_HOST or /var/run/docker.sock)"

    def _connect(self, timeout: float | None):
        import docker  # lazy: the CLI must not pay for it at start-up

        try:
            if self.docker_host:
                return docker.DockerClient(base_url=self.docker_host, timeout=timeout)  # type: ignore[arg-type]
            return docker.from_env(timeout=timeout)  # type: ignore[arg-type]  # the stubs say int; any number works
        except docker.errors.DockerException as exc:
            raise TestRunnerError(f"cannot reach the Docker engine at {self._where()}: {_redact(exc)}; "
                                  "check that dockerd runs and DOCKER_HOST / target.docker_host",
                                  docker_host=self._where()) from exc

    def close(self) -> None:
        """Close the connection to the engine (a later run opens a new one)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def _docker(self):
        if self._client is None:
            self._client = self._connect(timeout=60)
        return self._client

    def _fail(self, run: TestRun, what: str, exc: BaseException) -> TestRunnerError:
        explanation = _redact(getattr(exc, "explanation", None) or exc)
        return TestRunnerError(f"suite {run.suite.type} of {run.service}: {what}: {explanation}; "
                               f"check the Docker engine at {self._where()}", suite=run.suite.type)

    # -- preparing ---------------------------------------------------------------------------
    @staticmethod
    def _image_ref(run: TestRun) -> str:
        if run.image:
            return run.image
        if run.suite.image is not None:
            return run.suite.image.ref
        raise TestRunnerError(f"suite {run.suite.type} of {run.service} has no test image; "
                              f"set tests.{run.suite.type}.image in cdlib.yml", suite=run.suite.type)

    @staticmethod
    def _command(run: TestRun) -> list[str] | None:
        command = run.suite.command
        if command is None:
            return None  # the image's own ENTRYPOINT/CMD
        if isinstance(command, str):
            try:
                return shlex.split(command)
            except ValueError as exc:
                raise TestRunnerError(f"suite {run.suite.type} of {run.service}: cannot split the command "
                                      f"{command!r}: {exc}; check the quotes in tests.{run.suite.type}.command",
                                      suite=run.suite.type) from exc
        return [str(part) for part in command]

    def _ensure_image(self, client, run: TestRun, image: str) -> None:
        import docker

        try:
            client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        except _engine_errors() as exc:
            raise self._fail(run, f"cannot look up the test image {image}", exc) from exc
        if not self.pull:
            raise TestRunnerError(f"test image {image} not found locally and pulling is turned off; "
                                  "build or pull it first", suite=run.suite.type, image=image)
        try:
            client.images.pull(image)
        except _engine_errors() as exc:
            reason = _redact(getattr(exc, "explanation", None) or exc)
            raise TestRunnerError(f"test image {image} not found locally and cannot be pulled: {reason}",
                                  suite=run.suite.type, image=image) from exc

    # -- running -----------------------------------------------------------------------------
    def run(self, run: TestRun) -> TestResult:
        image = self._image_ref(run)
        command = self._command(run)
        client = self._docker()
        self._ensure_image(client, run, image)
        env = run.environment()
        report_dir = junit.prepare_dir(run)
        if report_dir is not None:
            env["JUNIT_DIR"] = CONTAINER_JUNIT_DIR
        name = f"cdlib-test-{run.service}-{run.suite.type}-{secrets.token_hex(4)}"

        started = time.time()
        clock = time.monotonic()
        container = None
        notes: list[str] = []
        try:
            try:
                container = self._create(client, image, command, env, name, run)
                if report_dir is not None:
                    container.put_archive("/", _directory_tar(CONTAINER_JUNIT_DIR))
                container.start()
            except _engine_errors() as exc:
                shown = shlex.join(command) if command else "its default command"
                raise self._fail(run, f"cannot start the test image {image} ({shown})", exc) from exc
            streamer = self._stream(container) if self.on_output is not None else None
            try:
                exit_code, notes = self._wait(container, run)
                duration = time.monotonic() - clock
                lines = self._logs(container)
                if report_dir is not None:
                    notes.extend(self._copy_reports(container, report_dir))
            except _engine_errors() as exc:
                raise self._fail(run, f"lost the test container {name}", exc) from exc
            if streamer is not None:
                streamer.join(timeout=2)
        finally:
            if container is not None:
                notes.extend(self._remove(container))
            else:
                self._remove_by_name(client, name)
        for note in notes:
            self._emit(note)
        output = junit.tail([*lines, *notes], self.tail_lines)
        return junit.conclude(run, exit_code, output, started, duration)

    def _create(self, client, image: str, command: list[str] | None, env: dict[str, str], name: str,
                run: TestRun):
        from ..store.base import default_holder

        owner = default_holder()  # who runs the suite: 'rollback' removes it once that process is gone
        labels = {LABEL: "1", "cdlib.service": run.service, "cdlib.suite": run.suite.type,
                  "cdlib.release": env.get("CDLIB_RELEASE", ""), "cdlib.host": owner["host"],
                  "cdlib.pid": str(owner["pid"]), "cdlib.proc": owner["proc"] or ""}
        options = {"labels": labels,
                   "init": self.init, "environment": env, "name": name, "stdin_open": False, "tty": False}
        if command is not None:
            options["command"] = command
        if self.network:
            options["network_mode"] = self.network
        return client.containers.create(image, **options)

    def _wait(self, container, run: TestRun) -> tuple[int, list[str]]:
        import requests

        timeout = run.suite.timeout
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._kill(container, timeout)
            try:
                status = container.wait(timeout=remaining)
                break
            except requests.RequestException:
                # the engine answers a wait only when the container exits: a read timeout at the
                # deadline is the suite's timeout, one before it is a lost connection
                if time.monotonic() < deadline - 0.05:
                    raise
        notes = []
        error = status.get("Error")
        if isinstance(error, dict) and error.get("Message"):
            error = error["Message"]
        if error:
            notes.append(f"cdlib: the engine reported: {error}")
        return int(status.get("StatusCode", 1)), notes

    def _kill(self, container, timeout: float) -> tuple[int, list[str]]:
        import docker
        import requests

        try:
            container.kill()
        except docker.errors.APIError:
            pass  # it exited between the timeout and the kill
        try:
            container.wait(timeout=self.kill_wait)
        except requests.RequestException:
            pass  # removal forces it anyway
        return junit.TIMEOUT_EXIT, [f"cdlib: the suite timed out after {timeout:g}s; "
                                    f"its container was killed (exit code {junit.TIMEOUT_EXIT})"]

    def _logs(self, container) -> list[str]:
        raw = container.logs(stdout=True, stderr=True, tail=self.tail_lines)
        return [secret_values.mask(line) for line in raw.decode("utf-8", errors="replace").splitlines()]

    def _copy_reports(self, container, report_dir: Path) -> list[str]:
        """Copy the XML files the suite wrote to JUNIT_DIR out of the container into report_dir."""
        import docker

        try:
            chunks, _ = container.get_archive(CONTAINER_JUNIT_DIR)
            data = b"".join(chunks)
        except docker.errors.NotFound:
            return [f"cdlib: the suite removed {CONTAINER_JUNIT_DIR}; no JUnit files of its own were copied"]
        copied = 0
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if not member.isfile() or not member.name.lower().endswith(".xml"):
                    continue
                parts = [p for p in PurePosixPath(member.name).parts[1:] if p not in ("", ".", "..")]
                target = report_dir / "-".join(parts).lstrip(".")
                source = tar.extractfile(member)
                if source is None or not target.name:
                    continue
                target.write_bytes(source.read())
                copied += 1
        return [f"cdlib: copied {copied} JUnit file(s) the suite wrote"] if copied else []

    def _remove(self, container) -> list[str]:
        import docker

        try:
            # v: the anonymous volumes of the image's VOLUME lines go with it, or they pile up
            container.remove(force=True, v=True)
            return []
        except docker.errors.NotFound:
            return []
        except _engine_errors() as exc:
            return [f"cdlib: could not remove the test container {container.name}: {_redact(exc)}; "
                    f"remove containers labelled {LABEL}=1 by hand"]

    def remove_leftovers(self, service: str, gone: Callable[[dict], bool]) -> list[str]:
        """Remove the service's test containers whose cdlib process is gone (killed while its suite
        ran): gone({"host", "pid", "proc"}) decides from their labels. Returns their names."""
        try:
            found = self._docker().containers.list(
                all=True, filters={"label": [f"{LABEL}=1", f"cdlib.service={service}"]}, ignore_removed=True)
        except _engine_errors() as exc:
            raise TestRunnerError(f"cannot list the test containers of {service}: {_redact(exc)}; check the Docker "
                                  f"engine at {self._where()}") from exc
        removed = []
        for container in found:
            labels = container.labels or {}
            pid = labels.get("cdlib.pid", "")
            if pid.isdigit() and gone({"host": labels.get("cdlib.host"), "pid": int(pid),
                                       "proc": labels.get("cdlib.proc") or None}):
                if not self._remove(container):
                    removed.append(container.name)
        return removed

    @staticmethod
    def _remove_by_name(client, name: str) -> None:
        """Creating the container failed on our side (its answer was lost, the caller was
        interrupted): the engine may have created it all the same."""
        try:
            client.api.remove_container(name, force=True, v=True)
        except _engine_errors():
            pass  # never created, or the engine is away: nothing more to do

    # -- streaming ---------------------------------------------------------------------------
    def _emit(self, line: str) -> None:
        if self.on_output is None:
            return
        try:
            self.on_output(secret_values.mask(line))
        except Exception:  # noqa: BLE001 - a broken console must not end the run
            self.on_output = None

    def _stream(self, container) -> threading.Thread:
        thread = threading.Thread(target=self._follow, args=(container.id,), daemon=True,
                                  name="cdlib-test-logs")
        thread.start()
        return thread

    def _follow(self, container_id: str) -> None:
        # a client of its own without a read timeout: a suite may be silent for minutes
        client = None
        try:
            client = self._connect(timeout=None)
            pending = b""
            for chunk in client.api.logs(container_id, stdout=True, stderr=True, stream=True, follow=True):
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    self._emit(line.decode("utf-8", errors="replace").rstrip("\r"))
            if pending:
                self._emit(pending.decode("utf-8", errors="replace").rstrip("\r"))
        except Exception:  # noqa: BLE001 - the stream is a courtesy; the result uses the logs tail
            return
        finally:
            if client is not None:
                client.close()


def _directory_tar(path: str) -> bytes:
    """A tar holding one empty, world-writable directory: JUNIT_DIR for any user the image runs as."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(path.strip("/"))
        info.type = tarfile.DIRTYPE
        info.mode = 0o777
        info.mtime = int(time.time())
        tar.addfile(info)
    return buf.getvalue()
