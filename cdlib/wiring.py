"""The only module that knows the adapters: settings in, a bundle of ports out.

Adapters (and so their client libraries) are imported on first use, so a verb that only reads the
store never pays for docker or jinja2, and ``cdlib --help`` imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import ServiceSpec, SuiteSpec
from .errors import ConfigError
from .proxy.base import Proxy
from .runtime.base import Runtime
from .store.base import Store
from .testrun.base import TestRunner


def open_store(url: str) -> Store:
    """sqlite:///abs/path, sqlite://rel/path, memory:, etcd://h:p[,h:p], etcds://…, consul://h:p, consuls://…
    (checked by cdlib.store.url, the one store-URL parser: a bad URL is a ConfigError, exit code 2)."""
    from .store import url as store_url

    parsed = store_url.parse(url, "store")
    if parsed.kind == "memory":
        from .store.memory import MemoryStore

        return MemoryStore()
    if parsed.kind == "sqlite":
        # sqlite:///abs/path.db (absolute) or sqlite://rel/path.db (relative to the working directory)
        return _sqlite(parsed.path)
    if parsed.kind == "etcd":
        from .store.etcd import EtcdStore

        return EtcdStore(url)
    from .store.consul import ConsulStore

    return ConsulStore(url)


def _sqlite(path: str) -> Store:
    from .store.sqlite import SqliteStore

    return SqliteStore(path)


def open_runtime(spec: ServiceSpec) -> Runtime:
    # config refuses any other target.kind at parse time; the error below is for a spec built by hand
    if spec.target.kind == "docker":
        from .runtime.docker import DockerRuntime

        return DockerRuntime(spec.target.docker_host)
    if spec.target.kind == "swarm":
        from .runtime.swarm import SwarmRuntime

        return SwarmRuntime(spec.target.docker_host)
    raise ConfigError(f"target.kind: {spec.target.kind!r} is not supported yet; use docker", key="target.kind")


def open_proxy(spec: ServiceSpec) -> Proxy:
    p = spec.proxy
    if p.run != "process":
        return _docker_proxy(spec)
    # tls_listen: the HTTPS listen address (checked by config), which the templates see as tls_listen
    if p.kind == "nginx":
        from .proxy.nginx import NginxProxy

        return NginxProxy(p.dir, listen=p.listen, binary=p.binary, template=p.template,
                          drain_timeout=p.drain_timeout, tls_listen=p.tls_listen)
    if p.kind == "haproxy":
        from .proxy.haproxy import HaproxyProxy

        return HaproxyProxy(p.dir, listen=p.listen, binary=p.binary, template=p.template,
                            drain_timeout=p.drain_timeout, tls_listen=p.tls_listen)
    raise ConfigError(f"proxy.kind: unknown proxy {p.kind!r}", key="proxy.kind")


def _docker_proxy(spec: ServiceSpec) -> Proxy:
    """proxy.run container or service: the proxy in a container on the target engine, or a Swarm
    service (docs/proxy-placement.md)."""
    from .proxy.container import ContainerProxy, ServiceProxy

    p = spec.proxy
    if p.run == "service":
        return ServiceProxy(p.kind, name=p.name, listen=p.listen, template=p.template, drain_timeout=p.drain_timeout,
                            image=p.image, docker_host=spec.target.docker_host, tls_listen=p.tls_listen,
                            replicas=p.replicas, mode=p.mode, engines=dict(p.engines))
    return ContainerProxy(p.kind, name=p.name, listen=p.listen, template=p.template, drain_timeout=p.drain_timeout,
                          image=p.image, docker_host=spec.target.docker_host, tls_listen=p.tls_listen)


def open_runner(spec: ServiceSpec, suite: SuiteSpec, on_output=None) -> TestRunner:
    """A test image runs as a container on the host network (so TARGET_URL on 127.0.0.1 works);
    a command runs on the host."""
    if suite.image is not None:
        from .testrun.container import ContainerRunner

        return ContainerRunner(spec.target.docker_host, on_output=on_output)
    from .testrun.command import CommandRunner

    return CommandRunner(on_output=on_output)


@dataclass
class Ports:
    """The adapters one verb works with. Each is built on first use unless given."""

    spec: ServiceSpec
    store_url: str | None = None
    _store: Store | None = None
    _runtime: Runtime | None = None
    _proxy: Proxy | None = None
    runners: dict = field(default_factory=dict)  # test type -> TestRunner (tests inject memory runners)
    junit_dir: Path | None = None
    on_output: object = None  # Callable[[str], None]: each line a test suite prints

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.store_url or self.spec.store)
        return self._store

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = open_runtime(self.spec)
        return self._runtime

    @property
    def proxy(self) -> Proxy:
        if self._proxy is None:
            self._proxy = open_proxy(self.spec)
        return self._proxy

    def runner(self, suite: SuiteSpec) -> TestRunner:
        if suite.type not in self.runners:
            self.runners[suite.type] = open_runner(self.spec, suite, self.on_output)
        return self.runners[suite.type]

    def close(self) -> None:
        for port in (self._store, self._runtime, self._proxy, *self.runners.values()):
            close = getattr(port, "close", None)
            if close is not None:
                close()


# store kind (StoreURL.kind: etcds:// is etcd) -> (the client it imports, the pip extra that installs it)
STORE_CLIENTS = {"etcd": ("etcd3gw", "etcd"), "consul": ("consul", "consul")}


def check_clients(spec: ServiceSpec, store_url: str | None = None, *, store: Store | None = None,
                  runtime: Runtime | None = None, proxy: Proxy | None = None) -> None:
    """Refuse (MissingClient, exit 2) before anything changes when a client library that the
    adapters this descriptor needs is not installed; nothing is imported (only looked up). Adapters
    given ready-made (memory doubles in tests) need nothing."""
    from . import extras

    if store is None:
        from .store import url as store_urls

        try:
            kind = store_urls.parse(store_url or spec.store, "store").kind
        except store_urls.StoreURLError:
            kind = ""  # refused with its own message where the store is opened
        if kind in STORE_CLIENTS:
            extras.check(*STORE_CLIENTS[kind])
    if runtime is None and spec.target.kind in ("docker", "swarm"):
        extras.check("docker")
    if proxy is None and spec.proxy.kind in ("nginx", "haproxy"):
        extras.check("jinja2")
    if proxy is None and getattr(spec.proxy, "run", "process") != "process":
        extras.check("docker")


def ports_for(spec: ServiceSpec, store: Store | None = None, runtime: Runtime | None = None,
              proxy: Proxy | None = None, runners: dict | None = None, store_url: str | None = None,
              junit_dir: Path | None = None, on_output=None) -> Ports:
    check_clients(spec, store_url, store=store, runtime=runtime, proxy=proxy)
    return Ports(spec=spec, store_url=store_url, _store=store, _runtime=runtime, _proxy=proxy,
                 runners=dict(runners or {}), junit_dir=junit_dir, on_output=on_output)
