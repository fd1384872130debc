"""proxy render / apply / watch, driven by the registry, with the memory adapters."""

from __future__ import annotations

import pytest

from cdlib import keys, proxyctl
from cdlib import verbs as rel
from cdlib.errors import ProxyError
from cdlib.journal import Journal
from tests.support.world import World


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def release(world, tag):
    assert rel.release(world.ctx(tag)).ok


def test_render_serves_every_live_service(world):
    release(world, "v1")
    text = proxyctl.render(world.ctx()).data["config"]
    assert '"service": "shop"' in text and '"color": "blue"' in text


def test_apply_writes_only_when_the_text_changed(world):
    release(world, "v1")
    reloads = world.proxy.reloads
    out = proxyctl.apply(world.ctx())
    assert out.data["changed"] is False and world.proxy.reloads == reloads
    assert proxyctl.apply(world.ctx(), force=True).data["changed"] is True
    assert world.proxy.reloads == reloads + 1


def test_apply_leaves_out_an_unhealthy_instance(world):
    release(world, "v1")
    world.runtime.healthy["shop-blue-2"] = False
    out = proxyctl.apply(world.ctx())
    assert out.data["changed"] is True
    assert list(out.data["dropped"]) == ["shop"]
    [backend] = world.proxy.backends
    assert len(backend["servers"]) == 1


def test_apply_refuses_when_a_live_service_has_no_healthy_backend(world):
    release(world, "v1")
    before = world.proxy.read_config()
    world.runtime.healthy.update({"shop-blue-1": False, "shop-blue-2": False})
    with pytest.raises(ProxyError, match="no healthy backend for the live color of shop"):
        proxyctl.apply(world.ctx())
    assert world.proxy.read_config() == before


def watch_log(world, lines):
    """A log that stamps each line with the world's (manual) clock."""
    return lambda line: lines.append((round(world.clock.monotonic(), 6), line))


def test_watch_heals_routing_when_an_instance_dies_and_debounces_bursts(world):
    """On the world's manual clock: the death and the burst are scheduled at exact times, the watch's
    waits move the clock, and every reload happens at a time that can be asserted."""
    release(world, "v1")
    applies = len(world.proxy.applies)
    clock = world.clock

    def dies():  # no registry change: found by the health timer
        world.runtime.healthy["shop-blue-1"] = False

    def registers(i):  # shop-blue-1 comes back and is registered again, five times in a row
        def put():
            world.runtime.healthy.pop("shop-blue-1", None)
            key = keys.instance("shop", "blue", "shop-blue-1")
            world.store.put_json(key, dict(world.store.get_json(key), attempt=i))
        return put

    clock.schedule(1.05, dies)
    for i in range(5):  # a burst of registry changes, 50 ms apart, all inside one debounce window
        clock.schedule(2.0 + i * 0.05, registers(i))
    lines = []
    out = proxyctl.watch(world.ctx(), debounce=0.3, interval=0.2, max_seconds=3.0, log=watch_log(world, lines))

    assert out.data == {"applied": 2, "failures": 0}
    assert clock.monotonic() == pytest.approx(3.0)
    assert len(world.proxy.applies) - applies == 2
    when = [t for t, line in lines if line.startswith("applied")]
    # the death is seen by the first timer pass after it (passes every 0.2 s from 0.3 s: 1.1 s)
    assert when[0] == pytest.approx(1.1)
    assert "shop: left out" in lines[0][1]
    # the burst (2.0 s to 2.2 s) makes one reload, when the debounce that began at 2.0 s ends
    assert when[1] == pytest.approx(2.3)
    assert len(world.proxy.backends[0]["servers"]) == 2  # healed both ways


def test_watch_leaves_a_switching_release_alone(world):
    release(world, "v1")
    assert rel.deploy(world.ctx("v2")).ok
    j = Journal.load(world.store, "shop")
    j.phase = "switching"
    j.save()
    from cdlib.store.base import default_holder

    world.store.acquire_lock(keys.PROXY_LOCK, default_holder(release=j.id), ttl=60)  # the switch runs
    lines = []
    out = proxyctl.watch(world.ctx(), once=True, log=lines.append)
    assert out.ok and any("switching" in line for line in lines)


def test_watch_survives_a_registry_failure_while_it_debounces(world):
    from cdlib.errors import StoreError

    release(world, "v1")
    calls = []

    def second_call(prefix, since, timeout):
        calls.append(since)
        return len(calls) == 2  # the first wait inside the debounce

    world.store.inject("watch", StoreError("etcd store: watch failed: connection reset"), when=second_call)
    lines = []
    out = proxyctl.watch(world.ctx(), debounce=0.2, interval=0.1, max_seconds=0.6, log=watch_log(world, lines))
    assert out.exit_code == 0 and out.data == {"applied": 0, "failures": 1}
    # the failure came inside the debounce (the first watch returned the release's writes at once)
    # and the watch went on to apply what it had, then kept watching until its end
    assert [line for _, line in lines] == ["registry unavailable: etcd store: watch failed: connection reset"]
    assert lines[0][0] == 0.0 and world.clock.monotonic() == pytest.approx(0.6)
    assert len(calls) == 2  # the failure was injected once, then removed


@pytest.mark.parametrize("over", [{"interval": 0}, {"interval": -1}, {"debounce": -1}, {"interval": float("nan")}])
def test_watch_refuses_timings_that_would_spin(world, over):
    from cdlib.errors import ConfigError

    with pytest.raises(ConfigError):
        proxyctl.watch(world.ctx(), max_seconds=0.3, log=lambda line: None, **over)


def test_watch_heals_other_services_while_a_dead_switch_left_its_phase_behind(world):
    release(world, "v1")
    assert rel.deploy(world.ctx("v2")).ok
    j = Journal.load(world.store, "shop")
    j.phase = "switching"  # the switch was SIGKILLed; its proxy lock expired since
    j.save()
    world.runtime.healthy["shop-blue-2"] = False
    lines = []
    out = proxyctl.watch(world.ctx(), once=True, log=lines.append)
    assert out.ok and not any("switching" in line for line in lines)
    assert len(world.proxy.backends[0]["servers"]) == 1
