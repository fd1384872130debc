"""Releases that run at the same time, as real processes against the real dockerd and nginx:
two releases of one service (exactly one runs, the other is refused with the holder, nothing is
broken), and releases of two services that share one proxy and one store (both go through, one
switch at a time, and neither service drops a request)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT, Service
from tests.support.load import Load

pytestmark = pytest.mark.integration


def _start(svc: Service, *args: str) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("CDLIB_STORE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-m", "cdlib", *args, "-f", str(svc.file)], cwd=svc.dir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


def test_two_releases_of_one_service_at_once_exactly_one_runs(service):
    service.cli("release", "--tag", "v1", check=True)
    with Load(service.url + "version", threads=2) as load:
        procs = {tag: _start(service, "release", "--tag", tag) for tag in ("v2", "v3")}
        results = {tag: _finish(proc) for tag, proc in procs.items()}
    codes = sorted(code for code, _, _ in results.values())
    assert codes == [0, 3], results
    winner = next(tag for tag, (code, _, _) in results.items() if code == 0)
    loser_err = next(err for code, _, err in results.values() if code == 3)
    assert "another release of" in loser_err and "pid" in loser_err, loser_err  # the holder, named
    assert load.failed == []
    assert service.get() == (200, winner)
    assert service.journal() is None  # no release left open
    from cdlib import keys

    store = service._store()
    try:
        assert store.get(keys.lock(service.name)) is None and store.get(keys.PROXY_LOCK) is None
    finally:
        store.close()
    running = [c for c in service.containers() if c[1] == "running"]
    assert len(running) == 2 and {c[3] for c in running} == {f"cdlibt-flow-web:{winner}"}


def test_two_services_sharing_one_proxy_release_at_once_without_dropping_a_request(two_services):
    a, b = two_services
    a.cli("release", "--tag", "v1", check=True)
    b.cli("release", "--tag", "v1", check=True)
    with Load(a.url + "version", threads=2) as load_a, Load(b.url + "version", threads=2) as load_b:
        procs = [_start(a, "release", "--tag", "v2"), _start(b, "release", "--tag", "v3")]
        results = [_finish(p) for p in procs]
    assert [code for code, _, _ in results] == [0, 0], results
    assert load_a.failed == [] and load_b.failed == []
    assert a.get() == (200, "v2") and b.get() == (200, "v3")
    conf = a.nginx_conf().decode()
    assert a.name in conf and b.name in conf  # one switch did not undo the other
    assert a.journal() is None and b.journal() is None
