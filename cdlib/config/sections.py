"""The descriptor's sections, one parse function each, and :func:`parse`, which reads them in order.

Each ``parse_<section>(r, data, ...)`` takes the :class:`~cdlib.config.schema.Reader` and the whole
top-level mapping and returns the section's value; the first bad field raises a ConfigError naming
it. :func:`parse` calls them in the order the fields are reported (service, image, port, health,
probe, replicas, routes, tests, target, proxy, store, env, then the environment's CDLIB_TAG and
CDLIB_FAILPOINTS), so one descriptor always gets the same first error.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, overload

from ..errors import ConfigError
from ..model import ENV_NAME_RE, HOST_RE, PATH_RE, SERVICE_RE, TEST_TYPES, Routes
from ..netaddr import listen_problem
from ..redact import redact_url
from ..store import url as store_url
from .schema import MAX_COMMAND, MAX_FILE_BYTES, FileProblem, Reader, YamlMap, read_bounded, shown, size_text
from .spec import (
    ARG_RE,
    CFG_UNSAFE_RE,
    DEFAULT_FILE,
    ENDPOINT_MODES,
    EXPECT_RE,
    HOST_PORTS_RE,
    HOSTNAME_RE,
    NETWORK_RE,
    PLANNED_TARGET_KINDS,
    TAG_RE,
    TARGET_KINDS,
    BuildSpec,
    HealthSpec,
    ImageSpec,
    ProbeSpec,
    ProxySpec,
    ServiceSpec,
    SuiteSpec,
    SwarmSpec,
    TargetSpec,
    cdlib_home,
    docker_host_problem,
    image_repo_problem,
    ip_problem,
    split_image_ref,
)

TOP_LEVEL_KEYS = {"service", "image", "port", "health", "probe", "replicas", "env", "routes", "tests", "target",
                  "proxy", "store"}
SUITE_KEYS = {"command", "image", "timeout", "unstable", "env", "workdir", "pass_env", "host_env"}


@overload
def parse_image(r: Reader, data: YamlMap, key: str, base: Path, required: Literal[True] = True) -> ImageSpec: ...


@overload
def parse_image(r: Reader, data: YamlMap, key: str, base: Path, required: bool) -> ImageSpec | None: ...


def parse_image(r: Reader, data: YamlMap, key: str, base: Path, required: bool = True) -> ImageSpec | None:
    value = data.get(key.rsplit(".", 1)[-1])
    if value is None:
        if required:
            raise r.fail(key, "a mapping with repository (required)")
        return None
    if isinstance(value, str):
        try:
            repo, tag = split_image_ref(value, key)
        except ConfigError as exc:
            raise ConfigError(f"{r.source}: {exc}", file=r.source, key=key) from None
        return ImageSpec(repo, tag)
    if not isinstance(value, dict):
        raise r.fail(key, "an image reference or a mapping with repository, tag, build", value)
    r.only(value, key, {"repository", "tag", "build"})
    what = "an image repository like registry:5000/name (lower case)"
    repo = r.string(value, key, "repository", required=True, what=what)
    problem = image_repo_problem(repo)
    if problem:
        raise r.fail(f"{key}.repository", problem if problem.startswith("at most") else what,
                     ... if problem.startswith("at most") else repo)
    tag = r.string(value, key, "tag", TAG_RE, default="latest", what="a Docker tag ([A-Za-z0-9_.-], at most 128)")
    build = None
    if value.get("build") is not None:
        b = r.section(value, key, "build", {"context", "dockerfile", "args"})
        bkey = f"{key}.build"
        build = BuildSpec(
            context=r.path(b, bkey, "context", base, default=base),
            dockerfile=r.string(b, bkey, "dockerfile", ARG_RE, default="Dockerfile",
                                what="a file name in the build context"),
            args=r.env(b, bkey, "args"),
        )
    return ImageSpec(repo, tag, build)


def parse_command(r: Reader, key: str, command: object) -> tuple[str, ...] | str:
    if isinstance(command, list):
        if not command or not all(isinstance(c, str) and c for c in command):
            raise r.fail(key, "a non-empty list of strings", command)
        parts = command
    elif isinstance(command, str) and command.strip():
        parts = [command]
    else:
        raise r.fail(key, "a shell command or a list of arguments", command)
    for part in parts:
        # a NUL cannot be passed to a process; a lone surrogate cannot be encoded for one
        if "\x00" in part or re.search("[\ud800-\udfff]", part):
            raise r.fail(key, "a command without NUL characters", part)
    if sum(len(p) for p in parts) > MAX_COMMAND:
        raise r.fail(key, f"a command of at most {MAX_COMMAND} characters")
    return tuple(command) if isinstance(command, list) else command


def parse_template(r: Reader, px: YamlMap, base: Path) -> Path | None:
    """proxy.template: a readable regular file of at most MAX_FILE_BYTES, UTF-8. Its content is never
    echoed (it may hold anything)."""
    path = r.path(px, "proxy", "template", base)
    if path is None:
        return None
    expected = f"a readable regular file of at most {size_text(MAX_FILE_BYTES)} (UTF-8 text)"
    try:
        text = read_bounded(path, MAX_FILE_BYTES)
    except FileProblem as exc:
        raise r.fail("proxy.template", f"{expected}; {path} {exc}") from None
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise r.fail("proxy.template", f"{expected}; {path} is not UTF-8 at byte {exc.start}") from None
    return path


def _env_value(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return None if value is None else str(value)


def _host_env(r: Reader, suite: YamlMap, key: str) -> tuple[str, ...]:
    """Host variables a suite gets as they are: never one that holds a credential (those go in
    pass_env, whose values are masked), never one pass_env names too."""
    from ..secrets import is_secret_name

    names = r.str_list(suite, key, "host_env", ENV_NAME_RE, "environment variable names")
    secret_ones = r.str_list(suite, key, "pass_env", ENV_NAME_RE, "environment variable names")
    for i, name in enumerate(names):
        if is_secret_name(name):
            raise r.fail(f"{key}.host_env[{i}]", "a variable that holds no credential (list credentials in "
                         "pass_env: their values are masked everywhere)", name)
        if name in secret_ones:
            raise r.fail(f"{key}.host_env[{i}]", "a variable not also in pass_env", name)
    return names


def parse_target_kind(r: Reader, tg: YamlMap) -> str:
    """target.kind: a runtime cdlib can run (TARGET_KINDS); a planned one is refused here, before
    anything runs, with what to use instead."""
    kind = r.string(tg, "target", "kind", default="docker", what=" or ".join(TARGET_KINDS))
    if kind in PLANNED_TARGET_KINDS:
        raise ConfigError(f"{r.source}: target.kind: {kind} is not supported yet; use docker", file=r.source,
                          key="target.kind")
    if kind not in TARGET_KINDS:
        raise r.fail("target.kind", " or ".join(TARGET_KINDS), kind)
    return kind


def parse_target(r: Reader, data: YamlMap, env: Mapping[str, str], replicas: int) -> TargetSpec:
    tg = r.section(data, "", "target", {"kind", "docker_host", "bind", "address", "init", "stop_timeout",
                                          "network", "host_ports", "swarm"})
    ports_text = r.string(tg, "target", "host_ports", HOST_PORTS_RE, default="20000-29999",
                          what="a port range LOW-HIGH, e.g. 20000-29999")
    low, high = (int(x) for x in ports_text.split("-"))
    if not 1024 <= low < high <= 65535:
        raise r.fail("target.host_ports", "a port range LOW-HIGH with 1024 <= LOW < HIGH <= 65535", ports_text)
    if high - low + 1 < 2 * replicas:
        # both colors run side by side during a release, each instance on its own pinned port
        raise r.fail("target.host_ports", f"a range of at least {2 * replicas} ports (2 x replicas: both colors "
                                          "run side by side during a release)", ports_text)
    kind = parse_target_kind(r, tg)
    docker_host = r.string(tg, "target", "docker_host", default=None,
                           what="a Docker host URL like unix:///var/run/docker.sock or tcp://host:2376")
    if docker_host is not None:
        problem = docker_host_problem(docker_host)
        if problem:
            raise r.fail("target.docker_host", problem, redact_url(docker_host, 80))
    else:
        env_host = _env_value(env, "DOCKER_HOST")
        problem = docker_host_problem(env_host) if env_host else None
        if problem:  # the Docker SDK reads it; an empty DOCKER_HOST means the local engine, as for docker
            raise ConfigError(f"DOCKER_HOST: expected {problem}, got {shown(redact_url(env_host, 80))}",
                              key="DOCKER_HOST")
    bind = r.string(tg, "target", "bind", default="127.0.0.1", what="an IP address, e.g. 127.0.0.1 or 0.0.0.0")
    if ip_problem(bind):
        # Docker would read anything else (even 'localhost') as "every interface"
        raise r.fail("target.bind", "an IP address, e.g. 127.0.0.1 or 0.0.0.0", bind)
    address = r.string(tg, "target", "address", default=None, what="an IP address or a host name")
    if address is not None and ip_problem(address) and (
            re.fullmatch(r"[0-9.]+", address) or not HOSTNAME_RE.match(address) or len(address) > 253):
        raise r.fail("target.address", "an IP address or a host name", address)
    return TargetSpec(
        kind=kind,
        docker_host=docker_host,
        bind=bind,
        address=address,
        init=r.boolean(tg, "target", "init", True),
        stop_timeout=int(r.number(tg, "target", "stop_timeout", 10, 0, 600, integer=True)),
        network=r.string(tg, "target", "network", NETWORK_RE, default=None,
                         what="a Docker network name ([A-Za-z0-9][A-Za-z0-9_.-]*, at most 64)"),
        host_ports=(low, high),
        swarm=parse_swarm(r, tg, kind),
    )


SWARM_KEYS = {"endpoint_mode", "published_port", "constraints", "restart_delay", "limits", "reservations"}
CONSTRAINT_RE = re.compile(r"(?:node|engine)\.[A-Za-z0-9_.-]{1,200} ?(?:==|!=) ?[A-Za-z0-9_.:/-]{1,200}\Z", re.ASCII)
MEMORY_RE = re.compile(r"([0-9]{1,15})([KMG]?)\Z", re.ASCII)


def parse_swarm(r: Reader, tg: YamlMap, kind: str) -> SwarmSpec:
    """target.swarm: only with target.kind swarm."""
    if tg.get("swarm") is None:
        return SwarmSpec()
    if kind != "swarm":
        raise r.fail("target.swarm", "no swarm section unless target.kind is swarm")
    sw = r.section(tg, "target", "swarm", SWARM_KEYS)
    mode = r.string(sw, "target.swarm", "endpoint_mode", re.compile("|".join(ENDPOINT_MODES)), default="dnsrr",
                    what=" or ".join(ENDPOINT_MODES))
    published = int(r.number(sw, "target.swarm", "published_port", 0, 0, 65535, integer=True))
    if published and mode != "vip":
        raise r.fail("target.swarm.published_port", "no published port with endpoint_mode dnsrr (each task "
                                                    "gets its own host port)", published)
    if published and not 1024 <= published <= 65535:
        raise r.fail("target.swarm.published_port", "a port from 1024 to 65535", published)
    limits = _swarm_resources(r, sw, "limits")
    reservations = _swarm_resources(r, sw, "reservations")
    return SwarmSpec(
        endpoint_mode=mode, published_port=published,
        constraints=r.str_list(sw, "target.swarm", "constraints", CONSTRAINT_RE,
                               "placement constraints like node.role==worker"),
        restart_delay=float(r.number(sw, "target.swarm", "restart_delay", 1.0, 0, 600)),
        limit_cpus=limits[0], limit_memory=limits[1], reserve_cpus=reservations[0], reserve_memory=reservations[1],
    )


def _swarm_resources(r: Reader, sw: YamlMap, name: str) -> tuple[float, int]:
    """target.swarm.limits / reservations: {cpus: 0.5, memory: 64M} -> (cpus, bytes)."""
    key = f"target.swarm.{name}"
    res = r.section(sw, "target.swarm", name, {"cpus", "memory"})
    cpus = float(r.number(res, key, "cpus", 0, 0, 1024))
    text = r.string(res, key, "memory", MEMORY_RE, default="0", what="a size in bytes, or with K, M or G (64M)")
    match = MEMORY_RE.fullmatch(text)
    assert match is not None  # the pattern was checked above
    memory = int(match.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[match.group(2)]
    if memory and memory < 4 << 20:
        raise r.fail(f"{key}.memory", "at least 4M (Docker's minimum)", text)
    return cpus, memory


def parse_proxy(r: Reader, data: YamlMap, env: Mapping[str, str], base: Path) -> ProxySpec:
    px = r.section(data, "", "proxy", {"kind", "listen", "dir", "template", "binary", "drain_timeout",
                                       "tls_listen"} | PLACEMENT_KEYS)
    home_text = _env_value(env, "CDLIB_HOME") or ""
    if re.search("[\x00-\x1f\x7f\ud800-\udfff]", home_text) or len(home_text) > 4096:
        raise ConfigError(f"CDLIB_HOME: expected a directory path without control characters, got "
                          f"{shown(home_text)}", key="CDLIB_HOME")
    home = cdlib_home(env)
    pkind = r.string(px, "proxy", "kind", re.compile(r"nginx|haproxy"), default="nginx", what="nginx or haproxy")
    listen_what = "PORT or ADDRESS:PORT"
    if px.get("listen") is not None:
        listen = r.string(px, "proxy", "listen", required=True, what=listen_what)  # present: never None
        problem = listen_problem(listen)
        if problem:
            raise r.fail("proxy.listen", problem, listen)
    else:
        listen = _env_value(env, "CDLIB_PROXY_LISTEN") or "127.0.0.1:8880"
        problem = listen_problem(listen)
        if problem:
            raise ConfigError(f"CDLIB_PROXY_LISTEN: expected {problem}, got {shown(listen)}",
                              key="CDLIB_PROXY_LISTEN")
    pdir = r.path(px, "proxy", "dir", base, default=home / pkind)
    if pkind == "haproxy" and CFG_UNSAFE_RE.search(str(pdir)):
        # haproxy.cfg names files under the directory (pidfile, stats socket) as bare tokens
        field = "proxy.dir" if px.get("dir") is not None else "CDLIB_HOME"
        what = ("a directory path without spaces, quotes or any of ; { } # $ ` \\ (haproxy.cfg names files "
                "under it)")
        if field == "proxy.dir":
            raise r.fail(field, what, str(pdir))
        raise ConfigError(f"CDLIB_HOME: expected {what}, or set proxy.dir; got {shown(str(pdir))}", key=field)
    return ProxySpec(
        kind=pkind,
        listen=listen,
        dir=pdir,
        template=parse_template(r, px, base),
        binary=r.string(px, "proxy", "binary", ARG_RE, default=pkind,
                        what="a program name or path (no control characters)"),
        drain_timeout=float(r.number(px, "proxy", "drain_timeout", 15, 0, 600)),
        tls_listen=parse_tls_listen(r, px, data, listen),
        **parse_placement(r, px),
    )


PLACEMENT_KEYS = {"run", "name", "image", "replicas", "mode", "engines"}
PROXY_NAME_RE = re.compile(r"cdlibpx[A-Za-z0-9_.-]{0,56}\Z", re.ASCII)
PROXY_IMAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}\Z", re.ASCII)
NODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}\Z", re.ASCII)


def parse_placement(r: Reader, px: YamlMap) -> dict[str, Any]:
    """proxy.run (process, container, service) and what a container or a service takes: name,
    image; replicas, mode and engines for a service only (docs/proxy-placement.md)."""
    run = r.string(px, "proxy", "run", re.compile(r"process|container|service\Z"), default="process",
                   what="process, container or service")
    for key in ("name", "image") if run == "process" else ():
        if px.get(key) is not None:
            raise r.fail(f"proxy.{key}", "no value with proxy.run process (it names a proxy container or service)",
                         px.get(key))
    for key in ("replicas", "mode", "engines") if run != "service" else ():
        if px.get(key) is not None:
            raise r.fail(f"proxy.{key}", "no value unless proxy.run is service", px.get(key))
    mode = r.string(px, "proxy", "mode", re.compile(r"replicated|global\Z"), default="replicated",
                    what="replicated or global")
    replicas = int(r.number(px, "proxy", "replicas", 1, 1, 64, integer=True))
    if mode == "global" and px.get("replicas") is not None:
        raise r.fail("proxy.replicas", "no value with proxy.mode global (one replica per node)", px.get("replicas"))
    if run == "service" and mode == "replicated" and replicas > 1 and px.get("tls_listen") is not None:
        raise r.fail("proxy.replicas", "1 with proxy.tls_listen (the replicas of one node would share its port; "
                     "use mode: global for one replica per node)", replicas)
    engines = px.get("engines") or {}
    if not isinstance(engines, dict):
        raise r.fail("proxy.engines", "a mapping of node hostname to Docker host (tcp://..., ssh://...)", engines)
    pairs = []
    for node, host in engines.items():
        if not isinstance(node, str) or not NODE_RE.match(node):
            raise r.fail("proxy.engines", "node hostnames as keys", node)
        if not isinstance(host, str) or not re.match(r"(?:tcp|ssh|unix|https?)://[^\s]{1,4000}\Z", host):
            raise r.fail(f"proxy.engines.{node}", "a Docker host URL (tcp://, ssh://, unix://)", host)
        pairs.append((node, host))
    return {
        "run": run,
        "name": r.string(px, "proxy", "name", PROXY_NAME_RE, default=None,
                         what="a container or service name starting with cdlibpx ([A-Za-z0-9_.-], at most 63)"),
        "image": r.string(px, "proxy", "image", PROXY_IMAGE_RE, default=None, what="an image reference"),
        "replicas": replicas,
        "mode": mode,
        "engines": tuple(sorted(pairs)),
    }


def parse_tls_listen(r: Reader, px: YamlMap, data: YamlMap, listen: str) -> str | None:
    """proxy.tls_listen: the HTTPS listen address (PORT or ADDRESS:PORT, as proxy.listen), required
    when routes.tls is set, and not the address proxy.listen takes."""
    routes = data.get("routes")
    wants_tls = isinstance(routes, dict) and routes.get("tls") is not None
    if px.get("tls_listen") is None:
        if wants_tls:
            raise r.fail("proxy.tls_listen", "the HTTPS listen address, PORT or ADDRESS:PORT, e.g. "
                                             "127.0.0.1:8443 (required with routes.tls)")
        return None
    tls_listen = r.string(px, "proxy", "tls_listen", required=True, what="PORT or ADDRESS:PORT")
    problem = listen_problem(tls_listen)
    if problem:
        raise r.fail("proxy.tls_listen", problem, tls_listen)
    if _same_socket(tls_listen, listen):
        raise r.fail("proxy.tls_listen", f"an address other than proxy.listen ({listen})", tls_listen)
    return tls_listen


def _same_socket(a: str, b: str) -> bool:
    """Whether two valid listen addresses would take the same port (the same host, or either one
    every address of the machine)."""
    wildcards = {"", "0.0.0.0", "[::]"}
    (host_a, _, port_a), (host_b, _, port_b) = (x.rpartition(":") if ":" in x else ("", "", x) for x in (a, b))
    if int(port_a) != int(port_b):
        return False
    same = {"localhost": "127.0.0.1"}
    return same.get(host_a, host_a) == same.get(host_b, host_b) or host_a in wildcards or host_b in wildcards


SQLITE_HEADER = b"SQLite format 3\x00"


def check_sqlite_file(url: str, field: str, key: str | None = None) -> None:
    """An existing sqlite store file must be a regular file holding a SQLite database (or be empty):
    anything else would only fail when the store is opened. A file that does not exist yet is fine."""
    parsed = store_url.parse(url, field)
    if parsed.kind != "sqlite":
        return
    path = Path(parsed.path)
    try:
        info = path.stat()
    except OSError:
        return  # created on first use (a directory that cannot be created fails then, naming the path)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "is a directory" if stat.S_ISDIR(info.st_mode) else "is not a regular file"
    elif info.st_size:
        try:
            with open(path, "rb") as fh:
                head = fh.read(len(SQLITE_HEADER))
        except OSError as exc:
            problem = f"cannot be read ({exc.strerror})"
        else:
            if head != SQLITE_HEADER:
                problem = "is not a SQLite database"
    if problem:
        raise ConfigError(f"{field}: expected a SQLite database file (or a path where one can be created); "
                          f"{shown(str(path), 120)} {problem}", key=key or field)


def parse_store(r: Reader, data: YamlMap, env: Mapping[str, str]) -> str:
    """CDLIB_STORE wins over the descriptor's store; both are checked (a bad descriptor value is not
    silently ignored because the environment overrides it)."""
    if data.get("store") is not None:
        try:
            store_url.check(data["store"], "store")
        except store_url.StoreURLError as exc:
            raise ConfigError(f"{r.source}: store: {exc.problem}", file=r.source, key="store") from None
    store = _env_value(env, "CDLIB_STORE")
    if store is not None:
        store_url.check(store, "CDLIB_STORE", env)
        check_sqlite_file(store, "CDLIB_STORE")
        return store
    if data.get("store") is not None:
        store_url.check(data["store"], "store", env)
        written = data["store"]
        assert isinstance(written, str)  # store_url.check refused anything else
        check_sqlite_file(written, f"{r.source}: store", "store")
        return written
    default = f"sqlite:///{cdlib_home(env) / 'state.db'}"
    check_sqlite_file(default, "CDLIB_HOME")
    return default

def parse_health(r: Reader, data: YamlMap) -> HealthSpec:
    h = r.section(data, "", "health", {"path", "timeout", "interval"})
    return HealthSpec(
        path=r.string(h, "health", "path", PATH_RE, default="/", what="an URL path starting with '/'"),
        timeout=float(r.number(h, "health", "timeout", 60, 1, 3600)),
        interval=float(r.number(h, "health", "interval", 0.2, 0.05, 60)),
    )


def parse_probe(r: Reader, data: YamlMap) -> ProbeSpec:
    p = r.section(data, "", "probe", {"path", "timeout", "expect"})
    return ProbeSpec(
        path=r.string(p, "probe", "path", PATH_RE, default=None, what="an URL path starting with '/'"),
        timeout=float(r.number(p, "probe", "timeout", 15, 1, 600)),
        expect=r.string(p, "probe", "expect", EXPECT_RE, default=None,
                        what="one line of text (1 to 200 characters, no control characters)"),
    )


ROUTE_KEYS = {"paths", "hosts", "timeouts", "max_body", "tls"}
SIZE_RE = re.compile(r"([0-9]{1,12})([kKmMgG]?)\Z", re.ASCII)
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
MAX_BODY_LIMIT = 64 << 30  # routes.max_body: at most 64g
TIMEOUT_LIMITS = {"connect": 75.0, "read": 86400.0, "send": 86400.0}  # seconds (nginx: connect at most 75 s)


def parse_size(r: Reader, value: object, key: str, low: int, high: int) -> int:
    """A byte count written as an integer or as nginx writes sizes: '512k', '10m', '1g' (1024-based)."""
    what = f"a size in bytes from {low} to {high >> 30}g: an integer or a number with k, m or g (e.g. 512k, 10m)"
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = SIZE_RE.match(value) if isinstance(value, str) else None
        if m is None:
            raise r.fail(key, what, value)
        size = int(m.group(1)) * SIZE_UNITS[m.group(2).lower()]
    if not low <= size <= high:
        raise r.fail(key, what, value)
    return int(size)


def parse_route_tls(r: Reader, rt: YamlMap, base: Path) -> tuple[str | None, str | None, bool]:
    """routes.tls: cert and key (files, relative to the descriptor) and redirect; both files are checked
    here, before anything changes (cdlib.tls.pair_problem), and never quoted."""
    if rt.get("tls") is None:
        return None, None, False
    tls = r.section(rt, "routes", "tls", {"cert", "key", "redirect"})
    paths: dict[str, Path] = {}
    for name, what in (("cert", "a PEM certificate file"), ("key", "a PEM private key file")):
        if tls.get(name) is None:
            raise r.fail(f"routes.tls.{name}", f"{what} (required with routes.tls)")
        path = r.path(tls, "routes.tls", name, base)
        assert path is not None
        if CFG_UNSAFE_RE.search(str(path)):
            # nginx.conf and haproxy.cfg name the file as one bare token
            raise r.fail(f"routes.tls.{name}", f"{what} path without spaces, quotes or any of ; {{ }} # $ ` \\",
                         str(path))
        paths[name] = path.absolute()
    redirect = r.boolean(tls, "routes.tls", "redirect", False)
    from ..tls import pair_problem  # imported here: ssl is not the CLI's start-up cost

    problem = pair_problem(paths["cert"], paths["key"])
    if problem is not None:
        field, text = problem
        raise ConfigError(f"{r.source}: routes.tls.{field}: expected {text}", file=r.source, key=f"routes.tls.{field}")
    return str(paths["cert"]), str(paths["key"]), redirect


def parse_routes(r: Reader, data: YamlMap, service: str, base: Path | None = None) -> Routes:
    """routes.paths and routes.hosts (neither: the path /<service>/), then the edge settings of those
    routes: routes.timeouts.connect|read|send (seconds), routes.max_body (bytes) and routes.tls."""
    rt = r.section(data, "", "routes", ROUTE_KEYS)
    routes = Routes(
        paths=r.str_list(rt, "routes", "paths", PATH_RE,
                         "URL path prefixes starting with '/' (letters, digits, . _ ~ - /)"),
        hosts=r.str_list(rt, "routes", "hosts", HOST_RE, "host names (lower case, e.g. api.example.com)"),
    )
    for i, path in enumerate(routes.paths):
        if path.rstrip("/") == "/_cdlib" or path.startswith("/_cdlib/"):
            # the proxy answers /_cdlib/ itself: such a route would only be refused at the switch
            raise r.fail(f"routes.paths[{i}]", "a path prefix outside /_cdlib/ (the proxy's own)", path)
    for i, host in enumerate(routes.hosts):
        if len(host) > 253:
            raise r.fail(f"routes.hosts[{i}]", "a host name of at most 253 characters", host)
    if not routes.paths and not routes.hosts:
        routes = Routes(paths=(f"/{service}/",))
    tm = r.section(rt, "routes", "timeouts", set(TIMEOUT_LIMITS))
    connect, read, send = (float(r.number(tm, "routes.timeouts", name, getattr(Routes, f"{name}_timeout"), 0.001,
                                          high)) for name, high in TIMEOUT_LIMITS.items())
    max_body = Routes.max_body
    if rt.get("max_body") is not None:
        max_body = parse_size(r, rt["max_body"], "routes.max_body", 1, MAX_BODY_LIMIT)
    cert, key, redirect = parse_route_tls(r, rt, base or Path.cwd())
    return replace(routes, connect_timeout=connect, read_timeout=read, send_timeout=send, max_body=max_body,
                   tls_cert=cert, tls_key=key, https_redirect=redirect)


def parse_tests(r: Reader, data: YamlMap, base: Path) -> dict[str, SuiteSpec]:
    """tests.<type> for each of model.TEST_TYPES: a command, an image, or both (and their options)."""
    tests: dict[str, SuiteSpec] = {}
    t = r.section(data, "", "tests", set(TEST_TYPES))
    for ttype in TEST_TYPES:
        if t.get(ttype) is not None:
            tests[ttype] = parse_suite(r, t[ttype], ttype, base)
    return tests


def parse_suite(r: Reader, s: object, ttype: str, base: Path) -> SuiteSpec:
    key = f"tests.{ttype}"
    if isinstance(s, (str, list)):
        s = {"command": s}
    if not isinstance(s, dict):
        raise r.fail(key, "a command or a mapping with command and/or image", s)
    r.only(s, key, SUITE_KEYS)
    command = s.get("command")
    if command is not None:
        command = parse_command(r, f"{key}.command", command)
    timg = parse_image(r, s, f"{key}.image", base, required=False)
    if command is None and timg is None:
        raise r.fail(key, "a command, an image, or both")
    workdir = r.path(s, key, "workdir", base, default=base)
    if "workdir" in s and s["workdir"] is not None and not workdir.is_dir():
        raise r.fail(f"{key}.workdir", "an existing directory", str(workdir))
    return SuiteSpec(
        type=ttype, command=command, image=timg,
        timeout=float(r.number(s, key, "timeout", 600, 1, 86400)),
        unstable=r.boolean(s, key, "unstable", False),
        env=r.env(s, key, "env"),
        workdir=workdir,
        pass_env=r.str_list(s, key, "pass_env", ENV_NAME_RE, "environment variable names"),
        host_env=_host_env(r, s, key),
    )


def parse(data: object, source: str = DEFAULT_FILE, base: Path | None = None,
          env: Mapping[str, str] | None = None) -> ServiceSpec:
    """Validate a parsed descriptor and the environment; raise ConfigError naming the first bad key."""
    env = os.environ if env is None else env
    base = base or Path.cwd()
    r = Reader(source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level", file=source, key="")
    r.only(data, "", TOP_LEVEL_KEYS)
    name = r.string(data, "", "service", SERVICE_RE, required=True,
                    what="a service name: lower-case letters, digits and '-', 1 to 40, starting with a letter")
    image = parse_image(r, data, "image", base)
    if "port" not in data:
        raise r.fail("port", "the container port, an integer from 1 to 65535 (required)")
    port = int(r.number(data, "", "port", 0, 1, 65535, integer=True))
    health = parse_health(r, data)
    probe = parse_probe(r, data)
    replicas = int(r.number(data, "", "replicas", 1, 1, 100, integer=True)) if "replicas" in data else None
    routes = parse_routes(r, data, name, base)
    tests = parse_tests(r, data, base)
    target = parse_target(r, data, env, replicas or 1)
    proxy = parse_proxy(r, data, env, base)
    store = parse_store(r, data, env)

    spec = ServiceSpec(
        name=name, image=image, port=port, health=health, probe=probe, replicas=replicas,
        env=r.env(data, "", "env"), routes=routes, tests=tests, target=target, proxy=proxy, store=store,
        source=Path(source) if source else None,
    )
    tag = _env_value(env, "CDLIB_TAG")
    if tag is not None:
        spec = spec.with_tag(tag, "CDLIB_TAG")
    from ..plan import check_failpoints  # the rehearsal variable is input too: checked before anything runs

    check_failpoints(_env_value(env, "CDLIB_FAILPOINTS"))
    return spec
