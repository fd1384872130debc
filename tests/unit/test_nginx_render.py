"""Rendering nginx.conf: golden files, the injection guard, template errors, determinism.

The golden files in tests/golden/nginx/ double as documentation of what cdlib writes. They are
rewritten only when CDLIB_UPDATE_GOLDEN=1 is set; otherwise a difference fails the test. The
scenarios and the inputs every proxy refuses are shared with HAProxy (tests/unit/_render_cases.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cdlib.errors import ConfigError, ProxyError
from cdlib.model import Backend, Routes
from cdlib.proxy.nginx import NginxProxy, _emerg_since, nginx_context, parse_listen
from cdlib.render import cfg_token, render_template
from tests.unit import _render_cases as cases
from tests.unit._render_cases import LISTEN, api, demo

GOLDEN = cases.GOLDEN_ROOT / "nginx"

OVERRIDE = """\
{% extends "nginx.conf.j2" %}
{% block http_extra %}
    # added by the service's own template
    gzip on;
{% endblock %}
{% block location_extra %}
            # {{ b.service | cfg_token }} streams reports: allow slow answers
            proxy_read_timeout 300s;
{% endblock %}
"""


def proxy(tmp_path: Path, template: Path | None = None) -> NginxProxy:
    # static upstreams whatever is installed; the dynamic ones have goldens of their own below
    return NginxProxy(tmp_path / "nginx", listen=LISTEN, template=template, dynamic=False)


# a fixed directory: the admin socket's path is written into the file (nothing is created there)
DYNAMIC_DIR = "/var/lib/cdlib/nginx"
TLS_LISTEN = "127.0.0.1:8443"


def edge_backends() -> list[Backend]:
    """A host-routed service with its own certificate, the redirect to HTTPS, long reads and large
    bodies; a path-routed one with a certificate and short timeouts; a plain one."""
    shop = Backend("shop", "green", "r-0007", Routes(
        paths=(), hosts=("shop.example.com",), read_timeout=3600.0, send_timeout=120.0, max_body=50 * 1048576,
        tls_cert="/etc/cdlib/tls/shop.pem", tls_key="/etc/cdlib/tls/shop.key", https_redirect=True),
        (("127.0.0.1", 32011),))
    reports = Backend("reports", "blue", "r-0003", Routes(
        paths=("/reports",), connect_timeout=0.5, read_timeout=2.5, max_body=0,
        tls_cert="/etc/cdlib/tls/reports.pem", tls_key="/etc/cdlib/tls/reports.key"), (("127.0.0.1", 32021),))
    return [shop, reports, demo()]


# nginx-only scenarios: (what the golden shows, how it is rendered); the template's own output
# (managed.render adds a digest line of the certificate files, which must then exist)
NGINX_SCENARIOS = {
    "dynamic-two-services": lambda: render_template("nginx.conf.j2", nginx_context(
        [demo(), api()], listen=LISTEN, dynamic=True, admin_socket=f"{DYNAMIC_DIR}/admin/nginx.sock")),
    "dynamic-no-backends": lambda: render_template("nginx.conf.j2", nginx_context(
        [], listen=LISTEN, dynamic=True, admin_socket=f"{DYNAMIC_DIR}/admin/nginx.sock")),
    "edge-tls-redirect": lambda: render_template("nginx.conf.j2", nginx_context(
        edge_backends(), listen=LISTEN, tls_listen=TLS_LISTEN)),
    "dynamic-edge-tls": lambda: render_template("nginx.conf.j2", nginx_context(
        edge_backends(), listen=LISTEN, tls_listen="443", dynamic=True,
        admin_socket=f"{DYNAMIC_DIR}/admin/nginx.sock")),
}


# -- golden files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", cases.SCENARIOS)
def test_golden(tmp_path, name):
    override = tmp_path / "my-nginx.conf.j2"
    override.write_text(OVERRIDE)
    text = cases.golden_text(name, lambda template: proxy(tmp_path, template), override)
    cases.check_golden(GOLDEN / f"{name}.conf", text)


@pytest.mark.parametrize("name", sorted(NGINX_SCENARIOS))
def test_nginx_only_golden(name):
    cases.check_golden(GOLDEN / f"{name}.conf", NGINX_SCENARIOS[name]())


def test_dynamic_routes_through_one_upstream_per_service():
    text = NGINX_SCENARIOS["dynamic-two-services"]()
    assert "load_module /usr/lib/nginx/modules/ndk_http_module.so;" in text
    assert text.index("ndk_http_module") < text.index("ngx_http_lua_module")  # the Lua module needs NDK
    assert "upstream cdlib_demo {" in text and "upstream demo_blue" not in text
    assert 'cdlib_upstreams.balance("demo")' in text and "proxy_pass http://cdlib_demo/;" in text
    assert '["demo"] = "blue r-0001 127.0.0.1:32001 127.0.0.1:32002",' in text
    assert f"listen unix:{DYNAMIC_DIR}/admin/nginx.sock;" in text
    # the color a probe learns comes from the shared dictionary, not from the file
    assert "set $cdlib_color blue;" not in text and 'cdlib_upstreams.color("demo")' in text
    assert text.index("balancer_by_lua_block") < text.index("keepalive 16;")  # keepalive wraps the balancer


def test_a_color_switch_changes_only_the_servers_table_in_dynamic_mode():
    def render(color, ports):
        return render_template("nginx.conf.j2", nginx_context(
            [demo(color, servers=tuple(("127.0.0.1", p) for p in ports))], listen=LISTEN, dynamic=True,
            admin_socket=f"{DYNAMIC_DIR}/admin/nginx.sock"))
    blue, green = render("blue", (32001, 32002)), render("green", (32003,)).splitlines()
    changed = [(a, b) for a, b in zip(blue.splitlines(), green, strict=True) if a != b]
    assert changed == [("#   demo blue release r-0001", "#   demo green release r-0001"),
                       ('            ["demo"] = "blue r-0001 127.0.0.1:32001 127.0.0.1:32002",',
                        '            ["demo"] = "green r-0001 127.0.0.1:32003",')]


def test_a_server_named_by_host_name_keeps_static_upstreams():
    ctx = nginx_context([demo(servers=(("app.internal", 8080),))], listen=LISTEN, dynamic=True,
                        admin_socket=f"{DYNAMIC_DIR}/admin/nginx.sock")
    assert ctx["dynamic"] is False and ctx["lua_modules"] == [] and ctx["backends"][0]["upstream"] == "demo_blue"


def test_edge_settings_per_location():
    text = NGINX_SCENARIOS["edge-tls-redirect"]()
    reports = text[text.index("location /reports/ {"):]
    assert reports.index("proxy_connect_timeout 500ms;") < reports.index("}")
    assert "proxy_read_timeout 2500ms;" in reports and "client_max_body_size 0;" in reports
    shop_tls = text[text.index("listen 127.0.0.1:8443 ssl;"):]
    assert "ssl_certificate /etc/cdlib/tls/shop.pem;" in shop_tls and "ssl_certificate_key /etc/cdlib/tls/shop.key;" in shop_tls
    assert "proxy_read_timeout 3600s;" in shop_tls and "client_max_body_size 52428800;" in shop_tls
    assert "proxy_request_buffering off;" in shop_tls  # larger than the in-memory buffer: streamed
    # plain HTTP for shop redirects, the HTTPS port named; reports stays on plain HTTP too
    shop_http = text[text.index("server_name shop.example.com;"):]
    assert "return 301 https://$host:8443$request_uri;" in shop_http.split("}")[0]
    assert "location /reports/ {\n            set $cdlib_color blue;" in text
    assert "listen 127.0.0.1:8443 ssl default_server;" in text  # the path routes with a certificate


def test_websocket_upgrades_pass_and_other_requests_keep_upstream_keepalive():
    text = NginxProxy(DYNAMIC_DIR, listen=LISTEN, dynamic=False).render([demo()])
    assert "proxy_set_header Upgrade $http_upgrade;" in text
    assert "proxy_set_header Connection $cdlib_connection;" in text
    assert 'map $http_upgrade $cdlib_connection {\n        default upgrade;\n        "" "";\n    }' in text
    assert 'proxy_set_header Connection "";' not in text


def test_https_port_443_is_not_written_in_the_redirect():
    text = NGINX_SCENARIOS["dynamic-edge-tls"]()
    assert "return 301 https://$host$request_uri;" in text and "listen 443 ssl;" in text


@pytest.mark.parametrize("routes, words", [
    ({"connect_timeout": 0}, "routes.connect_timeout 0 must be"),
    ({"read_timeout": -1.0}, "routes.read_timeout"),
    ({"send_timeout": True}, "routes.send_timeout"),
    ({"max_body": -1}, "routes.max_body"),
    ({"tls_cert": "/etc/x.pem"}, "both a certificate and a key"),
])
def test_bad_edge_values_are_refused_with_the_service_named(routes, words):
    b = Backend("demo", "blue", "r", Routes(paths=("/d/",), **routes), (("127.0.0.1", 1),))
    with pytest.raises(ProxyError, match=words):
        nginx_context([b], listen=LISTEN, tls_listen=TLS_LISTEN)


def test_no_backends_answers_503_but_health(tmp_path):
    text = proxy(tmp_path).render([])
    assert 'return 503 "no service is routed yet\\n";' in text
    assert "location = /_cdlib/health" in text
    assert "\n    upstream " not in text and "proxy_pass" not in text


def test_path_route_strips_prefix_and_redirects_bare_prefix(tmp_path):
    text = proxy(tmp_path).render([demo(paths=("/demo",))])
    assert "location /demo/ {" in text
    assert "proxy_pass http://demo_blue/;" in text
    assert "location = /demo {\n            return 301 /demo/$is_args$args;" in text
    assert "server 127.0.0.1:32001 max_fails=1 fail_timeout=5s;" in text
    assert "server 127.0.0.1:32002 max_fails=1 fail_timeout=5s;" in text


def test_host_route_keeps_the_path(tmp_path):
    text = proxy(tmp_path).render([api()])
    block = text[text.index("server_name api.example.com *.api.test;"):]
    assert "proxy_pass http://api_green;" in block  # no trailing slash: the URI is passed unchanged


def test_root_path_replaces_the_404_location(tmp_path):
    text = proxy(tmp_path).render([demo(paths=("/",))])
    assert "location / {\n            set $cdlib_color blue;" in text
    assert "no route for this path" not in text
    assert "location = " + "/ {" not in text  # no redirect for the root


def test_backend_without_servers_gets_503_and_no_upstream(tmp_path):
    text = proxy(tmp_path).render([demo(servers=())])
    assert "upstream demo_blue" not in text
    assert 'return 503 "no running instance of demo\\n";' in text
    assert "(no servers)" in text


def test_header_lists_services_colors_and_releases(tmp_path):
    head = proxy(tmp_path).render([demo(), api()]).split("\n\n", 1)[0]
    assert "do not edit" in head
    assert "api green release r-0042" in head and "demo blue release r-0001" in head


def test_ipv6_server_is_bracketed(tmp_path):
    text = proxy(tmp_path).render([demo(servers=(("::1", 9000),))])
    assert "server [::1]:9000 max_fails=1" in text


def test_render_is_deterministic_whatever_the_order(tmp_path):
    p = proxy(tmp_path)
    a = p.render([demo(servers=(("127.0.0.1", 2), ("127.0.0.1", 1))), api()])
    b = p.render([api(), demo(servers=(("127.0.0.1", 1), ("127.0.0.1", 2)))])
    assert a == b
    assert a.index("upstream api_green") < a.index("upstream demo_blue")


def test_probe_headers_only_through_maps(tmp_path):
    text = proxy(tmp_path).render([demo()])
    assert 'map $http_x_cdlib_probe $cdlib_upstream {\n        default "";\n        "1" $upstream_addr;' in text
    assert text.count("add_header X-Cdlib-Upstream $cdlib_upstream always;") == 1
    assert text.count("add_header X-Cdlib-Color $cdlib_color_probe always;") == 1
    assert "proxy_hide_header X-Cdlib-Upstream;" in text


def test_drain_timeout_bounds_worker_shutdown(tmp_path):
    text = NginxProxy(tmp_path, listen=LISTEN, drain_timeout=5, dynamic=False).render([])
    assert "worker_shutdown_timeout 3s;" in text


# -- conflicts --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backends, words", cases.CONFLICTS)
def test_conflicts_are_refused_with_the_service_named(tmp_path, backends, words):
    with pytest.raises(ProxyError, match=words):
        proxy(tmp_path).render(backends)


# -- the injection guard ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["a;b", "a}b", "a{b", "a b", "a\nb", "a\tb", "$host", "a#b", "a'b", 'a"b',
                                   "a\\b", "a\x00b", "a\x7fb", ""])
def test_cfg_token_refuses_what_could_end_a_directive(value):
    with pytest.raises(ProxyError, match="unsafe configuration value"):
        cfg_token(value)


@pytest.mark.parametrize("value", ["/demo/", "api.example.com", "*.api.test", "[::1]:80", "demo_blue", 8080])
def test_cfg_token_passes_names_paths_hosts(value):
    assert cfg_token(value) == str(value)


def test_cfg_token_refuses_other_types():
    with pytest.raises(ProxyError):
        cfg_token(None)
    with pytest.raises(ProxyError):
        cfg_token(True)


@pytest.mark.parametrize("backend", [
    Backend("demo", "blue", "r", Routes(paths=("/demo/;return 200 x;",)), (("127.0.0.1", 1),)),
    Backend("demo", "blue", "r", Routes(paths=("/demo/}",)), (("127.0.0.1", 1),)),
    Backend("demo", "blue", "r", Routes(paths=("/demo/\nlocation /x",)), (("127.0.0.1", 1),)),
    Backend("demo", "blue", "r", Routes(paths=("/$host/",)), (("127.0.0.1", 1),)),
    Backend("demo", "blue", "r", Routes(hosts=("a.test;",)), (("127.0.0.1", 1),)),
    Backend("demo", "blue", "r", Routes(hosts=("a.test}",)), (("127.0.0.1", 1),)),
    Backend("demo", "blue", "r", Routes(hosts=("a.test\nserver_name b",)), (("127.0.0.1", 1),)),
    Backend("demo", "blue", "r", Routes(hosts=("$http_host",)), (("127.0.0.1", 1),)),
    Backend("demo;", "blue", "r", Routes(paths=("/d/",)), (("127.0.0.1", 1),)),
    Backend("demo", "blue}", "r", Routes(paths=("/d/",)), (("127.0.0.1", 1),)),
    Backend("demo", "blue", "r\n}", Routes(paths=("/d/",)), (("127.0.0.1", 1),)),
    Backend("demo", "blue", "r", Routes(paths=("/d/",)), (("127.0.0.1;", 1),)),
    Backend("demo", "blue", "r", Routes(paths=("/d/",)), (("$remote_addr", 1),)),
])
def test_injection_through_a_backend_is_refused(tmp_path, backend):
    with pytest.raises(ProxyError, match="unsafe configuration value"):
        proxy(tmp_path).render([backend])


@pytest.mark.parametrize("host", ["~.", "~^", "example.*", ".example.com", "*", "API.example.com", "a..b"])
def test_a_host_nginx_would_read_as_a_pattern_is_refused(tmp_path, host):
    """``server_name ~.`` is a regular expression matching every host: it would take the traffic
    of every path-routed service (routes can come from the store, past the descriptor's checks)."""
    with pytest.raises(ProxyError, match="route host must be a lower-case DNS name"):
        proxy(tmp_path).render([demo(), Backend("evil", "blue", "r", Routes(hosts=(host,)), (("127.0.0.1", 1),))])


def test_injection_error_names_the_template_line(tmp_path):
    cases.assert_injection_names_the_template_line(proxy(tmp_path), "nginx.conf.j2")


# -- templates ------------------------------------------------------------------------------------
def test_override_syntax_error_names_file_and_line(tmp_path):
    override = tmp_path / "broken.conf.j2"
    message = cases.override_error(lambda t: proxy(tmp_path, t), override, "events {}\n{% for x in %}\n")
    assert str(override) in message and "line 2" in message


def test_override_undefined_variable_is_an_error_not_an_empty_string(tmp_path):
    message = cases.override_error(lambda t: proxy(tmp_path, t), tmp_path / "undefined.conf.j2",
                             "# ok\nlisten {{ listen }};\nupstream {{ no_such_thing }};\n")
    assert "line 3" in message and "undefined" in message
    assert "no_such_thing" not in message  # the template's words are never repeated


@pytest.mark.parametrize("text, line", [
    ("events {}\ncdlibt-s3cret-line {% if %}\n", 2),  # a syntax error
    ("events {}\n{{ cdlibt_s3cret_name }}\n", 2),  # an undefined name
    ("events {}\n{% extends 'cdlibt-s3cret-base' %}\n", 2),  # a template that does not exist
    ("events {}\n{{ 'cdlibt s3cret' | cfg_token }}\n", 2),  # an unsafe literal
    ("events {}\n{{ 1 // 0 }}\n", 2),  # any exception at all
])
def test_an_override_error_never_quotes_the_template(tmp_path, text, line):
    override = tmp_path / "secret.conf.j2"
    message = cases.override_error(lambda t: proxy(tmp_path, t), override, text)
    assert f"proxy.template: {override}" in message and f"line {line}" in message, message
    assert "s3cret" not in message, message


def test_an_override_that_is_not_text_is_refused_without_its_bytes(tmp_path):
    override = tmp_path / "binary.conf.j2"
    override.write_bytes(b"cdlibt-s3cret \xff\xfe")
    with pytest.raises(ProxyError) as info:
        (lambda t: proxy(tmp_path, t))(override).render([])
    assert "not UTF-8" in str(info.value) and "s3cret" not in str(info.value)


def test_override_standalone_sees_the_documented_variables(tmp_path):
    override = tmp_path / "standalone.conf.j2"
    override.write_text("{{ listen }} {{ health_path }} {{ worker_processes }} {{ shutdown_timeout }} "
                        "{{ has_root }}\n{% for b in backends %}{{ b.service }} {{ b.color }} {{ b.release }} "
                        "{{ b.upstream }} {{ b.servers | join(',') }} {{ b.paths | join(',') }} "
                        "{{ b.hosts | join(',') }} {{ b.health_path }} "
                        "{% for loc in b.locations %}{{ loc.path }}>{{ loc.prefix }}>{{ loc.redirect }}{% endfor %}\n"
                        "{% endfor %}")
    text = proxy(tmp_path, override).render([api()])
    assert text == ("127.0.0.1:8880 /_cdlib/health 2 12 False\n"
                    "api green r-0042 api_green 10.0.0.7:8080 /api api.example.com,*.api.test /health "
                    "/api>/api/>/api")  # trim_blocks eats the newline after a block tag


def test_missing_override_file_is_a_proxy_error(tmp_path):
    with pytest.raises(ProxyError, match="cannot read the template"):
        proxy(tmp_path, tmp_path / "nope.j2").render([])


def test_render_template_search_paths_and_xml_autoescape(tmp_path):
    (tmp_path / "job.xml.j2").write_text("<d>{{ text }}</d>\n")
    (tmp_path / "a.conf.j2").write_text("x {{ text }}\n")
    assert render_template("job.xml.j2", {"text": "a<b&"}, search_paths=[tmp_path]) == "<d>a&lt;b&amp;</d>\n"
    assert render_template("a.conf.j2", {"text": "a<b"}, search_paths=[tmp_path]) == "x a<b\n"
    with pytest.raises(ConfigError, match="not found"):
        render_template("missing.j2", {}, search_paths=[tmp_path], error=ConfigError)


def test_context_is_pure_and_marks_the_root(tmp_path):
    ctx = nginx_context([demo(paths=("/", "/x"))], listen=LISTEN)
    assert ctx["has_root"] is True
    assert [loc["redirect"] for loc in ctx["backends"][0]["locations"]] == [None, "/x"]


@pytest.mark.parametrize("listen, url", [("8880", "http://127.0.0.1:8880"),
                                         ("0.0.0.0:81", "http://127.0.0.1:81"),
                                         ("[::]:82", "http://[::1]:82"),
                                         ("10.1.2.3:83", "http://10.1.2.3:83")])
def test_url_from_listen(tmp_path, listen, url):
    assert NginxProxy(tmp_path, listen=listen).url() == url


@pytest.mark.parametrize("listen", cases.BAD_LISTENS)
def test_bad_listen_is_a_config_error(listen):
    with pytest.raises(ConfigError):
        parse_listen(listen)


# -- reading the outcome of a reload ------------------------------------------------------------------
def test_a_refused_reload_is_only_ours_when_nginx_names_our_pid(tmp_path):
    log = tmp_path / "error.log"
    ours = os.getpid()
    log.write_text(f"2024/01/01 10:00:00 [notice] 1#1: signal 1 (SIGHUP) received from {ours}0, reconfiguring\n"
                   "2024/01/01 10:00:00 [emerg] 1#1: bind() to 127.0.0.1:80 failed (98: Address in use)\n")
    assert _emerg_since(log, 0) is None  # another process's reload (pid 10 times ours, say) failed
    with log.open("a") as fh:
        fh.write(f"2024/01/01 10:00:01 [notice] 1#1: signal 1 (SIGHUP) received from {ours}, reconfiguring\n"
                 "2024/01/01 10:00:01 [emerg] 1#1: unknown directive \"x\" in nginx.conf:3\n")
    assert _emerg_since(log, 0) == '1#1: unknown directive "x" in nginx.conf:3'


