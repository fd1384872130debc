"""Inputs cdlib must refuse: exit 2, one line on stderr naming the field, nothing changed.

Each case: an id, the text the error line must contain (``field``: the descriptor key, the CLI flag,
the environment variable, the catalog key or the file; a tuple means any of them), the arguments
after ``cdlib`` (``-f <descriptor>`` is added), and what is hostile about it:

- ``desc``: merged into the world's descriptor (mappings key by key; ``DROP`` removes a key);
- ``text``: the descriptor file's raw content instead (``@BASE@`` is the world's descriptor as YAML,
  ``@BASE-routes@`` the same without ``routes``);
- ``env``: environment variables (None unsets one);
- ``files``: extra files in the case's directory; ``make``: a generated file (see conftest.MAKERS).

Placeholders: @NAME@ (the service), @REPO@ (its image repository), @LISTEN@, @PROXYDIR@, @STORE@,
@WORLD@, @DIR@ (the case's directory), @FILE@ (the descriptor's path).
"""

from __future__ import annotations

import json
from dataclasses import dataclass


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP = _Drop()


@dataclass(frozen=True)
class Case:
    id: str
    field: str | tuple[str, ...]
    argv: tuple[str, ...] = ("deploy",)
    desc: dict | None = None
    text: str | bytes | None = None
    env: dict | None = None
    files: dict | None = None
    make: str | None = None
    subprocess: bool = False  # its own process, with a time-out and a memory limit
    with_file: bool = True  # add -f <descriptor>
    secrets: tuple[str, ...] = ()  # texts that must appear nowhere in the output
    secret_files: tuple[str, ...] = ()  # files (in the case's directory, or /etc/shadow) never echoed
    result_file: bool = False  # also pass --result-file and check it


def D(id, field, desc, *argv, **kw) -> Case:
    """A descriptor variant."""
    return Case(id, field, tuple(argv) or ("deploy",), desc=desc, **kw)


def R(id, field, text, *argv, **kw) -> Case:
    """A raw descriptor file."""
    return Case(id, field, tuple(argv) or ("deploy",), text=text, **kw)


def A(id, field, *argv, **kw) -> Case:
    """Command-line arguments against the world's descriptor."""
    return Case(id, field, tuple(argv), **kw)


def E(id, field, env, *argv, desc=None, **kw) -> Case:
    """Environment variables."""
    return Case(id, field, tuple(argv) or ("deploy",), desc=desc, env=env, **kw)


JOBS_ARGV = ("jobs", "render", "--catalog", "@DIR@/catalog.yml", "--out", "@DIR@/out")
JOB = {"name": "shop", "repository": "https://git.example.com/shop.git"}
JENKINS = {"JENKINS_URL": "http://127.0.0.1:9/", "JENKINS_USER": "ci", "JENKINS_API_TOKEN": "hunter7token"}


def J(id, field, catalog, **kw) -> Case:
    """A job catalog (a mapping, or raw YAML text) for ``cdlib jobs render``."""
    text = catalog if isinstance(catalog, (str, bytes)) else json.dumps(catalog, indent=2)
    return Case(id, field, JOBS_ARGV, files={"catalog.yml": text}, **kw)


def JE(id, field, **entry) -> Case:
    """One catalog entry with these keys changed."""
    job = {**JOB, **entry}
    return J(id, field, {"services": [{k: v for k, v in job.items() if v is not DROP}]})


BIG = "1" + "0" * 4999  # 5,000 digits
ALIAS_BOMB = "".join([
    'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n',
    *(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
      f"*a{i - 1}, *a{i - 1}]\n" for i in range(1, 9)),
])
SYNTAX_TEMPLATE = "worker_processes 1;\nevents {}\n{{ upstream cdlib_secret_token_4242 }}\nhttp {}\n"
NOT_NGINX_TEMPLATE = "cdlib_hidden_directive_77 on;\nevents {}\nhttp {}\n"
BINARY = bytes(range(256)) * 64

# --------------------------------------------------------------------------------------------------
DESCRIPTOR = [
    # service
    D("service-int", "service", {"service": 123}),
    D("service-list", "service", {"service": ["a"]}),
    D("service-bool", "service", {"service": True}),
    D("service-upper", "service", {"service": "Cdlibh-Shop"}),
    D("service-empty", "service", {"service": ""}),
    D("service-too-long", "service", {"service": "a" * 41}),
    D("service-trailing-dash", "service", {"service": "shop-"}),
    D("service-path", "service", {"service": "../etc"}),
    D("service-missing", "service", {"service": DROP}),
    D("service-semicolon", "service", {"service": "shop;x"}, "release"),
    D("service-huge", "service", {"service": "a" * 200_000}),
    D("service-terminal-escape", "service", {"service": "\x1b]0;owned\x07\x1b[2J"}),
    # image
    D("image-int", "image", {"image": 5}),
    D("image-list", "image", {"image": ["@REPO@"]}),
    D("image-string-garbage", "image", {"image": "::::"}),
    D("image-repo-upper", "image.repository", {"image": {"repository": "Cdlibt-Hostile-Web"}}),
    D("image-repo-space", "image.repository", {"image": {"repository": "cdlibt hostile"}}),
    D("image-repo-missing", "image.repository", {"image": {"repository": DROP}}),
    D("image-tag-space", "image.tag", {"image": {"tag": "v 1"}}),
    D("image-tag-long", "image.tag", {"image": {"tag": "a" * 129}}),
    D("image-tag-list", "image.tag", {"image": {"tag": ["v1"]}}),
    D("image-unknown-key", "image.digest", {"image": {"digest": "sha256:00"}}),
    D("image-build-context-nul", "image.build.context", {"image": {"build": {"context": "a\x00b"}}}),
    D("image-build-args-name", "image.build.args", {"image": {"build": {"args": {"1X": "a"}}}}),
    D("image-build-unknown", "image.build.target", {"image": {"build": {"target": "x"}}}),
    # port
    D("port-zero", "port", {"port": 0}),
    D("port-65536", "port", {"port": 65536}),
    D("port-negative", "port", {"port": -1}),
    D("port-string", "port", {"port": "http"}),
    D("port-float", "port", {"port": 80.5}),
    D("port-bool", "port", {"port": True}),
    D("port-list", "port", {"port": [8080]}),
    D("port-missing", "port", {"port": DROP}),
    D("port-fullwidth-digits", "port", {"port": "８０８０"}),
    D("port-arabic-digits", "port", {"port": "٨٠٨٠"}),
    # health
    D("health-string", "health", {"health": "/health"}),
    D("health-path-relative", "health.path", {"health": {"path": "health"}}),
    D("health-path-space", "health.path", {"health": {"path": "/he alth"}}),
    D("health-path-directive", "health.path", {"health": {"path": "/h;return 200 ok"}}),
    D("health-path-brace", "health.path", {"health": {"path": "/h{"}}),
    D("health-path-cyrillic", "health.path", {"health": {"path": "/һealth"}}),
    D("health-timeout-zero", "health.timeout", {"health": {"timeout": 0}}),
    D("health-timeout-nan", "health.timeout", {"health": {"timeout": float("nan")}}),
    D("health-timeout-string", "health.timeout", {"health": {"timeout": "10s"}}),
    D("health-timeout-fullwidth", "health.timeout", {"health": {"timeout": "１０"}}),
    D("health-interval-negative", "health.interval", {"health": {"interval": -1}}),
    D("health-unknown-key", "health.pth", {"health": {"pth": "/"}}),
    # probe
    D("probe-path-quote", "probe.path", {"probe": {"path": '/v"'}}),
    D("probe-path-hash", "probe.path", {"probe": {"path": "/v#x"}}),
    D("probe-timeout-zero", "probe.timeout", {"probe": {"timeout": 0}}),
    D("probe-expect-too-long", "probe.expect", {"probe": {"expect": "x" * 201}}),
    D("probe-expect-embedded-newline", "probe.expect", {"probe": {"expect": "v1\nX-Injected: 1"}}),
    D("probe-expect-nul", "probe.expect", {"probe": {"expect": "v\x00"}}),
    D("probe-expect-list", "probe.expect", {"probe": {"expect": ["v1"]}}),
    D("probe-unknown-key", "probe.retries", {"probe": {"retries": 3}}),
    # replicas
    D("replicas-zero", "replicas", {"replicas": 0}),
    D("replicas-101", "replicas", {"replicas": 101}),
    D("replicas-string", "replicas", {"replicas": "2"}),
    D("replicas-float", "replicas", {"replicas": 1.5}),
    D("replicas-bool", "replicas", {"replicas": True}),
    D("replicas-fullwidth", "replicas", {"replicas": "２"}),
    # env
    D("env-list", "env", {"env": ["A=1"]}),
    D("env-name-digit", "env.1A", {"env": {"1A": "x"}}),
    D("env-name-space", ("env.A B", "env.'A B'"), {"env": {"A B": "x"}}),
    D("env-name-semicolon", "env.A;B", {"env": {"A;B": "x"}}),
    D("env-name-dollar", "env.$A", {"env": {"$A": "x"}}),
    D("env-name-cyrillic", "env.АPI_KEY", {"env": {"АPI_KEY": "x"}}),
    D("env-name-trailing-newline", ("env.API", "env.'API\\n'"), {"env": {"API\n": "x"}}),
    D("env-value-mapping", "env.A", {"env": {"A": {"b": 1}}}),
    D("env-value-nul", "env.A", {"env": {"A": "a\x00b"}}),
    D("env-value-bool", "env.A", {"env": {"A": True}}),
    D("env-value-null", "env.A", {"env": {"A": None}}),
    # routes: directive injection and look-alikes
    D("routes-list", "routes", {"routes": ["/x/"]}),
    D("routes-unknown-key", "routes.prefix", {"routes": {"prefix": "/x/"}}),
    D("routes-path-relative", "routes.paths[0]", {"routes": {"paths": ["x/"]}}),
    D("routes-path-directive", "routes.paths[0]", {"routes": {"paths": ["/a/ { return 200 x; } location /b/"]}}),
    D("routes-path-semicolon", "routes.paths[0]", {"routes": {"paths": ["/a;"]}}),
    D("routes-path-open-brace", "routes.paths[0]", {"routes": {"paths": ["/a{"]}}),
    D("routes-path-close-brace", "routes.paths[0]", {"routes": {"paths": ["/a}"]}}),
    D("routes-path-double-quote", "routes.paths[0]", {"routes": {"paths": ['/a"']}}),
    D("routes-path-single-quote", "routes.paths[0]", {"routes": {"paths": ["/a'"]}}),
    D("routes-path-hash", "routes.paths[0]", {"routes": {"paths": ["/a#"]}}),
    D("routes-path-space", "routes.paths[0]", {"routes": {"paths": ["/a b/"]}}),
    D("routes-path-dollar", "routes.paths[0]", {"routes": {"paths": ["/$host/"]}}),
    D("routes-path-embedded-newline", "routes.paths[0]", {"routes": {"paths": ["/a/\nreturn 200;"]}}),
    D("routes-path-proxy-own", "routes.paths[0]", {"routes": {"paths": ["/_cdlib/x"]}}),
    D("routes-path-cyrillic", "routes.paths[0]", {"routes": {"paths": ["/аpi/"]}}),
    D("routes-path-int", "routes.paths[0]", {"routes": {"paths": [5]}}),
    D("routes-path-second", "routes.paths[1]", {"routes": {"paths": ["/ok/", "/b;"]}}),
    D("routes-path-duplicate", "routes.paths", {"routes": {"paths": ["/a/", "/a/"]}}),
    D("routes-host-upper", "routes.hosts[0]", {"routes": {"hosts": ["API.example.com"]}}),
    D("routes-host-semicolon", "routes.hosts[0]", {"routes": {"hosts": ["a.example.com;"]}}),
    D("routes-host-regex", "routes.hosts[0]", {"routes": {"hosts": ["~.*"]}}),
    D("routes-host-cyrillic", "routes.hosts[0]", {"routes": {"hosts": ["аpi.example.com"]}}),
    D("routes-host-trailing-wildcard", "routes.hosts[0]", {"routes": {"hosts": ["example.*"]}}),
    D("routes-host-space", "routes.hosts[0]", {"routes": {"hosts": ["a.com b.com"]}}),
    D("routes-host-dollar", "routes.hosts[0]", {"routes": {"hosts": ["$host"]}}),
    D("routes-host-brace", "routes.hosts[0]", {"routes": {"hosts": ["a.com{"]}}),
    D("routes-host-quote", "routes.hosts[0]", {"routes": {"hosts": ['a.com"']}}, "release"),
    # routes: edge settings (timeouts, body size, TLS files); a key or a file given by mistake is never echoed
    D("routes-timeout-directive", "routes.timeouts.read", {"routes": {"timeouts": {"read": "60s; include /etc/passwd"}}}),
    D("routes-timeout-zero", "routes.timeouts.connect", {"routes": {"timeouts": {"connect": 0}}}, "release"),
    D("routes-timeout-nan", "routes.timeouts.send", {"routes": {"timeouts": {"send": float("nan")}}}),
    D("routes-max-body-directive", "routes.max_body", {"routes": {"max_body": "1m; return 200"}}),
    D("routes-max-body-huge", "routes.max_body", {"routes": {"max_body": "9999999g"}}, "release"),
    D("routes-tls-missing-file", "routes.tls.cert",
      {"routes": {"tls": {"cert": "missing.pem", "key": "missing.key"}}, "proxy": {"tls_listen": "127.0.0.1:18443"}},
      "release"),
    D("routes-tls-cert-is-shadow", "routes.tls.cert",
      {"routes": {"tls": {"cert": "/etc/shadow", "key": "/etc/shadow"}}, "proxy": {"tls_listen": "127.0.0.1:18443"}},
      "release", secret_files=("/etc/shadow",)),
    D("routes-tls-key-missing", "routes.tls.key",
      {"routes": {"tls": {"cert": "notes.pem", "key": "missing.key"}}, "proxy": {"tls_listen": "127.0.0.1:18443"}},
      "release", files={"notes.pem": "hunter7-not-a-certificate-line\n"}, secret_files=("notes.pem",)),
    D("routes-tls-cert-garbage-pem", "routes.tls.cert",
      {"routes": {"tls": {"cert": "site.pem", "key": "site.key"}}, "proxy": {"tls_listen": "127.0.0.1:18443"}},
      "release", files={"site.pem": "-----BEGIN CERTIFICATE-----\nhunter7garbageline\n-----END CERTIFICATE-----\n",
                        "site.key": "-----BEGIN PRIVATE KEY-----\nhunter7secretkeyline\n-----END PRIVATE KEY-----\n"},
      secret_files=("site.pem", "site.key")),
    D("routes-tls-directory", "routes.tls.cert",
      {"routes": {"tls": {"cert": "@DIR@", "key": "@DIR@"}}, "proxy": {"tls_listen": "127.0.0.1:18443"}}),
    D("routes-tls-path-directive", "routes.tls.cert",
      {"routes": {"tls": {"cert": "a.pem; include /etc/passwd", "key": "a.key"}}, "proxy": {"tls_listen": "18443"}}),
    D("routes-tls-redirect-string", "routes.tls.redirect",
      {"routes": {"tls": {"cert": "a.pem", "key": "a.key", "redirect": "yes"}}, "proxy": {"tls_listen": "18443"}}),
    D("routes-tls-without-tls-listen", ("routes.tls.cert", "proxy.tls_listen"),
      {"routes": {"tls": {"cert": "missing.pem", "key": "missing.key"}}}),
    D("proxy-tls-listen-same-as-listen", "proxy.tls_listen", {"proxy": {"tls_listen": "@LISTEN@"}}, "release"),
    D("proxy-tls-listen-directive", "proxy.tls_listen", {"proxy": {"tls_listen": "8443 ssl; include /etc/passwd"}}),
    # tests
    D("tests-string", "tests", {"tests": "true"}),
    D("tests-unknown-type", "tests.smoke", {"tests": {"smoke": "true"}}),
    D("tests-suite-int", "tests.pre-integration", {"tests": {"pre-integration": 5}}),
    D("tests-suite-empty", "tests.pre-integration", {"tests": {"pre-integration": {}}}),
    D("tests-command-empty-list", "tests.pre-integration.command", {"tests": {"pre-integration": []}}),
    D("tests-command-list-int", "tests.pre-integration.command", {"tests": {"pre-integration": ["true", 1]}}),
    D("tests-command-blank", "tests.pre-integration.command", {"tests": {"pre-integration": "   "}}),
    D("tests-command-nul", "tests.pre-integration.command", {"tests": {"pre-integration": "true\x00"}}),
    D("tests-timeout-zero", "tests.post-integration.timeout",
      {"tests": {"post-integration": {"command": "true", "timeout": 0}}}),
    D("tests-unstable-string", "tests.post-integration.unstable",
      {"tests": {"post-integration": {"command": "true", "unstable": "yes"}}}),
    D("tests-env-name", "tests.pre-deployment.env.A-B", {"tests": {"pre-deployment": {"command": "true", "env": {"A-B": "1"}}}}),
    D("tests-workdir-nul", "tests.pre-deployment.workdir",
      {"tests": {"pre-deployment": {"command": "true", "workdir": "a\x00"}}}),
    D("tests-pass-env-dash", "tests.pre-integration.pass_env[0]",
      {"tests": {"pre-integration": {"command": "true", "pass_env": ["A-B"]}}}),
    D("tests-image-upper", "tests.pre-integration.image",
      {"tests": {"pre-integration": {"image": "Tests:1"}}}),
    D("tests-unknown-key", "tests.pre-integration.retries",
      {"tests": {"pre-integration": {"command": "true", "retries": 3}}}),
    # target
    D("target-string", "target", {"target": "docker"}),
    D("target-kind", "target.kind", {"target": {"kind": "kubernetes"}}),
    D("target-swarm-endpoint-mode", "target.swarm.endpoint_mode",
      {"target": {"kind": "swarm", "swarm": {"endpoint_mode": "mesh"}}}),
    D("target-swarm-on-docker", "target.swarm", {"target": {"kind": "docker", "swarm": {"endpoint_mode": "dnsrr"}}}),
    D("target-swarm-constraint-newline", "target.swarm.constraints",
      {"target": {"kind": "swarm", "swarm": {"constraints": ["node.role==manager\nx"]}}}),
    D("target-docker-host-garbage", "target.docker_host", {"target": {"docker_host": "garbage"}}),
    D("target-docker-host-fullwidth", "target.docker_host", {"target": {"docker_host": "tcp://１２７.0.0.1:2375"}}),
    D("target-bind-not-an-ip", "target.bind", {"target": {"bind": "999.999.999.999"}}),
    D("target-bind-hex-word", "target.bind", {"target": {"bind": "cafe"}}),
    D("target-bind-injection", "target.bind", {"target": {"bind": "127.0.0.1; rm"}}),
    D("target-address-with-port", "target.address", {"target": {"address": "127.0.0.1:80"}}),
    D("target-address-not-an-ip", "target.address", {"target": {"address": "1.2.3"}}),
    D("target-init-string", "target.init", {"target": {"init": "yes"}}),
    D("target-stop-timeout-negative", "target.stop_timeout", {"target": {"stop_timeout": -1}}),
    D("target-network-space", "target.network", {"target": {"network": "a b"}}),
    D("target-host-ports-low", "target.host_ports", {"target": {"host_ports": "1-2"}}),
    D("target-host-ports-reversed", "target.host_ports", {"target": {"host_ports": "30000-20000"}}),
    D("target-host-ports-arabic-digits", "target.host_ports", {"target": {"host_ports": "٢٠٠٠٠-٢٩٩٩٩"}}),
    D("target-unknown-key", "target.privileged", {"target": {"privileged": True}}),
    # proxy
    D("proxy-string", "proxy", {"proxy": "nginx"}),
    D("proxy-kind", "proxy.kind", {"proxy": {"kind": "apache"}}),
    D("proxy-listen-word", "proxy.listen", {"proxy": {"listen": "abc"}}),
    D("proxy-listen-port-too-big", "proxy.listen", {"proxy": {"listen": "127.0.0.1:99999"}}),
    D("proxy-listen-port-zero", "proxy.listen", {"proxy": {"listen": "0"}}),
    D("proxy-listen-directive", "proxy.listen", {"proxy": {"listen": "127.0.0.1:8080; include /etc/passwd"}}),
    D("proxy-listen-fullwidth", "proxy.listen", {"proxy": {"listen": "127.0.0.1:８８８０"}}),
    D("proxy-listen-bad-address", "proxy.listen", {"proxy": {"listen": "999.999.999.999:8880"}}),
    D("proxy-dir-nul", "proxy.dir", {"proxy": {"dir": "a\x00b"}}),
    D("proxy-dir-space-haproxy", "proxy.dir",
      {"proxy": {"kind": "haproxy", "dir": "@DIR@/ha proxy", "listen": "@LISTEN@"}}),
    D("proxy-dir-semicolon-haproxy", "proxy.dir",
      {"proxy": {"kind": "haproxy", "dir": "@DIR@/ha;proxy", "listen": "@LISTEN@"}}),
    D("proxy-binary-missing", "proxy.binary", {"proxy": {"binary": "/nonexistent/nginx"}}),
    D("proxy-binary-not-executable", "proxy.binary", {"proxy": {"binary": "/etc/hostname"}}),
    D("proxy-drain-timeout-negative", "proxy.drain_timeout", {"proxy": {"drain_timeout": -1}}),
    D("proxy-drain-timeout-nan", "proxy.drain_timeout", {"proxy": {"drain_timeout": float("nan")}}),
    D("proxy-unknown-key", "proxy.user", {"proxy": {"user": "root"}}),
    # store
    D("store-int", "store", {"store": 5}),
    D("store-ftp", "store", {"store": "ftp://127.0.0.1/x"}),
    D("store-sqlite-directory", "store", {"store": "sqlite:///@DIR@"}, "status"),
    D("store-sqlite-not-a-database", "store", {"store": "sqlite:///@DIR@/notes.txt"}, "status",
      files={"notes.txt": "not a database\n" * 100}),
    D("store-credentials", "store", {"store": "etcd://root:hunter2pw@127.0.0.1:2379"}, secrets=("hunter2pw",)),
    D("store-etcd-port-word", "store", {"store": "etcd://127.0.0.1:abc"}),
    D("store-consul-port-word", "store", {"store": "consul://127.0.0.1:abc"}),
    D("store-sqlite-no-path", "store", {"store": "sqlite:///"}),
    # the top level
    D("top-unknown-key", "servce", {"servce": "x"}),
    R("top-list", "@FILE@", "- service: x\n- port: 1\n"),
    R("top-scalar", "@FILE@", "hello\n"),
    R("top-empty", "@FILE@", ""),
]

# a trailing newline in every string field: "$" in a Python pattern matches before it
NEWLINE = [
    D("newline-service", "service", {"service": "@NAME@\n"}),
    D("newline-image", "image", {"image": "@REPO@:v1\n"}),
    D("newline-image-repository", "image.repository", {"image": {"repository": "@REPO@\n"}}),
    D("newline-image-tag", "image.tag", {"image": {"tag": "v1\n"}}),
    D("newline-image-build-dockerfile", "image.build.dockerfile",
      {"image": {"build": {"context": ".", "dockerfile": "Dockerfile\n"}}}),
    D("newline-image-build-context", "image.build.context", {"image": {"build": {"context": ".\n"}}}),
    D("newline-health-path", "health.path", {"health": {"path": "/health\n"}}),
    D("newline-probe-path", "probe.path", {"probe": {"path": "/version\n"}}),
    D("newline-probe-expect", "probe.expect", {"probe": {"expect": "v1\n"}}),
    D("newline-routes-path", "routes.paths[0]", {"routes": {"paths": ["/@NAME@/\n"]}}),
    D("newline-routes-host", "routes.hosts[0]", {"routes": {"hosts": ["api.example.com\n"]}}),
    D("newline-tests-image", "tests.pre-integration.image",
      {"tests": {"pre-integration": {"image": "@REPO@:v1\n"}}}),
    D("newline-tests-image-repository", "tests.pre-integration.image.repository",
      {"tests": {"pre-integration": {"image": {"repository": "@REPO@\n"}}}}),
    D("newline-tests-pass-env", "tests.pre-integration.pass_env[0]",
      {"tests": {"pre-integration": {"command": "true", "pass_env": ["TOKEN\n"]}}}),
    D("newline-tests-workdir", "tests.pre-integration.workdir",
      {"tests": {"pre-integration": {"command": "true", "workdir": ".\n"}}}),
    D("newline-target-kind", "target.kind", {"target": {"kind": "docker\n"}}),
    D("newline-target-docker-host", "target.docker_host",
      {"target": {"docker_host": "unix:///var/run/docker.sock\n"}}),
    D("newline-target-bind", "target.bind", {"target": {"bind": "127.0.0.1\n"}}),
    D("newline-target-address", "target.address", {"target": {"address": "127.0.0.1\n"}}),
    D("newline-target-network", "target.network", {"target": {"network": "bridge\n"}}),
    D("newline-target-host-ports", "target.host_ports", {"target": {"host_ports": "20000-29999\n"}}),
    D("newline-proxy-kind", "proxy.kind", {"proxy": {"kind": "nginx\n"}}),
    D("newline-proxy-listen", "proxy.listen", {"proxy": {"listen": "@LISTEN@\n"}}),
    D("newline-proxy-dir", "proxy.dir", {"proxy": {"dir": "@PROXYDIR@\n"}}),
    D("newline-proxy-template", "proxy.template", {"proxy": {"template": "tpl.j2\n"}}),
    D("newline-proxy-binary", "proxy.binary", {"proxy": {"binary": "nginx\n"}}),
    D("newline-store", "store", {"store": "@STORE@\n"}),
]

YAML = [
    R("yaml-alias-bomb", "@FILE@", "@BASE-env@" + ALIAS_BOMB + "env: *a8\n", subprocess=True),
    R("yaml-alias-bomb-in-service", "@FILE@", "@BASE-service@" + ALIAS_BOMB + "service: *a8\n", subprocess=True),
    R("yaml-deep-nesting-lists", "@FILE@", "@BASE-env@env: " + "[" * 50000 + "]" * 50000 + "\n", subprocess=True),
    R("yaml-deep-nesting-maps", "@FILE@", "@BASE-env@env: " + "{a: " * 50000 + "1" + "}" * 50000 + "\n",
      subprocess=True),
    R("yaml-5000-digit-port", "@FILE@", "@BASE-port@port: " + BIG + "\n"),
    R("yaml-5000-digit-timeout", "@FILE@", "@BASE-health@health: {path: /health, timeout: " + BIG + "}\n"),
    R("yaml-duplicate-service", "service", "@BASE@service: cdlibh-other\n"),
    R("yaml-duplicate-port", "port", "@BASE@port: 9090\n"),
    R("yaml-duplicate-nested", "routes.paths", "@BASE-routes@routes: {paths: [/a/], paths: [/b/]}\n"),
    R("yaml-python-tag", "@FILE@", "@BASE-env@env: !!python/object/apply:os.system ['true']\n"),
    R("yaml-unknown-alias", "@FILE@", "@BASE-env@env: *nope\n"),
    R("yaml-nul-byte", "@FILE@", "@BASE-env@env: {A: a\x00b}\n"),
    R("yaml-invalid-utf8", "@FILE@", b"@BASE@# \xff\xfe\xc3\x28\n"),
    R("yaml-utf16", "@FILE@", "service: x\nport: 1\n".encode("utf-16")),
    R("yaml-binary", "@FILE@", BINARY),
    R("yaml-tab-indent", "@FILE@", "@BASE-health@health:\n\tpath: /health\n"),
    A("yaml-dev-zero", "/dev/zero", "deploy", "-f", "/dev/zero", subprocess=True),
    A("yaml-dev-zero-env", "/dev/zero", "deploy", env={"CDLIB_FILE": "/dev/zero"}, with_file=False,
      subprocess=True),
    R("yaml-50mb", "@FILE@", "@BASE@", make="50mb", subprocess=True),
    R("yaml-fifo", "@FILE@", "", make="fifo", subprocess=True),
    R("yaml-symlink-loop", "@FILE@", "", make="symlink-loop"),
    A("yaml-directory", "@DIR@", "deploy", "-f", "@DIR@"),
    A("yaml-etc-shadow", "/etc/shadow", "deploy", "-f", "/etc/shadow", secret_files=("/etc/shadow",),
      result_file=True),
    A("yaml-missing", "@DIR@/nope.yml", "deploy", "-f", "@DIR@/nope.yml"),
]

CLI = [
    A("cli-tag-empty", "--tag", "deploy", "--tag", ""),
    A("cli-tag-space", "--tag", "deploy", "--tag", "a b"),
    A("cli-tag-newline", "--tag", "deploy", "--tag", "v1\n"),
    A("cli-tag-semicolon", "--tag", "release", "--tag", "v1;rm"),
    A("cli-tag-cyrillic", "--tag", "deploy", "--tag", "vі"),
    A("cli-tag-too-long", "--tag", "deploy", "--tag", "a" * 200),
    A("cli-tag-terminal-escape", "--tag", "deploy", "--tag", "\x1b[31mv1"),
    A("cli-image-garbage", "--image", "deploy", "--image", "not an image"),
    A("cli-image-upper", "--image", "deploy", "--image", "Cdlibt-Hostile-Web:v1"),
    A("cli-image-empty", "--image", "deploy", "--image", ""),
    A("cli-image-newline", "--image", "deploy", "--image", "@REPO@:v1\n"),
    A("cli-image-digest-garbage", "--image", "deploy", "--image", "@REPO@@sha256:zz"),
    A("cli-limit-negative", "--limit", "history", "--limit", "-1"),
    A("cli-limit-word", "--limit", "history", "--limit", "all"),
    A("cli-lock-ttl-tiny", "--lock-ttl", "deploy", "--lock-ttl", "1e-9"),
    A("cli-lock-ttl-nan", "--lock-ttl", "deploy", "--lock-ttl", "nan"),
    A("cli-lock-ttl-inf", "--lock-ttl", "deploy", "--lock-ttl", "inf"),
    A("cli-lock-ttl-below-10", "--lock-ttl", "release", "--lock-ttl", "5"),
    A("cli-lock-ttl-rollback", "--lock-ttl", "rollback", "--lock-ttl", "0"),
    A("cli-lock-ttl-rollback-previous", "--lock-ttl", "rollback", "--previous", "--lock-ttl", "1e-9"),
    A("cli-lock-wait-negative", "--lock-wait", "deploy", "--lock-wait", "-1"),
    A("cli-lock-wait-nan", "--lock-wait", "deploy", "--lock-wait", "nan"),
    A("cli-store-scheme", "--store", "deploy", "--store", "ftp://127.0.0.1/x"),
    A("cli-store-javascript", "--store", "status", "--store", "javascript:alert(1)"),
    A("cli-store-credentials-etcd", "--store", "deploy", "--store", "etcd://root:hunter2pw@127.0.0.1:2379",
      secrets=("hunter2pw",)),
    A("cli-store-credentials-consul", "--store", "status", "--store", "consul://ops:hunter3pw@127.0.0.1:8500",
      secrets=("hunter3pw",)),
    A("cli-store-credentials-sqlite", "--store", "status", "--store", "sqlite://me:hunter4pw@/@WORLD@/state.db",
      secrets=("hunter4pw",)),
    A("cli-store-etcd-port-word", "--store", "deploy", "--store", "etcd://127.0.0.1:abc"),
    A("cli-store-consul-port-word", "--store", "status", "--store", "consul://127.0.0.1:abc"),
    A("cli-store-port-fullwidth", "--store", "status", "--store", "etcd://127.0.0.1:２３７９"),
    A("cli-store-sqlite-empty", "--store", "deploy", "--store", "sqlite://"),
    A("cli-store-sqlite-root", "--store", "deploy", "--store", "sqlite:///"),
    A("cli-store-newline", "--store", "deploy", "--store", "@STORE@\n"),
    A("cli-misplaced-tag", "--tag", "--tag", "v1", "release"),
    A("cli-misplaced-lock-ttl", "--lock-ttl", "--lock-ttl", "60", "deploy"),
    A("cli-unknown-verb", "deploi", "deploi"),
    A("cli-no-verb", "VERB"),
    A("cli-unknown-test-type", "smoke", "test", "smoke"),
    A("cli-unknown-proxy-action", "restart", "proxy", "restart"),
    A("cli-unknown-option", "--force", "deploy", "--force"),
    A("cli-option-of-another-verb", "--tag", "switch", "--tag", "v1"),
    A("cli-rollback-to-garbage", "--to", "rollback", "--to", "../../etc/passwd"),
    A("cli-rollback-to-newline", "--to", "rollback", "--to", "r-1\n"),
    A("cli-file-empty", ("--file", "-f:", "-f/"), "deploy", "-f", ""),
    A("cli-watch-debounce-negative", "--debounce", "proxy", "watch", "--once", "--debounce", "-1"),
    A("cli-watch-interval-zero", "--interval", "proxy", "watch", "--once", "--interval", "0"),
    A("cli-watch-max-seconds-nan", "--max-seconds", "proxy", "watch", "--once", "--max-seconds", "nan"),
    A("cli-jobs-workers-negative", "--workers", "jobs", "diff", "--catalog", "@DIR@/catalog.yml", "--workers", "-1",
      files={"catalog.yml": json.dumps({"services": [JOB]})}, env=JENKINS, secrets=("hunter7token",)),
    A("cli-jobs-timeout-nan", "--timeout", "jobs", "diff", "--catalog", "@DIR@/catalog.yml", "--timeout", "nan",
      files={"catalog.yml": json.dumps({"services": [JOB]})}, env=JENKINS, secrets=("hunter7token",)),
]

ENVIRONMENT = [
    E("env-store-garbage", "CDLIB_STORE", {"CDLIB_STORE": "garbage"}),
    E("env-store-empty", "CDLIB_STORE", {"CDLIB_STORE": ""}),
    E("env-store-credentials", "CDLIB_STORE", {"CDLIB_STORE": "etcd://root:hunter5pw@127.0.0.1:2379"},
      secrets=("hunter5pw",)),
    E("env-store-port-word", "CDLIB_STORE", {"CDLIB_STORE": "etcd://127.0.0.1:abc"}),
    E("env-store-newline", "CDLIB_STORE", {"CDLIB_STORE": "@STORE@\n"}, "status"),
    E("env-store-subprocess", "CDLIB_STORE", {"CDLIB_STORE": "mysql://127.0.0.1/x"}, subprocess=True),
    E("env-proxy-listen-word", "CDLIB_PROXY_LISTEN", {"CDLIB_PROXY_LISTEN": "abc"}, desc={"proxy": {"listen": DROP}}),
    E("env-proxy-listen-newline", "CDLIB_PROXY_LISTEN", {"CDLIB_PROXY_LISTEN": "@LISTEN@\n"},
      desc={"proxy": {"listen": DROP}}),
    E("env-proxy-listen-fullwidth", "CDLIB_PROXY_LISTEN", {"CDLIB_PROXY_LISTEN": "８８８０"},
      desc={"proxy": {"listen": DROP}}),
    E("env-tag-space", "CDLIB_TAG", {"CDLIB_TAG": "a b"}),
    E("env-tag-newline", "CDLIB_TAG", {"CDLIB_TAG": "v1\n"}),
    E("env-tag-semicolon", "CDLIB_TAG", {"CDLIB_TAG": "v1;x"}, "release"),
    E("env-docker-host-garbage", "DOCKER_HOST", {"DOCKER_HOST": "garbage"}),
    E("env-docker-host-scheme", "DOCKER_HOST", {"DOCKER_HOST": "ftp://127.0.0.1:2375"}),
    E("env-docker-host-space", "DOCKER_HOST", {"DOCKER_HOST": "tcp://127.0.0.1 :2375"}, subprocess=True),
    E("env-docker-host-newline", "DOCKER_HOST", {"DOCKER_HOST": "unix:///var/run/docker.sock\n"}),
    E("env-failpoints-unknown-step", "CDLIB_FAILPOINTS",
      {"CDLIB_FAILPOINTS": "set-aside:before=fail,nowhere:before=fail"}),
    E("env-failpoints-unknown-action", "CDLIB_FAILPOINTS",
      {"CDLIB_FAILPOINTS": "set-aside:before=fail,start:before=explode"}),
    E("env-failpoints-garbage", "CDLIB_FAILPOINTS", {"CDLIB_FAILPOINTS": "set-aside:before=fail,;;;"}),
    E("env-file-missing", "/nonexistent/cdlib.yml", {"CDLIB_FILE": "/nonexistent/cdlib.yml"}, with_file=False),
    E("env-etcd-endpoints-port-word", "ETCDCTL_ENDPOINTS", {"ETCDCTL_ENDPOINTS": "127.0.0.1:abc"},
      "status", "--store", "etcd://"),
    E("env-etcd-endpoints-credentials", "ETCDCTL_ENDPOINTS", {"ETCDCTL_ENDPOINTS": "u:hunter6pw@127.0.0.1:2379"},
      "status", "--store", "etcd://", secrets=("hunter6pw",)),
    E("env-consul-addr-port-word", "CONSUL_HTTP_ADDR", {"CONSUL_HTTP_ADDR": "127.0.0.1:abc"},
      "status", "--store", "consul://"),
    E("env-jobs-catalog-missing", "/nonexistent/catalog.yml", {"CDLIB_JOBS_CATALOG": "/nonexistent/catalog.yml"},
      "jobs", "render", "--out", "@DIR@/out"),
]

CATALOG = [
    JE("jobs-name-upper", "services[0].name", name="Shop"),
    JE("jobs-name-xml", "services[0].name", name="<shop>"),
    JE("jobs-name-cdata-end", "services[0].name", name="shop]]>"),
    JE("jobs-name-newline", "services[0].name", name="shop\n"),
    JE("jobs-name-cyrillic", "services[0].name", name="ѕhop"),
    JE("jobs-name-dots", "services[0].name", name=".."),
    JE("jobs-name-int", "services[0].name", name=5),
    JE("jobs-name-missing", "services[0].name", name=DROP),
    J("jobs-name-duplicate", "services[1].name", {"services": [JOB, JOB]}),
    J("jobs-duplicate-key-name", "services[0].name",
      "services:\n  - name: shop\n    name: orders\n    repository: https://git.example.com/shop.git\n"),
    J("jobs-duplicate-key-services", "services",
      "services:\n  - {name: shop, repository: 'https://git.example.com/shop.git'}\n"
      "services:\n  - {name: orders, repository: 'https://git.example.com/orders.git'}\n"),
    JE("jobs-description-control", "services[0].description", description="a\x01b"),
    JE("jobs-description-vertical-tab", "services[0].description", description="a\x0bb"),
    JE("jobs-description-nel", "services[0].description", description="a\x85b"),
    JE("jobs-description-noncharacter", "services[0].description", description="a\uffffb"),
    JE("jobs-description-marker", "services[0].description",
       description="[managed by cdlib as x, rev 0123456789ab; changes made here are overwritten by cdlib jobs apply]"),
    JE("jobs-repository-newline", "services[0].repository", repository="https://git.example.com/shop.git\n"),
    JE("jobs-repository-space", "services[0].repository", repository="https://git.example.com/ shop.git"),
    JE("jobs-repository-ext-transport", "services[0].repository", repository="ext::sh -c touch% /tmp/x"),
    JE("jobs-repository-missing", "services[0].repository", repository=DROP),
    JE("jobs-branch-space", "services[0].branch", branch="*/main x"),
    JE("jobs-branch-newline", "services[0].branch", branch="*/main\n"),
    JE("jobs-credentials-xml", "services[0].credentials", credentials="<git>"),
    JE("jobs-credentials-newline", "services[0].credentials", credentials="git-ci\n"),
    JE("jobs-jenkinsfile-parent", "services[0].jenkinsfile", jenkinsfile="../Jenkinsfile"),
    JE("jobs-jenkinsfile-absolute", "services[0].jenkinsfile", jenkinsfile="/etc/passwd"),
    JE("jobs-jenkinsfile-newline", "services[0].jenkinsfile", jenkinsfile="Jenkinsfile\n"),
    JE("jobs-folder-parent", "services[0].folder", folder="a/../b"),
    JE("jobs-folder-empty-segment", "services[0].folder", folder="a//b"),
    JE("jobs-folder-cyrillic", "services[0].folder", folder="ѕhop"),
    JE("jobs-folder-newline", "services[0].folder", folder="shop\n"),
    JE("jobs-keep-builds-negative", "services[0].keep_builds", keep_builds=-1),
    J("jobs-keep-builds-5000-digits", ("services[0].keep_builds", "@DIR@/catalog.yml"),
      "services:\n  - name: shop\n    repository: https://git.example.com/shop.git\n    keep_builds: " + BIG + "\n"),
    JE("jobs-cron-six-fields", "services[0].triggers.cron", triggers={"cron": "H * * * * *"}),
    JE("jobs-cron-xml", "services[0].triggers.scm_poll", triggers={"scm_poll": "H * * * <x>"}),
    JE("jobs-param-name", "services[0].parameters[0].name", parameters=[{"name": "A-B", "type": "string"}]),
    JE("jobs-param-type", "services[0].parameters[0].type", parameters=[{"name": "A", "type": "file"}]),
    JE("jobs-param-duplicate", "services[0].parameters",
       parameters=[{"name": "A", "type": "string"}, {"name": "A", "type": "boolean"}]),
    JE("jobs-param-choice-newline", "services[0].parameters[0].choices[0]",
       parameters=[{"name": "A", "type": "choice", "choices": ["a\nb"]}]),
    JE("jobs-param-default-control", "services[0].parameters[0].default",
       parameters=[{"name": "A", "type": "string", "default": "\x1b[31m"}]),
    J("jobs-top-list", "@DIR@/catalog.yml", "- name: shop\n"),
    J("jobs-unknown-top-key", "jobs", {"services": [JOB], "jobs": []}),
    J("jobs-services-empty", "services", {"services": []}),
    J("jobs-ignore-properties", "ignore_properties[0]", {"services": [JOB], "ignore_properties": ["not a class"]}),
    J("jobs-invalid-utf8", "@DIR@/catalog.yml", b"services:\n  - name: \xff\xfe\n"),
    Case("jobs-catalog-dev-zero", "/dev/zero", ("jobs", "render", "--catalog", "/dev/zero", "--out", "@DIR@/out"),
         subprocess=True),
    Case("jobs-catalog-etc-shadow", "/etc/shadow",
         ("jobs", "render", "--catalog", "/etc/shadow", "--out", "@DIR@/out"), secret_files=("/etc/shadow",),
         result_file=True),
    Case("jobs-catalog-directory", "@DIR@", ("jobs", "render", "--catalog", "@DIR@", "--out", "@DIR@/out")),
    Case("jobs-out-is-a-file", "--out", JOBS_ARGV[:-1] + ("@DIR@/catalog.yml",),
         files={"catalog.yml": json.dumps({"services": [JOB]})}),
]

TEMPLATE = [
    D("template-shadow", "proxy.template", {"proxy": {"template": "/etc/shadow"}},
      secret_files=("/etc/shadow",), result_file=True),
    D("template-shadow-render", "proxy.template", {"proxy": {"template": "/etc/shadow"}}, "proxy", "render",
      secret_files=("/etc/shadow",), result_file=True),
    D("template-shadow-apply", "proxy.template", {"proxy": {"template": "/etc/shadow"}}, "proxy", "apply",
      secret_files=("/etc/shadow",), result_file=True),
    D("template-directory", "proxy.template", {"proxy": {"template": "@DIR@/tpl.d"}}, make="template-dir",
      result_file=True),
    D("template-missing", "proxy.template", {"proxy": {"template": "@DIR@/nope.j2"}}, result_file=True),
    D("template-binary", "proxy.template", {"proxy": {"template": "@DIR@/tpl.bin"}},
      files={"tpl.bin": BINARY}, result_file=True),
    D("template-syntax-error", "proxy.template", {"proxy": {"template": "@DIR@/tpl.j2"}},
      files={"tpl.j2": SYNTAX_TEMPLATE}, secrets=("cdlib_secret_token_4242",), secret_files=("tpl.j2",),
      result_file=True),
    D("template-syntax-error-release", "proxy.template", {"proxy": {"template": "@DIR@/tpl.j2"}}, "release",
      files={"tpl.j2": SYNTAX_TEMPLATE}, secrets=("cdlib_secret_token_4242",), secret_files=("tpl.j2",),
      result_file=True),
    D("template-syntax-error-render", "proxy.template", {"proxy": {"template": "@DIR@/tpl.j2"}}, "proxy", "render",
      files={"tpl.j2": SYNTAX_TEMPLATE}, secrets=("cdlib_secret_token_4242",), secret_files=("tpl.j2",),
      result_file=True),
    D("template-undefined-variable", "proxy.template", {"proxy": {"template": "@DIR@/tpl.j2"}},
      files={"tpl.j2": "events {}\n{{ cdlib_no_such_variable }}\n"}, result_file=True),
    D("template-not-nginx", "proxy.template", {"proxy": {"template": "@DIR@/tpl.j2"}},
      files={"tpl.j2": NOT_NGINX_TEMPLATE}, secrets=("cdlib_hidden_directive_77",), secret_files=("tpl.j2",),
      result_file=True),
    D("template-not-nginx-apply", "proxy.template", {"proxy": {"template": "@DIR@/tpl.j2"}}, "proxy", "apply",
      files={"tpl.j2": NOT_NGINX_TEMPLATE}, secrets=("cdlib_hidden_directive_77",), secret_files=("tpl.j2",),
      result_file=True),
    D("template-dev-zero", "proxy.template", {"proxy": {"template": "/dev/zero"}}, subprocess=True),
]

CASES = DESCRIPTOR + NEWLINE + YAML + CLI + ENVIRONMENT + CATALOG + TEMPLATE

assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"
