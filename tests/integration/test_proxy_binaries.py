"""The real nginx and HAProxy accept what cdlib renders: ``nginx -t`` and ``haproxy -c`` on temporary files.

The golden files of tests/golden/ (written by tests/unit/test_nginx_render.py and test_haproxy_render.py)
and, as a property, whatever the descriptor parser accepts (the strategies of tests/unit/test_properties.py).
Nothing is started: each check is one run of the binary on a copy under tmp.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings

from cdlib.proxy.haproxy import HaproxyProxy
from cdlib.proxy.nginx import NginxProxy
from tests.unit import _render_cases as cases
from tests.unit.test_properties import SETTINGS, _accepted, _backend, descriptors, valid_mostly

pytestmark = pytest.mark.integration


# -- nginx itself accepts every golden file ----------------------------------------------------------
@pytest.mark.parametrize("name", cases.SCENARIOS)
def test_nginx_accepts_the_golden_files(tmp_path, name):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    prefix = tmp_path / "prefix"
    (prefix / "temp").mkdir(parents=True)
    conf = prefix / "nginx.conf"
    shutil.copyfile(cases.GOLDEN_ROOT / "nginx" / f"{name}.conf", conf)
    proc = subprocess.run([nginx, "-t", "-q", "-p", f"{prefix}/", "-c", str(conf)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


# -- haproxy itself accepts every golden file ----------------------------------------------------------
@pytest.mark.parametrize("name", cases.SCENARIOS)
def test_haproxy_accepts_the_golden_files(tmp_path, name):
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    cfg = tmp_path / "haproxy.cfg"
    shutil.copyfile(cases.GOLDEN_ROOT / "haproxy" / f"{name}.cfg", cfg)
    proc = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "[WARNING]" not in proc.stderr and "[ALERT]" not in proc.stderr, proc.stderr


# -- whatever the parser accepts, the proxies accept ---------------------------------------------------
@settings(max_examples=30, **SETTINGS)
@given(descriptors(m=valid_mostly))
def test_what_the_parser_accepts_nginx_accepts(data):
    spec = _accepted(data)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    with tempfile.TemporaryDirectory(prefix="cdlibt-prop-") as tmp:
        prefix = Path(tmp)
        (prefix / "temp").mkdir()
        (prefix / "admin").mkdir()  # the Lua balancer's admin socket: nginx -t binds it
        conf = prefix / "nginx.conf"
        conf.write_text(NginxProxy(prefix, listen=spec.proxy.listen).render([_backend(spec)]))
        proc = subprocess.run([nginx, "-t", "-q", "-p", f"{prefix}/", "-c", str(conf)], capture_output=True,
                              text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@settings(max_examples=30, **SETTINGS)
@given(descriptors(m=valid_mostly))
def test_what_the_parser_accepts_haproxy_accepts(data):
    spec = _accepted(data)
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    with tempfile.TemporaryDirectory(prefix="cdlibt-prop-") as tmp:
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(HaproxyProxy(Path(tmp), listen=spec.proxy.listen).render([_backend(spec)]))
        proc = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "[ALERT]" not in proc.stderr, proc.stderr
