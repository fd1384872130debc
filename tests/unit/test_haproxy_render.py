"""Rendering haproxy.cfg: golden files, the injection guard, template errors, determinism.

The golden files in tests/golden/haproxy/ double as documentation of what cdlib writes (the same
scenarios as tests/golden/nginx/, from tests/unit/_render_cases.py). They are rewritten only when
CDLIB_UPDATE_GOLDEN=1 is set; otherwise a difference fails the test. Rendering is pure, so the
directory below never exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cdlib.errors import ConfigError, ProxyError
from cdlib.model import Backend, Routes
from cdlib.proxy.haproxy import (
    _FAILED_RE,
    HaproxyProxy,
    _first_error_line,
    bind_address,
    duration,
    haproxy_context,
    slots_per_color,
    tls_files,
    tls_link,
)
from cdlib.render import render_template
from tests.unit import _render_cases as cases
from tests.unit._render_cases import LISTEN, TLS_LISTEN, api, demo, edge_backends

GOLDEN = cases.GOLDEN_ROOT / "haproxy"
DIR = Path("/srv/cdlib/haproxy")  # only written into the text: render() does no I/O
PROBED = "if { var(txn.probe) -m str 1 }"

OVERRIDE = """\
{% extends "haproxy.cfg.j2" %}
{% block defaults_extra %}
    # added by the service's own template
    option http-buffer-request
{% endblock %}
{% block backend_extra %}
    # {{ b.service | cfg_token }} streams reports: allow slow answers
    timeout server 300s
{% endblock %}
"""


def proxy(template: Path | None = None, **kwargs) -> HaproxyProxy:
    return HaproxyProxy(DIR, listen=LISTEN, template=template, **kwargs)


def section(text: str, header: str) -> str:
    """The lines of one section (``frontend cdlib``, ``backend demo_blue``) up to the next one."""
    start = text.index(f"\n{header}\n") + 1
    end = re.compile(r"^(global|defaults|frontend|backend) ", re.M).search(text, start + len(header))
    return text[start:end.start() if end else len(text)]


def five() -> Backend:
    return demo("green", servers=tuple(("127.0.0.1", 32100 + i) for i in range(5)))


# HAProxy-only scenarios: the template's own output (managed.render adds a digest line of the
# certificate files, which must then exist)
HAPROXY_SCENARIOS = {
    "edge-tls-redirect": lambda: render_template("haproxy.cfg.j2", haproxy_context(
        edge_backends(), listen=LISTEN, directory=DIR, tls_listen=TLS_LISTEN)),
    "slots-five-servers": lambda: proxy().render([five()]),
}


# -- golden files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", cases.SCENARIOS)
def test_golden(tmp_path, name):
    override = tmp_path / "my-haproxy.cfg.j2"
    override.write_text(OVERRIDE)
    cases.check_golden(GOLDEN / f"{name}.cfg", cases.golden_text(name, proxy, override))


@pytest.mark.parametrize("name", sorted(HAPROXY_SCENARIOS))
def test_haproxy_only_golden(name):
    cases.check_golden(GOLDEN / f"{name}.cfg", HAPROXY_SCENARIOS[name]())


# -- one backend per service, slots per color -------------------------------------------------------
def test_the_backend_is_named_after_the_service_whatever_the_color():
    blue, green = proxy().render([demo("blue")]), proxy().render([demo("green")])
    for text in (blue, green):
        assert "\nbackend demo\n" in text and "use_backend demo if" in text
        assert "demo_blue" not in text and "demo_green" not in text
    slots = [ln.split()[1] for ln in section(green, "backend demo").splitlines() if ln.strip().startswith("server ")]
    assert slots == [f"{c}_{i}" for c in ("blue", "green") for i in range(1, 5)]
    back = section(green, "backend demo")
    assert "server green_1 127.0.0.1:32001 check inter 1s fall 2 rise 2\n" in back
    assert "server green_2 127.0.0.1:32002 check inter 1s fall 2 rise 2\n" in back
    assert "server blue_1 0.0.0.0:1 check inter 1s fall 2 rise 2 disabled\n" in back
    assert "server green_3 0.0.0.0:1 check inter 1s fall 2 rise 2 disabled\n" in back


def test_a_color_switch_changes_only_server_lines_and_comments():
    blue = proxy().render([demo("blue"), api()]).splitlines()
    green = proxy().render([demo("green", servers=(("127.0.0.1", 32011),)), api()]).splitlines()
    assert len(blue) == len(green)
    differ = [(a, b) for a, b in zip(blue, green, strict=True) if a != b]
    assert differ and all(a.strip().startswith(("server ", "#")) for a, _ in differ), differ


@pytest.mark.parametrize("servers, slots", [(0, 4), (1, 4), (4, 4), (5, 8), (8, 8), (9, 16), (33, 64)])
def test_slots_per_color(servers, slots):
    assert slots_per_color(servers) == slots


def test_more_instances_than_slots_get_more_slots():
    back = section(HAPROXY_SCENARIOS["slots-five-servers"](), "backend demo")
    assert back.count("    server blue_") == 8 and back.count("    server green_") == 8
    assert "server green_5 127.0.0.1:32104 check" in back and "server green_6 0.0.0.0:1" in back
    assert "# 8 slots per color" in back


def test_an_unknown_color_is_refused():
    with pytest.raises(ProxyError, match="color must be one of blue, green"):
        proxy().render([demo("red")])


# -- the edge ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seconds, text", [(3, "3s"), (3.0, "3s"), (0.5, "500ms"), (2.5, "2500ms"), (3600, "3600s"),
                                           (0.0001, "1ms")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_per_route_timeouts_and_body_size():
    text = HAPROXY_SCENARIOS["edge-tls-redirect"]()
    reports = section(text, "backend reports")
    assert "    timeout connect 500ms\n" in reports and "    timeout server 2500ms\n" in reports  # the read timeout
    assert "deny_status 413" not in reports  # max_body 0: no limit
    shop = section(text, "backend shop")
    assert "    timeout connect 3s\n" in shop and "    timeout server 3600s\n" in shop
    assert ("    http-request deny deny_status 413 if { req.hdr_val(content-length) gt 52428800 }\n" in shop)
    demo_back = section(text, "backend demo")
    assert "gt 1048576 }" in demo_back and "timeout server 60s" in demo_back


def test_tls_bind_with_one_linked_certificate_per_service():
    text = HAPROXY_SCENARIOS["edge-tls-redirect"]()
    front = section(text, "frontend cdlib")
    shop = tls_link(DIR, "/etc/cdlib/tls/shop.pem", "/etc/cdlib/tls/shop.key")
    reports = tls_link(DIR, "/etc/cdlib/tls/reports.pem", "/etc/cdlib/tls/reports.key")
    assert shop.startswith(f"{DIR}/tls/") and shop.endswith(".pem") and shop != reports
    assert f"    bind {TLS_LISTEN} ssl crt {reports} crt {shop}\n" in front  # services sorted
    assert f"    # tls-files {shop} /etc/cdlib/tls/shop.pem /etc/cdlib/tls/shop.key\n" in front
    assert "http-request set-header X-Forwarded-Proto https if { ssl_fc }" in front
    # HTTPS serves only the routes with a certificate (demo has none)
    assert ('http-request return status 404 content-type text/plain string "no route for this path\\n" '
            "if { ssl_fc } !{ var(txn.route) -m str path:/reports/ host:shop }") in front
    # only shop redirects plain HTTP, before its path could be rewritten; cdlib's probe is not redirected
    redirect = ("http-request redirect code 301 location https://%[var(txn.host)]:8443%[url] "
                "if !{ ssl_fc } !{ var(txn.probe) -m str 1 } { var(txn.route) -m str host:shop }")
    assert redirect in front and front.count("location https://") == 1
    assert front.index(redirect) < front.index("replace-path")


def test_the_files_a_configuration_links_are_read_back_from_it():
    text = HAPROXY_SCENARIOS["edge-tls-redirect"]()
    assert tls_files(text) == [
        (tls_link(DIR, "/etc/cdlib/tls/reports.pem", "/etc/cdlib/tls/reports.key"), "/etc/cdlib/tls/reports.pem",
         "/etc/cdlib/tls/reports.key"),
        (tls_link(DIR, "/etc/cdlib/tls/shop.pem", "/etc/cdlib/tls/shop.key"), "/etc/cdlib/tls/shop.pem",
         "/etc/cdlib/tls/shop.key")]
    assert tls_files(proxy().render([demo()])) == []


def test_https_on_port_443_is_not_written_in_the_redirect():
    text = render_template("haproxy.cfg.j2", haproxy_context(edge_backends(), listen=LISTEN, directory=DIR,
                                                             tls_listen="443"))
    assert "    bind :443 ssl crt " in text and "location https://%[var(txn.host)]%[url] if" in text


def test_no_tls_route_no_https_even_with_tls_listen():
    text = proxy(tls_listen=TLS_LISTEN).render([demo(), api()])
    assert " ssl " not in text and "ssl_fc" not in text and "tls-files" not in text
    assert "http-request set-header X-Forwarded-Proto http\n" in text


def test_websocket_tunnels_and_retries():
    text = section(proxy().render([demo()]), "defaults")
    assert "    timeout tunnel 1h\n" in text
    assert "    retries 3\n" in text and "    option redispatch 1\n" in text and "retry-on conn-failure" in text


@pytest.mark.parametrize("routes, words", [
    ({"connect_timeout": 0}, "routes.connect_timeout 0 must be"),
    ({"read_timeout": -1.0}, "routes.read_timeout"),
    ({"send_timeout": True}, "routes.send_timeout"),
    ({"max_body": -1}, "routes.max_body"),
    ({"tls_cert": "/etc/x.pem"}, "both a certificate and a key"),
    ({"tls_cert": "x.pem", "tls_key": "/etc/x.key"}, "absolute path"),
])
def test_bad_edge_values_are_refused_with_the_service_named(routes, words):
    b = Backend("demo", "blue", "r", Routes(paths=("/d/",), **routes), (("127.0.0.1", 1),))
    with pytest.raises(ProxyError, match=words):
        haproxy_context([b], listen=LISTEN, directory=DIR, tls_listen=TLS_LISTEN)


@pytest.mark.parametrize("tls_listen", ["", "host:443", "8443;"])
def test_bad_tls_listen_is_a_config_error_naming_it(tls_listen):
    with pytest.raises(ConfigError, match="proxy.tls_listen"):
        HaproxyProxy(DIR, listen=LISTEN, tls_listen=tls_listen)


def test_global_section_runs_a_private_master_worker_instance():
    text = section(proxy().render([]), "global")
    assert "    master-worker\n" in text
    assert f"    pidfile {DIR}/haproxy.pid\n" in text
    assert f"    stats socket {DIR}/admin.sock mode 600 level admin\n" in text
    assert "    noreuseport\n" in text
    for word in ("daemon", "user ", "group ", "chroot"):  # -D and the caller's user, nothing else
        assert not re.search(rf"^\s+{word}", text, re.M), word


def test_no_backends_answers_503_but_health():
    text = proxy().render([])
    assert ('http-request return status 503 content-type text/plain string "no service is routed yet\\n"'
            in text)
    assert ('http-request return status 200 content-type text/plain string "ok\\n" '
            "if !{ var(txn.route) -m found } { path /_cdlib/health }") in text
    assert "\nbackend " not in text and "use_backend" not in text and "    server " not in text


def test_path_route_strips_prefix_and_redirects_bare_prefix():
    text = proxy().render([demo(paths=("/demo",))])
    front = section(text, "frontend cdlib")
    assert ("http-request set-var(txn.route) str(path:/demo/) if !{ var(txn.route) -m found } "
            "{ path_beg /demo/ }") in front
    assert "http-request replace-path ^/demo/(.*) /\\1 if { var(txn.route) -m str path:/demo/ }" in front
    assert ("http-request redirect code 301 location /demo/?%[query] if !{ var(txn.route) -m found } "
            "{ path /demo } { query -m found }") in front
    assert ("http-request redirect code 301 location /demo/ if !{ var(txn.route) -m found } { path /demo }"
            in front)
    assert "use_backend demo if { var(txn.route) -m str path:/demo/ }" in front
    back = section(text, "backend demo")
    assert "server blue_1 127.0.0.1:32001 check inter 1s fall 2 rise 2\n" in back
    assert "server blue_2 127.0.0.1:32002 check inter 1s fall 2 rise 2\n" in back


def test_redirect_comes_before_any_shorter_prefix_claims_the_request():
    text = proxy().render([demo(paths=("/",)), Backend("a", "blue", "r", Routes(paths=("/a/b",)), ())])
    front = section(text, "frontend cdlib")
    assert front.index("location /a/b/ if") < front.index("str(path:/) if")


def test_longest_prefix_is_decided_first_and_only_once():
    text = proxy().render([demo(paths=("/a/",)), Backend("b", "green", "r", Routes(paths=("/a/b/",)),
                                                          (("10.0.0.2", 1),))])
    front = section(text, "frontend cdlib")
    assert front.index("str(path:/a/b/)") < front.index("str(path:/a/)")
    # every decision is guarded, so a stripped path is never routed a second time
    for line in front.splitlines():
        if "set-var(txn.route)" in line:
            assert "if !{ var(txn.route) -m found }" in line, line
        if "replace-path" in line:
            assert "if { var(txn.route) -m str path:" in line, line


def test_host_route_keeps_the_path_and_comes_first():
    text = proxy().render([api()])
    front = section(text, "frontend cdlib")
    assert "acl host_api var(txn.host) -m str api.example.com" in front
    assert "acl host_api var(txn.host) -m end .api.test" in front  # *.api.test, not api.test itself
    assert "http-request set-var(txn.route) str(host:api) if !{ var(txn.route) -m found } host_api" in front
    assert front.index("str(host:api)") < front.index("/_cdlib/health") < front.index("str(path:/api/)")
    strips = [line.strip() for line in front.splitlines() if "replace-path" in line]
    assert strips == ["http-request replace-path ^/api/(.*) /\\1 if { var(txn.route) -m str path:/api/ }"]
    assert "use_backend api if { var(txn.route) -m str host:api path:/api/ }" in front
    assert "http-request set-var(txn.host) req.hdr(host),field(1,:),lower" in front  # port dropped


def test_root_path_replaces_the_404_rule():
    text = proxy().render([demo(paths=("/",))])
    assert "str(path:/) if !{ var(txn.route) -m found } { path_beg / }" in text
    assert "no route for this path" not in text
    assert "http-request replace-path" not in text  # nothing to strip
    assert "http-request redirect" not in text  # no bare prefix


def test_backend_without_servers_answers_503():
    text = proxy().render([demo(servers=())])
    back = section(text, "backend demo")
    assert ('http-request return status 503 content-type text/plain string "no running instance of demo\\n"\n'
            in back)
    assert back.count(" disabled\n") == 8 and "(no servers)" in text
    # only then: an old worker that finishes its requests after a reload counts no usable server
    # (its backends are stopping), so a rule on the number of servers would refuse those requests
    assert "no running instance" not in proxy().render([demo()]) and "nbsrv" not in proxy().render([demo()])


def test_header_lists_services_colors_and_releases():
    head = proxy().render([demo(), api()]).split("\n\n", 1)[0]
    assert "do not edit" in head
    assert "api green release r-0042" in head and "demo blue release r-0001" in head
    assert f"-f {DIR}/haproxy.cfg" in head


def test_ipv6_server_is_bracketed():
    text = proxy().render([demo(servers=(("::1", 9000),))])
    assert "server blue_1 [::1]:9000 check" in text


def test_render_is_deterministic_whatever_the_order():
    p = proxy()
    a = p.render([demo(servers=(("127.0.0.1", 2), ("127.0.0.1", 1))), api()])
    b = p.render([api(), demo(servers=(("127.0.0.1", 1), ("127.0.0.1", 2)))])
    assert a == b
    assert a.index("backend api\n") < a.index("backend demo\n")


def test_probe_headers_only_when_the_request_asked():
    text = proxy().render([demo()])
    front = section(text, "frontend cdlib")
    assert "http-request set-var(txn.probe) req.fhdr(x-cdlib-probe)" in front
    back = section(text, "backend demo")
    # the backend's own headers go first (forgeries), then the proxy's, only for a probe
    assert back.index("http-response del-header X-Cdlib-Upstream") < back.index("set-header X-Cdlib-Upstream")
    assert "http-response del-header X-Cdlib-Color" in back
    assert f"http-response set-header X-Cdlib-Upstream %si:%sp {PROBED}" in back
    # the color is the first part of the name of the server that answered (blue_1, green_3, ...)
    assert f"http-response set-header X-Cdlib-Color %[srv_name,field(1,_)] {PROBED}" in back
    assert text.count("set-header X-Cdlib-") == 2


def test_drain_timeout_bounds_hard_stop_after():
    assert "hard-stop-after 3s" in proxy(drain_timeout=5).render([])  # 2 s left to the worker to go
    assert "hard-stop-after 8s" in proxy(drain_timeout=10).render([])  # 20 %
    assert "hard-stop-after 12s" in proxy().render([])
    assert "hard-stop-after 1s" in proxy(drain_timeout=0).render([])


@pytest.mark.parametrize("listen, bind", [("8880", ":8880"), ("127.0.0.1:81", "127.0.0.1:81"),
                                          ("[::1]:82", "[::1]:82"), ("0.0.0.0:83", "0.0.0.0:83")])
def test_bind_address_from_listen(listen, bind):
    assert bind_address(listen) == bind
    assert f"    bind {bind}\n" in HaproxyProxy(DIR, listen=listen).render([])


@pytest.mark.parametrize("listen", cases.BAD_LISTENS)
def test_bad_listen_is_a_config_error(listen):
    with pytest.raises(ConfigError):
        HaproxyProxy(DIR, listen=listen)


@pytest.mark.parametrize("listen, url", [("8880", "http://127.0.0.1:8880"), ("[::]:82", "http://[::1]:82")])
def test_url_from_listen(listen, url):
    assert HaproxyProxy(DIR, listen=listen).url() == url


# -- conflicts --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backends, words", cases.CONFLICTS)
def test_conflicts_are_refused_with_the_service_named(backends, words):
    with pytest.raises(ProxyError, match=words):
        proxy().render(backends)


# -- the injection guard ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", [
    Backend("demo", "blue", "r", Routes(paths=("/demo/;return 200 x;",)), (("127.0.0.1", 1),)),
    Backend("demo", "blue", "r", Routes(paths=("/demo/ }",)), (("127.0.0.1", 1),)),
    Backend("demo", "blue", "r", Routes(paths=("/demo/\nbackend x",)), (("127.0.0.1", 1),)),
    Backend("demo", "blue", "r", Routes(paths=("/demo/#",)), (("127.0.0.1", 1),)),
    Backend("demo", "blue", "r", Routes(paths=('/"${HOME}"/',)), (("127.0.0.1", 1),)),
    Backend("demo", "blue", "r", Routes(hosts=("a.test b.test",)), (("127.0.0.1", 1),)),
    Backend("demo", "blue", "r", Routes(hosts=("a.test\nacl x",)), (("127.0.0.1", 1),)),
    Backend("demo;", "blue", "r", Routes(paths=("/d/",)), (("127.0.0.1", 1),)),
    Backend("demo", "blue\n", "r", Routes(paths=("/d/",)), (("127.0.0.1", 1),)),
    Backend("demo", "blue", "r\nglobal", Routes(paths=("/d/",)), (("127.0.0.1", 1),)),
    Backend("demo", "blue", "r", Routes(paths=("/d/",)), (("127.0.0.1 backup", 1),)),
])
def test_injection_through_a_backend_is_refused(backend):
    with pytest.raises(ProxyError, match="unsafe configuration value"):
        proxy().render([backend])


@pytest.mark.parametrize("backend, char", [
    (Backend("demo", "blue", "r", Routes(paths=("/demo/%[src]/",)), (("127.0.0.1", 1),)), "%"),
    (Backend("demo", "blue", "r", Routes(paths=("/a(b)/",)), (("127.0.0.1", 1),)), "("),
    (Backend("demo", "blue", "r", Routes(paths=("/a,b/",)), (("127.0.0.1", 1),)), ","),
    (Backend("demo", "blue", "r", Routes(paths=("/a*/",)), (("127.0.0.1", 1),)), "*"),
    (Backend("demo", "blue", "r", Routes(hosts=("a.test,b",)), (("127.0.0.1", 1),)), ","),
    (Backend("demo", "blue%[src]", "r", Routes(paths=("/d/",)), (("127.0.0.1", 1),)), "%"),
    (Backend("de)mo", "blue", "r", Routes(paths=("/d/",)), (("127.0.0.1", 1),)), ")"),
])
def test_haproxy_syntax_in_a_value_is_refused(backend, char):
    """Characters harmless to nginx but read by HAProxy: log-format variables, fetch arguments,
    regular expressions."""
    with pytest.raises(ProxyError, match="unsafe configuration value") as info:
        proxy().render([backend])
    assert repr(char) in str(info.value) and "HAProxy" in str(info.value)


@pytest.mark.parametrize("address", ["abns@cdlibt", "unix@/run/cdlibt.sock", "/run/cdlibt.sock", "ipv4@127.0.0.1",
                                     "fd@3", "127.0.0.1/8", "-host"])
def test_a_server_address_haproxy_reads_as_another_socket_family_is_refused(address):
    """``server s1 abns@name:port`` or ``unix@/path`` would send the traffic to a local socket."""
    with pytest.raises(ProxyError, match="server address must be an IP address or a host name"):
        proxy().render([Backend("demo", "blue", "r", Routes(paths=("/d/",)), ((address, 80),))])


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "fd00::7", "::ffff:10.0.0.1", "web-1", "web.svc.local"])
def test_ip_addresses_and_host_names_are_servers(address):
    assert " blue_1 " in proxy().render([Backend("demo", "blue", "r", Routes(paths=("/d/",)), ((address, 80),))])


def test_host_wildcard_is_allowed_only_as_a_prefix():
    assert "-m end .api.test" in proxy().render([api()])
    with pytest.raises(ProxyError, match="unsafe configuration value"):
        proxy().render([Backend("demo", "blue", "r", Routes(hosts=("a.*.test",)), (("127.0.0.1", 1),))])


def test_injection_error_names_the_template_line():
    cases.assert_injection_names_the_template_line(proxy(), "haproxy.cfg.j2")


def test_a_directory_with_a_space_is_refused_at_render():
    with pytest.raises(ProxyError, match="unsafe configuration value"):
        HaproxyProxy("/srv/my proxy", listen=LISTEN).render([])


# -- templates ------------------------------------------------------------------------------------
def test_override_syntax_error_names_file_and_line(tmp_path):
    override = tmp_path / "broken.cfg.j2"
    message = cases.override_error(proxy, override, "global\n{% for x in %}\n")
    assert str(override) in message and "line 2" in message


def test_override_undefined_variable_is_an_error_not_an_empty_string(tmp_path):
    message = cases.override_error(proxy, tmp_path / "undefined.cfg.j2",
                             "# ok\nbind {{ bind }}\nbackend {{ no_such_thing }}\n")
    assert "line 3" in message and "undefined" in message
    assert "no_such_thing" not in message  # the template's words are never repeated


@pytest.mark.parametrize("text, line", [
    ("global\ncdlibt-s3cret-line {% if %}\n", 2),  # a syntax error
    ("global\n{{ cdlibt_s3cret_name }}\n", 2),  # an undefined name
    ("global\n{% extends 'cdlibt-s3cret-base' %}\n", 2),  # a template that does not exist
    ("global\n{{ 'cdlibt s3cret' | cfg_token }}\n", 2),  # an unsafe literal
    ("global\n{{ 1 // 0 }}\n", 2),  # any exception at all
])
def test_an_override_error_never_quotes_the_template(tmp_path, text, line):
    override = tmp_path / "secret.cfg.j2"
    message = cases.override_error(proxy, override, text)
    assert f"proxy.template: {override}" in message and f"line {line}" in message, message
    assert "s3cret" not in message, message


def test_an_override_that_is_not_text_is_refused_without_its_bytes(tmp_path):
    override = tmp_path / "binary.cfg.j2"
    override.write_bytes(b"cdlibt-s3cret \xff\xfe")
    with pytest.raises(ProxyError) as info:
        (proxy)(override).render([])
    assert "not UTF-8" in str(info.value) and "s3cret" not in str(info.value)


def test_override_standalone_sees_the_documented_variables(tmp_path):
    override = tmp_path / "standalone.cfg.j2"
    override.write_text("{{ listen }} {{ bind }} {{ dir }} {{ health_path }} {{ hard_stop_after }} "
                        "{{ has_root }}\n"
                        "{% for b in backends %}{{ b.service }} {{ b.color }} {{ b.release }} "
                        "{{ b.upstream }} {{ b.servers | join(',') }} {{ b.paths | join(',') }} "
                        "{{ b.hosts | join(',') }} "
                        "{{ b.health_path }} {{ b.route_ids | join(',') }}\n{% endfor %}"
                        "{% for r in routes %}{{ r.path }}>{{ r.prefix }}>{{ r.redirect }}>{{ r.route }}>"
                        "{{ r.service }}>{{ r.upstream }}{% endfor %}")
    text = proxy(override).render([api()])
    assert text == (f"127.0.0.1:8880 127.0.0.1:8880 {DIR} /_cdlib/health 12 False\n"
                    "api green r-0042 api 10.0.0.7:8080 /api api.example.com,*.api.test /health "
                    "host:api,path:/api/\n"
                    "/api>/api/>/api>path:/api/>api>api")


def test_missing_override_file_is_a_proxy_error(tmp_path):
    with pytest.raises(ProxyError, match="cannot read the template"):
        proxy(tmp_path / "nope.j2").render([])


def test_context_is_pure_and_marks_the_root():
    ctx = haproxy_context([demo(paths=("/", "/x"))], listen=LISTEN, directory=DIR)
    assert ctx["has_root"] is True
    assert [(r["prefix"], r["redirect"]) for r in ctx["routes"]] == [("/x/", "/x"), ("/", None)]


# -- reading haproxy's answers ------------------------------------------------------------------------
def test_first_error_line_is_the_first_alert_without_its_pid():
    out = ("[NOTICE]   (1234) : haproxy version is 2.6.12\n"
           "[ALERT]    (1234) : config : parsing [/d/haproxy.cfg.staged:14] : unknown keyword 'x' in "
           "'global' section\n[ALERT]    (1234) : config : Fatal errors found in configuration.\n")
    assert _first_error_line(out) == ("config : parsing [/d/haproxy.cfg.staged:14] : unknown keyword 'x' in "
                                      "'global' section")
    assert _first_error_line("") == "no output"


def test_failed_reloads_are_read_from_show_proc():
    answer = ("#<PID>          <type>          <reloads>       <uptime>        <version>\n"
              "4242            master          3 [failed: 2]   0d00h00m08s     2.6.12-1+deb12u4\n"
              "# workers\n4250            worker          0               0d00h00m01s     2.6.12\n")
    m = _FAILED_RE.search(answer)
    assert m and (m.group(1), m.group(2)) == ("4242", "2")


