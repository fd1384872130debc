"""Properties of the input checks, over generated descriptors and job catalogs (hypothesis, derandomized).

(a) The descriptor parser returns a spec or raises ConfigError with a one-line message, never anything else.
(b) Whatever it accepts renders an nginx.conf that ``nginx -t`` accepts and a haproxy.cfg that
    ``haproxy -c`` accepts: the real binaries, so these two live in tests/integration/test_proxy_binaries.py.
(c) Whatever the job catalog reader accepts renders config.xml files that parse, with the description
    as written.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from cdlib import config
from cdlib.errors import ConfigError
from cdlib.jobs import catalog as cat
from cdlib.jobs.render import render_catalog
from cdlib.model import Backend

SETTINGS = dict(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
ENV = {"CDLIB_HOME": "/nonexistent/cdlib-home"}  # parse() reads nothing else from it
BASE = Path("/nonexistent/service")

# values nginx, HAProxy, YAML, XML, shells or terminals read as something else; look-alikes
HOSTILE = ["", " ", "\t", "\n", "\r\n", "x\n", ";", "{", "}", "'", '"', "`", "#", "$", "$host", "${x}", "\\", "a b",
           "\x00", "\x1b[2J", "\x7f", "\x85", "\u2028", "\ufeff", "\udcff", "\uffff", "а", "ѕ", "８", "٨", "..",
           "../", "/..", "*", "~.*", "%00", "%2e%2e", "]]>", "<x/>", "&amp;", "&", "<", "?", "|", "@", ":", "=",
           "include /etc/passwd;", "return 200;", "unix@/tmp/s", "abns@x", "\\n"]


def _hostile():
    return st.one_of(st.sampled_from(HOSTILE), st.text(max_size=8),
                     st.lists(st.sampled_from(HOSTILE), min_size=2, max_size=3).map("".join))


_JUNK = st.one_of(_hostile(), st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                 st.floats(allow_nan=True, allow_infinity=True), st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=1))
_KEY_JUNK = st.one_of(_hostile(), st.none(), st.booleans(), st.integers(-(2**70), 2**70))


def mixed(valid, junk=_JUNK):
    """Mostly the valid values (6 in 10), else the valid value with something hostile added, or junk of
    any type."""
    spiced = st.tuples(valid, st.sampled_from(HOSTILE), st.booleans()).map(
        lambda t: (t[1] + t[0] if t[2] else t[0] + t[1]) if isinstance(t[0], str) else t[0])
    return st.integers(0, 9).flatmap(lambda i: valid if i < 6 else spiced if i < 8 else junk)


def valid_mostly(valid):
    """9 in 10 valid: what the parser accepts is then mostly a real descriptor."""
    return st.integers(0, 9).flatmap(lambda i: valid if i < 9 else mixed(valid))


def rx(pattern: str):
    return st.from_regex(pattern, fullmatch=True)


NAMES = rx(r"[a-z][a-z0-9-]{0,12}[a-z0-9]")
PATHS = rx(r"/[A-Za-z0-9._~/-]{0,30}")
LABEL = r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?"
HOSTS = rx(rf"(?:\*\.)?{LABEL}(?:\.{LABEL}){{0,3}}")
IPV4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
LISTENS = st.one_of(st.integers(1, 65535).map(str), st.tuples(st.sampled_from(["127.0.0.1", "0.0.0.0", "localhost"]),
                                                           st.integers(1, 65535)).map(lambda t: f"{t[0]}:{t[1]}"))
TAGS = rx(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}")
REPOS = rx(r"(?:127\.0\.0\.1:5000/)?[a-z0-9]+(?:[._-][a-z0-9]+){0,2}")
ENV_NAMES = rx(r"[A-Za-z_][A-Za-z0-9_]{0,10}")
TEXT = st.text(max_size=40)


def _optional(**fields):
    return st.fixed_dictionaries({}, optional=fields)


def descriptors(m=mixed):
    """Descriptors whose every value is drawn through m (mixed: often hostile; identity: valid shapes)."""
    return st.fixed_dictionaries(
        {"service": m(NAMES), "image": m(st.one_of(st.fixed_dictionaries({"repository": REPOS}, optional={"tag": TAGS}),
                                                   st.tuples(REPOS, TAGS).map(":".join))),
         "port": m(st.integers(1, 65535))},
        optional={
            "health": _optional(path=m(PATHS), timeout=m(st.integers(1, 3600)), interval=m(st.floats(0.05, 60))),
            "probe": _optional(path=m(PATHS), timeout=m(st.integers(1, 600)),
                               expect=m(st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1,
                                                max_size=30))),
            "replicas": m(st.integers(1, 4)),
            "env": st.dictionaries(mixed(ENV_NAMES, _KEY_JUNK) if m is mixed else ENV_NAMES, m(TEXT), max_size=3),
            "routes": _optional(paths=st.lists(m(PATHS), max_size=3), hosts=st.lists(m(HOSTS), max_size=3)),
            "target": _optional(bind=m(IPV4), address=m(st.one_of(IPV4, st.just("localhost"))),
                                host_ports=m(st.sampled_from(["20000-29999", "1024-65535", "30000-30001"]))),
            "proxy": _optional(kind=m(st.sampled_from(["nginx", "haproxy"])), listen=m(LISTENS),
                               drain_timeout=m(st.integers(0, 600))),
        })


def assert_one_line(message: str) -> None:
    # str.splitlines() also breaks at \x0b, \x0c, \x1c-\x1e, \x85, U+2028 and U+2029
    assert message and len(message.splitlines()) == 1 and not message.endswith("\n"), repr(message)


def parse(data):
    return config.parse(data, "cdlib.yml", base=BASE, env=ENV)


# -- (a) --------------------------------------------------------------------------------------------------
@settings(max_examples=400, **SETTINGS)
@given(descriptors())
def test_parser_returns_a_spec_or_one_line_config_error(data):
    try:
        spec = parse(data)
    except ConfigError as exc:
        event("refused")
        assert_one_line(str(exc))
        return
    event("accepted")
    assert isinstance(spec, config.ServiceSpec)


# -- (b) --------------------------------------------------------------------------------------------------
def _accepted(data) -> config.ServiceSpec:
    try:
        return parse(data)
    except ConfigError:
        assume(False)


def _backend(spec: config.ServiceSpec) -> Backend:
    servers = tuple((spec.target.reach_address, 20001 + i) for i in range(spec.replicas or 1))
    return Backend(spec.name, "blue", "r-0001", spec.routes, servers, spec.health.path)


# -- (c) --------------------------------------------------------------------------------------------------
URLS = st.one_of(rx(r"https://git\.example\.com/[a-z]{1,8}/[a-z-]{1,10}\.git"),
                 rx(r"git@git\.example\.com:[a-z]{1,8}/[a-z]{1,8}\.git"))
FOLDERS = rx(r"[A-Za-z0-9][A-Za-z0-9._-]{0,8}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,8}){0,2}")
XML_TEXT = st.one_of(st.text(max_size=60), st.lists(st.sampled_from(["<", ">", "&", "]]>", "'", '"', "&amp;",
                                                                    "<![CDATA[", "-->", "<!--", "\t", "\n", "é",
                                                                    "\U0001f600", "text"]),
                                                    max_size=8).map("".join))
PARAMS = st.lists(st.one_of(
    st.fixed_dictionaries({"name": mixed(ENV_NAMES), "type": st.just("string")},
                          optional={"default": mixed(XML_TEXT), "description": mixed(XML_TEXT),
                                    "trim": mixed(st.booleans())}),
    st.fixed_dictionaries({"name": mixed(ENV_NAMES), "type": st.just("boolean")},
                          optional={"default": mixed(st.booleans())}),
    st.fixed_dictionaries({"name": mixed(ENV_NAMES), "type": mixed(st.just("choice")),
                           "choices": st.lists(mixed(XML_TEXT), max_size=3)})), max_size=3)
JOB_FIELDS = dict(
    folder=mixed(FOLDERS), branch=mixed(rx(r"\*/[a-z]{1,8}")), credentials=mixed(rx(r"[a-z][a-z0-9_.@-]{0,10}")),
    jenkinsfile=mixed(rx(r"[A-Za-z0-9._-]{1,10}(?:/[A-Za-z0-9._-]{1,10})?")), lightweight=mixed(st.booleans()),
    description=mixed(XML_TEXT), keep_builds=mixed(st.integers(1, 1000)), disabled=mixed(st.booleans()),
    triggers=_optional(scm_poll=mixed(st.sampled_from(["H/5 * * * *", "@daily", "H 2 * * 1-5"])),
                       cron=mixed(st.sampled_from(["@hourly", "H H * * *"])), github_push=mixed(st.booleans())),
    parameters=PARAMS,
)
CATALOGS = st.fixed_dictionaries(
    {"services": st.lists(st.fixed_dictionaries({"name": mixed(NAMES), "repository": mixed(URLS)}, optional=JOB_FIELDS),
                          min_size=1, max_size=3)},
    optional={"defaults": _optional(**JOB_FIELDS)})


@settings(max_examples=200, **SETTINGS)
@given(CATALOGS)
def test_what_the_catalog_reader_accepts_renders_xml_that_parses(data):
    try:
        catalog = cat.parse(data, "catalog.yml")
    except ConfigError as exc:
        event("refused")
        assert_one_line(str(exc))
        return
    event("accepted")
    jobs = {j.fullname: j for j in catalog.jobs}
    for item in render_catalog(catalog):
        head, sep, body = item.xml.partition("?>")
        assert sep and head.startswith("<?xml"), item.xml[:80]
        root = ET.fromstring(body)  # raises on anything that is not well-formed
        assert root.tag == item.root
        job = jobs.get(item.fullname)
        if item.kind == "job" and job.description:
            assert root.findtext("description").startswith(job.description)
