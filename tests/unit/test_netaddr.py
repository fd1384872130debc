"""Host names, host:port and listen addresses: the rules written once, for every module that reads them."""

import re

import pytest

from cdlib import netaddr


@pytest.mark.parametrize("listen, expected", [
    ("8880", ("127.0.0.1", 8880)),
    ("127.0.0.1:8880", ("127.0.0.1", 8880)),
    ("[::]:8880", ("::1", 8880)),  # an IPv6 wildcard socket may refuse IPv4 clients (nginx: ipv6only=on)
    ("[::1]:8880", ("::1", 8880)),
    ("0.0.0.0:8880", ("127.0.0.1", 8880)),
    ("localhost:8880", ("localhost", 8880)),
    ("10.1.2.3:1", ("10.1.2.3", 1)),
    ("[fe80::1]:65535", ("fe80::1", 65535)),
])
def test_parse_listen_gives_the_address_a_client_connects_to(listen, expected):
    assert netaddr.listen_problem(listen) is None
    assert netaddr.parse_listen(listen) == expected


@pytest.mark.parametrize("listen, problem", [
    ("", netaddr.LISTEN_EXPECTED),
    ("host:80", netaddr.LISTEN_EXPECTED),
    ("80;", netaddr.LISTEN_EXPECTED),
    ("::1:80", netaddr.LISTEN_EXPECTED),  # IPv6 needs brackets
    ("1.2.3.4:99999", "a port from 1 to 65535"),
    ("0", "a port from 1 to 65535"),
    ("999.1.1.1:80", "PORT or ADDRESS:PORT with a valid IP address"),
    ("[::g]:80", netaddr.LISTEN_EXPECTED),
    ("[1:2]:80", "PORT or ADDRESS:PORT with a valid IP address"),
])
def test_a_bad_listen_address_is_refused_with_what_is_expected(listen, problem):
    assert netaddr.listen_problem(listen) == problem
    with pytest.raises(ValueError, match=re.escape(problem)):
        netaddr.parse_listen(listen)


def test_listen_problem_refuses_what_is_not_text():
    assert netaddr.listen_problem(8880) == netaddr.LISTEN_EXPECTED
    assert netaddr.listen_problem(None) == netaddr.LISTEN_EXPECTED


@pytest.mark.parametrize("item, expected", [
    ("etcd-1", ("etcd-1", 2379)),
    ("etcd-1:2380", ("etcd-1", 2380)),
    ("10.0.0.1", ("10.0.0.1", 2379)),
    ("[::1]", ("::1", 2379)),
    ("[::1]:2381", ("::1", 2381)),
    ("h.example.com.:1", ("h.example.com.", 1)),
])
def test_parse_hostport(item, expected):
    assert netaddr.parse_hostport(item, 2379) == expected
    assert netaddr.parse_hostport(netaddr.format_hostport(*expected), 0) == expected


@pytest.mark.parametrize("item", ["", ":2379", "h:0", "h:65536", "h:x", "::1", "[::1", "[::1]x", "[h]:1",
                                  "300.1.1.1", "bad_host_", "h:1:2", "-h", "a" * 254])
def test_parse_hostport_refuses(item):
    assert netaddr.parse_hostport(item, 2379) is None


def test_format_hostport_brackets_ipv6_only():
    assert netaddr.format_hostport("::1", 80) == "[::1]:80"
    assert netaddr.format_hostport("10.0.0.1", 80) == "10.0.0.1:80"
    assert netaddr.format_hostport("h", 80) == "h:80"


@pytest.mark.parametrize("value, ok", [("127.0.0.1", True), ("::1", True), ("0.0.0.0", True), ("256.0.0.1", False),
                                       ("localhost", False), ("[::1]", False), ("", False)])
def test_is_ip(value, ok):
    assert netaddr.is_ip(value) is ok


def test_the_proxy_and_the_store_use_these_rules():
    from cdlib.proxy import managed
    from cdlib.store import url

    assert managed.parse_listen("[::]:8880") == netaddr.parse_listen("[::]:8880")
    assert managed.hostport is netaddr.format_hostport
    assert url.parse("etcd://[::1]:2381,h").hosts == (("::1", 2381), ("h", 2379))
