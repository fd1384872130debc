"""The service descriptor (``cdlib.yml``) and the environment, turned into frozen, validated values.

Every field is checked; a bad one raises :class:`ConfigError` with one line naming the file, the key
and what is expected. Nothing is touched before the whole descriptor is valid.

Relative paths in the descriptor (build contexts, templates, test files) are relative to the
descriptor's directory. Machine state (the embedded store, the private nginx) lives under
``CDLIB_HOME`` (default ``./.cdlib``) unless the descriptor or the environment says otherwise.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ConfigError
from .model import ENV_NAME_RE, HOST_RE, PATH_RE, SERVICE_RE, TEST_TYPES, Routes

DEFAULT_FILE = "cdlib.yml"
IMAGE_REPO_RE = re.compile(r"^(?:[a-zA-Z0-9.-]+(?::[0-9]{1,5})?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*"
                           r"(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
LISTEN_RE = re.compile(r"^(?:(?P<host>[0-9.]+|\[[0-9a-fA-F:]+\]|localhost):)?(?P<port>[0-9]{1,5})$")
ADDRESS_RE = re.compile(r"^(?:[0-9.]+|[0-9a-fA-F:]+|localhost)$")
DOCKER_HOST_RE = re.compile(r"^(?:unix|tcp|ssh|npipe|http|https)://\S+$")
STORE_RE = re.compile(r"^(?:memory:|memory://\S*|sqlite://\S+|etcd://\S+|etcds://\S+|consul://\S+|consuls://\S+)$")


def redact_url(url: object) -> str:
    """A store URL as it may appear in a message: user and password (etcd://user:pass@host) left out."""
    return re.sub(r"://[\s\S]*@", "://***@", str(url))


def cdlib_home() -> Path:
    return Path(os.environ.get("CDLIB_HOME") or ".cdlib").absolute()


@dataclass(frozen=True)
class BuildSpec:
    context: Path
    dockerfile: str = "Dockerfile"
    args: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ImageSpec:
    repository: str
    tag: str = "latest"
    build: BuildSpec | None = None

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"


@dataclass(frozen=True)
class HealthSpec:
    path: str = "/"
    timeout: float = 60.0
    interval: float = 0.2


@dataclass(frozen=True)
class ProbeSpec:
    """How the switch proves the new color answers through the proxy."""

    path: str | None = None  # default: the health path
    timeout: float = 15.0
    expect: str | None = None  # a text the body must contain (e.g. the version), optional


@dataclass(frozen=True)
class SuiteSpec:
    type: str
    command: tuple[str, ...] | str | None = None
    image: ImageSpec | None = None
    timeout: float = 600.0
    unstable: bool = False  # a failure marks the build UNSTABLE instead of failing the release
    env: tuple[tuple[str, str], ...] = ()
    workdir: Path | None = None
    pass_env: tuple[str, ...] = ()  # host environment variables forwarded to the suite (e.g. secrets)


@dataclass(frozen=True)
class TargetSpec:
    kind: str = "docker"
    docker_host: str | None = None  # None: DOCKER_HOST or the local engine
    bind: str = "127.0.0.1"  # the address ports are published on
    address: str | None = None  # the address clients reach instances on (default: bind)
    init: bool = True
    stop_timeout: int = 10
    network: str | None = None
    host_ports: tuple[int, int] = (20000, 29999)  # instances are published on ports of this range

    @property
    def reach_address(self) -> str:
        if self.address:
            return self.address
        return "127.0.0.1" if self.bind in ("0.0.0.0", "") else self.bind


@dataclass(frozen=True)
class ProxySpec:
    kind: str = "nginx"
    listen: str = "127.0.0.1:8880"
    dir: Path = field(default_factory=lambda: cdlib_home() / "nginx")
    template: Path | None = None
    binary: str = "nginx"
    drain_timeout: float = 15.0

    @property
    def listen_host(self) -> str:
        m = LISTEN_RE.match(self.listen)
        host = (m.group("host") if m else None) or "127.0.0.1"
        return "127.0.0.1" if host in ("0.0.0.0", "[::]") else host

    @property
    def listen_port(self) -> int:
        m = LISTEN_RE.match(self.listen)
        return int(m.group("port")) if m else 80

    @property
    def url(self) -> str:
        return f"http://{self.listen_host}:{self.listen_port}"


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    image: ImageSpec
    port: int
    health: HealthSpec = HealthSpec()
    probe: ProbeSpec = ProbeSpec()
    replicas: int = 1
    env: tuple[tuple[str, str], ...] = ()
    routes: Routes = Routes()
    tests: dict = field(default_factory=dict)  # test type -> SuiteSpec
    target: TargetSpec = TargetSpec()
    proxy: ProxySpec = field(default_factory=ProxySpec)
    store: str = ""
    source: Path | None = None  # the descriptor file

    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()

    def with_tag(self, tag: str) -> ServiceSpec:
        if not TAG_RE.match(tag):
            raise ConfigError(f"--tag: expected a Docker tag ([A-Za-z0-9_.-], at most 128), got {tag!r}")
        return replace(self, image=replace(self.image, tag=tag))

    def with_image(self, ref: str) -> ServiceSpec:
        repo, tag = split_image_ref(ref, "--image")
        return replace(self, image=replace(self.image, repository=repo, tag=tag))


def split_image_ref(ref: str, where: str) -> tuple[str, str]:
    repo, _, tag = ref.rpartition(":")
    if not repo or "/" in tag:
        repo, tag = ref, "latest"
    if not IMAGE_REPO_RE.match(repo) or not TAG_RE.match(tag):
        raise ConfigError(f"{where}: expected an image reference like registry:5000/name:tag, got {ref!r}")
    return repo, tag


# ----------------------------------------------------------------------------------------------
class _Reader:
    """Walks the parsed YAML, producing errors that name the file and the dotted key."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, expected: str, got: object = ...) -> ConfigError:
        tail = "" if got is ... else f", got {got!r}"
        return ConfigError(f"{self.source}: {key}: expected {expected}{tail}", file=self.source, key=key)

    def section(self, data: dict, key: str, name: str, allowed: set[str]) -> dict:
        value = data.get(name)
        full = f"{key}.{name}" if key else name
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(full, "a mapping", value)
        self.only(value, full, allowed)
        return value

    def only(self, data: dict, key: str, allowed: set[str]) -> None:
        for name in data:
            if name not in allowed:
                where = f"{key}.{name}" if key else str(name)
                raise self.fail(where, "no such key (allowed: " + ", ".join(sorted(allowed)) + ")")

    def string(self, data: dict, key: str, name: str, pattern: re.Pattern | None = None,
               default: str | None = None, required: bool = False, what: str = "a string") -> str | None:
        full = f"{key}.{name}" if key else name
        if name not in data or data[name] is None:
            if required:
                raise self.fail(full, what + " (required)")
            return default
        value = data[name]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or (pattern is not None and not pattern.match(value)):
            raise self.fail(full, what, value)
        return value

    def number(self, data: dict, key: str, name: str, default: float, low: float, high: float,
               integer: bool = False) -> float:
        full = f"{key}.{name}" if key else name
        value = data.get(name, default)
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
            what = "an integer" if integer else "a number"
            raise self.fail(full, f"{what} from {low:g} to {high:g}", value)
        return value

    def boolean(self, data: dict, key: str, name: str, default: bool) -> bool:
        value = data.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(f"{key}.{name}" if key else name, "true or false", value)
        return value

    def str_list(self, data: dict, key: str, name: str, pattern: re.Pattern, what: str) -> tuple[str, ...]:
        full = f"{key}.{name}" if key else name
        value = data.get(name) or []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(full, f"a list of {what}", value)
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not pattern.match(item):
                raise self.fail(f"{full}[{i}]", what, item)
            out.append(item)
        if len(set(out)) != len(out):
            raise self.fail(full, f"a list of distinct {what}", value)
        return tuple(out)

    def env(self, data: dict, key: str, name: str) -> tuple[tuple[str, str], ...]:
        full = f"{key}.{name}" if key else name
        value = data.get(name) or {}
        if not isinstance(value, dict):
            raise self.fail(full, "a mapping of NAME: value", value)
        out = []
        for k, v in value.items():
            if not isinstance(k, str) or not ENV_NAME_RE.match(k):
                raise self.fail(f"{full}.{k}", "an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
            if isinstance(v, bool) or not isinstance(v, (str, int, float)) or "\x00" in str(v):
                raise self.fail(f"{full}.{k}", "a string or a number", v)
            out.append((k, str(v)))
        return tuple(sorted(out))

    def path(self, data: dict, key: str, name: str, base: Path, default: Path | None = None) -> Path | None:
        value = self.string(data, key, name)
        if value is None:
            return default
        if "\x00" in value or "\n" in value:
            raise self.fail(f"{key}.{name}", "a file path", value)
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (base / p)


def _image(r: _Reader, data: dict, key: str, base: Path, required: bool = True) -> ImageSpec | None:
    value = data.get(key.rsplit(".", 1)[-1])
    if value is None:
        if required:
            raise r.fail(key, "a mapping with repository (required)")
        return None
    if isinstance(value, str):
        repo, tag = split_image_ref(value, f"{r.source}: {key}")
        return ImageSpec(repo, tag)
    if not isinstance(value, dict):
        raise r.fail(key, "an image reference or a mapping with repository, tag, build", value)
    r.only(value, key, {"repository", "tag", "build"})
    repo = r.string(value, key, "repository", IMAGE_REPO_RE, required=True,
                    what="an image repository like registry:5000/name (lower case)")
    tag = r.string(value, key, "tag", TAG_RE, default="latest", what="a Docker tag ([A-Za-z0-9_.-])")
    build = None
    if value.get("build") is not None:
        b = r.section(value, key, "build", {"context", "dockerfile", "args"})
        bkey = f"{key}.build"
        build = BuildSpec(
            context=r.path(b, bkey, "context", base, default=base),
            dockerfile=r.string(b, bkey, "dockerfile", re.compile(r"^[^\x00\n]+$"), default="Dockerfile"),
            args=r.env(b, bkey, "args"),
        )
    return ImageSpec(repo, tag, build)


def parse(data: object, source: str = DEFAULT_FILE, base: Path | None = None,
          env: dict | None = None) -> ServiceSpec:
    """Validate a parsed descriptor; raise ConfigError naming the first bad key."""
    env = os.environ if env is None else env
    base = base or Path.cwd()
    r = _Reader(source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level", file=source, key="")
    r.only(data, "", {"service", "image", "port", "health", "probe", "replicas", "env", "routes",
                      "tests", "target", "proxy", "store"})
    name = r.string(data, "", "service", SERVICE_RE, required=True,
                    what="a service name: lower-case letters, digits and '-', 1 to 40, starting with a letter")
    image = _image(r, data, "image", base)
    if "port" not in data:
        raise r.fail("port", "the container port, an integer from 1 to 65535 (required)")
    port = int(r.number(data, "", "port", 0, 1, 65535, integer=True))

    h = r.section(data, "", "health", {"path", "timeout", "interval"})
    health = HealthSpec(
        path=r.string(h, "health", "path", PATH_RE, default="/", what="an URL path starting with '/'"),
        timeout=float(r.number(h, "health", "timeout", 60, 1, 3600)),
        interval=float(r.number(h, "health", "interval", 0.2, 0.05, 60)),
    )
    p = r.section(data, "", "probe", {"path", "timeout", "expect"})
    probe = ProbeSpec(
        path=r.string(p, "probe", "path", PATH_RE, default=None, what="an URL path starting with '/'"),
        timeout=float(r.number(p, "probe", "timeout", 15, 1, 600)),
        expect=r.string(p, "probe", "expect", re.compile(r"^[^\n\x00]{1,200}$"), default=None),
    )
    replicas = int(r.number(data, "", "replicas", 1, 1, 100, integer=True))

    rt = r.section(data, "", "routes", {"paths", "hosts"})
    routes = Routes(
        paths=r.str_list(rt, "routes", "paths", PATH_RE,
                         "URL path prefixes starting with '/' (letters, digits, . _ ~ - /)"),
        hosts=r.str_list(rt, "routes", "hosts", HOST_RE, "host names (lower case, e.g. api.example.com)"),
    )
    for i, path in enumerate(routes.paths):
        if path.rstrip("/") == "/_cdlib" or path.startswith("/_cdlib/"):
            # the proxy answers /_cdlib/ itself: such a route would only be refused at the switch
            raise r.fail(f"routes.paths[{i}]", "a path prefix outside /_cdlib/ (the proxy's own)", path)
    if not routes.paths and not routes.hosts:
        routes = Routes(paths=(f"/{name}/",))

    tests = {}
    t = r.section(data, "", "tests", set(TEST_TYPES))
    for ttype in TEST_TYPES:
        if t.get(ttype) is None:
            continue
        key = f"tests.{ttype}"
        s = t[ttype]
        if isinstance(s, (str, list)):
            s = {"command": s}
        if not isinstance(s, dict):
            raise r.fail(key, "a command or a mapping with command and/or image", s)
        r.only(s, key, {"command", "image", "timeout", "unstable", "env", "workdir", "pass_env"})
        command = s.get("command")
        if command is not None:
            if isinstance(command, list):
                if not command or not all(isinstance(c, str) and c for c in command):
                    raise r.fail(f"{key}.command", "a non-empty list of strings", command)
                command = tuple(command)
            elif not isinstance(command, str) or not command.strip():
                raise r.fail(f"{key}.command", "a shell command or a list of arguments", command)
        timg = _image(r, s, f"{key}.image", base, required=False)
        if command is None and timg is None:
            raise r.fail(key, "a command, an image, or both")
        tests[ttype] = SuiteSpec(
            type=ttype, command=command, image=timg,
            timeout=float(r.number(s, key, "timeout", 600, 1, 86400)),
            unstable=r.boolean(s, key, "unstable", False),
            env=r.env(s, key, "env"),
            workdir=r.path(s, key, "workdir", base, default=base),
            pass_env=r.str_list(s, key, "pass_env", ENV_NAME_RE, "environment variable names"),
        )

    tg = r.section(data, "", "target", {"kind", "docker_host", "bind", "address", "init", "stop_timeout",
                                          "network", "host_ports"})
    ports_text = r.string(tg, "target", "host_ports", re.compile(r"^[0-9]{1,5}-[0-9]{1,5}$"), default="20000-29999",
                          what="a port range LOW-HIGH, e.g. 20000-29999")
    low, high = (int(x) for x in ports_text.split("-"))
    if not 1024 <= low < high <= 65535:
        raise r.fail("target.host_ports", "a port range LOW-HIGH with 1024 <= LOW < HIGH <= 65535", ports_text)
    kind = r.string(tg, "target", "kind", re.compile(r"^(docker|swarm)$"), default="docker",
                    what="docker or swarm")
    target = TargetSpec(
        kind=kind,
        docker_host=r.string(tg, "target", "docker_host", DOCKER_HOST_RE, default=None,
                             what="a Docker host URL like unix:///var/run/docker.sock or tcp://host:2376"),
        bind=r.string(tg, "target", "bind", ADDRESS_RE, default="127.0.0.1", what="an IP address"),
        address=r.string(tg, "target", "address", ADDRESS_RE, default=None, what="an IP address"),
        init=r.boolean(tg, "target", "init", True),
        stop_timeout=int(r.number(tg, "target", "stop_timeout", 10, 0, 600, integer=True)),
        network=r.string(tg, "target", "network", re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"),
                         default=None, what="a Docker network name"),
        host_ports=(low, high),
    )

    px = r.section(data, "", "proxy", {"kind", "listen", "dir", "template", "binary", "drain_timeout"})
    home = Path(env.get("CDLIB_HOME") or ".cdlib").absolute()
    pkind = r.string(px, "proxy", "kind", re.compile(r"^(nginx|haproxy)$"), default="nginx",
                     what="nginx or haproxy")
    proxy = ProxySpec(
        kind=pkind,
        listen=r.string(px, "proxy", "listen", LISTEN_RE, default=env.get("CDLIB_PROXY_LISTEN") or "127.0.0.1:8880",
                        what="PORT or ADDRESS:PORT"),
        dir=r.path(px, "proxy", "dir", base, default=home / pkind),
        template=r.path(px, "proxy", "template", base),
        binary=r.string(px, "proxy", "binary", re.compile(r"^[^\x00\n]+$"), default=pkind),
        drain_timeout=float(r.number(px, "proxy", "drain_timeout", 15, 0, 600)),
    )
    if not 1 <= proxy.listen_port <= 65535:
        raise r.fail("proxy.listen", "a port from 1 to 65535", px.get("listen"))

    store = env.get("CDLIB_STORE")
    if store is None and data.get("store") is not None:
        value = data["store"]
        if not isinstance(value, str) or not STORE_RE.match(value):
            raise r.fail("store", "sqlite:///path, etcd://host:port or consul://host:port", redact_url(value))
        store = value
    if store is None:
        store = f"sqlite:///{home / 'state.db'}"
    elif not STORE_RE.match(store):
        raise ConfigError(f"CDLIB_STORE: expected sqlite:///path, etcd://host:port or consul://host:port, "
                          f"got {redact_url(store)!r}", key="CDLIB_STORE")

    spec = ServiceSpec(
        name=name, image=image, port=port, health=health, probe=probe, replicas=replicas,
        env=r.env(data, "", "env"), routes=routes, tests=tests, target=target, proxy=proxy, store=store,
        source=Path(source) if source else None,
    )
    tag = env.get("CDLIB_TAG")
    return spec.with_tag(tag) if tag else spec


def read_yaml(path: Path, what: str, hint: str):
    """Parse a YAML file; a missing, unreadable or invalid file is a one-line ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what} file ({hint})", file=str(path), key="") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc}", file=str(path), key="") from exc
    import yaml  # lazy: the CLI's --help must not pay for it

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}",
                          file=str(path), key="") from None


def load(path: str | os.PathLike | None = None, env: dict | None = None) -> ServiceSpec:
    """Read and validate a descriptor file (default: ./cdlib.yml, or $CDLIB_FILE)."""
    env = os.environ if env is None else env
    path = Path(path or env.get("CDLIB_FILE") or DEFAULT_FILE)
    data = read_yaml(path, "descriptor", "pass -f PATH or create cdlib.yml")
    return parse(data, str(path), path.absolute().parent, env)
