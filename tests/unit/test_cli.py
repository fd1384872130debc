"""The CLI door: parsing, exit codes, JSON results, secrets, start-up cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdlib import cli

ROOT = Path(__file__).resolve().parents[2]


def run(*args, env=None, cwd=None):
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "cdlib", *args], capture_output=True, text=True, env=full,
                          cwd=cwd, timeout=60)


def test_help_imports_no_client_library():
    code = ("import sys, runpy; sys.argv=['cdlib','--help']\n"
            "try:\n    runpy.run_module('cdlib', run_name='__main__')\nexcept SystemExit: pass\n"
            "bad=[m for m in ('docker','jinja2','requests','yaml','etcd3gw','consul','jenkins') if m in sys.modules]\n"
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_every_verb_is_in_the_parser_and_the_api():
    import cdlib
    from cdlib.api import VERBS

    parser = cli.build_parser()
    verbs = set(parser._subparsers._group_actions[0].choices)
    assert set(VERBS) <= verbs
    for verb in VERBS:
        assert callable(getattr(cdlib, verb))


def test_common_options_work_before_and_after_the_verb():
    p = cli.build_parser()
    a = p.parse_args(["--json", "-f", "x.yml", "status"])
    b = p.parse_args(["status", "--json", "-f", "x.yml"])
    assert (a.json, a.file) == (b.json, b.file) == (True, "x.yml")


@pytest.mark.parametrize("args", [["deploy", "--bogus"], ["test", "smoke"], ["nosuchverb"], ["deploy", "--lock-wait", "x"]])
def test_bad_usage_exits_2_with_one_line(args):
    proc = run(*args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("cdlib: error:")


def test_bad_descriptor_exits_2_names_the_key_and_writes_the_result_file(tmp_path):
    f = tmp_path / "cdlib.yml"
    f.write_text("service: shop\nport: 80\nimage: r/shop:1\nroutes: {paths: ['/x;}']}\n")
    result = tmp_path / "out" / "result.json"
    proc = run("deploy", "-f", str(f), "--result-file", str(result), cwd=tmp_path)
    assert proc.returncode == 2
    assert "routes.paths[0]: expected" in proc.stderr and str(f) in proc.stderr
    doc = json.loads(result.read_text())
    assert doc["ok"] is False and doc["exit_code"] == 2
    assert not (tmp_path / ".cdlib").exists()  # nothing was touched


def test_color_and_status_json_on_an_empty_store(tmp_path):
    f = tmp_path / "cdlib.yml"
    f.write_text("service: shop\nport: 80\nimage: r/shop:1\n")
    store = f"sqlite:///{tmp_path / 's.db'}"
    proc = run("color", "--next", "-f", str(f), "--store", store, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["color"] == "blue"
    proc = run("history", "-f", str(f), "--store", store, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == ""


def test_secrets_from_the_environment_never_reach_the_output(tmp_path, monkeypatch):
    secret = "s3cr3t-t0ken-value"
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", secret)
    assert cli._redact(f"failed with token {secret}") == "failed with token ***"
    f = tmp_path / "cdlib.yml"
    f.write_text(f"service: shop\nport: 80\nimage: r/shop:1\nenv: {{TOKEN: {secret}}}\nstore: nope\n")
    proc = run("status", "-f", str(f), "--json", env={"CONSUL_HTTP_TOKEN": secret}, cwd=tmp_path)
    assert proc.returncode == 2
    assert secret not in proc.stdout + proc.stderr


def test_lock_held_result_names_the_service_and_the_holder(tmp_path):
    from cdlib import keys
    from cdlib.store.base import default_holder
    from cdlib.store.sqlite import SqliteStore

    f = tmp_path / "cdlib.yml"
    db = tmp_path / "s.db"
    f.write_text(f"service: shop\nport: 80\nimage: r/shop:1\nstore: sqlite:///{db}\n")
    store = SqliteStore(db)
    store.acquire_lock(keys.lock("shop"), default_holder(release="r-9", image="r/shop:0"), ttl=60)
    store.close()
    proc = run("deploy", "-f", str(f), "--json", cwd=tmp_path)
    assert proc.returncode == 3
    doc = json.loads(proc.stdout)
    assert doc["service"] == "shop"
    assert doc["error"]["type"] == "LockHeld" and doc["error"]["holder"]["release"] == "r-9"
    assert "token" not in doc["error"]["holder"]


def test_sigint_during_a_release_rolls_it_back_before_exit_1(tmp_path, monkeypatch):
    """Ctrl-C (or a SIGINT from the CI) must roll back like SIGTERM: exit 1 means rolled back."""
    import signal

    from cdlib import keys
    from cdlib import verbs as rel
    from tests.support.world import World

    world = World(tmp_path)
    assert rel.release(world.ctx("v1")).ok
    before = world.snapshot()
    original = world.proxy.apply

    def apply(text):
        original(text)
        os.kill(os.getpid(), signal.SIGINT)  # delivered here, right after the reload

    world.proxy.apply = apply
    monkeypatch.setattr(cli, "_dispatch", lambda args, printer: rel.release(world.ctx("v2")))
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        code = cli.main(["release", "-q"])
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert code == 1
    assert world.snapshot() == before and world.store.get(keys.release("shop")) is None


def test_a_store_url_with_credentials_is_not_echoed_when_it_is_refused(tmp_path, monkeypatch):
    from cdlib import api
    from cdlib.errors import ConfigError

    f = tmp_path / "cdlib.yml"
    f.write_text("service: shop\nport: 80\nimage: r/shop:1\n")
    for bad in ("etcdx://root:pa55word-x@h:2379", "etcd://root:pa55word-x@h:2379 x"):
        with pytest.raises(ConfigError) as info:
            api.load_spec(str(f), store=bad)
        assert "pa55word-x" not in str(info.value)
        monkeypatch.setenv("CDLIB_STORE", bad)
        with pytest.raises(ConfigError) as info:
            api.load_spec(str(f))
        assert "pa55word-x" not in str(info.value)
        monkeypatch.delenv("CDLIB_STORE")
    f.write_text("service: shop\nport: 80\nimage: r/shop:1\nstore: 'etcdx://root:pa55word-x@h:2379'\n")
    with pytest.raises(ConfigError) as info:
        api.load_spec(str(f))
    assert "pa55word-x" not in str(info.value)


def test_any_variable_named_like_a_secret_is_masked(monkeypatch):
    monkeypatch.setenv("SMOKE_API_TOKEN", "tok-123456")
    monkeypatch.setenv("DB_PASSWORD", "hunter22")
    monkeypatch.setenv("GREETING", "hello-world")
    line = cli._redact("suite printed tok-123456 and hunter22 and hello-world")
    assert line == "suite printed *** and *** and hello-world"
