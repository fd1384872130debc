"""The world the hostile inputs are thrown at, and the runner that throws them.

One module-scoped world: a service (``cdlibh-…``, its own image, nginx on a free port, SQLite store,
all under a temporary directory) released once for real through dockerd and nginx. Every case then
runs ``cdlib <verb>`` against a variant of that world's descriptor and must be refused: exit 2, one
line on stderr naming the field, and the world exactly as it was (containers, every store key, the
proxy configuration's bytes, the case's own directory).

Cases run in-process through ``cdlib.cli.main`` (fast) unless they need a process of their own (an
input that may hang or eat memory: those get a time-out and an address-space limit).

Every case runs with ``CDLIB_FAILPOINTS`` set so that the first step that changes containers fails:
an input wrongly accepted then ends with exit 1 ("failpoint set-aside:before") and a rolled-back
release in the history, instead of a real deploy that would take the world away from the next cases.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import resource
import secrets
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.hostile.corpus import DROP, Case
from tests.support.images import build_busybox_web_image
from tests.support.registry import free_port

ROOT = Path(__file__).resolve().parents[2]
IMAGE_REPO = "cdlibt-hostile-web"
# the first step of a deploy and of a revert: reached only when every input was accepted
SAFETY_FAILPOINTS = "set-aside:before=fail,resume:before=fail"
# variables the cases must not inherit from whoever runs the tests
SCRUBBED = re.compile(r"^(CDLIB_|DOCKER_|ETCDCTL_|CONSUL_|JENKINS_)")
SUBPROCESS_TIMEOUT = 10.0
INPROCESS_TIMEOUT = 20  # seconds; an input that makes a verb hang must not hang the suite
SUBPROCESS_MEMORY = 2 << 30  # address space of a case's process: /dev/zero must not take the machine


@dataclass
class Result:
    code: int | str  # exit code, or "timeout"
    stdout: str
    stderr: str
    result_file: str = ""


class World:
    """The released test service and what a case needs to build its variant of the descriptor."""

    def __init__(self, directory: Path, docker_client):
        self.dir = directory
        self.docker = docker_client
        self.name = f"cdlibh-{secrets.token_hex(3)}"
        self.port = free_port()
        self.proxy_dir = directory / "nginx"
        self.db = directory / "state.db"
        self.store_url = f"sqlite:///{self.db}"
        self.file = directory / "cdlib.yml"
        self.descriptor = {
            "service": self.name,
            "image": {"repository": IMAGE_REPO, "tag": "v1"},
            "port": 8080,
            "health": {"path": "/health", "timeout": 20, "interval": 0.1},
            "probe": {"path": "/version", "timeout": 10},
            "replicas": 1,
            "routes": {"paths": [f"/{self.name}/"]},
            "target": {"bind": "127.0.0.1", "stop_timeout": 1},
            "proxy": {"kind": "nginx", "listen": f"127.0.0.1:{self.port}", "dir": str(self.proxy_dir)},
            "store": self.store_url,
        }
        self.file.write_text(json.dumps(self.descriptor, indent=2))

    # -- placeholders in the corpus -----------------------------------------------------------------
    def placeholders(self, case_dir: Path, file: Path) -> dict[str, str]:
        return {"@NAME@": self.name, "@REPO@": IMAGE_REPO, "@LISTEN@": f"127.0.0.1:{self.port}",
                "@PROXYDIR@": str(self.proxy_dir), "@STORE@": self.store_url, "@WORLD@": str(self.dir),
                "@DIR@": str(case_dir), "@FILE@": str(file)}

    def base_yaml(self, drop: tuple[str, ...] = ()) -> str:
        data = {k: v for k, v in self.descriptor.items() if k not in drop}
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)

    # -- the state a refused input must leave alone ------------------------------------------------------
    def containers(self):
        found = self.docker.containers.list(all=True, filters={"label": f"cdlib.service={self.name}"})
        return sorted((c.name, c.status, c.attrs["Config"]["Image"],
                       json.dumps(c.attrs["HostConfig"].get("PortBindings"), sort_keys=True)) for c in found)

    def store_state(self) -> dict:
        from cdlib.wiring import open_store

        store = open_store(self.store_url)
        try:
            return {e.key: e.value for e in store.list("")}
        finally:
            store.close()

    def proxy_config(self) -> bytes | None:
        path = self.proxy_dir / "nginx.conf"
        return path.read_bytes() if path.exists() else None

    def snapshot(self, case_dir: Path | None = None) -> dict:
        snap = {"containers": self.containers(), "store": self.store_state(), "proxy": self.proxy_config(),
                # a staged candidate left behind holds what was rendered (a template's content)
                "proxy_files": [f for f in tree(self.proxy_dir) if not f[0].endswith(".log")]}
        if case_dir is not None:
            snap["files"] = tree(case_dir)
        return snap

    def repair(self) -> None:
        """Put the world back after a case that changed it (an input that was wrongly accepted)."""
        from cdlib import keys

        # a candidate the proxy refused stays next to the active file: it may hold a template's content
        (self.proxy_dir / "nginx.conf.staged").unlink(missing_ok=True)
        if self.store_state().get(keys.release(self.name)) is not None:
            run_inprocess(["rollback", "-f", str(self.file)], base_env(self.dir / "home"), self.dir)

    def teardown(self) -> None:
        (self.proxy_dir / "nginx.conf.staged").unlink(missing_ok=True)
        for c in self.docker.containers.list(all=True, filters={"label": f"cdlib.service={self.name}"}):
            c.remove(force=True, v=True)
        from cdlib.proxy.nginx import NginxProxy

        NginxProxy(self.proxy_dir, listen=f"127.0.0.1:{self.port}").stop()


def tree(directory: Path) -> list[tuple[str, int | None]]:
    """Every path under directory with its size (None for directories and other non-files)."""
    out = []
    for path in sorted(directory.rglob("*")):
        try:
            size = path.stat().st_size if path.is_file() else None
        except OSError:
            size = None
        out.append((str(path.relative_to(directory)), size))
    return out


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not SCRUBBED.match(k)}
    env["CDLIB_HOME"] = str(home)
    env["CDLIB_FAILPOINTS"] = SAFETY_FAILPOINTS
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


# -- building a case ---------------------------------------------------------------------------------
def substitute(value, subs: dict[str, str]):
    if isinstance(value, str):
        for key, text in subs.items():
            value = value.replace(key, text)
        return value
    if isinstance(value, bytes):
        for key, text in subs.items():
            value = value.replace(key.encode(), text.encode())
        return value
    if isinstance(value, dict):
        return {substitute(k, subs): substitute(v, subs) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(substitute(v, subs) for v in value)
    return value


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is DROP:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


BASE_RE = re.compile(rb"@BASE((?:-[a-z]+)*)@")


def prepare(world: World, case: Case, case_dir: Path) -> tuple[list[str], dict, list[str]]:
    """Write the case's files; return (argv, environment, the field names one of which must be named)."""
    case_dir.mkdir(parents=True)
    file = case_dir / "cdlib.yml"
    subs = world.placeholders(case_dir, file)
    if case.text is not None:
        raw = case.text.encode("utf-8") if isinstance(case.text, str) else case.text
        raw = BASE_RE.sub(lambda m: world.base_yaml(tuple(
            d for d in m.group(1).decode().split("-") if d)).encode(), raw)
        file.write_bytes(substitute(raw, subs))
    else:
        data = merge(world.descriptor, substitute(case.desc or {}, subs))
        file.write_text(json.dumps(data, indent=2))  # JSON is YAML; every character escaped
    for name, content in (case.files or {}).items():
        path = case_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        content = substitute(content, subs)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    if case.make:
        MAKERS[case.make](case_dir, file)
    argv = list(substitute(list(case.argv), subs))
    if case.with_file and "-f" not in argv and "--file" not in argv:
        argv += ["-f", str(file)]
    env = base_env(case_dir / ".home")
    for key, value in substitute(case.env or {}, subs).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    fields = [case.field] if isinstance(case.field, str) else list(case.field)
    return argv, env, [substitute(f, subs) for f in fields]


def _big_file(case_dir: Path, file: Path) -> None:
    """A 50 MB descriptor: a valid one followed by comment lines."""
    with open(file, "ab") as fh:
        line = b"# " + b"x" * 1021 + b"\n"
        chunk = line * 1024
        for _ in range(50):
            fh.write(chunk)


def _fifo(case_dir: Path, file: Path) -> None:
    file.unlink()
    os.mkfifo(file)


def _loop(case_dir: Path, file: Path) -> None:
    file.unlink()
    file.symlink_to(file)


def _template_dir(case_dir: Path, file: Path) -> None:
    (case_dir / "tpl.d").mkdir()


MAKERS = {"50mb": _big_file, "fifo": _fifo, "symlink-loop": _loop, "template-dir": _template_dir}


# -- running a case ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _environment(env: dict[str, str], cwd: Path):
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)


class _TimedOut(BaseException):
    pass


def _alarm(signum, frame):
    raise _TimedOut()


def run_inprocess(argv: list[str], env: dict[str, str], cwd: Path) -> Result:
    from cdlib import cli

    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(INPROCESS_TIMEOUT)
    with _environment(env, cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except _TimedOut:
            code = "timeout"
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if isinstance(exc.code, str):
                err.write(exc.code + "\n")
        except BaseException:  # what a real process would print before exiting 1
            err.write(traceback.format_exc())
            code = 1
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
    return Result(code, out.getvalue(), err.getvalue())


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (SUBPROCESS_MEMORY, SUBPROCESS_MEMORY))


def run_subprocess(argv: list[str], env: dict[str, str], cwd: Path) -> Result:
    proc = subprocess.Popen([sys.executable, "-m", "cdlib", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=cwd, preexec_fn=_limits, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return Result("timeout", out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
    return Result(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


# -- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import docker

    client = docker.from_env()
    directory = tmp_path_factory.mktemp("hostile")
    build_busybox_web_image(client, f"{IMAGE_REPO}:v1", "v1")
    w = World(directory, client)
    try:
        env = base_env(directory / "home")
        env.pop("CDLIB_FAILPOINTS")
        proc = subprocess.run([sys.executable, "-m", "cdlib", "release", "-f", str(w.file)], capture_output=True,
                              text=True, env=env, cwd=directory, timeout=180)
        assert proc.returncode == 0, f"the world's first release failed:\n{proc.stdout}\n{proc.stderr}"
        yield w
    finally:
        w.teardown()
        with contextlib.suppress(Exception):
            client.images.remove(f"{IMAGE_REPO}:v1", force=True)
        client.close()
