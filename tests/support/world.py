"""A world of memory adapters for unit tests of the core: store, runtime, proxy, test runner."""

from __future__ import annotations

from cdlib import config, keys
from cdlib.clock import ManualClock
from cdlib.context import Ctx
from cdlib.proxy.memory import MemoryProxy
from cdlib.runtime.memory import MemoryRuntime
from cdlib.store.memory import MemoryStore
from cdlib.testrun.memory import MemoryRunner
from cdlib.wiring import ports_for

DESCRIPTOR = {
    "service": "shop",
    "image": {"repository": "127.0.0.1:5000/shop", "tag": "v1"},
    "port": 8080,
    "health": {"path": "/health", "timeout": 1, "interval": 0.05},
    "probe": {"path": "/version", "timeout": 1},
    "replicas": 2,
    "routes": {"paths": ["/shop/"]},
    "tests": {"pre-deployment": "true", "pre-integration": "true", "post-integration": "true"},
}


class World:
    """Memory adapters on one manual clock: a wait (a lock held by another, an instance that never gets
    healthy, a probe that never passes) runs to its end at once, and expiry is rehearsed with
    clock.advance(seconds)."""

    def __init__(self, tmp_path):
        self.clock = ManualClock()
        self.store = MemoryStore(clock=self.clock)
        self.runtime = MemoryRuntime(clock=self.clock)
        self.proxy = MemoryProxy(tmp_path / "proxy")
        self.runner = MemoryRunner()
        self.tmp = tmp_path

    def ctx(self, tag="v1", **descriptor):
        data = dict(DESCRIPTOR, **descriptor)
        spec = config.parse(data, "cdlib.yml", env={}).with_tag(tag)
        ports = ports_for(spec, store=self.store, runtime=self.runtime, proxy=self.proxy,
                          runners={t: self.runner for t in spec.tests}, junit_dir=self.tmp / "junit")
        return Ctx(spec, ports, clock=self.clock)

    def snapshot(self):
        store = {k: v for k, v in self.store.snapshot().items()
                 if "/history/" not in k and not k.endswith("/lock")}
        containers = sorted((c.instance.name, c.instance.state, c.instance.release, c.instance.image)
                            for c in self.runtime.containers.values())
        return store, containers, self.proxy.read_config()

    def live(self):
        return self.store.get_json(keys.live("shop"))


