"""nginx's dynamic upstreams without nginx: which changes go live through the Lua balancer and
which need a reload (the classifier behind plan_apply), the servers table read back from a
rendered file, and when the Lua module is used at all."""

from __future__ import annotations

import os
import stat

import pytest

from cdlib.model import Backend, Routes
from cdlib.proxy import nginx as nx
from cdlib.proxy.nginx import NginxProxy, classify, dynamic_servers, lua_available, nginx_context
from cdlib.render import render_template
from tests.unit._render_cases import LISTEN, api, demo

SOCKET = "/var/lib/cdlib/nginx/admin/nginx.sock"


def render(*backends: Backend, dynamic: bool = True, tls_listen: str | None = None, digest: str = "") -> str:
    text = render_template("nginx.conf.j2", nginx_context(list(backends), listen=LISTEN, dynamic=dynamic,
                                                          admin_socket=SOCKET, tls_listen=tls_listen))
    return text + digest


def servers(*ports: int) -> tuple[tuple[str, int], ...]:
    return tuple(("127.0.0.1", p) for p in ports)


BLUE = demo("blue", servers(32001, 32002))
GREEN = demo("green", servers(32003, 32004))


# -- the servers table ------------------------------------------------------------------------------
def test_the_servers_table_reads_back_what_was_rendered():
    assert dynamic_servers(render(BLUE, api())) == {
        "api": "green r-0042 10.0.0.7:8080", "demo": "blue r-0001 127.0.0.1:32001 127.0.0.1:32002"}
    assert dynamic_servers(render()) == {}
    assert dynamic_servers(render(BLUE, dynamic=False)) is None


def test_a_service_without_servers_has_no_entry():
    assert dynamic_servers(render(demo(servers=()), api())) == {"api": "green r-0042 10.0.0.7:8080"}


# -- the classifier ------------------------------------------------------------------------------------
def test_a_color_switch_goes_live():
    mode, why, changes = classify(render(BLUE, api()), render(GREEN, api()))
    assert mode == "runtime"
    assert changes == {"demo": "green r-0001 127.0.0.1:32003 127.0.0.1:32004"}  # api is left alone
    assert "demo blue -> green" in why and "without a reload" in why


def test_new_servers_of_the_same_color_go_live():
    mode, why, changes = classify(render(BLUE), render(demo("blue", servers(32001, 32002, 32005))))
    assert mode == "runtime" and "demo (same color)" in why and list(changes) == ["demo"]


def test_a_new_release_id_alone_goes_live():
    other = Backend("demo", "blue", "r-0002", BLUE.routes, BLUE.servers)
    assert classify(render(BLUE), render(other))[0] == "runtime"


def test_unchanged_is_none():
    assert classify(render(BLUE), render(BLUE)) == ("none", "the configuration is unchanged", {})


def test_no_configuration_yet_is_a_reload():
    mode, why, _ = classify(None, render(BLUE))
    assert mode == "reload" and "first apply starts it" in why


@pytest.mark.parametrize("old, new, words", [
    ((BLUE,), (BLUE, api()), "service api comes in"),
    ((BLUE, api()), (BLUE,), "service api leaves"),
    ((demo(servers=()),), (BLUE,), "service demo comes in"),  # from 503 to an upstream
    ((BLUE,), (demo(paths=("/demo/", "/more/")),), "the routes change"),
    ((BLUE,), (Backend("demo", "blue", "r-0001", Routes(paths=("/demo/",), read_timeout=5.0), BLUE.servers),),
     "the proxy settings change"),
    ((BLUE,), (Backend("demo", "blue", "r-0001", Routes(paths=("/demo/",), max_body=5), BLUE.servers),),
     "the body size change"),
])
def test_other_changes_reload_and_say_what_changed(old, new, words):
    mode, why, changes = classify(render(*old), render(*new))
    assert (mode, changes) == ("reload", {}) and words in why, why


def test_a_renewed_certificate_reloads():
    mode, why, _ = classify(render(BLUE, digest="# tls material sha256:aa\n"),
                            render(GREEN, digest="# tls material sha256:bb\n"))
    assert mode == "reload" and "certificate" in why


def test_static_upstreams_always_reload():
    mode, why, _ = classify(render(BLUE, dynamic=False), render(GREEN, dynamic=False))
    assert mode == "reload" and "Lua module" in why
    mode, why, _ = classify(render(BLUE, dynamic=False), render(GREEN))
    assert mode == "reload" and "no dynamic upstreams yet" in why


def test_a_host_name_server_turns_dynamic_routing_off_and_the_switch_reloads():
    named = demo("green", (("app.internal", 8080),))
    assert classify(render(BLUE), render(named))[0] == "reload"


def test_a_template_that_writes_the_color_elsewhere_reloads(tmp_path):
    override = tmp_path / "colored.conf.j2"
    override.write_text('{% extends "nginx.conf.j2" %}\n{% block location_extra %}\n'
                        '            add_header X-Color {{ b.color | cfg_token }};\n{% endblock %}\n')
    p = NginxProxy("/var/lib/cdlib/nginx", listen=LISTEN, template=override, dynamic=True)
    assert p._live_plan(p.render([BLUE]).encode(), p.render([GREEN]).encode())[0] is False
    plain = NginxProxy("/var/lib/cdlib/nginx", listen=LISTEN, dynamic=True)
    assert plain._live_plan(plain.render([BLUE]).encode(), plain.render([GREEN]).encode())[0] is True


def test_no_live_change_when_the_running_file_opens_no_admin_socket():
    p = NginxProxy("/var/lib/cdlib/nginx", listen=LISTEN, dynamic=True)
    old = p.render([BLUE]).replace(f"listen unix:{p.admin_socket};", "listen unix:/elsewhere.sock;")
    ok, why = p._live_plan(old.encode(), old.replace("blue r-0001", "green r-0001").encode())
    assert ok is False and "opens no admin socket" in why


def test_plan_apply_without_a_running_nginx_is_a_reload(tmp_path):
    p = NginxProxy(tmp_path / "nginx", listen=LISTEN, dynamic=True)
    assert p.plan_apply(p.render([BLUE]))[0] == "reload"
    (tmp_path / "nginx").mkdir()
    (tmp_path / "nginx" / "nginx.conf").write_text(p.render([BLUE]))
    # the file is the text already, but no nginx runs it (it died): the apply starts it
    assert p.plan_apply(p.render([BLUE])) == ("reload", "nginx is not running: apply starts it")
    mode, why = p.plan_apply(p.render([GREEN]))
    assert mode == "reload" and "not running" in why


# -- when the Lua module is used ------------------------------------------------------------------------
def test_lua_only_for_debians_binary_with_both_modules(tmp_path, monkeypatch):
    other = tmp_path / "nginx"
    other.write_text("#!/bin/sh\n")
    other.chmod(other.stat().st_mode | stat.S_IXUSR)
    assert lua_available(str(other)) is False  # a module must be built for the nginx that loads it
    assert lua_available(str(tmp_path / "missing")) is False
    monkeypatch.setattr(nx, "DEBIAN_NGINX", str(other))
    monkeypatch.setattr(nx, "LUA_MODULES", (str(tmp_path / "ndk.so"), str(tmp_path / "lua.so")))
    assert lua_available(str(other)) is False
    for name in ("ndk.so", "lua.so"):
        (tmp_path / name).write_bytes(b"")
    assert lua_available(str(other)) is True


def test_an_admin_socket_path_too_long_for_a_unix_socket_keeps_static_upstreams(tmp_path, monkeypatch):
    monkeypatch.setattr(nx, "lua_available", lambda binary: True)
    assert NginxProxy(tmp_path / "short", listen=LISTEN).dynamic is True
    deep = tmp_path / ("d" * 120)
    assert NginxProxy(deep, listen=LISTEN).dynamic is False
    spaced = NginxProxy(tmp_path / "cdlib home", listen=LISTEN)  # nginx.conf names the socket as one token
    assert spaced.dynamic is False and "upstream demo_blue" in spaced.render([BLUE])


def test_the_lua_code_is_written_into_the_file_whole():
    text = render(BLUE)
    code = nx.LUA_SOURCE.read_text()
    assert code in text and "{{" not in code and "{%" not in code
    assert os.path.basename(SOCKET) in text


# -- the live change against a stand-in admin socket --------------------------------------------------
class FakeAdmin:
    """The admin endpoint's protocol (GET: service and inflight lines; POST: lines to set), with
    requests in flight that end after a number of reads."""

    def __init__(self, services: dict[str, str], inflight: dict[str, int] | None = None, take: bool = True):
        self.services = dict(services)
        self.inflight = dict(inflight or {})
        self.take = take
        self.posts: list[str] = []

    def __call__(self, method: str, body: str | None = None) -> str:
        if method == "POST":
            assert body is not None
            self.posts.append(body)
            if self.take:
                for line in body.splitlines():
                    name, entry = line.split(" ", 1)
                    self.services[name] = entry
            return "ok\n"
        out = [f"service {n} {e}" for n, e in sorted(self.services.items())]
        out += [f"inflight {a} {c}" for a, c in sorted(self.inflight.items()) if c > 0]
        for address in self.inflight:  # every read, one request in flight ends
            self.inflight[address] = max(0, self.inflight[address] - 1)
        return "\n".join(out) + "\n"


def live_proxy(tmp_path, admin: FakeAdmin) -> NginxProxy:
    p = NginxProxy(tmp_path / "nginx", listen=LISTEN, dynamic=True, drain_timeout=5)
    p._admin = admin  # type: ignore[method-assign]
    return p


def test_a_live_change_sets_only_what_differs_and_waits_for_the_old_servers(tmp_path):
    old, new = render(BLUE, api()).encode(), render(GREEN, api()).encode()
    admin = FakeAdmin(dynamic_servers(old.decode()) or {}, inflight={"127.0.0.1:32001": 3, "10.0.0.7:8080": 50})
    timings = live_proxy(tmp_path, admin)._apply_live(old, new)
    assert admin.posts == ["demo green r-0001 127.0.0.1:32003 127.0.0.1:32004\n"]
    assert admin.services["demo"].startswith("green ") and admin.inflight["127.0.0.1:32001"] == 0
    assert admin.inflight["10.0.0.7:8080"] > 0  # api kept its server: its requests are not waited for
    assert timings["reload"] == 0.0 and "drain_left" not in timings


def test_a_live_change_converges_from_a_half_done_one(tmp_path):
    old, new = render(BLUE).encode(), render(GREEN).encode()
    admin = FakeAdmin(dynamic_servers(new.decode()) or {})  # the servers already went live
    live_proxy(tmp_path, admin)._apply_live(old, new)
    assert admin.posts == []
    live_proxy(tmp_path, admin)._apply_live(new, old)  # the undo: back to the old servers
    assert admin.services == dynamic_servers(old.decode())


def test_servers_the_admin_socket_did_not_take_are_an_error(tmp_path):
    from cdlib.errors import ProxyError

    old, new = render(BLUE).encode(), render(GREEN).encode()
    admin = FakeAdmin(dynamic_servers(old.decode()) or {}, take=False)
    with pytest.raises(ProxyError, match="did not take the servers of demo"):
        live_proxy(tmp_path, admin)._apply_live(old, new)


def test_requests_that_never_end_are_left_to_the_stop_of_the_old_color(tmp_path, monkeypatch):
    old, new = render(BLUE).encode(), render(GREEN).encode()
    admin = FakeAdmin(dynamic_servers(old.decode()) or {}, inflight={"127.0.0.1:32002": 10**9})
    p = live_proxy(tmp_path, admin)
    monkeypatch.setattr(p, "_forced_stop_after", lambda: 0)  # the bound: worker_shutdown_timeout's
    assert p._apply_live(old, new)["drain_left"] > 0
