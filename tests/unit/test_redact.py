"""URL redaction: one rule for every message that shows a URL (store, Docker host, Jenkins, test runner)."""

import pytest

from cdlib.redact import redact_url, shorten, url_passwords


@pytest.mark.parametrize("text, expected", [
    ("ssh://deploy:pw@build-1:22", "ssh://deploy@build-1:22"),
    ("unix:///var/run/docker.sock", "unix:///var/run/docker.sock"),
    ("tcp://10.0.0.5:2376", "tcp://10.0.0.5:2376"),
    ("etcd://user:p@ss/w:rd@h:2379", "etcd://user@h:2379"),  # a password with '@' and '/' goes whole
    ("etcds://pa55-Secret-token@h:2379", "etcds://***@h:2379"),  # a lone word may be a token
    ("https://we ird:pw@h/", "https://***@h/"),  # malformed, still no password shown
    ("http://us%40er:pw@h/", "http://***@h/"),
    ("user:pw@host:8500", "user@host:8500"),  # without a scheme
    ("u@x:p@host", "***@host"),
    ("registry/img@sha256:0123", "registry/img@sha256:0123"),  # no password: not a credential
    ("failed: http://a:b@h1/x and http://c:d@h2/ too", "failed: http://a@h1/x and http://c@h2/ too"),
])
def test_redact_url(text, expected):
    assert redact_url(text) == expected


def test_no_password_survives_redaction():
    for secret in ("s3cret-pw", "p@ss/w:rd", "tok%20en"):
        for text in (f"etcd://user:{secret}@h", f"user:{secret}@h", f"x ssh://u:{secret}@h y",
                     f"etcd://a user:{secret}@h", f"etcd://user:{secret} x@h"):
            assert secret not in redact_url(text), text


def test_redact_url_cuts_to_a_limit_only_when_asked():
    long = "consul://h:8500/" + "x" * 100
    assert redact_url(long) == long
    assert redact_url(long, 80) == shorten(long, 80) and len(redact_url(long, 80)) == 80
    assert redact_url(42) == "42"


def test_url_passwords_are_what_secrets_masks():
    assert url_passwords("etcd://user:s3cret@h") == {"s3cret"}
    assert url_passwords("a http://u:p%40ss@h b https://v:two@k") == {"p%40ss", "p@ss", "two"}
    assert url_passwords("ssh://deploy@h, plain text") == set()


def test_every_adapter_uses_the_one_rule():
    from cdlib import config
    from cdlib.runtime.docker import redact_host
    from cdlib.store import url
    from cdlib.testrun import container

    text = "ssh://deploy:pw@build-1:22"
    assert redact_host(text) == container._redact(text) == config.redact_url(text) == url.redact(text)
