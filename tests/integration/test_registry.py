"""Registry-backed flows: releases on a real etcd, the registry going away mid-release, and the
proxy kept in line with the registry by `proxy watch` when an instance dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.etcd import private_etcd
from tests.support.load import Load

pytestmark = pytest.mark.integration


@pytest.fixture
def etcd():
    with private_etcd("cdlibt-etcd-flow") as server:
        yield server


def test_release_on_etcd_keys_are_readable_with_etcdctl(service, etcd):
    service.write(store=f"etcd://{etcd.endpoint}")
    service.cli("release", "--tag", "v1", check=True)
    service.cli("release", "--tag", "v2", check=True)
    assert service.get() == (200, "v2")
    live = json.loads(etcd.etcdctl("get", "--print-value-only", f"cdlib/services/{service.name}/live").strip())
    assert live["color"] == "green" and live["image"].endswith(":v2")
    listed = etcd.etcdctl("get", "--keys-only", "--prefix", f"cdlib/services/{service.name}/instances/")
    assert f"instances/green/{service.name}-green-1" in listed and "instances/blue/" not in listed


def test_registry_going_away_mid_release_then_rollback_completes(service, etcd):
    service.write(store=f"etcd://{etcd.endpoint}")
    service.cli("release", "--tag", "v1", check=True)
    before = service.snapshot()
    # the pre-integration suite stops etcd: the release goes on to the switch and finds no registry
    service.write(store=f"etcd://{etcd.endpoint}", pre_integration=["kill", "-STOP", str(etcd._proc.pid)])
    try:
        proc = service.cli("release", "--tag", "v2", "--json", timeout=120)
    finally:
        os.kill(etcd._proc.pid, signal.SIGCONT)
    out = json.loads(proc.stdout)
    assert proc.returncode == 4, out
    assert "etcd store" in out["message"] and "run 'cdlib rollback' again" in out["message"]
    # the runtime side is undone already: only the v1 containers are left, v1 still answers
    assert [c for c in service.containers() if c[1] == "running"] == [c for c in before[0] if c[1] == "running"]
    assert service.get() == (200, "v1")
    # the registry is back: rollback completes from the journal, which lost nothing
    journal = service.journal()
    assert journal is not None and [s["name"] for s in journal["steps"]] == ["set-aside", "start", "health",
                                                                              "register"]
    code, out = service.cli_json("rollback")
    assert code == 0, out
    assert service.snapshot() == before


def test_proxy_watch_heals_routing_when_an_instance_dies(service, docker_client):
    """What can be promised when an instance dies under load: a request the dead instance was
    answering at the kill may fail (its answer is cut: IncompleteRead); every other request gets its
    answer, the ones sent to the dead instance before the watcher removed it too (the proxy retries a
    refused or closed connection on the other server), and none fails once it is gone from the
    proxy's configuration."""
    service.cli("release", "--tag", "v1", check=True)
    env = dict(os.environ, PYTHONPATH=str(service.dir.parents[0]))
    from tests.integration.conftest import ROOT

    env["PYTHONPATH"] = str(ROOT)
    watcher = subprocess.Popen([sys.executable, "-m", "cdlib", "proxy", "watch", "-f", str(service.file),
                                "--interval", "0.3", "--debounce", "0.2", "--max-seconds", "60"],
                               cwd=service.dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.0)
        victim = docker_client.containers.get(f"{service.name}-blue-1")
        dead_port = victim.attrs["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostPort"]
        with Load(service.url + "version", threads=2) as load:
            before_kill = time.monotonic()
            victim.kill()
            after_kill = time.monotonic()
            deadline = time.monotonic() + 15
            while f":{dead_port}" in service.nginx_conf().decode() and time.monotonic() < deadline:
                time.sleep(0.05)
            gone = time.monotonic()  # the dead server is no longer in the configuration's file
            # traffic after it is gone: at least 20 answers sent after that moment (or 10 s)
            deadline = time.monotonic() + 10
            while sum(r.started >= gone for r in list(load.records)) < 20 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert f":{dead_port}" not in service.nginx_conf().decode()
        assert load.bodies and load.bodies[-1] == "v1"
        assert sum(r.ok and r.started >= gone for r in load.records) >= 20
        # only requests in flight at the kill may fail
        in_flight = [r for r in load.records if r.started <= after_kill and r.ended >= before_kill]
        failed = load.failed_requests()
        assert all(r in in_flight for r in failed), [(r.detail, r.started - before_kill) for r in failed]
        assert load.failed_after(gone) == []
    finally:
        watcher.send_signal(signal.SIGTERM)
        output = watcher.communicate(timeout=20)[0]
    assert watcher.returncode == 0, output
    assert "applied the proxy configuration" in output
