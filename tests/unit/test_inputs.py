"""Every input that must be refused is refused before anything changes: ConfigError (exit code 2),
one line naming the field, nothing written. Descriptor values, environment variables, command-line
options, store URLs, the YAML reader itself and the job catalog."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from cdlib import api, cli, config, plan
from cdlib.errors import ConfigError, StoreError
from cdlib.jobs import catalog
from cdlib.store import url as store_url

BASE = {"service": "shop", "image": {"repository": "127.0.0.1:5000/shop", "tag": "v1"}, "port": 8080}
SOURCE = "svc/cdlib.yml"
SECRET = "pa55-cdlibt-Secret"


def parse(over=None, env=None, base=None):
    data = dict(BASE)
    data.update(over or {})
    return config.parse(data, SOURCE, base=base, env=env or {})


def check_refusal(err: ConfigError, field: str) -> str:
    msg = str(err)
    assert err.exit_code == 2
    assert "\n" not in msg and len(msg) < 500, msg
    assert field in msg, (field, msg)
    assert SECRET not in msg
    return msg


def refused(over=None, env=None, field="", base=None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(over, env, base)
    return check_refusal(info.value, field)


# ---- values that slipped through with a trailing newline (patterns anchored with $) ----------------
NEWLINE_CASES = [
    ({"service": "shop\n"}, "service"),
    ({"routes": {"paths": ["/a/\n"]}}, "routes.paths[0]"),
    ({"routes": {"hosts": ["api.example.com\n"]}}, "routes.hosts[0]"),
    ({"health": {"path": "/health\n"}}, "health.path"),
    ({"probe": {"path": "/version\n"}}, "probe.path"),
    ({"probe": {"expect": "v1\n"}}, "probe.expect"),
    ({"env": {"TOKEN\n": "x"}}, "env."),
    ({"image": {"repository": "r/shop\n"}}, "image.repository"),
    ({"image": {"repository": "r/shop", "tag": "v1\n"}}, "image.tag"),
    ({"image": "r/shop:v1\n"}, "image"),
    ({"image": {"repository": "r/shop", "build": {"dockerfile": "Dockerfile\n"}}}, "image.build.dockerfile"),
    ({"target": {"network": "net\n"}}, "target.network"),
    ({"target": {"bind": "127.0.0.1\n"}}, "target.bind"),
    ({"target": {"address": "10.0.0.1\n"}}, "target.address"),
    ({"target": {"docker_host": "tcp://h:2376\n"}}, "target.docker_host"),
    ({"target": {"host_ports": "20000-29999\n"}}, "target.host_ports"),
    ({"target": {"kind": "docker\n"}}, "target.kind"),
    ({"proxy": {"kind": "nginx\n"}}, "proxy.kind"),
    ({"proxy": {"listen": "127.0.0.1:8880\n"}}, "proxy.listen"),
    ({"proxy": {"binary": "nginx\n"}}, "proxy.binary"),
    ({"tests": {"pre-integration": {"command": "true", "pass_env": ["TOKEN\n"]}}}, "tests.pre-integration.pass_env[0]"),
    ({"store": "sqlite:///x.db\n"}, "store"),
]


@pytest.mark.parametrize("over, field", NEWLINE_CASES, ids=[c[1] for c in NEWLINE_CASES])
def test_a_trailing_newline_is_refused(over, field):
    refused(over, field=field)


@pytest.mark.parametrize("name, value", [("CDLIB_TAG", "v1\n"), ("CDLIB_STORE", "etcd://h:2379\n"),
                                         ("CDLIB_PROXY_LISTEN", "8880\n"), ("DOCKER_HOST", "tcp://h:2376\n")])
def test_a_trailing_newline_in_the_environment_is_refused(name, value):
    refused(env={name: value}, field=name)


# ---- look-alike letters and digits from other scripts -----------------------------------------------
LOOKALIKE_CASES = [
    ({"service": "sh\u043ep"}, "service"),  # Cyrillic o
    ({"routes": {"hosts": ["\u0430pi.example.com"]}}, "routes.hosts[0]"),  # Cyrillic a
    ({"routes": {"paths": ["/sh\u043ep/"]}}, "routes.paths[0]"),
    ({"env": {"T\u041eKEN": "x"}}, "env."),  # Cyrillic O
    ({"health": {"path": "/h\u0663"}}, "health.path"),  # Arabic-Indic digit three
    ({"image": {"repository": "r/shop", "tag": "v\u0661"}}, "image.tag"),
    ({"proxy": {"listen": "127.0.0.1:\uff18\uff18\uff18\uff10"}}, "proxy.listen"),  # fullwidth digits
    ({"target": {"host_ports": "\uff120000-29999"}}, "target.host_ports"),
    ({"store": "etcd://\u0435tcd.example:2379"}, "store"),  # Cyrillic e
    ({"target": {"address": "\u0430pp.internal"}}, "target.address"),
]


@pytest.mark.parametrize("over, field", LOOKALIKE_CASES, ids=[c[1] for c in LOOKALIKE_CASES])
def test_look_alike_unicode_is_refused(over, field):
    refused(over, field=field)


def test_the_name_patterns_accept_ascii_only():
    """No character outside the documented ASCII sets matches, in any script (\\d and \\w would)."""
    from cdlib.model import ENV_NAME_RE, HOST_RE, PATH_RE, SERVICE_RE

    allowed = {
        SERVICE_RE: set("abcdefghijklmnopqrstuvwxyz0123456789-"),
        PATH_RE: set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~/-"),
        HOST_RE: set("abcdefghijklmnopqrstuvwxyz0123456789-."),
        ENV_NAME_RE: set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"),
    }
    probes = {SERVICE_RE: "a{}a", PATH_RE: "/a{}", HOST_RE: "a{}a", ENV_NAME_RE: "A{}"}
    for pattern, ok in allowed.items():
        for code in range(0x3000):
            ch = chr(code)
            if 0xD800 <= code <= 0xDFFF:
                continue
            matched = bool(pattern.fullmatch(probes[pattern].format(ch)))
            assert matched == (ch in ok), (pattern.pattern, hex(code))


# ---- directive injection into nginx.conf / haproxy.cfg ---------------------------------------------
INJECTION_CASES = [
    ({"routes": {"paths": ["/a; return 200"]}}, "routes.paths[0]"),
    ({"routes": {"paths": ["/a'b"]}}, "routes.paths[0]"),
    ({"routes": {"paths": ["/a{"]}}, "routes.paths[0]"),
    ({"routes": {"hosts": ["a.com;include"]}}, "routes.hosts[0]"),
    ({"routes": {"hosts": ["a.com b.com"]}}, "routes.hosts[0]"),
    ({"routes": {"hosts": ["*"]}}, "routes.hosts[0]"),
    ({"routes": {"hosts": ["a" * 63 + "." + ("b" * 63 + ".") * 3 + "c"]}}, "routes.hosts[0]"),
    ({"health": {"path": "/h }"}}, "health.path"),
    ({"probe": {"path": "/p#x"}}, "probe.path"),
    ({"probe": {"expect": "ok\r\nX-Injected: 1"}}, "probe.expect"),
    ({"proxy": {"kind": "haproxy", "dir": "/tmp/cdlib t/haproxy"}}, "proxy.dir"),
    ({"proxy": {"kind": "haproxy", "dir": "/tmp/x;y"}}, "proxy.dir"),
]


@pytest.mark.parametrize("over, field", INJECTION_CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(INJECTION_CASES)])
def test_values_that_could_break_out_of_a_proxy_configuration_are_refused(over, field):
    refused(over, field=field)


def test_a_haproxy_home_with_a_space_is_refused_naming_cdlib_home():
    refused({"proxy": {"kind": "haproxy"}}, env={"CDLIB_HOME": "/tmp/cdlib home"}, field="CDLIB_HOME")


def test_what_the_descriptor_accepts_renders_in_both_proxies(tmp_path):
    """Accepted values stay within what render.cfg_token lets through: parse-time checks are the
    stricter ones, so the render never refuses what the descriptor accepted."""
    from cdlib.model import Backend
    from cdlib.proxy.haproxy import HaproxyProxy
    from cdlib.proxy.nginx import NginxProxy

    spec = parse({"routes": {"paths": ["/a.b~c_d-e/", "/x/"], "hosts": ["*.example.com", "api.example.com"]},
                  "health": {"path": "/h-1.2_~"}})
    backend = Backend(spec.name, "blue", "r1", spec.routes, (("127.0.0.1", 20001),), spec.health.path)
    for cls in (NginxProxy, HaproxyProxy):
        text = cls(tmp_path / cls.__name__, listen=spec.proxy.listen).render([backend])
        assert "*.example.com" in text or ".example.com" in text


# ---- fields that used to fail only when used --------------------------------------------------------
def test_a_missing_template_is_refused(tmp_path):
    refused({"proxy": {"template": str(tmp_path / "nope.j2")}}, field="proxy.template")


def test_a_template_directory_is_refused(tmp_path):
    refused({"proxy": {"template": str(tmp_path)}}, field="proxy.template")


def test_a_template_device_is_refused_without_reading_it():
    msg = refused({"proxy": {"template": "/dev/zero"}}, field="proxy.template")
    assert "regular file" in msg


def test_an_oversized_template_is_refused(tmp_path):
    big = tmp_path / "big.j2"
    with open(big, "wb") as fh:
        fh.truncate(config.MAX_FILE_BYTES + 1)
    refused({"proxy": {"template": str(big)}}, field="proxy.template")


def test_a_template_that_is_not_utf8_is_refused_without_echoing_its_content(tmp_path):
    t = tmp_path / "t.j2"
    t.write_bytes(f"listen {SECRET};\n".encode() + b"\xff\xfe")
    msg = refused({"proxy": {"template": str(t)}}, field="proxy.template")
    assert "listen" not in msg


def test_a_readable_template_is_accepted(tmp_path):
    t = tmp_path / "t.j2"
    t.write_text("{% extends 'nginx.conf.j2' %}\n")
    assert parse({"proxy": {"template": "t.j2"}}, base=tmp_path).proxy.template == t


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_suite_workdir_must_be_an_existing_directory(tmp_path, kind):
    target = tmp_path / "wd"
    if kind == "file":
        target.write_text("")
    refused({"tests": {"pre-integration": {"command": "true", "workdir": str(target)}}},
            field="tests.pre-integration.workdir")


def test_an_existing_suite_workdir_is_accepted(tmp_path):
    (tmp_path / "wd").mkdir()
    spec = parse({"tests": {"pre-integration": {"command": "true", "workdir": "wd"}}}, base=tmp_path)
    assert spec.tests["pre-integration"].workdir == tmp_path / "wd"


LATE_CASES = [
    ({"image": {"repository": "reg.example:5000/" + "a" * 250}}, "image.repository"),
    ({"image": "reg.example:5000/" + "a" * 250 + ":v1"}, "image"),
    ({"image": {"repository": "Foo/bar"}}, "image.repository"),  # no registry: path parts are lower case
    ({"image": {"repository": "reg.example:99999/x"}}, "image.repository"),
    ({"env": {"A": "x\x00y"}}, "env.A"),
    ({"env": {"A": "x" * (config.MAX_ENV_VALUE + 1)}}, "env.A"),
    ({"image": {"repository": "r/x", "build": {"args": {"A": "\x00"}}}}, "image.build.args.A"),
    ({"tests": {"pre-integration": {"command": "echo \x00"}}}, "tests.pre-integration.command"),
    ({"tests": {"pre-integration": {"command": ["echo", "a\x00"]}}}, "tests.pre-integration.command"),
    ({"tests": {"pre-integration": {"command": "true", "env": {"A": "\x00"}}}}, "tests.pre-integration.env.A"),
    ({"replicas": 3, "target": {"host_ports": "20000-20004"}}, "target.host_ports"),
    ({"target": {"bind": "localhost"}}, "target.bind"),
    ({"target": {"bind": "999.1.1.1"}}, "target.bind"),
    ({"target": {"address": "1.2.3"}}, "target.address"),
    ({"proxy": {"listen": "300.1.1.1:80"}}, "proxy.listen"),
    ({"proxy": {"listen": "[zz::1]:80"}}, "proxy.listen"),
    ({"target": {"network": "-net"}}, "target.network"),
    ({"target": {"network": "n" * 65}}, "target.network"),
    ({"target": {"docker_host": "tcp://h:notaport"}}, "target.docker_host"),
    ({"target": {"docker_host": "tcp://h"}}, "target.docker_host"),
    ({"target": {"docker_host": "ssh://h/path"}}, "target.docker_host"),
    ({"target": {"docker_host": f"tcp://u:{SECRET}@h:2376"}}, "target.docker_host"),
    ({"proxy": {"dir": "/tmp/a\nb"}}, "proxy.dir"),
]


@pytest.mark.parametrize("over, field", LATE_CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(LATE_CASES)])
def test_values_that_only_failed_later_are_refused_at_parse_time(over, field):
    refused(over, field=field)


def test_env_values_keep_newlines_and_the_numbers_keep_their_spelling(tmp_path):
    f = tmp_path / "cdlib.yml"
    f.write_text("service: shop\nport: 80\nimage: {repository: r/shop, tag: 1.10}\n"
                 "env: {CERT: \"a\\nb\", ZIP: 0123, RATIO: 1.50}\n")
    spec = config.load(f, env={})
    assert spec.image.tag == "1.10"  # not 1.1
    assert dict(spec.env) == {"CERT": "a\nb", "ZIP": "0123", "RATIO": "1.50"}


@pytest.mark.parametrize("host", ["unix:///var/run/docker.sock", "tcp://10.0.0.5:2376", "ssh://deploy@build-7",
                                  "https://docker.example:2376", "npipe:////./pipe/docker_engine"])
def test_docker_hosts_the_sdk_takes_are_accepted(host):
    assert parse({"target": {"docker_host": host}}).target.docker_host == host
    parse(env={"DOCKER_HOST": host})


# ---- the environment is input too ------------------------------------------------------------------
ENV_CASES = [
    ({"CDLIB_PROXY_LISTEN": "abc"}, "CDLIB_PROXY_LISTEN"),
    ({"CDLIB_PROXY_LISTEN": "0"}, "CDLIB_PROXY_LISTEN"),
    ({"CDLIB_PROXY_LISTEN": "1.2.3.4.5:80"}, "CDLIB_PROXY_LISTEN"),
    ({"CDLIB_TAG": ""}, "CDLIB_TAG"),
    ({"CDLIB_TAG": "bad tag"}, "CDLIB_TAG"),
    ({"CDLIB_STORE": ""}, "CDLIB_STORE"),
    ({"CDLIB_STORE": "redis://x"}, "CDLIB_STORE"),
    ({"DOCKER_HOST": "garbage"}, "DOCKER_HOST"),
    ({"DOCKER_HOST": "tcp://h"}, "DOCKER_HOST"),
    ({"DOCKER_HOST": f"tcp://u:{SECRET}@h:2376"}, "DOCKER_HOST"),
    ({"CDLIB_HOME": "/tmp/a\nb"}, "CDLIB_HOME"),
    ({"CDLIB_FAILPOINTS": "proxy:after=explode"}, "CDLIB_FAILPOINTS"),
    ({"CDLIB_FAILPOINTS": "nosuchstep:after=kill"}, "CDLIB_FAILPOINTS"),
    ({"CDLIB_FAILPOINTS": "proxy:during=kill"}, "CDLIB_FAILPOINTS"),
    ({"CDLIB_FAILPOINTS": "start:before=fail,proxy"}, "CDLIB_FAILPOINTS"),
]


@pytest.mark.parametrize("env, field", ENV_CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(ENV_CASES)])
def test_bad_environment_values_are_refused_naming_the_variable(env, field):
    refused(env=env, field=field)


def test_the_proxy_listen_from_the_descriptor_wins_over_a_bad_variable():
    # the variable is only the default: when the descriptor says where to listen, it is not used
    assert parse({"proxy": {"listen": "9000"}}, env={"CDLIB_PROXY_LISTEN": "abc"}).proxy.listen == "9000"


def test_a_docker_host_in_the_descriptor_makes_docker_host_unused():
    spec = parse({"target": {"docker_host": "unix:///var/run/docker.sock"}}, env={"DOCKER_HOST": "garbage"})
    assert spec.target.docker_host == "unix:///var/run/docker.sock"


def test_every_plan_step_is_a_valid_failpoint():
    from cdlib import steps as st

    names = {s.name for steps in (st.DEPLOY_STEPS, st.REVERT_STEPS, st.SWITCH_STEPS, st.CLEANUP_STEPS)
             for s in steps}
    spec = ",".join(f"{n}:{w}={a}" for n in sorted(names) for w in ("before", "after") for a in ("kill", "fail"))
    plan.check_failpoints(spec)
    plan.check_failpoints("")
    plan.check_failpoints("proxy:after=kill,,start:before=fail")


# ---- store URLs: one parser, exit 2, credentials never echoed ---------------------------------------
STORE_CASES = [
    (f"etcd://root:{SECRET}@h:2379", "ETCDCTL_USER"),
    (f"etcds://{SECRET}@h:2379", "ETCDCTL_PASSWORD"),
    (f"consul://{SECRET}@h:8500", "CONSUL_HTTP_TOKEN"),
    (f"etcd://root:{SECRET}/x@h:2379", "store"),  # a password with '/' in it
    ("etcd://h:notaport", "store"),
    ("etcd://h:99999", "store"),
    ("etcd://h:0", "store"),
    ("etcd://,", "store"),
    ("etcd://a:1,,b:2", "store"),
    ("consul://a:1,b:2", "store"),
    ("etcd://h:2379/path", "store"),
    ("etcd://h:2379?x=1", "store"),
    ("etcd://h_:2379", "store"),
    ("sqlite://", "store"),
    ("sqlite:///", "store"),
    (f"sqlite://me:{SECRET}@/tmp/x.db", "store"),
    ("memory:x", "store"),
    ("redis://h", "store"),
    ("etcd:h:2379", "store"),
]


@pytest.mark.parametrize("url, word", STORE_CASES, ids=[f"store-{i}" for i in range(len(STORE_CASES))])
def test_bad_store_urls_are_refused_in_the_descriptor_the_environment_and_the_option(url, word, tmp_path):
    msg = refused({"store": url}, field="store")
    assert word in msg
    msg = refused(env={"CDLIB_STORE": url}, field="CDLIB_STORE")
    assert word.upper() in msg.upper()
    with pytest.raises(ConfigError) as info:
        store_url.check(url, "--store", {})
    check_refusal(info.value, "--store")
    from cdlib.wiring import open_store

    with pytest.raises(ConfigError) as info:
        open_store(url)
    check_refusal(info.value, "store")
    assert not list(tmp_path.iterdir())


def test_a_bad_descriptor_store_is_not_hidden_by_cdlib_store():
    refused({"store": "redis://x"}, env={"CDLIB_STORE": "sqlite:///tmp/x.db"}, field="store")


@pytest.mark.parametrize("env, field", [
    ({"CDLIB_STORE": "etcd://", "ETCDCTL_ENDPOINTS": "garbage:xx"}, "ETCDCTL_ENDPOINTS"),
    ({"CDLIB_STORE": "etcd://", "ETCDCTL_ENDPOINTS": f"https://u:{SECRET}@e1:2379"}, "ETCDCTL_ENDPOINTS"),
    ({"CDLIB_STORE": "etcd://", "ETCDCTL_ENDPOINTS": "ftp://e1:2379"}, "ETCDCTL_ENDPOINTS"),
    ({"CDLIB_STORE": "consul://", "CONSUL_HTTP_ADDR": "unix:///var/run/consul.sock"}, "CONSUL_HTTP_ADDR"),
    ({"CDLIB_STORE": "consul://", "CONSUL_HTTP_ADDR": "h:port"}, "CONSUL_HTTP_ADDR"),
])
def test_registry_address_variables_are_checked_when_the_url_names_no_host(env, field):
    refused(env=env, field=field)


def test_store_urls_without_a_host_take_the_registry_environment_or_the_default():
    from cdlib.store.consul import ConsulStore
    from cdlib.store.etcd import EtcdStore

    assert parse(env={"CDLIB_STORE": "etcd://"}).store == "etcd://"
    assert parse({"store": "consuls://"}).store == "consuls://"
    assert EtcdStore("etcd://", env={}).endpoints == ["127.0.0.1:2379"]
    etcd = EtcdStore("etcd://", env={"ETCDCTL_ENDPOINTS": "https://e1:2379, [::1]:2380"})
    assert etcd.protocol == "https" and etcd.endpoints == ["e1:2379", "[::1]:2380"]
    consul = ConsulStore("consul://", env={})
    assert (consul.host, consul.port, consul.scheme) == ("127.0.0.1", 8500, "http")
    consul = ConsulStore("consuls://", env={"CONSUL_HTTP_ADDR": "c.example:8501"})
    assert (consul.host, consul.port, consul.scheme) == ("c.example", 8501, "https")
    assert store_url.parse("etcd://a,b:2380").hosts == (("a", 2379), ("b", 2380))


def test_a_bad_url_given_to_an_adapter_is_a_store_error_with_exit_code_2():
    from cdlib.store.etcd import EtcdStore

    with pytest.raises(StoreError) as info:
        EtcdStore(f"etcd://u:{SECRET}@h:2379", env={})
    assert info.value.exit_code == 2 and SECRET not in str(info.value)


# ---- the YAML reader --------------------------------------------------------------------------------
ALIAS_BOMB = "".join(
    [f"{n}: &{n} [" + ",".join(["*" + p] * 10 if p else ['"x"'] * 10) + "]\n"
     for p, n in zip(["", "a", "b", "c", "d", "e", "f", "g"], ["a", "b", "c", "d", "e", "f", "g", "h"], strict=True)]
) + "service: [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n"

YAML_CASES = [
    ("alias-bomb", ALIAS_BOMB, "aliases are expanded"),
    ("too-many-aliases", "x: &x 1\nl: [" + ", ".join(["*x"] * (config.MAX_ALIASES + 1)) + "]\n", "aliases"),
    ("recursive-alias", "a: &a [*a]\n", "recursive"),
    ("deep", "service: " + "[" * 50000 + "]" * 50000 + "\n", "nesting"),
    ("deep-mapping", "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 60)), "nesting"),
    ("huge-integer", "service: shop\nport: " + "9" * 5000 + "\n", "integer"),
    ("duplicate-key", "service: shop\nport: 80\nimage: r/shop:1\nservice: other\n", "service: expected each key once"),
    ("duplicate-nested", "service: shop\nport: 80\nimage: r/shop:1\nroutes:\n  paths: [/a/]\n  paths: [/b/]\n",
     "routes.paths: expected each key once"),
    ("duplicate-in-list", "service: shop\ntests:\n  pre-integration:\n    env: {A: 1, A: 2}\n",
     "tests.pre-integration.env.A: expected each key once"),
    ("nul-byte", "service: shop\x00\n", "not valid YAML"),
    ("surrogate", 'service: "\\ud800"\n', "surrogate"),
    ("bad-date", "service: shop\nport: 80\nimage: r/shop:1\nwhen: 2024-13-45\n", "line 4"),
    ("unknown-tag", "service: !!python/object:os.system x\n", "line 1"),
    ("two-documents", "service: a\n---\nservice: b\n", "line"),
]


@pytest.mark.parametrize("name, text, words", YAML_CASES, ids=[c[0] for c in YAML_CASES])
def test_hostile_yaml_is_refused_quickly_in_one_line(tmp_path, name, text, words):
    f = tmp_path / "cdlib.yml"
    f.write_text(text)
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as info:
        config.load(f, env={})
    elapsed = time.monotonic() - t0
    msg = check_refusal(info.value, str(f))
    assert words in msg
    assert elapsed < 30  # a guard against hanging, not a timing assertion: these took minutes or never ended


def test_a_yaml_file_with_anchors_used_a_few_times_is_fine(tmp_path):
    f = tmp_path / "cdlib.yml"
    f.write_text("service: shop\nport: 80\nimage: r/shop:1\ntests:\n  pre-deployment: {image: &t r/t:1}\n"
                 "  pre-integration: {image: *t}\n  post-integration: {image: *t}\n")
    assert config.load(f, env={}).tests["post-integration"].image.ref == "r/t:1"


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "directory", "oversized", "not-utf8", "missing"])
def test_descriptor_files_that_cannot_be_read_safely_are_refused(tmp_path, kind):
    target = {"dev-zero": Path("/dev/zero"), "fifo": tmp_path / "fifo", "directory": tmp_path,
              "oversized": tmp_path / "big.yml", "not-utf8": tmp_path / "latin.yml",
              "missing": tmp_path / "none.yml"}[kind]
    if kind == "fifo":
        os.mkfifo(target)  # opening it for reading would block until a writer came
    elif kind == "oversized":
        target.write_text("service: shop\n# " + "x" * config.MAX_FILE_BYTES + "\n")
    elif kind == "not-utf8":
        target.write_bytes(b"service: \xe9\n")
    with pytest.raises(ConfigError) as info:
        config.load(target, env={})
    check_refusal(info.value, str(target))


def test_messages_never_format_a_whole_value(tmp_path):
    msg = refused({"service": "x" * 100000}, field="service")
    assert len(msg) < 300
    big = list(range(100000))
    msg = refused({"replicas": big}, field="replicas")
    assert len(msg) < 300
    msg = refused({"port": 10 ** 5000}, field="port")
    assert len(msg) < 300
    msg = refused({"x" * 10000: 1}, field="(top level)")
    assert len(msg) < 400


def test_a_file_that_is_no_descriptor_is_not_echoed(tmp_path):
    f = tmp_path / "shadow"
    f.write_text(f"root:*:20228:0:99999:7:::\n{SECRET}:$6$abc:20228:0:99999:7:::\n")
    with pytest.raises(ConfigError) as info:
        config.load(f, env={})
    msg = check_refusal(info.value, str(f))
    assert "20228" not in msg


# ---- the job catalog ---------------------------------------------------------------------------------
def catalog_refused(entry_over=None, top_over=None, field=""):
    entry = {"name": "orders", "repository": "https://git.example.com/shop/orders.git"}
    entry.update(entry_over or {})
    data = {"services": [entry]}
    data.update(top_over or {})
    with pytest.raises(ConfigError) as info:
        catalog.parse(data, "jenkins/catalog.yml")
    return check_refusal(info.value, field)


CATALOG_CASES = [
    ({"name": "orders\n"}, None, "services[0].name"),
    ({"name": "\u043erders"}, None, "services[0].name"),
    ({"folder": "team\n"}, None, "services[0].folder"),
    ({"credentials": "git-ci\n"}, None, "services[0].credentials"),
    ({"jenkinsfile": "Jenkinsfile\n"}, None, "services[0].jenkinsfile"),
    ({"repository": "https://git.example.com/x.git\n"}, None, "services[0].repository"),
    ({"branch": "*/main\n"}, None, "services[0].branch"),
    ({"parameters": [{"name": "P\n"}]}, None, "services[0].parameters[0].name"),
    ({"parameters": [{"name": "P", "type": "string\n"}]}, None, "services[0].parameters[0].type"),
    ({"parameters": [{"name": "P", "type": "choice", "choices": ["a\n"]}]}, None,
     "services[0].parameters[0].choices[0]"),
    (None, {"ignore_properties": ["org.example.Prop\n"]}, "ignore_properties[0]"),
]


@pytest.mark.parametrize("entry, top, field", CATALOG_CASES, ids=[c[2] + f"-{i}" for i, c in enumerate(CATALOG_CASES)])
def test_catalog_values_are_matched_whole(entry, top, field):
    catalog_refused(entry, top, field)


def test_a_catalog_with_a_duplicate_key_is_refused(tmp_path):
    f = tmp_path / "catalog.yml"
    f.write_text("services:\n  - name: orders\n    repository: https://g.example/o.git\n    name: billing\n")
    with pytest.raises(ConfigError) as info:
        catalog.load(f)
    check_refusal(info.value, "services[0].name: expected each key once")


# ---- API options -------------------------------------------------------------------------------------
@pytest.fixture
def descriptor(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("CDLIB_HOME", str(home))
    for name in ("CDLIB_STORE", "CDLIB_TAG", "CDLIB_PROXY_LISTEN", "CDLIB_FAILPOINTS", "DOCKER_HOST", "CDLIB_FILE",
                 "ETCDCTL_ENDPOINTS", "CONSUL_HTTP_ADDR"):
        monkeypatch.delenv(name, raising=False)
    f = tmp_path / "cdlib.yml"
    f.write_text("service: shop\nport: 80\nimage: r/shop:1\n")
    return f


@pytest.mark.parametrize("kwargs, field", [
    ({"tag": ""}, "--tag"),
    ({"tag": "v1\n"}, "--tag"),
    ({"image": ""}, "--image"),
    ({"image": "r/shop:v1\n"}, "--image"),
    ({"image": "r/shop:2", "tag": "3"}, "--tag"),
    ({"store": ""}, "--store"),
    ({"store": f"etcd://u:{SECRET}@h:2379"}, "--store"),
    ({"store": "consul://"}, None),
], ids=["tag-empty", "tag-newline", "image-empty", "image-newline", "tag-and-image", "store-empty",
        "store-credentials", "store-no-host"])
def test_load_spec_refuses_empty_and_conflicting_options(descriptor, kwargs, field):
    if field is None:
        assert api.load_spec(str(descriptor), **kwargs).store == kwargs["store"]
        return
    with pytest.raises(ConfigError) as info:
        api.load_spec(str(descriptor), **kwargs)
    check_refusal(info.value, field)


@pytest.mark.parametrize("limit", [-1, True, "5"])
def test_history_refuses_a_bad_limit(descriptor, limit):
    with pytest.raises(ConfigError) as info:
        api.history(str(descriptor), limit=limit)
    check_refusal(info.value, "--limit")
    assert not (descriptor.parent / "home").exists()


# ---- the CLI: exit 2, one line, nothing written --------------------------------------------------
@pytest.fixture
def run_cli(descriptor, monkeypatch, capsys):
    def run(argv, env=None, text=None):
        if text is not None:
            descriptor.write_text(text)
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        before = sorted(p.name for p in descriptor.parent.iterdir())
        saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
        try:
            code = cli.main([*argv, "-f", str(descriptor)] if "-f" not in argv else argv)
        except SystemExit as exc:  # argparse refuses some values itself, with the same exit code
            code = exc.code
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        out, err = capsys.readouterr()
        assert sorted(p.name for p in descriptor.parent.iterdir()) == before  # nothing created
        assert not (descriptor.parent / "home").exists()
        return code, out, err
    return run


CLI_CASES = [
    ("listen-variable", ["release"], {"CDLIB_PROXY_LISTEN": "abc"}, None, "CDLIB_PROXY_LISTEN"),
    ("empty-tag", ["deploy", "--tag", ""], None, None, "--tag"),
    ("empty-image", ["release", "--image", ""], None, None, "--image"),
    ("negative-limit", ["history", "--limit", "-1"], None, None, "--limit"),
    ("failpoints", ["release"], {"CDLIB_FAILPOINTS": "proxy:after=explode"}, None, "CDLIB_FAILPOINTS"),
    ("store-credentials", ["status", "--store", f"etcd://root:{SECRET}@h:2379"], None, None, "--store"),
    ("store-port", ["status", "--store", "etcd://h:x"], None, None, "--store"),
    ("store-empty-hosts", ["status", "--store", "etcd://,"], None, None, "--store"),
    ("store-variable", ["deploy"], {"CDLIB_STORE": "consul://h:1,h:2"}, None, "CDLIB_STORE"),
    ("docker-host", ["deploy"], {"DOCKER_HOST": "garbage"}, None, "DOCKER_HOST"),
    ("tag-variable", ["deploy"], {"CDLIB_TAG": "v1\n"}, None, "CDLIB_TAG"),
    ("duplicate-service", ["release"], None, "service: shop\nservice: other\nport: 80\nimage: r/shop:1\n",
     "service: expected each key once"),
    ("empty-file-option", ["release", "-f", ""], None, None, "--file"),
    ("sqlite-credentials", ["status", "--store", f"sqlite://me:{SECRET}@/tmp/x.db"], None, None, "--store"),
    ("alias-bomb", ["deploy"], None, ALIAS_BOMB, "refused"),
    ("service-newline", ["deploy"], None, 'service: "shop\\n"\nport: 80\nimage: r/shop:1\n', "service"),
    ("template-missing", ["release"], None, "service: shop\nport: 80\nimage: r/shop:1\nproxy: {template: t.j2}\n",
     "proxy.template"),
]


@pytest.mark.parametrize("name, argv, env, text, field", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_the_cli_exits_2_with_one_line_and_writes_nothing(run_cli, name, argv, env, text, field):
    code, out, err = run_cli(argv, env, text)
    assert code == 2, err
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("cdlib: error:"), err
    assert field in err and SECRET not in err


def test_the_cli_refuses_a_device_as_the_descriptor(run_cli):
    code, out, err = run_cli(["status", "-f", "/dev/zero"])
    assert code == 2 and err.count("\n") == 1 and "/dev/zero" in err


def test_sqlite_paths_are_file_names_not_urls():
    assert store_url.parse("sqlite:///tmp/a b?c#d.db").path == "/tmp/a b?c#d.db"
    assert store_url.parse("sqlite://rel/x%20y.db").path == "rel/x y.db"
    assert parse(env={"CDLIB_HOME": "/tmp/cdlib home"}).store.endswith("/cdlib home/state.db")


@pytest.mark.parametrize("kind", ["directory", "not-a-database"])
def test_a_sqlite_store_that_could_not_be_opened_is_refused_before_anything_runs(tmp_path, descriptor, kind):
    target = tmp_path / "state"
    if kind == "directory":
        target.mkdir()
    else:
        target.write_text(f"notes {SECRET}\n")
    url = f"sqlite:///{target}"
    msg = refused({"store": url}, field="store")
    assert "notes" not in msg
    refused(env={"CDLIB_STORE": url}, field="CDLIB_STORE")
    with pytest.raises(ConfigError) as info:
        api.load_spec(str(descriptor), store=url)
    check_refusal(info.value, "--store")
    (tmp_path / "empty.db").write_bytes(b"")
    assert parse({"store": f"sqlite:///{tmp_path / 'empty.db'}"}).store.endswith("empty.db")
