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


# ---- failures the verb did not handle: exit 5, never "rolled back" ---------------------------------
@pytest.fixture
def signals_restored():
    import signal

    saved = {sig: signal.getsignal(sig) for sig in cli.SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _raise(exc):
    def dispatch(args, printer):
        raise exc
    return dispatch


def test_an_unexpected_exception_exits_5_and_writes_the_result(tmp_path, monkeypatch, capsys, signals_restored):
    monkeypatch.delenv("CDLIB_DEBUG", raising=False)
    monkeypatch.setattr(cli, "_dispatch", _raise(KeyError("routes")))
    result = tmp_path / "out" / "r.json"
    code = cli.main(["deploy", "--result-file", str(result)])
    assert code == cli.EXIT_UNKNOWN == 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("cdlib: error: deploy failed with an unexpected KeyError: 'routes'")
    assert "run 'cdlib status', then 'cdlib rollback'" in err
    doc = json.loads(result.read_text())
    assert doc["ok"] is False and doc["exit_code"] == 5 and doc["error"]["type"] == "KeyError"
    assert not list(result.parent.glob(".*.tmp"))  # written whole, through a temporary file


def test_cdlib_debug_adds_the_traceback_after_the_one_line_error(monkeypatch, capsys, signals_restored):
    monkeypatch.setenv("CDLIB_DEBUG", "1")
    monkeypatch.setattr(cli, "_dispatch", _raise(ZeroDivisionError("division by zero")))
    assert cli.main(["status"]) == 5
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("cdlib: error: status failed with an unexpected ZeroDivisionError")
    assert lines[1] == "Traceback (most recent call last):" and lines[-1] == "ZeroDivisionError: division by zero"


def test_an_unexpected_exception_never_shows_a_secret(monkeypatch, capsys, signals_restored):
    monkeypatch.setenv("CDLIB_DEBUG", "1")
    monkeypatch.setenv("DEPLOY_API_TOKEN", "tok-0123456789")
    monkeypatch.setattr(cli, "_dispatch", _raise(RuntimeError("refused tok-0123456789")))
    assert cli.main(["deploy", "--json"]) == 5
    out = capsys.readouterr()
    assert "tok-0123456789" not in out.out + out.err
    assert json.loads(out.out)["error"]["type"] == "RuntimeError"


@pytest.mark.parametrize("verb,code", [
    (["switch"], 5), (["test", "post-integration"], 5), (["cleanup"], 5), (["rollback"], 5), (["deploy"], 5),
    (["release"], 5), (["status"], 1), (["history"], 1), (["test", "pre-deployment"], 1), (["build"], 1),
])
def test_a_raised_error_of_a_release_verb_is_not_a_rollback(tmp_path, monkeypatch, capsys, signals_restored, verb, code):
    """A verb that rolled back returns its outcome (exit 1); an error it raised instead rolled nothing
    back: inside a release that is exit 5, outside one a plain failure."""
    from cdlib.errors import StoreError

    monkeypatch.setattr(cli, "_dispatch", _raise(StoreError("etcd store 127.0.0.1:2379 cannot be reached")))
    result = tmp_path / "r.json"
    assert cli.main([*verb, "--result-file", str(result)]) == code
    doc = json.loads(result.read_text())
    assert doc["exit_code"] == code and doc["error"]["type"] == "StoreError"
    assert ("cdlib rollback" in doc["message"]) == (code == 5)
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("verb,code", [(["release"], 5), (["rollback"], 5), (["status"], 1)])
def test_an_interrupted_release_verb_that_did_not_finish_its_rollback_exits_5(tmp_path, monkeypatch, signals_restored,
                                                                               verb, code):
    """plan.Interrupted escaping the verb means it neither finished nor rolled back (a rollback
    that completes returns its outcome): never exit 1 for a release verb."""
    from cdlib.plan import Interrupted

    monkeypatch.setattr(cli, "_dispatch", _raise(Interrupted()))
    result = tmp_path / "r.json"
    assert cli.main([*verb, "-q", "--result-file", str(result)]) == code
    doc = json.loads(result.read_text())
    assert doc["exit_code"] == code and doc["error"]["type"] == "Interrupted"


def test_a_second_sigterm_during_the_rollback_is_exit_5_not_1(tmp_path, monkeypatch, signals_restored):
    """SIGTERM rolls the release back; a second one while the rollback closes the record leaves
    the state unknown: exit 5 with the result written, not a traceback or exit 1."""
    import signal

    from cdlib import journal
    from cdlib import verbs as rel
    from tests.support.world import World

    world = World(tmp_path)
    assert rel.release(world.ctx("v1")).ok
    original_apply, original_close = world.proxy.apply, journal.Journal.close

    def apply(text):
        original_apply(text)
        os.kill(os.getpid(), signal.SIGTERM)

    def close(self, *a, **kw):
        if a and a[0] == "rolled-back":
            os.kill(os.getpid(), signal.SIGTERM)  # delivered while the record is being closed
        return original_close(self, *a, **kw)

    world.proxy.apply = apply
    monkeypatch.setattr(journal.Journal, "close", close)
    monkeypatch.setattr(cli, "_dispatch", lambda args, printer: rel.release(world.ctx("v2")))
    result = tmp_path / "r.json"
    code = cli.main(["release", "-q", "--result-file", str(result)])
    assert code == 5
    doc = json.loads(result.read_text())
    assert doc["error"] == {"type": "Interrupted", "signal": "SIGTERM"}


def test_an_unwritable_result_file_is_exit_5_and_the_outcome_is_kept(tmp_path, monkeypatch, capsys, signals_restored):
    from cdlib.model import Outcome

    done = Outcome("deploy", "shop", True, 0, "shop blue is up and healthy beside the live color")
    monkeypatch.setattr(cli, "_dispatch", lambda args, printer: done)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = cli.main(["deploy", "--json", "--result-file", str(blocker / "r.json")])
    assert code == 5
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and out.err.startswith(f"cdlib: error: cannot write the result file {blocker / 'r.json'}")
    assert "deploy itself ended with exit 0 (shop blue is up" in out.err and "cdlib rollback" in out.err
    doc = json.loads(out.out)  # still printed with --json
    assert doc["exit_code"] == 5 and doc["ok"] is False and doc["verb_exit_code"] == 0
    assert doc["error"]["type"] == "ResultFileError" and doc["message"] == done.message


def test_an_unwritable_result_file_after_a_failure_is_exit_5_too(tmp_path, monkeypatch, capsys, signals_restored):
    from cdlib.errors import LockHeld

    monkeypatch.setattr(cli, "_dispatch", _raise(LockHeld("another release of shop is running: held by bob@h")))
    (tmp_path / "d").write_text("")
    assert cli.main(["deploy", "--result-file", str(tmp_path / "d" / "r.json")]) == 5
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "cdlib: error: another release of shop is running: held by bob@h"
    assert err[1].startswith("cdlib: error: cannot write the result file") and "exit 3" in err[1]


def test_an_error_while_reporting_is_exit_5_with_the_result_written(tmp_path, monkeypatch, capsys, signals_restored):
    from cdlib.model import Outcome

    monkeypatch.setattr(cli, "_dispatch", lambda args, printer: Outcome("switch", "shop", True, 0, "switched"))
    monkeypatch.setattr(cli, "_print_human", _raise(RuntimeError("printer bug")))
    monkeypatch.setattr(cli, "_report", lambda args, outcome: cli._print_human(args, outcome))
    result = tmp_path / "r.json"
    assert cli.main(["switch", "--result-file", str(result)]) == 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "RuntimeError: printer bug" in err
    assert json.loads(result.read_text())["error"]["type"] == "RuntimeError"


# ---- missing optional clients ---------------------------------------------------------------------
MISSING_ETCD = ("import sys; sys.modules['etcd3gw'] = None  # as if cdlib was installed without the etcd extra\n"
                "from cdlib import cli; sys.exit(cli.main(sys.argv[1:]))\n")


def test_a_missing_client_is_one_line_exit_2_naming_the_extra(tmp_path):
    f = tmp_path / "cdlib.yml"
    f.write_text("service: shop\nport: 80\nimage: r/shop:1\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), CDLIB_STORE="etcd://127.0.0.1:2379")
    proc = subprocess.run([sys.executable, "-c", MISSING_ETCD, "deploy", "-f", str(f), "--result-file", "r.json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("cdlib: error: the etcd store needs the Python package etcd3gw")
    assert "pip install 'cdlib[etcd]'" in proc.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["exit_code"] == 2 and doc["error"]["type"] == "MissingClient" and doc["error"]["extra"] == "etcd"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cdlib.yml", "r.json"]  # nothing else touched


def test_the_missing_client_check_comes_before_anything_changes(monkeypatch):
    """wiring.ports_for refuses up front; the adapter's own import says the same thing."""
    from cdlib import config, extras, wiring
    from cdlib.errors import MissingClient
    from cdlib.store.memory import MemoryStore

    spec = config.parse({"service": "shop", "port": 80, "image": "r/shop:1"}, "cdlib.yml", ROOT, {})
    monkeypatch.setitem(sys.modules, "consul", None)
    with pytest.raises(MissingClient) as info:
        wiring.ports_for(spec, store_url="consul://127.0.0.1:8500")
    assert str(info.value) == ("the Consul store needs the Python package py-consul, which is not installed: "
                               "pip install 'cdlib[consul]'")
    assert info.value.exit_code == 2
    wiring.ports_for(spec, store=MemoryStore())  # a store given ready-made needs no client
    with pytest.raises(MissingClient, match=r"cdlib\[consul\]"):
        extras.require("consul.exceptions", "consul")


def test_a_directory_named_like_a_client_is_not_the_client(tmp_path, monkeypatch):
    """The repository's jenkins/ catalog directory on sys.path is a namespace package, not python-jenkins."""
    from cdlib import extras
    from cdlib.errors import MissingClient

    (tmp_path / "cdlibfakeclient").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not extras.available("cdlibfakeclient")
    with pytest.raises(MissingClient, match=r"pip install 'cdlib\[x\]'"):
        extras.require("cdlibfakeclient", "x")
    assert extras.available("json")


def test_store_adapters_import_their_client_through_extras(monkeypatch):
    from cdlib.errors import MissingClient
    from cdlib.store.etcd import EtcdStore

    monkeypatch.setitem(sys.modules, "etcd3gw", None)
    monkeypatch.setitem(sys.modules, "etcd3gw.exceptions", None)
    with pytest.raises(MissingClient, match=r"pip install 'cdlib\[etcd\]'"):
        EtcdStore("etcd://127.0.0.1:2379").get("cdlib/x")


# ---- the parser -------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,line", [
    (["--tag", "v2", "release"], "--tag goes after the verb: cdlib release --tag v2"),
    (["-f", "x.yml", "--lock-wait=30", "deploy", "-q"], "--lock-wait goes after the verb: cdlib -f x.yml deploy -q --lock-wait=30"),
    (["--next", "color"], "--next goes after the verb: cdlib color --next"),
    (["--to", "r-1", "--lock-wait", "5", "rollback"],
     "--to, --lock-wait go after the verb: cdlib rollback --to r-1 --lock-wait 5"),
])
def test_a_verb_option_before_the_verb_says_where_it_goes(args, line):
    proc = run(*args)
    assert proc.returncode == 2
    assert proc.stderr == f"cdlib: error: {line}\n"


def test_an_option_no_verb_knows_is_left_to_the_parser():
    assert cli.misplaced(cli.build_parser(), ["--bogus", "release"]) is None
    assert cli.misplaced(cli.build_parser(), ["-f", "--tag", "release"]) is None  # -f's value, however odd
    proc = run("--bogus", "status")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_rollback_previous_and_to_are_exclusive():
    proc = run("rollback", "--previous", "--to", "r-1")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "--previous" in proc.stderr and "--to" in proc.stderr


def test_rollback_previous_reaches_the_api_and_the_verb(monkeypatch, signals_restored):
    from types import SimpleNamespace

    from cdlib import api
    from cdlib import verbs as rel
    from cdlib.model import Outcome

    seen = {}

    def fake_api(file=None, **kw):
        seen["api"] = kw
        return Outcome("rollback", "shop", True, 0, "nothing to roll back")

    monkeypatch.setattr(api, "rollback", fake_api)
    assert cli.main(["rollback", "--previous", "-q"]) == 0
    assert seen["api"]["previous"] is True and seen["api"]["to"] is None
    assert cli.main(["rollback", "--to", "r-1", "-q"]) == 0
    assert seen["api"]["previous"] is False and seen["api"]["to"] == "r-1"
    monkeypatch.undo()

    def fake_verb(ctx, **kw):
        seen["verb"] = kw
        return Outcome("rollback", "shop", True, 0, "")

    monkeypatch.setattr(rel, "rollback", fake_verb)
    ports = SimpleNamespace(spec=SimpleNamespace(name="shop"))
    api.rollback(previous=True, lock_wait=2.0, ports=ports)
    assert seen["verb"] == {"to": None, "previous": True, "lock_wait": 2.0, "lock_ttl": rel.DEFAULT_LOCK_TTL}


@pytest.mark.parametrize("value", ["-1", "x", "1.5"])
def test_history_limit_must_be_a_whole_number(value):
    proc = run("history", "--limit", value)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "--limit" in proc.stderr and "whole number >= 0" in proc.stderr


def test_help_lists_every_exit_code():
    text = " ".join(cli.build_parser().format_help().split())
    assert "5 failed and the state is unknown (run 'cdlib status', then 'cdlib rollback')" in text
    assert "4 undo incomplete" in text and "3 lock held" in text


def test_status_and_render_say_which_way_the_next_proxy_change_goes(capsys):
    from cdlib.model import Outcome

    status = Outcome("status", "shop", data={
        "live": None, "next_color": "blue", "open_release": None, "lock": None, "instances": [], "drift": {},
        "proxy": {"kind": "haproxy", "url": "http://127.0.0.1:8880",
                  "next_change": {"mode": "runtime", "why": "only the servers of shop change", "for": "an apply"},
                  "replicas": [{"name": "edge-1", "digest": "sha256:" + "ab" * 32}]}})
    cli._print_status(status)
    out = capsys.readouterr().out
    assert ("proxy     haproxy http://127.0.0.1:8880  next change (an apply): runtime, only the servers of shop "
            "change") in out
    assert "  edge-1                           config sha256:abababababab\n" in out
    args = cli.build_parser().parse_args(["proxy", "render"])
    cli._print_human(args, Outcome("proxy", "shop", data={"config": "global\n",
                                                         "apply": {"mode": "reload", "why": "a new route"}}))
    printed = capsys.readouterr()
    assert printed.out == "global\n"
    assert printed.err == "cdlib: applying this would go by reload: a new route\n"
