"""Fixtures for whole flows against the real dockerd and a private nginx.

Every service gets its own name (cdlibt-…), its own nginx on a free port, its own SQLite store and
proxy directory under tmp, so the tests never disturb a running demo and clean up after themselves.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.images import build_busybox_web_image
from tests.support.registry import free_port

IMAGE = "cdlibt-flow-web"
ROOT = Path(__file__).resolve().parents[2]

CHECK = textwrap.dedent('''\
    """Test suite used by the integration tests: checks /health and /version at TARGET_URL."""
    import os, sys, urllib.request
    kind = os.environ["TEST_TYPE"]
    if os.environ.get("FAIL_TEST_TYPE") == kind:
        print(f"{kind}: failing on purpose"); sys.exit(3)
    url = os.environ["TARGET_URL"].rstrip("/")
    if kind != "pre-deployment":
        for path in ("/health", "/version"):
            with urllib.request.urlopen(url + path, timeout=5) as r:
                print(kind, path, r.status, r.read().decode().strip())
    print(kind, "ok")
''')


@pytest.fixture(scope="session")
def docker_client():
    import docker

    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="session")
def web_images(docker_client):
    tags = {"v1": f"{IMAGE}:v1", "v2": f"{IMAGE}:v2", "v3": f"{IMAGE}:v3", "sick": f"{IMAGE}:sick"}
    for version, tag in tags.items():
        build_busybox_web_image(docker_client, tag, version, health=version != "sick")
    yield tags
    for tag in tags.values():
        try:
            docker_client.images.remove(tag, force=True)
        except Exception:
            pass


class Service:
    """One test service: its descriptor, store, proxy; helpers to run the CLI and read the state."""

    def __init__(self, directory: Path, docker_client, proxy_kind: str = "nginx"):
        self.dir = directory
        self.proxy_kind = proxy_kind
        self.name = f"cdlibt-{secrets.token_hex(3)}"
        self.port = free_port()
        self.proxy_dir = directory / proxy_kind
        self.db = directory / "state.db"
        self.docker = docker_client
        (directory / "check.py").write_text(CHECK)
        self.file = directory / "cdlib.yml"
        self.write()

    def write(self, replicas: int = 2, health_timeout: int = 20, store: str | None = None,
              pre_integration: list[str] | None = None):
        suite = {"command": [sys.executable, str(self.dir / "check.py")], "host_env": ["FAIL_TEST_TYPE"],
                 "timeout": 60}
        pre = dict(suite, command=pre_integration) if pre_integration else suite
        self.store_url = store or f"sqlite:///{self.db}"
        descriptor = {
            "service": self.name,
            "image": {"repository": IMAGE, "tag": "v1"},
            "port": 8080,
            "health": {"path": "/health", "timeout": health_timeout, "interval": 0.1},
            "probe": {"path": "/version", "timeout": 10},
            "replicas": replicas,
            "routes": {"paths": [f"/{self.name}/"]},
            "tests": {"pre-integration": pre, "post-integration": suite},
            "target": {"bind": "127.0.0.1", "stop_timeout": 5},
            "proxy": {"kind": self.proxy_kind, "listen": f"127.0.0.1:{self.port}", "dir": str(self.proxy_dir)},
            "store": self.store_url,
        }
        self.file.write_text(json.dumps(descriptor, indent=2))  # JSON is YAML

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.name}/"

    def cli(self, *args, env: dict | None = None, check: bool = False, timeout: float = 180):
        full_env = dict(os.environ, **(env or {}))
        full_env.pop("CDLIB_STORE", None)
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
        proc = subprocess.run([sys.executable, "-m", "cdlib", *args, "-f", str(self.file)],
                              capture_output=True, text=True, env=full_env, cwd=self.dir, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"cdlib {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def cli_json(self, *args, **kw) -> tuple[int, dict]:
        proc = self.cli(*args, "--json", **kw)
        return proc.returncode, json.loads(proc.stdout or "{}")

    # -- state ----------------------------------------------------------------------------------
    def containers(self):
        found = self.docker.containers.list(all=True, filters={"label": f"cdlib.service={self.name}"})
        # the image as the container was created with it (identical builds share an id, and so tags)
        return sorted((c.name, c.status, c.labels.get("cdlib.release"), c.attrs["Config"]["Image"]) for c in found)

    def _store(self):
        from cdlib.wiring import open_store

        return open_store(self.store_url)

    def store_state(self) -> dict:
        from cdlib import keys

        store = self._store()
        try:
            return {e.key: e.value for e in store.list(keys.service(self.name))
                    if "/history/" not in e.key and not e.key.endswith("/lock")}
        finally:
            store.close()

    def journal(self):
        from cdlib import keys

        store = self._store()
        try:
            return store.get_json(keys.release(self.name))
        finally:
            store.close()

    def nginx_conf(self) -> bytes | None:
        """The active proxy configuration's bytes (nginx.conf or haproxy.cfg)."""
        path = self.proxy_dir / ("nginx.conf" if self.proxy_kind == "nginx" else "haproxy.cfg")
        return path.read_bytes() if path.exists() else None

    def snapshot(self):
        return self.containers(), self.store_state(), self.nginx_conf()

    def get(self, path: str = "version", timeout: float = 5) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, r.read().decode().strip()
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    def teardown(self):
        for c in self.docker.containers.list(all=True, filters={"label": f"cdlib.service={self.name}"}):
            c.remove(force=True, v=True)
        if self.proxy_kind == "nginx":
            from cdlib.proxy.nginx import NginxProxy as proxy_class
        else:
            from cdlib.proxy.haproxy import HaproxyProxy as proxy_class
        proxy_class(self.proxy_dir, listen=f"127.0.0.1:{self.port}").stop()


@pytest.fixture
def two_services(tmp_path, docker_client, web_images):
    """Two test services sharing one nginx and one store, each with its own route."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = Service(tmp_path / "a", docker_client), Service(tmp_path / "b", docker_client)
    b.port, b.proxy_dir, b.db = a.port, a.proxy_dir, a.db
    b.write()
    yield a, b
    b.teardown()
    a.teardown()


@pytest.fixture
def service(tmp_path, docker_client, web_images):
    svc = Service(tmp_path, docker_client)
    yield svc
    svc.teardown()


@pytest.fixture(params=["nginx", "haproxy"])
def any_proxy_service(request, tmp_path, docker_client, web_images):
    svc = Service(tmp_path, docker_client, proxy_kind=request.param)
    yield svc
    svc.teardown()


@pytest.fixture(scope="module")
def module_service(tmp_path_factory, docker_client, web_images):
    svc = Service(tmp_path_factory.mktemp("flow"), docker_client)
    yield svc
    svc.teardown()
