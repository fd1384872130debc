"""The edge settings of a route (timeouts, body size, TLS files, HTTPS listen address): validated at
parse time with one line naming the field, carried through the store in the spec key (older keys get
the defaults), and a TLS file's content changes the rendered configuration without being quoted."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdlib import config, tls
from cdlib.errors import ConfigError, ProxyError
from cdlib.model import Backend, Routes

BASE = {"service": "shop", "image": {"repository": "127.0.0.1:5000/shop", "tag": "v1"}, "port": 8080}
FAKE_CERT = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
FAKE_KEY = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcy00MjQy\n-----END PRIVATE KEY-----\n"


def parse(tmp: Path | None = None, **over):
    data = dict(BASE)
    data.update(over)
    source = str(tmp / "cdlib.yml") if tmp else "svc/cdlib.yml"
    return config.parse(data, source, base=tmp, env={})


def error_of(tmp: Path | None = None, **over) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(tmp, **over)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 2
    return info.value


# -- defaults and the store ------------------------------------------------------------------------
def test_defaults_without_edge_settings():
    spec = parse()
    r = spec.routes
    assert (r.connect_timeout, r.read_timeout, r.send_timeout, r.max_body) == (3.0, 60.0, 60.0, 1048576)
    assert (r.tls_cert, r.tls_key, r.https_redirect, r.tls) == (None, None, False, False)
    assert spec.proxy.tls_listen is None


def test_timeouts_and_max_body_are_read():
    r = parse(routes={"paths": ["/a/"], "timeouts": {"connect": 1.5, "read": 300, "send": 30},
                      "max_body": "10m"}).routes
    assert (r.connect_timeout, r.read_timeout, r.send_timeout, r.max_body) == (1.5, 300.0, 30.0, 10 << 20)
    assert isinstance(r.read_timeout, float) and type(r.max_body) is int


@pytest.mark.parametrize("text,size", [(1, 1), (4096, 4096), ("512k", 512 << 10), ("512K", 512 << 10),
                                       ("10m", 10 << 20), ("1g", 1 << 30), ("64g", 64 << 30), ("123", 123)])
def test_max_body_forms(text, size):
    assert parse(routes={"max_body": text}).routes.max_body == size


def test_spec_key_round_trip_and_older_keys():
    routes = Routes(("/a/",), ("a.test",), connect_timeout=1.0, read_timeout=2.0, send_timeout=3.0, max_body=5,
                    tls_cert="/c.pem", tls_key="/c.key", https_redirect=True)
    assert Routes.from_dict(routes.to_dict()) == routes
    # a spec key written before the edge settings existed
    old = Routes.from_dict({"paths": ["/a/"], "hosts": []})
    assert old == Routes(("/a/",)) and old.max_body == 1048576 and old.tls_cert is None
    assert Routes.from_dict({}) == Routes()


@pytest.mark.parametrize("data", [{"read_timeout": "60s; include /etc/passwd"}, {"connect_timeout": True},
                                  {"send_timeout": -1}, {"max_body": "1m"}, {"max_body": 1.5},
                                  {"tls_cert": ["/a"]}, {"tls_key": 7}, {"https_redirect": "yes"}])
def test_a_spec_key_edited_in_the_store_is_refused_not_rendered(data):
    with pytest.raises(ProxyError) as info:
        Routes.from_dict({"paths": ["/a/"], **data})
    assert "routes." in str(info.value)


def test_registry_reads_the_edge_settings_back():
    from cdlib import keys, registry
    from cdlib.store.memory import MemoryStore

    store = MemoryStore()
    routes = Routes(("/shop/",), read_timeout=5.0, max_body=10)
    store.put_json(keys.spec("shop"), {"routes": routes.to_dict(), "port": 8080, "health_path": "/"})
    store.put_json(keys.live("shop"), {"color": "blue", "release": "r1"})
    store.register("shop", "blue", "shop-blue-1", {"address": "10.0.0.1", "port": 8080})
    store.put_json(keys.spec("old"), {"routes": {"paths": ["/old/"]}, "port": 8080, "health_path": "/"})
    store.put_json(keys.live("old"), {"color": "green", "release": "r0"})
    store.register("old", "green", "old-green-1", {"address": "10.0.0.2", "port": 8080})
    got = {b.service: b.routes for b in registry.backends(store)}
    assert got["shop"] == routes
    assert got["old"] == Routes(("/old/",))


# -- refused values: one line naming the field -------------------------------------------------------
@pytest.mark.parametrize("routes,field", [
    ({"timeouts": {"connect": 0}}, "routes.timeouts.connect"),
    ({"timeouts": {"connect": 76}}, "routes.timeouts.connect"),
    ({"timeouts": {"read": "60s"}}, "routes.timeouts.read"),
    ({"timeouts": {"send": True}}, "routes.timeouts.send"),
    ({"timeouts": {"read": float("nan")}}, "routes.timeouts.read"),
    ({"timeouts": {"send": 86401}}, "routes.timeouts.send"),
    ({"timeouts": {"idle": 5}}, "routes.timeouts.idle"),
    ({"timeouts": [5]}, "routes.timeouts"),
    ({"max_body": 0}, "routes.max_body"),
    ({"max_body": -1}, "routes.max_body"),
    ({"max_body": "65g"}, "routes.max_body"),
    ({"max_body": "1.5m"}, "routes.max_body"),
    ({"max_body": "10 m"}, "routes.max_body"),
    ({"max_body": "10mb"}, "routes.max_body"),
    ({"max_body": "10m;"}, "routes.max_body"),
    ({"max_body": True}, "routes.max_body"),
    ({"max_body": 1.5}, "routes.max_body"),
    ({"tls": "yes"}, "routes.tls"),
    ({"tls": {"cert": "a.pem"}}, "routes.tls.key"),
    ({"tls": {"key": "a.key"}}, "routes.tls.cert"),
    ({"tls": {"cert": "a.pem", "key": "a.key", "sni": True}}, "routes.tls.sni"),
])
def test_bad_edge_settings_name_the_field(routes, field):
    error = error_of(routes=routes)
    assert f": {field}: expected" in str(error) and error.data.get("key", field) == field


def test_tls_file_problems_name_the_field_and_never_quote_the_file(tmp_path):
    (tmp_path / "secret.txt").write_text("hunter7-secret-line\n")
    (tmp_path / "c.pem").write_text(FAKE_CERT)
    (tmp_path / "k.key").write_text(FAKE_KEY)
    (tmp_path / "dir").mkdir()
    proxy = {"tls_listen": "127.0.0.1:8443"}
    cases = [
        ({"cert": "missing.pem", "key": "k.key"}, "routes.tls.cert", "does not exist"),
        ({"cert": "dir", "key": "k.key"}, "routes.tls.cert", "is a directory"),
        ({"cert": "/dev/null", "key": "k.key"}, "routes.tls.cert", "is not a regular file"),
        ({"cert": "secret.txt", "key": "k.key"}, "routes.tls.cert", "holds none"),
        ({"cert": "c.pem", "key": "k.key"}, "routes.tls.cert", "OpenSSL can read"),
        ({"cert": "c.pem", "key": "missing.key"}, "routes.tls.key", "does not exist"),
        ({"cert": "my cert.pem", "key": "k.key"}, "routes.tls.cert", "without spaces"),
        ({"cert": "c.pem;", "key": "k.key"}, "routes.tls.cert", "without spaces"),
    ]
    for tls_section, field, why in cases:
        text = str(error_of(tmp_path, routes={"tls": tls_section}, proxy=proxy))
        assert f": {field}: expected" in text and why in text, text
        assert "hunter7" not in text and "bm90IGEgY2VydGlmaWNhdGU" not in text
    # a fake key behind a real-looking header: the certificate is refused first, the key is never shown
    text = str(error_of(tmp_path, routes={"tls": {"cert": "c.pem", "key": "secret.txt"}}, proxy=proxy))
    assert "hunter7" not in text


def test_relative_tls_paths_are_the_descriptors():
    # the check runs on the resolved path: a relative name is looked for next to the descriptor
    text = str(error_of(Path("/nonexistent-dir"), routes={"tls": {"cert": "a.pem", "key": "a.key"}},
                        proxy={"tls_listen": "8443"}))
    assert "/nonexistent-dir/a.pem does not exist" in text


@pytest.mark.parametrize("proxy,field", [
    ({}, "proxy.tls_listen"),
    ({"tls_listen": "not-an-address"}, "proxy.tls_listen"),
    ({"tls_listen": "127.0.0.1:70000"}, "proxy.tls_listen"),
    ({"tls_listen": ["8443"]}, "proxy.tls_listen"),
])
def test_tls_listen_is_required_and_checked(tmp_path, proxy, field, monkeypatch):
    # the files are fine as far as parse_routes goes: only the listen address is wrong
    monkeypatch.setattr(tls, "pair_problem", lambda cert, key: None)
    (tmp_path / "c.pem").write_text(FAKE_CERT)
    (tmp_path / "k.key").write_text(FAKE_KEY)
    text = str(error_of(tmp_path, routes={"tls": {"cert": "c.pem", "key": "k.key"}}, proxy=proxy))
    assert f": {field}: expected" in text, text


@pytest.mark.parametrize("listen,tls_listen", [("127.0.0.1:8880", "127.0.0.1:8880"), ("8880", "127.0.0.1:8880"),
                                               ("127.0.0.1:8880", "0.0.0.0:8880"), ("localhost:8880", "8880"),
                                               ("127.0.0.1:8880", "localhost:8880")])
def test_tls_listen_must_not_take_the_plain_listen_address(listen, tls_listen):
    text = str(error_of(proxy={"listen": listen, "tls_listen": tls_listen}))
    assert ": proxy.tls_listen: expected an address other than proxy.listen" in text


def test_tls_listen_without_tls_routes_is_allowed_and_kept():
    # a service without HTTPS routes shares a proxy whose other services have them
    spec = parse(proxy={"listen": "127.0.0.1:8880", "tls_listen": "127.0.0.1:8443"})
    assert spec.proxy.tls_listen == "127.0.0.1:8443" and spec.routes.tls_cert is None
    assert parse(proxy={"listen": "127.0.0.1:8880", "tls_listen": "127.0.0.2:8880"}).proxy.tls_listen


def test_a_valid_pair_is_stored_as_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(tls, "pair_problem", lambda cert, key: None)
    (tmp_path / "certs").mkdir()
    routes = parse(tmp_path, routes={"hosts": ["a.test"], "tls": {"cert": "certs/a.pem", "key": "certs/a.key",
                                                                  "redirect": True}},
                   proxy={"tls_listen": "8443"}).routes
    assert routes.tls_cert == str(tmp_path / "certs" / "a.pem") and routes.tls_key == str(tmp_path / "certs" / "a.key")
    assert routes.https_redirect is True and routes.tls
    assert error_of(tmp_path, routes={"tls": {"cert": "a", "key": "b", "redirect": "yes"}},
                    proxy={"tls_listen": "8443"}).data["key"] == "routes.tls.redirect"


# -- the digest that makes a renewed certificate a change ---------------------------------------------
def _backend(service: str, cert: Path | None, key: Path | None) -> Backend:
    routes = Routes((f"/{service}/",), tls_cert=str(cert) if cert else None, tls_key=str(key) if key else None)
    return Backend(service, "blue", "r", routes, (("127.0.0.1", 1),))


def test_digest_line_follows_the_files_content_and_never_holds_it(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.key"
    cert.write_text(FAKE_CERT)
    key.write_text(FAKE_KEY)
    assert tls.digest_line([_backend("a", None, None)]) == ""
    first = tls.digest_line([_backend("a", cert, key), _backend("b", None, None)])
    assert first.startswith("# tls material sha256:") and first.endswith("\n") and first.count("\n") == 1
    assert "c2VjcmV0" not in first and "bm90IGEg" not in first
    assert tls.digest_line([_backend("a", cert, key)]) == first  # the same files: the same line
    key.write_text(FAKE_KEY.replace("MjQy", "OTk5"))  # renewed in place
    assert tls.digest_line([_backend("a", cert, key)]) != first
    key.unlink()
    with pytest.raises(ProxyError) as info:
        tls.digest_line([_backend("a", cert, key)])
    assert str(key) in str(info.value) and "does not exist" in str(info.value)


def test_rendered_configuration_changes_when_only_the_certificate_changes(tmp_path):
    from cdlib.proxy.nginx import NginxProxy

    cert, key = tmp_path / "c.pem", tmp_path / "k.key"
    cert.write_text(FAKE_CERT)
    key.write_text(FAKE_KEY)
    proxy = NginxProxy(tmp_path / "nginx", listen="127.0.0.1:8880", tls_listen="127.0.0.1:8443")
    backends = [_backend("a", cert, key)]
    before = proxy.render(backends)
    assert proxy.render(backends) == before
    cert.write_text(FAKE_CERT.replace("bm90", "b3Ro"))
    after = proxy.render(backends)
    assert after != before and after.splitlines()[:-1] == before.splitlines()[:-1]


def test_tls_routes_without_tls_listen_are_refused_at_render(tmp_path):
    from cdlib.proxy.haproxy import HaproxyProxy

    cert, key = tmp_path / "c.pem", tmp_path / "k.key"
    cert.write_text(FAKE_CERT)
    key.write_text(FAKE_KEY)
    proxy = HaproxyProxy(tmp_path / "haproxy", listen="127.0.0.1:8880")
    with pytest.raises(ConfigError) as info:
        proxy.render([_backend("a", cert, key)])
    assert str(info.value).startswith("proxy.tls_listen: expected") and "service a" in str(info.value)
    assert "tls material" not in proxy.render([_backend("a", None, None)])


def test_wiring_gives_the_proxy_its_tls_listen(tmp_path):
    from cdlib.wiring import open_proxy

    for kind in ("nginx", "haproxy"):
        spec = parse(proxy={"kind": kind, "dir": str(tmp_path / kind), "tls_listen": "127.0.0.1:8443"})
        assert open_proxy(spec).tls_listen == "127.0.0.1:8443"  # type: ignore[attr-defined]
        assert open_proxy(parse(proxy={"kind": kind, "dir": str(tmp_path / kind)})).tls_listen is None  # type: ignore[attr-defined]
