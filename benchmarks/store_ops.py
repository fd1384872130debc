"""Per-operation latency of each store, and the store round trips of one full release.

    .venv/bin/python benchmarks/store_ops.py [--n 200]

Stores: memory, sqlite (a temp file), etcd (a private etcd started here from Debian's etcd-server)
and the Consul HTTP API double (Consul itself cannot be installed here; against a real agent the
numbers include the network and Raft). The release runs the real verbs with in-memory runtime,
proxy and test runner, so only the store does I/O; "calls" are store-port calls, "HTTP" the requests
the client library sent (etcd and Consul).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdlib import verbs  # noqa: E402
from cdlib.store.base import default_holder  # noqa: E402
from tests.doubles.consul_double import ConsulDouble  # noqa: E402
from tests.support.etcd import private_etcd  # noqa: E402
from tests.support.world import World  # noqa: E402

PORT_METHODS = ("get", "list", "put", "delete", "watch", "register", "deregister", "registrations",
                "registry_health", "acquire_lock", "refresh_lock", "release_lock", "lock_info")


class Counter:
    """Counts store-port calls (outermost only) and HTTP requests sent through requests."""

    def __init__(self, store):
        self.calls = 0
        self.http = 0
        self._depth = 0
        for name in PORT_METHODS:
            original = getattr(store, name)
            setattr(store, name, self._wrap(original))
        import requests

        original_send = requests.Session.send
        counter = self

        def send(session, request, **kw):
            counter.http += 1
            return original_send(session, request, **kw)

        self._undo = (requests.Session, "send", original_send)
        requests.Session.send = send

    def _wrap(self, fn):
        def wrapped(*a, **kw):
            self._depth += 1
            try:
                if self._depth == 1:
                    self.calls += 1
                return fn(*a, **kw)
            finally:
                self._depth -= 1
        return wrapped

    def close(self):
        cls, name, fn = self._undo
        setattr(cls, name, fn)


def timed(fn, n: int) -> tuple[float, float]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def latencies(store, n: int) -> dict[str, tuple[float, float]]:
    prefix = "cdlib/bench/"
    out = {}
    out["put"] = timed(lambda i: store.put(f"{prefix}k{i % 20}", f"v{i}"), n)
    out["get"] = timed(lambda i: store.get(f"{prefix}k{i % 20}"), n)
    versions = {}

    def cas(i):
        key = f"{prefix}cas"
        v = store.put(key, str(i), expect=versions.get(key, 0) if i else None)
        versions[key] = v
    out["put (compare-and-set)"] = timed(cas, n)
    out["list (20 keys)"] = timed(lambda i: store.list(prefix), n)
    lock_key = "cdlib/services/bench/lock"

    def lock(i):
        got = store.acquire_lock(lock_key, default_holder(), ttl=30)
        store.release_lock(lock_key, got.token)
    out["lock acquire + release"] = timed(lock, max(10, n // 4))
    store.delete_prefix(prefix)
    return out


def release_round_trips(store) -> tuple[int, int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp))
        world.store = store
        counter = Counter(store)
        try:
            t0 = time.perf_counter()
            out = verbs.release(world.ctx("v1"))
            assert out.ok, out.message
            counter.calls = counter.http = 0
            t0 = time.perf_counter()
            out = verbs.release(world.ctx("v2"))
            seconds = time.perf_counter() - t0
            assert out.ok, out.message
            return counter.calls, counter.http, seconds
        finally:
            counter.close()
            store.delete_prefix("cdlib/services/shop/")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="samples per operation (default 200)")
    args = ap.parse_args()
    from cdlib.store.consul import ConsulStore
    from cdlib.store.etcd import EtcdStore
    from cdlib.store.memory import MemoryStore
    from cdlib.store.sqlite import SqliteStore

    rows, trips = [], []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cdlibb-")))
        etcd = stack.enter_context(private_etcd("cdlibb-etcd"))
        double = stack.enter_context(ConsulDouble())
        stores = {
            "memory": lambda: MemoryStore(),
            "sqlite": lambda: SqliteStore(tmp / "state.db"),
            "etcd": lambda: EtcdStore(f"etcd://{etcd.endpoint}"),
            "consul (double)": lambda: ConsulStore(f"consul://{double.address}"),
        }
        for name, make in stores.items():
            store = make()
            for op, (median, p95) in latencies(store, args.n).items():
                rows.append((name, op, median, p95))
            trips.append((name, *release_round_trips(store)))
            store.close()
    print(f"{'store':<16} {'operation':<24} {'median ms':>10} {'p95 ms':>8}")
    for name, op, median, p95 in rows:
        print(f"{name:<16} {op:<24} {median:>10.3f} {p95:>8.3f}")
    print()
    print(f"{'store':<16} {'release v2 over v1: store calls':>32} {'HTTP requests':>14} {'seconds':>8}")
    for name, calls, http, seconds in trips:
        print(f"{name:<16} {calls:>32} {http:>14} {seconds:>8.3f}")


if __name__ == "__main__":
    main()
