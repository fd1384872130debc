"""The descriptor: every field validated, one-line errors naming the file and the key."""

from pathlib import Path

import pytest

from cdlib import config
from cdlib.errors import ConfigError

BASE = {"service": "shop", "image": {"repository": "127.0.0.1:5000/shop", "tag": "v1"}, "port": 8080}


def parse(**over):
    data = dict(BASE)
    data.update(over)
    return config.parse(data, "svc/cdlib.yml", env={})


def error_of(**over) -> str:
    with pytest.raises(ConfigError) as info:
        parse(**over)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 2
    return str(info.value)


def test_minimal_descriptor_gets_defaults():
    spec = parse()
    assert spec.name == "shop"
    assert spec.image.ref == "127.0.0.1:5000/shop:v1"
    assert spec.replicas is None  # not set: a release runs the live color's count, else 1
    assert spec.routes.paths == ("/shop/",)
    assert spec.proxy.kind == "nginx" and spec.proxy.listen_port == 8880
    assert spec.store.startswith("sqlite:///") and spec.store.endswith("state.db")


def test_full_descriptor():
    spec = parse(health={"path": "/health", "timeout": 5}, replicas=3, env={"A": 1, "B": "x"},
                 routes={"paths": ["/api/shop/"], "hosts": ["shop.example.com"]},
                 tests={"pre-integration": "make it", "post-integration": {"image": "reg:5000/t:1", "unstable": True}},
                 target={"bind": "0.0.0.0"}, proxy={"listen": "127.0.0.1:9000"})
    assert spec.env == (("A", "1"), ("B", "x"))
    assert spec.tests["pre-integration"].command == "make it"
    assert spec.tests["post-integration"].unstable is True
    assert spec.target.reach_address == "127.0.0.1"
    assert spec.proxy.url == "http://127.0.0.1:9000"


@pytest.mark.parametrize("over, key", [
    ({"service": "Bad_Name"}, "service"),
    ({"service": "a;b"}, "service"),
    ({"port": 0}, "port"),
    ({"port": "80"}, "port"),
    ({"replicas": 0}, "replicas"),
    ({"replicas": True}, "replicas"),
    ({"routes": {"paths": ["/x; return 200"]}}, "routes.paths[0]"),
    ({"routes": {"paths": ["/a/", "/a/"]}}, "routes.paths"),
    ({"routes": {"hosts": ["evil.com;\n}"]}}, "routes.hosts[0]"),
    ({"routes": {"hosts": ["UPPER.example.com"]}}, "routes.hosts[0]"),
    ({"health": {"path": "health"}}, "health.path"),
    ({"health": {"timeout": -1}}, "health.timeout"),
    ({"env": {"1BAD": "x"}}, "env.1BAD"),
    ({"env": {"A": ["list"]}}, "env.A"),
    ({"tests": {"pre-integration": {}}}, "tests.pre-integration"),
    ({"tests": {"smoke": "x"}}, "tests.smoke"),
    ({"target": {"kind": "k8s"}}, "target.kind"),
    ({"target": {"docker_host": "somewhere"}}, "target.docker_host"),
    ({"proxy": {"listen": "127.0.0.1:99999"}}, "proxy.listen"),
    ({"proxy": {"kind": "traefik"}}, "proxy.kind"),
    ({"image": {"repository": "Has/Upper"}}, "image.repository"),
    ({"image": {"repository": "r/x", "tag": "bad tag"}}, "image.tag"),
    ({"store": "redis://x"}, "store"),
    ({"routes": {"paths": ["/_cdlib/x/"]}}, "routes.paths[0]"),
    ({"routes": {"paths": ["/a/", "/_cdlib"]}}, "routes.paths[1]"),
    ({"unknown": 1}, "unknown"),
])
def test_bad_fields_name_the_file_and_key(over, key):
    msg = error_of(**over)
    assert msg.startswith(f"svc/cdlib.yml: {key}: expected"), msg


def test_missing_required_keys():
    with pytest.raises(ConfigError, match="cdlib.yml: service: expected"):
        config.parse({"image": "r/x:1", "port": 1}, "cdlib.yml", env={})
    with pytest.raises(ConfigError, match="port: expected the container port"):
        config.parse({"service": "a", "image": "r/x:1"}, "cdlib.yml", env={})


def test_environment_overrides_store_and_tag():
    spec = config.parse(BASE, "f.yml", env={"CDLIB_STORE": "etcd://127.0.0.1:2379", "CDLIB_TAG": "abc123"})
    assert spec.store == "etcd://127.0.0.1:2379"
    assert spec.image.tag == "abc123"
    with pytest.raises(ConfigError, match="CDLIB_STORE"):
        config.parse(BASE, "f.yml", env={"CDLIB_STORE": "nope"})


def test_load_reports_yaml_errors_with_position(tmp_path):
    f = tmp_path / "cdlib.yml"
    f.write_text("service: a\nimage: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        config.load(f, env={})
    with pytest.raises(ConfigError, match="no such descriptor file"):
        config.load(tmp_path / "missing.yml", env={})


def test_relative_paths_resolve_against_the_descriptor(tmp_path):
    f = tmp_path / "svc" / "cdlib.yml"
    f.parent.mkdir()
    f.write_text("service: a\nport: 80\nimage: {repository: r/a, build: {context: app}}\n")
    spec = config.load(f, env={})
    assert spec.image.build.context == tmp_path / "svc" / "app"


def test_with_tag_and_image_validate():
    spec = parse()
    assert spec.with_tag("abc").image.ref.endswith(":abc")
    assert spec.with_image("reg:5000/other:7").image.ref == "reg:5000/other:7"
    with pytest.raises(ConfigError, match="--tag"):
        spec.with_tag("no good")


@pytest.mark.parametrize("host_env, field", [
    (["DB_PASSWORD"], "tests.post-integration.host_env[0]"),
    (["BUILD_NUMBER", "API_TOKEN"], "tests.post-integration.host_env[1]"),
    (["SHARED"], "tests.post-integration.host_env[0]"),
])
def test_host_env_refuses_credentials_and_names_that_pass_env_has(host_env, field):
    data = {"service": "demo", "image": {"repository": "demo"}, "port": 80,
            "tests": {"post-integration": {"command": "true", "host_env": host_env, "pass_env": ["SHARED"]}}}
    with pytest.raises(ConfigError) as info:
        config.parse(data, env={})
    assert info.value.exit_code == 2 and str(info.value).split(": ")[1] == field


def test_host_env_is_kept_apart_from_pass_env():
    data = {"service": "demo", "image": {"repository": "demo"}, "port": 80,
            "tests": {"post-integration": {"command": "true", "host_env": ["BUILD_NUMBER"], "pass_env": ["DB_PASS"]}}}
    suite = config.parse(data, env={}).tests["post-integration"]
    assert suite.host_env == ("BUILD_NUMBER",) and suite.pass_env == ("DB_PASS",)


def test_the_target_kinds_are_docker_and_swarm():
    assert parse(target={"kind": "swarm"}).target.kind == "swarm"
    assert parse(target={"kind": "docker"}).target.kind == "docker"
    msg = error_of(target={"kind": "kubernetes"})
    assert msg == "svc/cdlib.yml: target.kind: expected docker or swarm, got 'kubernetes'"
    with pytest.raises(ConfigError) as info:
        parse(target={"kind": "kubernetes"})
    assert info.value.key == "target.kind"


@pytest.mark.parametrize("listen, host, port, url", [
    ("8880", "127.0.0.1", 8880, "http://127.0.0.1:8880"),
    ("127.0.0.1:8880", "127.0.0.1", 8880, "http://127.0.0.1:8880"),
    ("0.0.0.0:8880", "127.0.0.1", 8880, "http://127.0.0.1:8880"),
    ("[::]:8880", "::1", 8880, "http://[::1]:8880"),
    ("[::1]:8880", "::1", 8880, "http://[::1]:8880"),
    ("localhost:8880", "localhost", 8880, "http://localhost:8880"),
])
def test_the_listen_address_gives_the_same_answer_as_the_proxy(tmp_path, listen, host, port, url):
    from cdlib.proxy.managed import parse_listen
    from cdlib.proxy.nginx import NginxProxy

    spec = parse(proxy={"listen": listen})
    assert (spec.proxy.listen_host, spec.proxy.listen_port) == (host, port) == parse_listen(listen)
    assert spec.proxy.url == url == NginxProxy(tmp_path, listen=listen).url()


def test_each_section_has_its_own_parse_function():
    r = config.Reader("svc/cdlib.yml")
    assert config.parse_health(r, {"health": {"path": "/h"}}) == config.HealthSpec(path="/h")
    assert config.parse_probe(r, {}) == config.ProbeSpec()
    assert config.parse_routes(r, {}, "shop").paths == ("/shop/",)
    assert config.parse_tests(r, {"tests": {"pre-deployment": "make"}}, Path("."))[
        "pre-deployment"].command == "make"
    assert config.parse_target(r, {"target": {"bind": "0.0.0.0"}}, {}, 1).reach_address == "127.0.0.1"
    assert config.parse_proxy(r, {"proxy": {"kind": "haproxy"}}, {"CDLIB_HOME": "/srv/cd"},
                              Path(".")).dir == Path("/srv/cd/haproxy")
    assert config.parse_store(r, {"store": "memory://x"}, {}) == "memory://x"
    with pytest.raises(ConfigError, match=r"^svc/cdlib.yml: probe.timeout: expected a number from 1 to 600"):
        config.parse_probe(r, {"probe": {"timeout": 0}})


def test_the_old_import_names_still_work():
    from cdlib.config import (
        ImageSpec,
        ServiceSpec,
        SuiteSpec,
        check_sqlite_file,
        load,
        parse,
        read_yaml,
        shown,
    )

    assert all(callable(x) for x in (ImageSpec, ServiceSpec, SuiteSpec, check_sqlite_file, load, parse, read_yaml,
                                     shown))
    assert config.MAX_FILE_BYTES == config.schema.MAX_FILE_BYTES
