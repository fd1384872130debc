"""Kill `cdlib release` at a random moment, run `cdlib rollback`, compare the world with before.

Shared by tests/integration/test_crash_random.py and benchmarks/crash_random.py. One
:class:`CrashWorld` is one service (its own name, nginx on a free port, its own directory) on the
real dockerd, with a SQLite or etcd store. A trial starts `cdlib release` of the other version,
SIGKILLs it after a seeded random delay between 0 and the measured duration of a whole release,
runs `cdlib rollback`, and returns what it found:

- ``restored``: the world is exactly as before the release (containers with name, state, image and
  port bindings; every store key of the service but history; the proxy configuration's bytes);
- ``released``: the kill came after the release closed (it exited 0 first, or its record was
  already in history as released): the world is the new release, with nothing left over;
- ``broken``: anything else (with the differences).
Either way no lock may be left: neither the service lock nor a proxy lock naming the service.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from cdlib import keys
from tests.support.images import build_busybox_web_image
from tests.support.registry import free_port

ROOT = Path(__file__).resolve().parents[2]
ETCD = "etcd://127.0.0.1:2379"
CHECK = textwrap.dedent('''\
    import os, sys, urllib.request
    url = os.environ["TARGET_URL"].rstrip("/")
    for path in ("/health", "/version"):
        with urllib.request.urlopen(url + path, timeout=5) as r:
            print(os.environ["TEST_TYPE"], path, r.status)
''')


def build_images(client, name: str) -> dict[str, str]:
    tags = {v: f"{name}:{v}" for v in ("v1", "v2", "v3")}
    for version, tag in tags.items():
        build_busybox_web_image(client, tag, version)
    return tags


@dataclass
class Trial:
    outcome: str  # restored | released | broken
    delay: float
    exit_code: int
    rollback_seconds: float
    where: str = ""  # the last step on record when the kill came
    differences: list[str] = field(default_factory=list)


class CrashWorld:
    def __init__(self, directory: Path, client, image: str, store: str = "sqlite", prefix: str = "cdlibt"):
        self.dir = directory
        self.docker = client
        self.image = image
        self.name = f"{prefix}-crash-{secrets.token_hex(3)}"
        self.port = free_port()
        self.proxy_dir = directory / "nginx"
        self.store_url = ETCD if store == "etcd" else f"sqlite:///{directory / 'state.db'}"
        self.file = directory / "cdlib.yml"
        (directory / "check.py").write_text(CHECK)
        suite = {"command": [sys.executable, str(directory / "check.py")], "timeout": 60}
        self.file.write_text(json.dumps({
            "service": self.name,
            "image": {"repository": image, "tag": "v1"},
            "port": 8080,
            "health": {"path": "/health", "timeout": 20, "interval": 0.1},
            "probe": {"path": "/version", "timeout": 10},
            "replicas": 1,
            "routes": {"paths": [f"/{self.name}/"]},
            "tests": {"pre-integration": suite, "post-integration": suite},
            "target": {"bind": "127.0.0.1", "stop_timeout": 5},
            "proxy": {"kind": "nginx", "listen": f"127.0.0.1:{self.port}", "dir": str(self.proxy_dir)},
            "store": self.store_url,
        }, indent=2))
        self.live_tag: str | None = None

    # -- running cdlib ------------------------------------------------------------------------------------
    def _argv(self, *args) -> tuple[list[str], dict]:
        env = dict(os.environ)
        env.pop("CDLIB_STORE", None)
        env.pop("CDLIB_FAILPOINTS", None)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        return [sys.executable, "-m", "cdlib", *args, "-f", str(self.file)], env

    def cli(self, *args, timeout: float = 300) -> subprocess.CompletedProcess:
        argv, env = self._argv(*args)
        return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=self.dir, timeout=timeout)

    def release(self, tag: str) -> float:
        """A whole release that must succeed; returns its duration (process start to exit)."""
        t0 = time.monotonic()
        proc = self.cli("release", "--tag", tag)
        if proc.returncode != 0:
            raise AssertionError(f"release {tag} exited {proc.returncode}: {proc.stdout}\n{proc.stderr}")
        self.live_tag = tag
        return time.monotonic() - t0

    # -- the world ----------------------------------------------------------------------------------------
    def _open_store(self):
        from cdlib.wiring import open_store

        return open_store(self.store_url)

    def containers(self) -> list[tuple]:
        found = self.docker.containers.list(all=True, filters={"label": f"cdlib.service={self.name}"})
        out = []
        for c in found:
            bindings = c.attrs["HostConfig"].get("PortBindings") or {}
            ports = sorted((k, b.get("HostIp", ""), b.get("HostPort", "")) for k, v in bindings.items() for b in v or [])
            out.append((c.name, c.status, c.attrs["Config"]["Image"], tuple(ports)))
        return sorted(out)

    def store_state(self) -> dict[str, str]:
        store = self._open_store()
        try:
            return {e.key: e.value for e in store.list(keys.service(self.name)) if "/history/" not in e.key}
        finally:
            store.close()

    def proxy_config(self) -> bytes | None:
        path = self.proxy_dir / "nginx.conf"
        return path.read_bytes() if path.exists() else None

    def snapshot(self) -> tuple:
        return self.containers(), self.store_state(), self.proxy_config()

    def locks_left(self) -> list[str]:
        store = self._open_store()
        try:
            left = []
            if store.get(keys.lock(self.name)) is not None:
                left.append(f"service lock: {store.get_json(keys.lock(self.name))}")
            proxy = store.get_json(keys.PROXY_LOCK)
            if proxy and (proxy.get("service") == self.name or self.name in str(proxy.get("purpose", ""))):
                left.append(f"proxy lock: {proxy}")
            return left
        finally:
            store.close()

    def history_ids(self) -> dict[str, str]:
        store = self._open_store()
        try:
            return {e.key.rsplit("/", 1)[1]: e.json().get("outcome") for e in store.list(keys.history(self.name))}
        finally:
            store.close()

    # -- one trial ------------------------------------------------------------------------------------------
    def trial(self, rng: random.Random, duration: float) -> Trial:
        tag = "v3" if self.live_tag != "v3" else "v2"
        before = self.snapshot()
        history_before = self.history_ids()
        delay = rng.uniform(0.0, duration)
        argv, env = self._argv("release", "--tag", tag)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=self.dir)
        try:
            proc.wait(timeout=delay)  # the release may end before the kill comes
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        where = self.where()
        t0 = time.monotonic()
        rolled = self.cli("rollback", "--json")
        rollback_seconds = time.monotonic() - t0
        differences = []
        if rolled.returncode != 0:
            differences.append(f"rollback exited {rolled.returncode}: {rolled.stdout[-2000:]} {rolled.stderr[-2000:]}")
        differences += self.locks_left()
        new = {k: v for k, v in self.history_ids().items() if k not in history_before}
        after = self.snapshot()
        if proc.returncode == 0 or "released" in new.values():
            self.live_tag = tag
            outcome = "released"
            if any(".aside-" in c[0] for c in after[0]):
                differences.append(f"set-aside containers left: {after[0]}")
            if keys.release(self.name) in after[1]:
                differences.append("the release is still open")
            live = json.loads(after[1].get(keys.live(self.name), "{}"))
            if not str(live.get("image", "")).endswith(f":{tag}"):
                differences.append(f"live is {live}, not {tag}")
        else:
            outcome = "restored"
            for what, b, a in zip(("containers", "store", "proxy config"), before, after, strict=True):
                if b != a:
                    differences.append(f"{what} differ: before {b!r} after {a!r}")
        return Trial("broken" if differences else outcome, delay, proc.returncode, rollback_seconds, where,
                     differences)

    def where(self) -> str:
        store = self._open_store()
        try:
            record = store.get_json(keys.release(self.name))
            if record is None:
                return "no open release" + (" (lock held)" if store.get(keys.lock(self.name)) else "")
            steps = record.get("steps") or []
            return f"{record.get('phase')}: " + (f"{steps[-1]['name']} {steps[-1]['state']}" if steps else "opened")
        finally:
            store.close()

    # -- cleaning up ----------------------------------------------------------------------------------------
    def teardown(self) -> None:
        for c in self.docker.containers.list(all=True, filters={"label": f"cdlib.service={self.name}"}):
            c.remove(force=True, v=True)
        from cdlib.proxy.nginx import NginxProxy

        NginxProxy(self.proxy_dir, listen=f"127.0.0.1:{self.port}").stop()
        store = self._open_store()
        try:
            store.delete_prefix(keys.service(self.name))
            proxy = store.get_json(keys.PROXY_LOCK)
            if proxy and proxy.get("service") == self.name:
                store.delete(keys.PROXY_LOCK)
        finally:
            store.close()
