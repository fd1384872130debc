"""routes.tls against real certificates made at test time with openssl (a local binary, no service):
a matching pair is accepted, a key of another certificate, an encrypted key or the files swapped are
one line naming the field, and no byte of a key is ever shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdlib import config
from cdlib.errors import ConfigError
from tests.support.certs import encrypt_key, make_pair

BASE = {"service": "shop", "image": {"repository": "127.0.0.1:5000/shop", "tag": "v1"}, "port": 8080,
        "proxy": {"listen": "127.0.0.1:8880", "tls_listen": "127.0.0.1:8443"}}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    a, b = make_pair(d, "a", hosts=("a.test",)), make_pair(d, "b", hosts=("b.test",))
    (d / "a-combined.pem").write_bytes(a.cert.read_bytes() + a.key.read_bytes())
    encrypt_key(a.key, d / "a-encrypted.key")
    return d, a, b


def parse(directory: Path, tls: dict):
    return config.parse({**BASE, "routes": {"hosts": ["a.test"], "tls": tls}}, str(directory / "cdlib.yml"),
                        base=directory, env={})


def refused(directory: Path, tls: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse(directory, tls)
    text = str(info.value)
    assert "\n" not in text and info.value.exit_code == 2
    for name in ("a.key", "b.key"):
        body = [ln for ln in (directory / name).read_text().splitlines() if "-----" not in ln]
        assert not any(ln in text for ln in body)
    return text


def test_a_matching_pair_is_accepted(pairs):
    d, a, _ = pairs
    routes = parse(d, {"cert": "a.pem", "key": "a.key", "redirect": True}).routes
    assert (routes.tls_cert, routes.tls_key, routes.https_redirect) == (str(a.cert), str(a.key), True)
    # one file holding the certificate and its key (as HAProxy likes it) serves as both
    assert parse(d, {"cert": "a-combined.pem", "key": "a-combined.pem"}).routes.tls


def test_the_key_of_another_certificate_is_refused(pairs):
    d, _, _ = pairs
    text = refused(d, {"cert": "a.pem", "key": "b.key"})
    assert ": routes.tls.key: expected the private key of routes.tls.cert" in text and "does not match" in text


def test_an_encrypted_key_is_refused(pairs):
    d, _, _ = pairs
    text = refused(d, {"cert": "a.pem", "key": "a-encrypted.key"})
    assert ": routes.tls.key: expected a private key without a passphrase" in text


def test_swapped_files_are_refused(pairs):
    d, _, _ = pairs
    assert ": routes.tls.cert: expected a PEM certificate file" in refused(d, {"cert": "a.key", "key": "a.pem"})
    assert ": routes.tls.key: expected a PEM private key file" in refused(d, {"cert": "a.pem", "key": "a.pem"})
