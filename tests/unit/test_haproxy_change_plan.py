"""Which changes of haproxy.cfg the runtime API applies without a reload, and what it sends.

The classifier is pure (two texts in, a mode and a reason out). The runtime side runs against a
double of the admin socket that answers ``show servers state``, ``show stat`` and ``set server`` the
way HAProxy 2.6 does, and records every command, so the order (new servers ready before any old
one stops taking requests; drained before maintenance) is checked without a binary.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cdlib.errors import ProxyError
from cdlib.model import Backend
from cdlib.proxy.haproxy import HaproxyProxy, classify_change, parse_config
from tests.unit._render_cases import LISTEN, api, demo

DIR = Path("/srv/cdlib/haproxy")


def proxy(**kwargs) -> HaproxyProxy:
    return HaproxyProxy(DIR, listen=LISTEN, **kwargs)


def text(*backends: Backend, **kwargs) -> str:
    return proxy(**kwargs).render(list(backends))


def green(*ports: int) -> Backend:
    return demo("green", servers=tuple(("127.0.0.1", p) for p in ports))


BLUE = demo()  # blue on 127.0.0.1:32001 and :32002


# -- the classifier ----------------------------------------------------------------------------------
def test_the_same_text_is_nothing_to_do():
    assert classify_change(text(BLUE), text(BLUE)) == ("none", "the configuration is unchanged")


@pytest.mark.parametrize("after", [
    [green(32011, 32012), api()],  # a color switch
    [green(32011), api()],  # the other color with fewer instances
    [demo(servers=(("127.0.0.1", 32001),)), api()],  # one instance fewer
    [demo(servers=(("127.0.0.1", 32001), ("127.0.0.1", 32002), ("127.0.0.1", 32003))), api()],  # one more
    [demo(servers=(("::1", 9000),)), api()],  # IPv6
])
def test_a_change_of_servers_goes_by_the_runtime_api(after):
    mode, why = classify_change(text(BLUE, api()), text(*after))
    assert mode == "runtime", why
    assert why.startswith("only the servers of backend demo change") and "without a reload" in why


def test_a_new_release_comment_alone_is_runtime_with_nothing_to_set():
    other = Backend("demo", "blue", "r-0002", BLUE.routes, BLUE.servers)
    mode, why = classify_change(text(BLUE), text(other))
    assert (mode, why) == ("runtime", "only comments change (colors, releases): nothing to do but write the file")


@pytest.mark.parametrize("before, after, words", [
    ([BLUE], [BLUE, api()], "backend api is new"),
    ([BLUE, api()], [BLUE], "backend api is gone"),
    ([BLUE], [demo(paths=("/shop/",))], "frontend cdlib changes (routes, hosts, TLS or listen addresses)"),
    ([BLUE], [green(*range(32010, 32015))], "backend demo needs 16 server slots instead of 8"),
    ([BLUE], [demo(servers=(("127.0.0.1", 32001),), paths=("/demo/",), connect_timeout=1.0)],
     "backend demo changes (timeouts, body size, probe or other settings)"),
    ([BLUE], [demo(servers=(("127.0.0.1", 32001),), paths=("/demo/",), max_body=10)], "backend demo changes"),
    ([BLUE], [demo(servers=(("web-1", 8080),))], "is the host name web-1: the runtime API sets IP addresses only"),
    ([BLUE], [demo(servers=())], "backend demo changes"),  # no instance left: its own 503 answer
])
def test_what_needs_a_reload_is_named(before, after, words):
    mode, why = classify_change(text(*before), text(*after))
    assert mode == "reload" and words in why, why


def test_another_listen_address_is_a_reload():
    other = HaproxyProxy(DIR, listen="127.0.0.1:9990").render([BLUE])
    assert classify_change(text(BLUE), other) == ("reload", "frontend cdlib changes (routes, hosts, TLS or "
                                                            "listen addresses)")


def test_renewed_certificates_are_a_reload():
    a = text(BLUE) + "# tls material sha256:" + "a" * 64 + "\n"
    b = text(green(32011)) + "# tls material sha256:" + "b" * 64 + "\n"
    assert classify_change(a, b) == ("reload", "the TLS certificates change (a certificate or key file was renewed)")
    assert classify_change(text(BLUE), b)[0] == "reload"
    assert classify_change(a, text(green(32011)) + "# tls material sha256:" + "a" * 64 + "\n")[0] == "runtime"


def test_a_template_that_writes_the_color_elsewhere_is_a_reload(tmp_path):
    override = tmp_path / "color.cfg.j2"
    override.write_text('{% extends "haproxy.cfg.j2" %}{% block backend_extra %}'
                        "    http-response set-header X-Team-Color {{ b.color }}\n{% endblock %}")
    p = HaproxyProxy(DIR, listen=LISTEN, template=override)
    mode, why = classify_change(p.render([BLUE]), p.render([green(32011)]))
    assert mode == "reload" and "backend demo changes" in why


def test_parse_config_reads_every_slot():
    parsed = parse_config(text(green(32011), api()))
    assert parsed.slots[("demo", "green_1")] == ("127.0.0.1", 32011, True)
    assert parsed.slots[("demo", "blue_1")] == ("0.0.0.0", 1, False)
    assert parsed.slots[("api", "green_1")] == ("10.0.0.7", 8080, True)
    assert len(parsed.slots) == 16
    assert "server green_1 check inter 1s fall 2 rise 2" in parsed.sections["backend demo"]


def test_a_template_without_the_admin_socket_reloads(tmp_path):
    override = tmp_path / "no-admin.cfg.j2"
    override.write_text((Path(__file__).resolve().parents[2] / "cdlib/proxy/templates/haproxy.cfg.j2").read_text()
                        .replace("    stats socket {{ dir | cfg_token }}/admin.sock mode 600 level admin\n", ""))
    p = HaproxyProxy(DIR, listen=LISTEN, template=override)
    old, new = p.render([BLUE]), p.render([green(32011)])
    assert "stats socket" not in old and classify_change(old, new)[0] == "runtime"
    ok, why = p._live_plan(old.encode(), new.encode())
    assert ok is False and "opens no admin socket" in why


def test_a_proxy_with_the_runtime_api_off_reloads_everything():
    old, new = text(BLUE).encode(), text(green(32011)).encode()
    assert proxy()._live_plan(old, new)[0] is True
    ok, why = proxy(runtime_api=False)._live_plan(old, new)
    assert ok is False and "runtime API is off" in why


# -- the runtime side, against a double of the admin socket ------------------------------------------
class FakeAdmin:
    """The servers of one running worker, as HAProxy 2.6's admin socket shows and changes them."""

    FMAINT, FDRAIN = 0x01, 0x08

    def __init__(self, config: str):
        self.servers = {key: {"addr": a, "port": p, "admin": 0 if on else self.FMAINT | 0x04, "scur": 0}
                        for key, (a, p, on) in parse_config(config).slots.items()}
        self.log: list[str] = []
        self.refuse: str | None = None  # a command answered with an error
        self.sessions_left: dict[tuple[str, str], list[int]] = {}  # scur answers, one per 'show stat'

    def __call__(self, command: str, timeout: float = 2.0) -> str:
        if command == "show servers state":
            rows = [f"3 {be} {i} {srv} {s['addr']} {0 if s['admin'] & 0x23 else 2} {s['admin']} 1 1 0 6 3 0 14 0 0 "
                    f"0 - {s['port']} - 0 0 - - 0" for i, ((be, srv), s) in enumerate(sorted(self.servers.items()))]
            return ("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
                    "srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health "
                    "srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord "
                    "srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n"
                    + "\n".join(rows) + "\n\n")
        if command == "show stat":
            lines = ["# pxname,svname,qcur,qmax,scur,smax"]
            for be, srv in sorted(self.servers):
                left = self.sessions_left.get((be, srv))
                scur = left.pop(0) if left else 0
                lines.append(f"{be},{srv},0,0,{scur},0")
            return "\n".join(lines) + "\n\n"
        self.log.append(command)
        if self.refuse and self.refuse in command:
            return "No such server.\n"
        words = command.split()
        be, srv = words[2].split("/")
        s = self.servers[(be, srv)]
        if words[3] == "addr":
            s["addr"], s["port"] = words[4], int(words[6])
            return "IP changed from 'x' to 'y' by 'stats socket command'\n"
        state = words[4]
        s["admin"] = {"ready": s["admin"] & 0x04, "drain": (s["admin"] & 0x04) | self.FDRAIN,
                      "maint": (s["admin"] & 0x04) | self.FMAINT}[state]
        return "\n"


def live(before: str, after: str, drain_timeout: float = 15.0) -> tuple[HaproxyProxy, FakeAdmin, dict]:
    p = proxy(drain_timeout=drain_timeout)
    admin = FakeAdmin(before)
    p.admin_command = admin  # type: ignore[method-assign]
    return p, admin, admin.servers


def test_a_color_switch_readies_the_new_servers_before_draining_the_old():
    before, after = text(BLUE), text(green(32011, 32012))
    p, admin, servers = live(before, after)
    timings = p._apply_live(before.encode(), after.encode())
    assert set(timings) == {"reload", "runtime", "drain"} and timings["reload"] == 0.0
    assert admin.log == [
        "set server demo/green_1 addr 127.0.0.1 port 32011",
        "set server demo/green_1 state ready",
        "set server demo/green_2 addr 127.0.0.1 port 32012",
        "set server demo/green_2 state ready",
        "set server demo/blue_1 state drain",
        "set server demo/blue_2 state drain",
        "set server demo/blue_1 state maint",
        "set server demo/blue_1 addr 0.0.0.0 port 1",
        "set server demo/blue_2 state maint",
        "set server demo/blue_2 addr 0.0.0.0 port 1",
    ]
    assert servers[("demo", "green_1")] == {"addr": "127.0.0.1", "port": 32011, "admin": 0x04, "scur": 0}
    assert servers[("demo", "blue_1")]["admin"] & 0x01 and servers[("demo", "blue_1")]["addr"] == "0.0.0.0"


def _ready_first(log: list[str]) -> bool:
    readies = [i for i, c in enumerate(log) if c.endswith("state ready")]
    drains = [i for i, c in enumerate(log) if c.endswith("state drain")]
    maints = [i for i, c in enumerate(log) if c.endswith("state maint")]
    assert readies and drains and maints
    assert max(readies) < min(drains), log  # nothing stops taking requests before the new servers take them
    assert max(drains) < min(maints), log
    return True


def test_the_order_is_ready_then_drain_then_maintenance():
    before, after = text(BLUE), text(green(32011, 32012))
    p, admin, _ = live(before, after)
    p._apply_live(before.encode(), after.encode())
    assert _ready_first(admin.log)


def test_the_old_servers_are_drained_until_their_requests_are_done():
    before, after = text(BLUE), text(green(32011))
    p, admin, _ = live(before, after)
    admin.sessions_left[("demo", "blue_1")] = [2, 1, 1]  # in flight during three looks, then none
    p._apply_live(before.encode(), after.encode())
    maint = admin.log.index("set server demo/blue_1 state maint")
    assert admin.log.index("set server demo/blue_1 state drain") < maint
    assert admin.sessions_left[("demo", "blue_1")] == []  # it looked until they were done


def test_a_half_done_change_converges_and_nothing_is_sent_twice():
    before, after = text(BLUE), text(green(32011))
    p, admin, servers = live(before, after)
    admin.refuse = "demo/blue_2 state drain"
    with pytest.raises(ProxyError, match=r"refused 'set server demo/blue_2 state drain': No such server"):
        p._apply_live(before.encode(), after.encode())
    admin.refuse, admin.log = None, []
    p._apply_live(before.encode(), after.encode())
    assert "set server demo/green_1 state ready" not in admin.log  # already serving
    assert servers[("demo", "blue_2")]["admin"] & 0x01
    # and back: the undo is the same call the other way
    admin.log = []
    p._apply_live(after.encode(), before.encode())
    assert servers[("demo", "blue_1")] == {"addr": "127.0.0.1", "port": 32001, "admin": 0, "scur": 0}
    assert servers[("demo", "green_1")]["admin"] & 0x01 and servers[("demo", "green_1")]["addr"] == "0.0.0.0"
    assert _ready_first(admin.log)


def test_a_slot_the_worker_does_not_have_is_refused_before_any_command():
    before, after = text(BLUE), text(green(32011), api())
    p, admin, _ = live(before, after)
    with pytest.raises(ProxyError, match="has no server api/blue_1: it did not load the active configuration"):
        p._apply_live(before.encode(), after.encode())
    assert admin.log == []


def test_a_command_the_worker_did_not_carry_out_is_found_by_reading_back():
    before, after = text(BLUE), text(green(32011))
    p, admin, servers = live(before, after)
    real = admin.__call__

    def lazy(command: str, timeout: float = 2.0) -> str:
        if command == "set server demo/green_1 state ready":
            admin.log.append(command)
            return "\n"  # accepted, but nothing changed
        return real(command, timeout)

    p.admin_command = lazy  # type: ignore[method-assign]
    with pytest.raises(ProxyError, match="did not set server demo/green_1 as asked"):
        p._apply_live(before.encode(), after.encode())

