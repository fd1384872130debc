"""One behavioural suite for every store adapter, so the reference implementation and the fakes stay honest.

Each test runs against MemoryStore, SqliteStore (a temporary file), EtcdStore (a private etcd on free
ports: integration), ConsulStore on the Consul double, and ConsulStore on a real Consul when
CONSUL_HTTP_ADDR is set (skipped otherwise: Consul cannot be installed here). Every test works under its
own prefix ``cdlib/cdlibt-<random>/`` and deletes it afterwards.

The Consul double runs with Consul's real 2 x TTL session expiry and a tiny session TTL floor (a real
agent's floor is 10 s), so TTL tests stay short; the real-Consul case skips the tests that would wait
for a session to expire.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from cdlib.errors import ConflictError, LockHeld, StoreError
from cdlib.store.base import Entry, Store, default_holder
from cdlib.store.consul import ConsulStore
from cdlib.store.etcd import EtcdStore
from cdlib.store.memory import MemoryStore
from cdlib.store.sqlite import SqliteStore
from tests.doubles.consul_double import ConsulDouble
from tests.support.etcd import free_port, private_etcd

DOUBLE_TTL_FLOOR = 0.2


@dataclass
class Harness:
    kind: str
    factory: Callable[[], Store]
    prefix: str
    native_expiry: bool = False  # keys really vanish through leases/sessions (not only a record's expiry)
    session_floor: float = 0.0  # a TTL below this is raised by the registry (Consul's session_ttl_min)
    slow_expiry: bool = False  # TTL expiry takes tens of seconds (a real Consul): skip those tests
    opened: list = field(default_factory=list)

    def store(self) -> Store:
        store = self.factory()
        self.opened.append(store)
        return store

    def key(self, name: str) -> str:
        return self.prefix + name

    def ttl_short(self) -> float:
        """A TTL the registry honours as given (etcd rounds leases up to whole seconds, 2 s minimum)."""
        return 1.0 if self.kind == "etcd" else 0.4

    def expiry_bound(self, ttl: float) -> float:
        """The latest a TTL key may vanish: etcd's lease minimum and 0.5 s expiry sweep, Consul's 2 x TTL."""
        if self.kind == "etcd":
            return max(2.0, ttl) + 2.0
        if self.kind.startswith("consul"):
            return 2 * max(ttl, self.session_floor) + 1.0
        return ttl + 0.5


@pytest.fixture(scope="module")
def etcd_server():
    with private_etcd("cdlibt-etcd-contract") as server:
        yield server


@pytest.fixture(scope="module")
def consul_double():
    with ConsulDouble(session_ttl_min=DOUBLE_TTL_FLOOR, ttl_multiplier=2.0, tick=0.02) as double:
        yield double


@pytest.fixture(scope="module")
def sqlite_path(tmp_path_factory):
    return tmp_path_factory.mktemp("cdlibt-store") / "state.db"


KINDS = ["memory", "sqlite", pytest.param("etcd", marks=pytest.mark.integration), "consul-double", "consul"]


@pytest.fixture(params=KINDS)
def harness(request):
    kind = request.param
    prefix = f"cdlib/cdlibt-{secrets.token_hex(4)}/"
    if kind == "memory":
        shared = MemoryStore()
        h = Harness(kind, lambda: shared, prefix)
    elif kind == "sqlite":
        path = request.getfixturevalue("sqlite_path")
        h = Harness(kind, lambda: SqliteStore(path), prefix)
    elif kind == "etcd":
        server = request.getfixturevalue("etcd_server")
        h = Harness(kind, lambda: EtcdStore(f"etcd://{server.endpoint}"), prefix, native_expiry=True)
    elif kind == "consul-double":
        double = request.getfixturevalue("consul_double")
        h = Harness(kind, lambda: ConsulStore(f"consul://{double.address}", session_ttl_min=DOUBLE_TTL_FLOOR),
                    prefix, native_expiry=True, session_floor=DOUBLE_TTL_FLOOR)
    else:
        if not os.environ.get("CONSUL_HTTP_ADDR"):
            pytest.skip("a real Consul is only tested when CONSUL_HTTP_ADDR is set")
        h = Harness(kind, lambda: ConsulStore("consul://"), prefix, native_expiry=True, session_floor=10.0,
                    slow_expiry=True)
    yield h
    cleaner = h.store()
    try:
        cleaner.delete_prefix(prefix)
    finally:
        for store in h.opened:
            if store is not cleaner or kind != "memory":
                store.close()


def wait_until(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# -- key-value primitives ---------------------------------------------------------------------------
def test_get_put_list_delete(harness):
    store, key = harness.store(), harness.key("a")
    assert store.get(key) is None
    version = store.put(key, "one")
    assert version > 0
    assert store.get(key) == Entry(key, "one", version)
    assert store.list(harness.prefix) == [Entry(key, "one", version)]
    assert store.delete(key) is True
    assert store.get(key) is None
    assert store.list(harness.prefix) == []
    assert store.delete(key) is False


def test_values_round_trip(harness):
    store = harness.store()
    values = {"empty": "", "unicode": "é ✓ 雪", "json": '{"color":"blue","n":[1,2]}', "lines": "a\nb\n"}
    for name, value in values.items():
        store.put(harness.key(name), value)
    assert {e.key[len(harness.prefix):]: e.value for e in store.list(harness.prefix)} == values
    assert store.get_json(harness.key("json")) == {"color": "blue", "n": [1, 2]}


def test_versions_grow_on_every_write(harness):
    store, key = harness.store(), harness.key("v")
    versions = [store.put(key, f"value-{i}") for i in range(4)]
    assert versions == sorted(versions) and len(set(versions)) == 4
    assert store.get(key).version == versions[-1]
    store.put(harness.key("other"), "x")
    assert store.put(key, "value-after") > versions[-1]


def test_cas_create_only(harness):
    store, key = harness.store(), harness.key("create")
    version = store.put(key, "first", expect=0)
    with pytest.raises(ConflictError):
        store.put(key, "second", expect=0)
    assert store.get(key) == Entry(key, "first", version)


def test_cas_update_success_and_conflict(harness):
    store, key = harness.store(), harness.key("cas")
    v1 = store.put(key, "1")
    v2 = store.put(key, "2", expect=v1)
    assert v2 > v1
    with pytest.raises(ConflictError):
        store.put(key, "stale", expect=v1)
    assert store.get(key) == Entry(key, "2", v2)
    with pytest.raises(ConflictError):
        store.put(harness.key("missing"), "x", expect=v2)
    assert store.get(harness.key("missing")) is None


def test_cas_from_two_clients_one_wins(harness):
    a, b, key = harness.store(), harness.store(), harness.key("race")
    version = a.put(key, "base")
    a.put(key, "from-a", expect=version)
    with pytest.raises(ConflictError):
        b.put(key, "from-b", expect=version)
    assert b.get(key).value == "from-a"


def test_delete_with_expect(harness):
    store, key = harness.store(), harness.key("del")
    v1 = store.put(key, "1")
    v2 = store.put(key, "2")
    with pytest.raises(ConflictError):
        store.delete(key, expect=v1)
    assert store.get(key).value == "2"
    with pytest.raises(ConflictError):
        store.delete(key, expect=0)
    assert store.delete(key, expect=v2) is True
    assert store.get(key) is None
    with pytest.raises(ConflictError):  # a missing key does not match a version (Consul itself says "true")
        store.delete(key, expect=v2)
    assert store.delete(key, expect=0) is False


def test_list_is_prefix_exact_and_sorted(harness):
    store = harness.store()
    for name in ("a/b/2", "a/bc", "a/b/1", "a/a", "b/x"):
        store.put(harness.key(name), name)
    assert [e.key for e in store.list(harness.key("a/b/"))] == [harness.key("a/b/1"), harness.key("a/b/2")]
    assert [e.value for e in store.list(harness.key("a/b"))] == ["a/b/1", "a/b/2", "a/bc"]
    assert [e.value for e in store.list(harness.key("a/"))] == ["a/a", "a/b/1", "a/b/2", "a/bc"]
    assert store.list(harness.key("zzz/")) == []
    assert store.delete_prefix(harness.key("a/b/")) == 2
    assert [e.value for e in store.list(harness.prefix)] == ["a/a", "a/bc", "b/x"]


# -- TTL keys ---------------------------------------------------------------------------------------------
def _skip_slow(harness):
    if harness.slow_expiry:
        pytest.skip("a real Consul expires sessions after 2 x max(TTL, 10 s): too slow for this suite")


def test_ttl_key_disappears(harness):
    _skip_slow(harness)
    store, key, keep = harness.store(), harness.key("ttl"), harness.key("keep")
    ttl = harness.ttl_short()
    store.put(keep, "stays")
    version = store.put(key, "temporary", ttl=ttl)
    assert store.get(key) == Entry(key, "temporary", version)
    assert wait_until(lambda: store.get(key) is None, harness.expiry_bound(ttl))
    assert [e.key for e in store.list(harness.prefix)] == [keep]


def test_rewrite_without_ttl_makes_key_permanent(harness):
    _skip_slow(harness)
    store, key = harness.store(), harness.key("ttl-then-plain")
    ttl = harness.ttl_short()
    store.put(key, "temporary", ttl=ttl)
    version = store.put(key, "permanent")
    time.sleep(harness.expiry_bound(ttl))
    assert store.get(key) == Entry(key, "permanent", version)


def test_ttl_put_with_expect(harness):
    store, key = harness.store(), harness.key("ttl-cas")
    version = store.put(key, "a")
    new = store.put(key, "b", expect=version, ttl=30)
    assert store.get(key) == Entry(key, "b", new)
    with pytest.raises(ConflictError):
        store.put(key, "c", expect=version, ttl=30)
    with pytest.raises(ConflictError):
        store.put(key, "d", expect=0, ttl=30)
    assert store.get(key).value == "b"


# -- the lock -------------------------------------------------------------------------------------------
def test_lock_acquire_held_refresh_release(harness):
    first, second = harness.store(), harness.store()
    key = harness.key("services/web/lock")
    holder = default_holder(release="r-1", image="web:1")
    lock = first.acquire_lock(key, holder, ttl=30)
    assert lock.taken_over is None and "token" not in lock.holder
    assert lock.holder["who"] == holder["who"] and lock.holder["release"] == "r-1"
    assert first.holds_lock(key, lock.token)

    with pytest.raises(LockHeld) as held:
        second.acquire_lock(key, default_holder(release="r-2"), ttl=30)
    assert held.value.holder["release"] == "r-1" and "token" not in held.value.holder
    assert lock.token not in str(held.value) and "r-1" in str(held.value)
    info = second.lock_info(key)
    assert info["release"] == "r-1" and info["expired"] is False and "token" not in info

    before = first.lock_info(key)["expires"]
    time.sleep(0.05)
    first.refresh_lock(key, lock.token, 60)
    assert first.lock_info(key)["expires"] > before + 20
    assert first.holds_lock(key, lock.token)

    assert second.release_lock(key, "not-the-token") is False
    assert first.release_lock(key, lock.token) is True
    assert first.get(key) is None
    assert first.release_lock(key, lock.token) is False
    again = second.acquire_lock(key, default_holder(release="r-2"), ttl=30)
    assert again.taken_over is None
    assert second.release_lock(key, again.token)


def _elsewhere(**extra) -> dict:
    """A holder record written by a process on another host: its liveness cannot be proved here."""
    return dict(default_holder(**extra), who="jenkins@ci-agent-7", host="ci-agent-7", pid=4242)


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _later(store: Store, seconds: float) -> Store:
    """The same store read by a clock that is seconds ahead: expiry without waiting."""
    store.clock = lambda: time.time() + seconds
    return store


def test_lock_expired_is_taken_over_when_its_holder_is_not_provably_alive(harness):
    first = harness.store()
    key = harness.key("services/api/lock")
    stale = first.acquire_lock(key, _elsewhere(release="r-old"), ttl=60)
    with pytest.raises(LockHeld):  # not expired yet
        harness.store().acquire_lock(key, default_holder(release="r-early"), ttl=30)
    second = _later(harness.store(), 120)  # (the memory harness shares one store: set the clock last)
    assert second.lock_info(key)["expired"] is True and second.lock_info(key)["state"] == "unknown"
    lock = second.acquire_lock(key, default_holder(release="r-new"), ttl=300)
    assert lock.taken_over is not None and lock.taken_over["release"] == "r-old"
    assert "token" not in lock.taken_over
    with pytest.raises(LockHeld):
        first.refresh_lock(key, stale.token, 30)
    assert first.release_lock(key, stale.token) is False
    assert second.holds_lock(key, lock.token)
    assert second.release_lock(key, lock.token)


def test_lock_of_a_live_holder_on_this_host_is_never_taken_over_even_expired(harness):
    first = harness.store()
    key = harness.key("services/alive/lock")
    lock = first.acquire_lock(key, default_holder(release="r-1"), ttl=60)  # this process, working
    second = _later(harness.store(), 120)
    assert second.lock_info(key)["expired"] is True and second.lock_info(key)["state"] == "alive"
    with pytest.raises(LockHeld, match=r"pid \d+, running on this host"):
        second.acquire_lock(key, default_holder(release="r-2"), ttl=30)
    assert second.break_lock(key) is None
    assert first.release_lock(key, lock.token)


def test_lock_of_a_dead_holder_is_taken_over_at_once(harness):
    first, second = harness.store(), harness.store()
    key = harness.key("services/dead/lock")
    first.acquire_lock(key, dict(default_holder(release="r-dead"), pid=_dead_pid()), ttl=3600)
    assert second.lock_info(key)["state"] == "gone" and second.lock_info(key)["expired"] is False
    lock = second.acquire_lock(key, default_holder(release="r-new"), ttl=30)
    assert lock.taken_over["release"] == "r-dead" and lock.taken_over["state"] == "gone"
    assert second.release_lock(key, lock.token)


def test_lock_parked_between_stages_waits_for_its_expiry(harness):
    first = harness.store()
    key = harness.key("services/parked/lock")
    lock = first.acquire_lock(key, dict(default_holder(release="r-1"), pid=_dead_pid()), ttl=60)
    first.refresh_lock(key, lock.token, 60, parked=True)  # the stage ended, the release goes on
    with pytest.raises(LockHeld, match="between stages"):
        harness.store().acquire_lock(key, default_holder(release="r-2"), ttl=30)
    first.refresh_lock(key, lock.token, 60, parked=None, pid=os.getpid())  # the next stage adopts it
    assert first.lock_info(key)["state"] == "alive"
    later = _later(harness.store(), 120)
    assert later.break_lock(key) is None  # expired, but its holder provably works
    first.refresh_lock(key, lock.token, 60, parked=True)
    later = _later(harness.store(), 400)
    assert later.break_lock(key)["release"] == "r-1" and first.get(key) is None


def test_lock_refresh_keeps_it_alive(harness):
    store, other = harness.store(), harness.store()
    key = harness.key("services/kept/lock")
    lock = store.acquire_lock(key, default_holder(), ttl=1)
    deadline = time.monotonic() + 2.6
    while time.monotonic() < deadline:
        store.refresh_lock(key, lock.token, 1)
        time.sleep(0.3)
    assert store.holds_lock(key, lock.token)
    with pytest.raises(LockHeld):
        other.acquire_lock(key, default_holder(), ttl=1)
    store.refresh_lock(key, lock.token, 20)  # another TTL moves the lock to a new lease/session
    assert store.holds_lock(key, lock.token)
    assert store.release_lock(key, lock.token)


def test_abandoned_lock_expires(harness):
    """Stores with leases/sessions delete an abandoned lock key by themselves; the others keep the
    record, which reads as expired and can be taken over."""
    _skip_slow(harness)
    store = harness.store()
    key = harness.key("services/killed/lock")
    store.acquire_lock(key, _elsewhere(), ttl=1)
    assert store.get(key) is not None
    if harness.native_expiry:
        assert wait_until(lambda: store.get(key) is None, 6.0, step=0.1)
    else:
        later = _later(harness.store(), 5)
        assert later.lock_info(key)["expired"]
        assert later.acquire_lock(key, default_holder(), ttl=5).taken_over is not None


def _race_for_lock(clients: list[Store], key: str) -> list:
    """Every client tries to take key at the same moment; returns each one's Lock or LockHeld."""
    barrier = threading.Barrier(len(clients))
    outcomes: list = [None] * len(clients)

    def contend(i):
        barrier.wait()
        try:
            outcomes[i] = clients[i].acquire_lock(key, default_holder(release=f"r{i}"), ttl=30)
        except LockHeld as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return outcomes


def test_concurrent_acquire_exactly_one_wins(harness):
    for round_ in range(4):
        key = harness.key(f"services/race{round_}/lock")
        clients = [harness.store(), harness.store()]
        outcomes = _race_for_lock(clients, key)
        winners = [o for o in outcomes if o is not None and not isinstance(o, LockHeld)]
        losers = [o for o in outcomes if isinstance(o, LockHeld)]
        assert len(winners) == 1 and len(losers) == 1, outcomes
        assert clients[0].lock_info(key)["release"] == winners[0].holder["release"]


def test_lock_wait_gets_it_after_release(harness):
    first, second = harness.store(), harness.store()
    key = harness.key("services/wait/lock")
    lock = first.acquire_lock(key, default_holder(release="r-1"), ttl=30)
    timer = threading.Timer(0.4, first.release_lock, args=(key, lock.token))
    timer.start()
    started = time.monotonic()
    try:
        got = second.acquire_lock(key, default_holder(release="r-2"), ttl=30, wait=10, poll=0.05)
    finally:
        timer.join()
    assert 0.3 <= time.monotonic() - started < 8
    assert got.taken_over is None and second.lock_info(key)["release"] == "r-2"


# -- watch ----------------------------------------------------------------------------------------------
def _watcher(harness) -> Store:
    return harness.store()


def test_watch_wakes_on_a_change_under_the_prefix(harness):
    store = _watcher(harness)
    writer = harness.store()
    prefix = harness.key("w/")
    since = store.put(prefix + "a", "1")
    timer = threading.Timer(0.3, writer.put, args=(prefix + "b", "2"))
    timer.start()
    started = time.monotonic()
    got = store.watch(prefix, since, 10)
    timer.join()
    assert got is not None and got > since
    assert time.monotonic() - started < 5
    assert got == store.get(prefix + "b").version


def test_watch_wakes_on_delete_and_answers_at_once_when_behind(harness):
    store = _watcher(harness)
    writer = harness.store()
    prefix = harness.key("wd/")
    since = store.put(prefix + "a", "1")
    timer = threading.Timer(0.3, writer.delete, args=(prefix + "a",))
    timer.start()
    got = store.watch(prefix, since, 10)
    timer.join()
    assert got is not None and got > since
    writer.put(prefix + "c", "3")
    started = time.monotonic()
    assert store.watch(prefix, since, 10) is not None
    assert time.monotonic() - started < 1.0


def test_watch_times_out_when_nothing_changes_under_the_prefix(harness):
    store = _watcher(harness)
    writer = harness.store()
    prefix = harness.key("wt/")
    since = store.put(prefix + "a", "1")
    timer = threading.Timer(0.2, writer.put, args=(harness.key("elsewhere/x"), "x"))
    timer.start()
    started = time.monotonic()
    assert store.watch(prefix, since, 1.0) is None
    timer.join()
    assert 0.9 <= time.monotonic() - started < 3


def test_memory_watch_behind_its_trimmed_change_log_reports_a_change():
    store = MemoryStore()
    since = store.put("cdlib/w/a", "1")
    store.put("cdlib/w/b", "2")
    for i in range(10001):  # the change to cdlib/w/b leaves the log
        store.put("cdlib/other", str(i))
    assert store.watch("cdlib/w/", since, 0.3) is not None


# -- SQLite: one file shared by processes and threads ------------------------------------------------------
def test_sqlite_store_shared_by_threads_loses_no_write(tmp_path):
    store = SqliteStore(tmp_path / "threads.db")
    errors: list[Exception] = []

    def writer(n: int) -> None:
        for i in range(100):
            try:
                store.put(f"cdlib/t/{n}/{i}", str(i))
            except StoreError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert errors == []
        entries = store.list("cdlib/t/")
        assert len(entries) == 400 and len({e.version for e in entries}) == 400
    finally:
        store.close()


def test_sqlite_interrupted_write_releases_the_write_lock(tmp_path, monkeypatch):
    """SIGTERM becomes an exception anywhere, also between BEGIN IMMEDIATE and COMMIT: the write must
    be rolled back at once, not keep the database locked for the other processes."""
    from cdlib.plan import Interrupted

    path = tmp_path / "state.db"
    store, other = SqliteStore(path), SqliteStore(path, timeout=0.5)
    try:
        def interrupted(key):
            raise Interrupted()

        monkeypatch.setattr(store, "_bump", interrupted)
        with pytest.raises(Interrupted):
            store.put("cdlib/a", "1")
        monkeypatch.undo()
        assert other.get("cdlib/a") is None
        assert other.put("cdlib/b", "from-other") > 0  # no "database is locked"
        assert store.put("cdlib/a", "2") > 0  # no "cannot start a transaction within a transaction"
        assert other.get("cdlib/a").value == "2"
    finally:
        store.close()
        other.close()


# -- errors -----------------------------------------------------------------------------------------------
def test_unreachable_etcd_is_a_store_error():
    store = EtcdStore(f"etcd://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(StoreError) as err:
        store.get("cdlib/x")
    assert "cannot reach" in str(err.value) and "ETCDCTL_ENDPOINTS" in str(err.value)
    with pytest.raises(StoreError):
        store.put("cdlib/x", "1")


def test_unreachable_consul_is_a_store_error():
    store = ConsulStore(f"consul://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(StoreError) as err:
        store.get("cdlib/x")
    assert "cannot reach" in str(err.value) and "CONSUL_HTTP_ADDR" in str(err.value)
    with pytest.raises(StoreError):
        store.acquire_lock("cdlib/services/x/lock", default_holder(), ttl=10)


def test_wrong_consul_token_is_a_store_error_without_the_token():
    good, wrong, read_only = "cdlibt-good-" + secrets.token_hex(8), "cdlibt-wrong-" + secrets.token_hex(8), \
        "cdlibt-ro-" + secrets.token_hex(8)
    with ConsulDouble(acl_token=good, read_only_tokens=(read_only,), session_ttl_min=DOUBLE_TTL_FLOOR) as double:
        for token in (wrong, read_only):
            store = ConsulStore(f"consul://{double.address}", token=token, session_ttl_min=DOUBLE_TTL_FLOOR)
            with pytest.raises(StoreError) as err:
                store.put("cdlib/services/web/live", "{}")
            message = str(err.value)
            assert "permission denied" in message and "CONSUL_HTTP_TOKEN" in message
            assert token not in message and good not in message and token not in repr(store)
            with pytest.raises(StoreError) as err:
                store.acquire_lock("cdlib/services/web/lock", default_holder(), ttl=10)
            assert token not in str(err.value)
        with pytest.raises(StoreError):
            ConsulStore(f"consul://{double.address}", token=wrong).get("cdlib/services/web/live")
        assert ConsulStore(f"consul://{double.address}", token=read_only).get("cdlib/services/web/live") is None
        ok = ConsulStore(f"consul://{double.address}", token=good)
        version = ok.put("cdlib/services/web/live", "{}")
        assert ok.get("cdlib/services/web/live").version == version


def test_consul_token_file_wins_and_py_consul_env_cannot_override(tmp_path, monkeypatch):
    good = "cdlibt-good-" + secrets.token_hex(8)
    token_file = tmp_path / "token"
    token_file.write_text(good + "\n")
    with ConsulDouble(acl_token=good) as double:
        # py-consul would let CONSUL_HTTP_TOKEN/CONSUL_HTTP_ADDR override explicit arguments
        monkeypatch.setenv("CONSUL_HTTP_TOKEN", "cdlibt-wrong")
        monkeypatch.setenv("CONSUL_HTTP_ADDR", f"127.0.0.1:{free_port()}")
        env = {"CONSUL_HTTP_ADDR": f"http://{double.address}", "CONSUL_HTTP_TOKEN": "cdlibt-wrong",
               "CONSUL_HTTP_TOKEN_FILE": str(token_file)}
        store = ConsulStore("consul://", env=env)
        assert store.describe() == f"consul://{double.address}"
        assert store.put("cdlib/t/k", "v") > 0
        assert store.get("cdlib/t/k").value == "v"
        assert [r for r in double.requests_log if r["status"] == 403] == []


def test_consul_address_and_tls_configuration(tmp_path):
    store = ConsulStore("consul://", env={"CONSUL_HTTP_ADDR": "https://consul.example:8501"})
    assert (store.host, store.port, store.scheme) == ("consul.example", 8501, "https")
    store = ConsulStore("consul://", env={"CONSUL_HTTP_ADDR": "10.0.0.5:8500", "CONSUL_HTTP_SSL": "true",
                                          "CONSUL_CACERT": "/etc/ca.pem", "CONSUL_CLIENT_CERT": "/c.pem",
                                          "CONSUL_CLIENT_KEY": "/k.pem", "CONSUL_NAMESPACE": "ignored"})
    assert (store.host, store.port, store.scheme) == ("10.0.0.5", 8500, "https")
    assert store._verify == "/etc/ca.pem" and store._cert == ("/c.pem", "/k.pem")
    store = ConsulStore("consuls://consul.example", env={"CONSUL_HTTP_SSL_VERIFY": "false"})
    assert (store.port, store.scheme, store._verify) == (8500, "https", False)
    store = ConsulStore("consul://h:1234", env={"CONSUL_HTTP_ADDR": "other:1"})
    assert (store.host, store.port, store.scheme) == ("h", 1234, "http")
    with pytest.raises(StoreError) as err:
        ConsulStore("consul://", env={"CONSUL_HTTP_TOKEN_FILE": str(tmp_path / "missing")})
    assert "CONSUL_HTTP_TOKEN_FILE" in str(err.value)


def test_etcd_endpoints_configuration():
    store = EtcdStore("etcd://", env={"ETCDCTL_ENDPOINTS": "https://e1:2379,e2:2380", "ETCDCTL_USER": "bob:pw"})
    assert store.protocol == "https" and store.endpoints == ["e1:2379", "e2:2380"]
    assert store.user == "bob" and "pw" not in repr(store) and "pw" not in store.describe()
    store = EtcdStore("etcds://a:1,b:2", env={"ETCDCTL_ENDPOINTS": "ignored:9"})
    assert store.describe() == "etcds://a:1,b:2"
    assert EtcdStore("etcd://", env={}).endpoints == ["127.0.0.1:2379"]
    with pytest.raises(StoreError):
        EtcdStore("etcd://host:notaport", env={})
    with pytest.raises(StoreError) as err:
        EtcdStore("etcd://bob:cdlibt-secret@host:2379", env={})
    assert "cdlibt-secret" not in str(err.value) and "ETCDCTL_USER" in str(err.value)
    with pytest.raises(StoreError) as err:
        ConsulStore("consul://cdlibt-secret@host:8500", env={})
    assert "cdlibt-secret" not in str(err.value) and "CONSUL_HTTP_TOKEN" in str(err.value)


def test_credentials_in_address_variables_are_refused_without_echoing_them():
    secret = "cdlibt-secret-" + secrets.token_hex(4)
    for env in ({"CONSUL_HTTP_ADDR": f"https://bob:{secret}@consul.example:8501"},
                {"CONSUL_HTTP_ADDR": f"bob:{secret}@consul.example:8500"}):
        with pytest.raises(StoreError) as err:
            ConsulStore("consul://", env=env)
        assert secret not in str(err.value) and "CONSUL_HTTP_TOKEN" in str(err.value)
    with pytest.raises(StoreError) as err:
        EtcdStore("etcd://", env={"ETCDCTL_ENDPOINTS": f"https://bob:{secret}@e1:2379,e2:2379"})
    assert secret not in str(err.value) and "ETCDCTL_USER" in str(err.value)


def test_missing_tls_files_are_store_errors_naming_the_settings(tmp_path):
    missing = str(tmp_path / "cdlibt-missing.pem")
    port = free_port()
    stores = [
        (ConsulStore(f"consuls://127.0.0.1:{port}", env={"CONSUL_CACERT": missing}, timeout=2), "CONSUL_CACERT"),
        (ConsulStore(f"consuls://127.0.0.1:{port}", env={"CONSUL_CLIENT_CERT": missing,
                                                         "CONSUL_CLIENT_KEY": missing}, timeout=2),
         "CONSUL_CLIENT_CERT"),
        (EtcdStore(f"etcds://127.0.0.1:{port}", env={"ETCDCTL_CERT": missing, "ETCDCTL_KEY": missing}, timeout=2),
         "ETCDCTL_CERT"),
    ]
    for store, setting in stores:
        with pytest.raises(StoreError) as err:
            store.get("cdlib/x")
        assert setting in str(err.value) and "\n" not in str(err.value)


@pytest.mark.integration
def test_etcd_fails_over_to_a_live_endpoint(etcd_server):
    store = EtcdStore(f"etcd://127.0.0.1:{free_port()},{etcd_server.endpoint}", timeout=2)
    key = f"cdlib/cdlibt-{secrets.token_hex(4)}/failover"
    version = store.put(key, "x")
    assert store.get(key) == Entry(key, "x", version)
    assert store.delete(key)


class _LoopbackServer:
    """A TCP endpoint on a free loopback port that serves one connection at a time with ``_one``
    (closing it afterwards) until ``close``."""

    def __init__(self):
        import socket

        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self.endpoint = f"127.0.0.1:{self._server.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                try:
                    self._one(conn)
                except OSError:
                    pass

    def _one(self, conn) -> None:
        raise NotImplementedError

    def close(self) -> None:
        import socket

        try:
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self._server.close()
        self._thread.join(timeout=5)


class _AnswerDroppingProxy(_LoopbackServer):
    """A TCP endpoint in front of a store server: it forwards each HTTP request and relays the answer,
    except for requests whose first line starts with one of ``drop``: those are applied by the server,
    but the client's connection is closed without the answer (a connection lost after the write)."""

    def __init__(self, target_port: int, drop: tuple[bytes, ...] = (b"",)):
        self._target, self._drop = target_port, drop
        super().__init__()

    def _one(self, conn) -> None:
        import socket

        conn.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
        length = next((int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            body += conn.recv(65536)
        answer = b""
        with socket.create_connection(("127.0.0.1", self._target), timeout=10) as up:
            up.sendall(b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + body)
            while chunk := up.recv(65536):
                answer += chunk
        if not lines[0].startswith(self._drop):
            conn.sendall(answer)


@pytest.mark.integration
def test_etcd_write_whose_answer_was_lost_is_not_resent_as_a_false_conflict(etcd_server):
    """A compare-and-set sent again on the next endpoint would fail against its own first write and
    report "changed concurrently" (or, for the lock, "held by" this very release)."""
    proxy = _AnswerDroppingProxy(etcd_server.client_port)
    key = f"cdlib/cdlibt-{secrets.token_hex(4)}/journal"
    direct = EtcdStore(f"etcd://{etcd_server.endpoint}")
    try:
        store = EtcdStore(f"etcd://{proxy.endpoint},{etcd_server.endpoint}", timeout=3)
        with pytest.raises(StoreError) as err:
            store.put(key, "v", expect=0)
        assert "may or may not have been applied" in str(err.value)
        assert direct.get(key).value == "v"  # it was applied: a ConflictError would have been false
        assert store.get(key).value == "v"  # a read is simply sent again to the next endpoint
    finally:
        proxy.close()
        direct.delete(key)


@pytest.mark.integration
def test_etcd_lock_attempt_that_failed_in_transit_leaves_no_lock_behind(etcd_server):
    """The caller of a failed acquire believes it holds nothing and will never release: a lock record
    its write may have left must go with its lease, not block every release for 2 x TTL."""
    proxy = _AnswerDroppingProxy(etcd_server.client_port, drop=(b"POST /v3/kv/txn",))
    key = f"cdlib/cdlibt-{secrets.token_hex(4)}/services/web/lock"
    direct = EtcdStore(f"etcd://{etcd_server.endpoint}")
    try:
        with pytest.raises(StoreError):
            EtcdStore(f"etcd://{proxy.endpoint}", timeout=3).acquire_lock(key, default_holder(), ttl=600)
        assert direct.get(key) is None
        lock = direct.acquire_lock(key, default_holder(), ttl=30)
        assert lock.taken_over is None and direct.release_lock(key, lock.token)
    finally:
        proxy.close()
        direct.delete(key)


def test_consul_lock_attempt_that_failed_in_transit_leaves_no_lock_behind(consul_double):
    proxy = _AnswerDroppingProxy(consul_double.port, drop=(b"PUT /v1/txn",))
    key = f"cdlib/cdlibt-{secrets.token_hex(4)}/services/web/lock"
    direct = ConsulStore(f"consul://{consul_double.address}", session_ttl_min=DOUBLE_TTL_FLOOR)
    sessions = set(consul_double.session_ids())
    try:
        store = ConsulStore(f"consul://{proxy.endpoint}", session_ttl_min=DOUBLE_TTL_FLOOR, timeout=3)
        with pytest.raises(StoreError):
            store.acquire_lock(key, default_holder(), ttl=600)
        assert direct.get(key) is None
        assert set(consul_double.session_ids()) <= sessions
    finally:
        proxy.close()
        direct.delete(key)


@pytest.mark.integration
def test_etcd_connect_timeout_moves_on_to_the_next_endpoint(etcd_server):
    import socket

    blackhole = socket.socket()  # a listener with a full backlog: the kernel drops further SYNs
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    fillers = [socket.socket() for _ in range(3)]
    try:
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(blackhole.getsockname())
        time.sleep(0.2)
        store = EtcdStore(f"etcd://127.0.0.1:{blackhole.getsockname()[1]},{etcd_server.endpoint}", timeout=1)
        key = f"cdlib/cdlibt-{secrets.token_hex(4)}/k"
        version = store.put(key, "x")
        assert store.get(key) == Entry(key, "x", version)
        assert store.delete(key)
    finally:
        for filler in fillers:
            filler.close()
        blackhole.close()


@pytest.mark.integration
def test_etcd_store_survives_a_restart_and_reports_the_outage():
    with private_etcd("cdlibt-etcd-restart") as server:
        store = EtcdStore(f"etcd://{server.endpoint}", timeout=2)
        version = store.put("cdlib/cdlibt-r/k", "before")
        server.kill()
        with pytest.raises(StoreError) as err:
            store.get("cdlib/cdlibt-r/k")
        assert "cannot reach" in str(err.value)
        server.start()
        assert store.get("cdlib/cdlibt-r/k") == Entry("cdlib/cdlibt-r/k", "before", version)


@pytest.mark.integration
def test_etcd_auth_errors_name_the_user_only():
    password = "cdlibt-pw-" + secrets.token_hex(6)
    with private_etcd("cdlibt-etcd-auth") as server:
        server.etcdctl("user", "add", f"alice:{password}")
        server.etcdctl("role", "add", "cdlibt-writer")
        server.etcdctl("role", "grant-permission", "cdlibt-writer", "--prefix=true", "readwrite", "cdlib/")
        server.etcdctl("user", "grant-role", "alice", "cdlibt-writer")
        server.enable_auth("cdlibt-root-" + secrets.token_hex(6))
        url = f"etcd://{server.endpoint}"

        wrong = "cdlibt-bad-" + secrets.token_hex(6)
        with pytest.raises(StoreError) as err:
            EtcdStore(url, env={"ETCDCTL_USER": f"alice:{wrong}"}).get("cdlib/x")
        assert "alice" in str(err.value) and wrong not in str(err.value) and "ETCDCTL_USER" in str(err.value)

        with pytest.raises(StoreError) as err:
            EtcdStore(url, env={}).get("cdlib/x")
        assert "ETCDCTL_USER" in str(err.value)

        store = EtcdStore(url, env={"ETCDCTL_USER": "alice", "ETCDCTL_PASSWORD": password})
        version = store.put("cdlib/services/web/live", "{}")
        assert store.get("cdlib/services/web/live").version == version
        store.put("cdlib/services/other/live", "{}")  # moves the head past version
        assert store.watch("cdlib/services/web/live", version, 0.3) is None  # reads only its own prefix
        lock = store.acquire_lock("cdlib/services/web/lock", default_holder(), ttl=5)
        store.refresh_lock(lock.key, lock.token, 5)
        assert store.release_lock(lock.key, lock.token)
        with pytest.raises(StoreError) as err:
            store.put("outside/key", "x")
        assert "alice" in str(err.value) and password not in str(err.value)


@pytest.mark.integration
def test_etcd_watch_after_compaction_reports_a_change(etcd_server):
    store = EtcdStore(f"etcd://{etcd_server.endpoint}")
    prefix = f"cdlib/cdlibt-{secrets.token_hex(4)}/"
    since = store.put(prefix + "a", "1")
    store.delete(prefix + "a")
    head = store.put("cdlib/cdlibt-compact-marker", secrets.token_hex(4))
    etcd_server.etcdctl("compaction", str(head))
    got = store.watch(prefix, since, 5)
    assert got is not None and got > since
    store.delete("cdlib/cdlibt-compact-marker")


@pytest.mark.integration
def test_etcd_watch_from_zero_on_an_empty_prefix_wakes_after_compaction(etcd_server):
    """since 0 with nothing under the prefix waits for the next change; a watch from revision 1 would be
    cancelled by etcd once that revision is compacted, and wake nobody."""
    store, writer = EtcdStore(f"etcd://{etcd_server.endpoint}"), EtcdStore(f"etcd://{etcd_server.endpoint}")
    prefix = f"cdlib/cdlibt-{secrets.token_hex(4)}/"
    head = writer.put("cdlib/cdlibt-compact-marker", secrets.token_hex(4))
    etcd_server.etcdctl("compaction", str(head))
    timer = threading.Timer(0.3, writer.put, args=(prefix + "a", "1"))
    timer.start()
    started = time.monotonic()
    try:
        got = store.watch(prefix, 0, 5)
        elapsed = time.monotonic() - started
        timer.join()
        assert got == store.get(prefix + "a").version and elapsed < 3
    finally:
        timer.join()
        writer.delete("cdlib/cdlibt-compact-marker")
        writer.delete(prefix + "a")


@pytest.mark.integration
def test_etcd_watch_behind_deleted_history_wakes_once(etcd_server):
    """Changes since since_version to keys deleted since then make one wake-up, not one per old event."""
    store = EtcdStore(f"etcd://{etcd_server.endpoint}")
    prefix = f"cdlib/cdlibt-{secrets.token_hex(4)}/"
    since = store.put(prefix + "seen", "0")
    store.delete(prefix + "seen")
    for i in range(5):
        store.put(prefix + "gone", str(i))
        store.delete(prefix + "gone")
    got = store.watch(prefix, since, 5)
    assert got is not None and got > since
    assert store.watch(prefix, got, 0.5) is None


@pytest.mark.integration
def test_etcd_rewrites_and_deletes_revoke_the_replaced_lease(etcd_server):
    """A TTL key gets a lease per write: the one it leaves must go, or every registration refresh keeps
    one more lease alive for a whole TTL (an hour for a release's registrations)."""
    import json

    store = EtcdStore(f"etcd://{etcd_server.endpoint}")
    key = f"cdlib/cdlibt-{secrets.token_hex(4)}/instances/blue/web-1"

    def lease_of(k: str) -> int:
        return int(json.loads(etcd_server.etcdctl("get", k, "-w", "json"))["kvs"][0].get("lease", 0))

    def alive(lease: int) -> bool:
        out = json.loads(etcd_server.etcdctl("lease", "timetolive", format(lease, "x"), "-w", "json"))
        return int(out.get("ttl", -1)) > 0

    store.put(key, "a", ttl=600)
    first = lease_of(key)
    store.put(key, "b", ttl=600)
    second = lease_of(key)
    assert first != second and alive(second) and not alive(first)
    store.put(key, "c", expect=store.get(key).version)  # permanent now
    assert lease_of(key) == 0 and not alive(second)
    store.put(key, "d", ttl=600)
    third = lease_of(key)
    assert store.delete(key) is True and not alive(third)
    store.put(key, "e", ttl=600)
    fourth = lease_of(key)
    assert store.delete(key, expect=store.get(key).version) is True and not alive(fourth)


# -- registrations ----------------------------------------------------------------------------------------
@pytest.fixture
def health_server():
    """A tiny HTTP server answering 200 on /health, as a healthy instance would."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _record(name: str, port: int) -> dict:
    return {"name": name, "address": "127.0.0.1", "port": port, "release": "r1", "image": "r/x:1",
            "health_url": f"http://127.0.0.1:{port}/health"}


def test_register_list_and_deregister(harness, health_server):
    from cdlib import keys

    store = harness.store()
    service = f"cdlibt-{secrets.token_hex(3)}"
    try:
        store.register(service, "blue", f"{service}-blue-1", _record(f"{service}-blue-1", health_server))
        store.register(service, "blue", f"{service}-blue-2", _record(f"{service}-blue-2", health_server))
        store.register(service, "green", f"{service}-green-1", _record(f"{service}-green-1", health_server))
        regs = store.registrations(service, "blue")
        assert [(r["color"], r["name"], r["port"]) for r in regs] == [
            ("blue", f"{service}-blue-1", health_server), ("blue", f"{service}-blue-2", health_server)]
        assert len(store.registrations(service)) == 3
        store.deregister(service, "blue", f"{service}-blue-1")
        store.deregister(service, "blue", f"{service}-blue-1")  # idempotent
        assert [r["name"] for r in store.registrations(service)] == [f"{service}-blue-2", f"{service}-green-1"]
        health = store.registry_health(service)
        if harness.kind.startswith("consul"):  # Consul runs the HTTP check itself
            assert set(health) == {f"{service}-blue-2", f"{service}-green-1"}
            assert set(health.values()) == {"passing"}
        else:
            assert health is None
    finally:
        for r in store.registrations(service):
            store.deregister(service, r["color"], r["name"])
        store.delete_prefix(keys.service(service))
    assert store.registrations(service) == []


def test_registration_with_ttl_expires(harness, health_server):
    _skip_slow(harness)
    store = harness.store()
    service = f"cdlibt-{secrets.token_hex(3)}"
    ttl = harness.ttl_short()
    store.register(service, "blue", f"{service}-blue-1", _record(f"{service}-blue-1", health_server), ttl=ttl)
    try:
        assert len(store.registrations(service)) == 1
        assert wait_until(lambda: store.registrations(service) == [], harness.expiry_bound(ttl), step=0.1)
    finally:
        store.deregister(service, "blue", f"{service}-blue-1")


@pytest.mark.integration
def test_etcd_tls_failure_is_one_line_naming_the_tls_settings(etcd_server):
    # the TLS failure is the plain-HTTP server's first answer; the timeout only has to be long enough
    # for a busy machine to give that answer (a timeout is reported as unreachable, not as TLS). etcd
    # closes on the hello, with a FIN or a reset depending on how much of it it had read: both are TLS
    # failures (each close is pinned down by the plain-endpoint test below)
    with pytest.raises(StoreError) as err:
        EtcdStore(f"etcds://{etcd_server.endpoint}", timeout=30).get("cdlib/x")
    message = str(err.value)
    assert "TLS with" in message and "ETCDCTL_CACERT" in message and "\n" not in message


class _PlainEndpoint(_LoopbackServer):
    """A TCP endpoint that reads the client's first bytes (a TLS hello) and closes, as a plain-http
    server that does not understand them does: with a FIN, or with a reset (SO_LINGER 0), which is what
    the kernel sends when such a server closes with bytes still unread. Each close is deterministic,
    where a real server's depends on how much of the hello it had read when it closed."""

    def __init__(self, reset: bool):
        self.reset = reset
        self.accepted = 0
        super().__init__()

    def _one(self, conn) -> None:
        import socket
        import struct

        self.accepted += 1
        header = _recv_exactly(conn, 5)  # a TLS record header: type, version, length
        if self.reset:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:  # the whole hello is read, so the close is a FIN
            _recv_exactly(conn, struct.unpack("!H", header[3:5])[0])


def _recv_exactly(conn, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
@pytest.mark.parametrize("kind", ["etcd", "consul"])
def test_tls_refused_by_a_plain_endpoint_is_a_tls_failure_however_it_closes(kind, reset):
    endpoint = _PlainEndpoint(reset)
    try:
        with pytest.raises(StoreError) as err:
            if kind == "etcd":
                EtcdStore(f"etcds://{endpoint.endpoint}", timeout=5).get("cdlib/x")
            else:
                ConsulStore(f"consuls://{endpoint.endpoint}", timeout=5).get("cdlib/x")
    finally:
        endpoint.close()
    message = str(err.value)
    expected = "connection reset during the handshake" if reset else "unexpected eof"
    assert "TLS with" in message and f"failed ({expected}" in message and "\n" not in message
    assert ("ETCDCTL_CACERT" if kind == "etcd" else "CONSUL_CACERT") in message
    assert endpoint.accepted == 1  # a TLS failure is reported at once, not retried


def test_consul_tls_failure_is_one_line_naming_the_tls_settings(consul_double):
    with pytest.raises(StoreError) as err:
        ConsulStore(f"consuls://{consul_double.address}", timeout=30).get("cdlib/x")  # as for etcd above
    message = str(err.value)
    assert "TLS with the agent failed" in message and "CONSUL_CACERT" in message and "\n" not in message
