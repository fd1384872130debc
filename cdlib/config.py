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
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ConfigError
from .model import ENV_NAME_RE, HOST_RE, PATH_RE, SERVICE_RE, TEST_TYPES, Routes
from .store import url as store_url

DEFAULT_FILE = "cdlib.yml"
# Docker's reference grammar: an optional registry (it has a '.' or a ':' or is localhost), then
# lower-case path components; the whole name at most 255 characters (checked in image_repo_problem)
_DOMAIN_PART = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_REGISTRY = (rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})+(?::[0-9]{{1,5}})?|{_DOMAIN_PART}:[0-9]{{1,5}}"
             r"|localhost)")
_REPO_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REPO_RE = re.compile(rf"(?:{_REGISTRY}/)?{_REPO_PART}(?:/{_REPO_PART})*\Z", re.ASCII)
MAX_IMAGE_NAME = 255  # Docker refuses longer repository names
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z", re.ASCII)
LISTEN_RE = re.compile(r"(?:(?P<host>[0-9.]+|\[[0-9a-fA-F:]+\]|localhost):)?(?P<port>[0-9]{1,5})\Z", re.ASCII)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z", re.ASCII)
NETWORK_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z", re.ASCII)
HOST_PORTS_RE = re.compile(r"[0-9]{1,5}-[0-9]{1,5}\Z", re.ASCII)
# free text that is never rendered into a configuration file (compared, or passed as one argument)
_CONTROL = "\x00-\x08\x0a-\x1f\x7f\ud800-\udfff"
EXPECT_RE = re.compile(f"[^{_CONTROL}]{{1,200}}\\Z")
ARG_RE = re.compile(f"[^{_CONTROL}]{{1,4096}}\\Z")  # a file name or a program (proxy.binary, dockerfile)
# characters nginx and HAProxy read as the end of a token, a comment, a quote or a variable (render.cfg_token)
CFG_UNSAFE_RE = re.compile(r"[\s;{}'\"`#$\\\x00-\x1f\x7f-\x9f]")
DOCKER_SCHEMES = ("unix", "tcp", "ssh", "npipe", "http", "https")

MAX_FILE_BYTES = 1 << 20  # a descriptor, a catalog or a proxy template
MAX_DEPTH = 50  # nesting of mappings and lists in a YAML file
MAX_ALIASES = 100  # alias uses (*name) in a YAML file
MAX_NODES = 100_000  # values in a YAML file once every alias is expanded
MAX_NUMBER_TEXT = 100  # characters of one integer as written
MAX_ENV_VALUE = 65536
MAX_COMMAND = 65536
SHOWN = 60  # at most this many characters of a value are echoed in a message


def shown(value: object, limit: int = SHOWN) -> str:
    """A value as a message may echo it: a bounded repr (a huge string, a deep or aliased structure
    or a giant integer costs no more than ``limit`` characters to show)."""
    import reprlib

    class _Repr(reprlib.Repr):
        def repr_int(self, x, level):
            if x.bit_length() > 200:
                return f"<an integer of about {int(x.bit_length() * 0.30103)} digits>"
            return int.__repr__(x)

        def repr_instance(self, x, level):
            if isinstance(x, int) and not isinstance(x, bool):
                return self.repr_int(int(x), level)
            if isinstance(x, float):
                return float.__repr__(x)
            try:
                return reprlib.Repr.repr_instance(self, x, level)
            except Exception:  # noqa: BLE001 - a value that cannot even be shown
                return f"<{type(x).__name__}>"

    r = _Repr()
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxset = 2, 3, 3, 3, 3
    r.maxstring = r.maxother = r.maxlong = limit
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,40}\Z", re.ASCII)


def _key_text(name: object) -> str:
    """A mapping key as it appears in a dotted key: itself when short and printable, else shown()."""
    if isinstance(name, str) and 0 < len(name) <= SHOWN and name.isprintable() and " " not in name:
        return name
    return shown(name, 40)


def redact_url(url: object) -> str:
    """A store URL as it may appear in a message: user and password (etcd://user:pass@host) left out."""
    return store_url.redact(url)


def cdlib_home(env=None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("CDLIB_HOME") or ".cdlib").absolute()


def image_repo_problem(repo: str) -> str | None:
    """Why Docker would refuse ``repo`` as a repository name, or None."""
    if len(repo) > MAX_IMAGE_NAME:
        return f"at most {MAX_IMAGE_NAME} characters (Docker's limit); it has {len(repo)}"
    if not IMAGE_REPO_RE.match(repo):
        return "an image repository like registry:5000/name (lower case)"
    first = repo.split("/", 1)[0]
    port = first.rpartition(":")[2] if ":" in first and "/" in repo else ""
    if port and not 1 <= int(port) <= 65535:
        return "a registry port from 1 to 65535"
    return None


def listen_problem(value: object) -> str | None:
    """Why ``value`` is not PORT or ADDRESS:PORT (an IP address or localhost), or None."""
    m = LISTEN_RE.match(value) if isinstance(value, str) else None
    if not m:
        return "PORT or ADDRESS:PORT (an IP address, [IPv6] or localhost)"
    host = m.group("host")
    if host and host != "localhost":
        if host.startswith("["):
            ok = ":" in host and store_url.check_host(host[1:-1])
        else:
            ok = bool(store_url.IPV4_RE.fullmatch(host))
        if not ok:
            return "PORT or ADDRESS:PORT with a valid IP address"
    if not 1 <= int(m.group("port")) <= 65535:
        return "a port from 1 to 65535"
    return None


def ip_problem(value: str) -> bool:
    if ":" in value:
        return not store_url.check_host(value)
    return not store_url.IPV4_RE.fullmatch(value)


def docker_host_problem(value: str) -> str | None:
    """Why the Docker SDK would refuse ``value`` as an engine address, or None (its own rules:
    unix:///path, tcp://host:port, ssh://[user@]host[:port], npipe://..., http(s)://host:port)."""
    what = "a Docker host URL like unix:///var/run/docker.sock, tcp://host:2376 or ssh://user@host"
    if not value or len(value) > 2048 or re.search(r"[\s\x00-\x1f\x7f-\x9f]", value) or not value.isascii():
        return what
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in DOCKER_SCHEMES:
        return what
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return f"{what} (with a port from 1 to 65535)"
    if parts.query or parts.fragment or ";" in value:
        return f"{what} (no query or fragment)"
    if parts.password is not None:
        return f"{what}, without a password (URLs end up in logs)"
    if scheme in ("unix", "npipe"):
        return None
    if scheme == "ssh":
        if parts.path:
            return f"{what} (ssh:// takes no path)"
    elif not port:
        return f"{what} (with a port: tcp://host:2376)"
    elif parts.path not in ("", "/"):
        return f"{what} (tcp:// takes no path)"
    host = parts.hostname or ""
    if host and not store_url.check_host(host):
        return f"{what} (with a valid host name)"
    return None


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
    pass_env: tuple[str, ...] = ()  # host environment variables forwarded to the suite as secrets (masked)
    host_env: tuple[str, ...] = ()  # host environment variables forwarded as they are (not secret)


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

    def with_tag(self, tag: object, where: str = "--tag") -> ServiceSpec:
        if not isinstance(tag, str) or not TAG_RE.match(tag):
            got = "an empty value" if tag == "" else shown(tag)
            raise ConfigError(f"{where}: expected a Docker tag ([A-Za-z0-9_.-], at most 128), got {got}", key=where)
        return replace(self, image=replace(self.image, tag=tag))

    def with_image(self, ref: object, where: str = "--image") -> ServiceSpec:
        repo, tag = split_image_ref(ref, where)
        return replace(self, image=replace(self.image, repository=repo, tag=tag))


def split_image_ref(ref: object, where: str) -> tuple[str, str]:
    """'registry:5000/name:tag' -> (repository, tag); the tag defaults to latest."""
    expected = f"{where}: expected an image reference like registry:5000/name:tag"
    if not isinstance(ref, str) or not ref:
        raise ConfigError(f"{expected}, got {'an empty value' if ref == '' else shown(ref)}", key=where)
    repo, _, tag = ref.rpartition(":")
    if not repo or "/" in tag:
        repo, tag = ref, "latest"
    problem = image_repo_problem(repo)
    if problem and problem.startswith("at most"):
        raise ConfigError(f"{where}: expected an image repository of {problem}", key=where)
    if problem or not TAG_RE.match(tag):
        raise ConfigError(f"{expected}, got {shown(ref)}", key=where)
    return repo, tag


# ----------------------------------------------------------------------------------------------
def _as_text(value: object) -> object:
    """A number where text is expected, as it was written in the file (``tag: 1.10`` stays "1.10",
    ``0123`` stays "0123"); a number from Python code as str() writes it."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return getattr(value, "text", None) or str(value)
    return value


class _Reader:
    """Walks the parsed YAML, producing errors that name the file and the dotted key."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, expected: str, got: object = ...) -> ConfigError:
        tail = "" if got is ... else f", got {shown(got)}"
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
                keys = ", ".join(sorted(allowed))
                if isinstance(name, str) and _PLAIN_KEY_RE.fullmatch(name):
                    raise self.fail(f"{key}.{name}" if key else name, f"no such key (allowed: {keys})")
                # not shown: a file that is no descriptor at all (-f /etc/shadow) would have a line echoed
                raise self.fail(key or "(top level)", f"only the keys {keys}; found another key (not shown: it "
                                                      "does not look like a key name)")

    def string(self, data: dict, key: str, name: str, pattern: re.Pattern | None = None,
               default: str | None = None, required: bool = False, what: str = "a string") -> str | None:
        full = f"{key}.{name}" if key else name
        if name not in data or data[name] is None:
            if required:
                raise self.fail(full, what + " (required)")
            return default
        value = _as_text(data[name])
        if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
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
            if not isinstance(item, str) or not pattern.fullmatch(item):
                raise self.fail(f"{full}[{i}]", what, item)
            out.append(item)
        dup = next((x for i, x in enumerate(out) if x in out[:i]), None)
        if dup is not None:
            raise self.fail(full, f"a list of distinct {what}", dup)
        return tuple(out)

    def env(self, data: dict, key: str, name: str) -> tuple[tuple[str, str], ...]:
        full = f"{key}.{name}" if key else name
        value = data.get(name) or {}
        if not isinstance(value, dict):
            raise self.fail(full, "a mapping of NAME: value", value)
        out = []
        for k, v in value.items():
            if not isinstance(k, str) or not ENV_NAME_RE.fullmatch(k):
                raise self.fail(f"{full}.{_key_text(k)}", "an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
            v = _as_text(v)
            if not isinstance(v, str):
                raise self.fail(f"{full}.{k}", "a string or a number", v)
            if "\x00" in v or re.search("[\ud800-\udfff]", v) or len(v) > MAX_ENV_VALUE:
                # a NUL cannot be passed to a process at all; a lone surrogate cannot be encoded
                raise self.fail(f"{full}.{k}", f"a value without NUL characters, at most {MAX_ENV_VALUE} "
                                               "characters", v)
            out.append((k, v))
        return tuple(sorted(out))

    def path(self, data: dict, key: str, name: str, base: Path, default: Path | None = None) -> Path | None:
        value = self.string(data, key, name)
        if value is None:
            return default
        if not value or len(value) > 4096 or re.search("[\x00-\x1f\x7f\ud800-\udfff]", value):
            raise self.fail(f"{key}.{name}", "a file path (no control characters, at most 4096)", value)
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (base / p)


def _image(r: _Reader, data: dict, key: str, base: Path, required: bool = True) -> ImageSpec | None:
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


def _command(r: _Reader, key: str, command: object) -> tuple[str, ...] | str:
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


def _template(r: _Reader, px: dict, base: Path) -> Path | None:
    """proxy.template: a readable regular file of at most MAX_FILE_BYTES, UTF-8. Its content is never
    echoed (it may hold anything)."""
    path = r.path(px, "proxy", "template", base)
    if path is None:
        return None
    expected = f"a readable regular file of at most {_size(MAX_FILE_BYTES)} (UTF-8 text)"
    try:
        text = _read_bounded(path, MAX_FILE_BYTES)
    except _FileProblem as exc:
        raise r.fail("proxy.template", f"{expected}; {path} {exc}") from None
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise r.fail("proxy.template", f"{expected}; {path} is not UTF-8 at byte {exc.start}") from None
    return path


def _env_value(env, name: str) -> str | None:
    value = env.get(name)
    return None if value is None else str(value)


def _host_env(r: _Reader, suite: dict, key: str) -> tuple[str, ...]:
    """Host variables a suite gets as they are: never one that holds a credential (those go in
    pass_env, whose values are masked), never one pass_env names too."""
    from .secrets import is_secret_name

    names = r.str_list(suite, key, "host_env", ENV_NAME_RE, "environment variable names")
    secret_ones = r.str_list(suite, key, "pass_env", ENV_NAME_RE, "environment variable names")
    for i, name in enumerate(names):
        if is_secret_name(name):
            raise r.fail(f"{key}.host_env[{i}]", "a variable that holds no credential (list credentials in "
                         "pass_env: their values are masked everywhere)", name)
        if name in secret_ones:
            raise r.fail(f"{key}.host_env[{i}]", "a variable not also in pass_env", name)
    return names


def parse(data: object, source: str = DEFAULT_FILE, base: Path | None = None,
          env: dict | None = None) -> ServiceSpec:
    """Validate a parsed descriptor and the environment; raise ConfigError naming the first bad key."""
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
        expect=r.string(p, "probe", "expect", EXPECT_RE, default=None,
                        what="one line of text (1 to 200 characters, no control characters)"),
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
    for i, host in enumerate(routes.hosts):
        if len(host) > 253:
            raise r.fail(f"routes.hosts[{i}]", "a host name of at most 253 characters", host)
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
        r.only(s, key, {"command", "image", "timeout", "unstable", "env", "workdir", "pass_env", "host_env"})
        command = s.get("command")
        if command is not None:
            command = _command(r, f"{key}.command", command)
        timg = _image(r, s, f"{key}.image", base, required=False)
        if command is None and timg is None:
            raise r.fail(key, "a command, an image, or both")
        workdir = r.path(s, key, "workdir", base, default=base)
        if "workdir" in s and s["workdir"] is not None and not workdir.is_dir():
            raise r.fail(f"{key}.workdir", "an existing directory", str(workdir))
        tests[ttype] = SuiteSpec(
            type=ttype, command=command, image=timg,
            timeout=float(r.number(s, key, "timeout", 600, 1, 86400)),
            unstable=r.boolean(s, key, "unstable", False),
            env=r.env(s, key, "env"),
            workdir=workdir,
            pass_env=r.str_list(s, key, "pass_env", ENV_NAME_RE, "environment variable names"),
            host_env=_host_env(r, s, key),
        )

    target = _target(r, data, env, replicas)
    proxy = _proxy(r, data, env, base)
    store = _store(r, data, env)

    spec = ServiceSpec(
        name=name, image=image, port=port, health=health, probe=probe, replicas=replicas,
        env=r.env(data, "", "env"), routes=routes, tests=tests, target=target, proxy=proxy, store=store,
        source=Path(source) if source else None,
    )
    tag = _env_value(env, "CDLIB_TAG")
    if tag is not None:
        spec = spec.with_tag(tag, "CDLIB_TAG")
    from .plan import check_failpoints  # the rehearsal variable is input too: checked before anything runs

    check_failpoints(_env_value(env, "CDLIB_FAILPOINTS"))
    return spec


def _target(r: _Reader, data: dict, env, replicas: int) -> TargetSpec:
    tg = r.section(data, "", "target", {"kind", "docker_host", "bind", "address", "init", "stop_timeout",
                                          "network", "host_ports"})
    ports_text = r.string(tg, "target", "host_ports", HOST_PORTS_RE, default="20000-29999",
                          what="a port range LOW-HIGH, e.g. 20000-29999")
    low, high = (int(x) for x in ports_text.split("-"))
    if not 1024 <= low < high <= 65535:
        raise r.fail("target.host_ports", "a port range LOW-HIGH with 1024 <= LOW < HIGH <= 65535", ports_text)
    if high - low + 1 < 2 * replicas:
        # both colors run side by side during a release, each instance on its own pinned port
        raise r.fail("target.host_ports", f"a range of at least {2 * replicas} ports (2 x replicas: both colors "
                                          "run side by side during a release)", ports_text)
    kind = r.string(tg, "target", "kind", re.compile(r"docker|swarm"), default="docker", what="docker or swarm")
    docker_host = r.string(tg, "target", "docker_host", default=None,
                           what="a Docker host URL like unix:///var/run/docker.sock or tcp://host:2376")
    if docker_host is not None:
        problem = docker_host_problem(docker_host)
        if problem:
            raise r.fail("target.docker_host", problem, store_url.redact(docker_host))
    else:
        env_host = _env_value(env, "DOCKER_HOST")
        problem = docker_host_problem(env_host) if env_host else None
        if problem:  # the Docker SDK reads it; an empty DOCKER_HOST means the local engine, as for docker
            raise ConfigError(f"DOCKER_HOST: expected {problem}, got {shown(store_url.redact(env_host))}",
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
    )


def _proxy(r: _Reader, data: dict, env, base: Path) -> ProxySpec:
    px = r.section(data, "", "proxy", {"kind", "listen", "dir", "template", "binary", "drain_timeout"})
    home_text = _env_value(env, "CDLIB_HOME") or ""
    if re.search("[\x00-\x1f\x7f\ud800-\udfff]", home_text) or len(home_text) > 4096:
        raise ConfigError(f"CDLIB_HOME: expected a directory path without control characters, got "
                          f"{shown(home_text)}", key="CDLIB_HOME")
    home = cdlib_home(env)
    pkind = r.string(px, "proxy", "kind", re.compile(r"nginx|haproxy"), default="nginx", what="nginx or haproxy")
    listen_what = "PORT or ADDRESS:PORT"
    if px.get("listen") is not None:
        listen = r.string(px, "proxy", "listen", default=None, what=listen_what)
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
        template=_template(r, px, base),
        binary=r.string(px, "proxy", "binary", ARG_RE, default=pkind,
                        what="a program name or path (no control characters)"),
        drain_timeout=float(r.number(px, "proxy", "drain_timeout", 15, 0, 600)),
    )


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


def _store(r: _Reader, data: dict, env) -> str:
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
        check_sqlite_file(data["store"], f"{r.source}: store", "store")
        return data["store"]
    default = f"sqlite:///{cdlib_home(env) / 'state.db'}"
    check_sqlite_file(default, "CDLIB_HOME")
    return default


# ----------------------------------------------------------------------------------------------
class _FileProblem(Exception):
    pass


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n >> 10} KiB"


def _read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; _FileProblem otherwise (a device such
    as /dev/zero, a FIFO or a directory is refused without reading: it could block or never end)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise _FileProblem("does not exist") from None
    except OSError as exc:
        raise _FileProblem(f"cannot be read ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise _FileProblem("is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise _FileProblem("is not a regular file")
        if info.st_size > limit:
            raise _FileProblem(f"is larger than {_size(limit)}")
        chunks, size = [], 0
        while size <= limit:
            try:
                chunk = os.read(fd, min(65536, limit + 1 - size))
            except OSError as exc:
                raise _FileProblem(f"cannot be read ({exc.strerror})") from None
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise _FileProblem(f"is larger than {_size(limit)}")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _dotted(segments: list[str]) -> str:
    out = ""
    for seg in segments:
        out += seg if seg.startswith("[") or not out else "." + seg
    return out


class _LoaderLimits:
    """Counts kept while one YAML document is composed."""

    def __init__(self):
        self.path: list[str] = []  # the dotted key being composed
        self.depth = 0
        self.aliases = 0
        self.weights: dict[int, int] = {}  # id(node) -> values below it once aliases are expanded


_LOADER = None


def _loader():
    """A SafeLoader that refuses what safe_load lets through: duplicate keys, alias bombs, deep
    nesting, giant integers, lone surrogates. Built on first use (yaml is imported lazily)."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml
    from yaml.constructor import ConstructorError
    from yaml.error import MarkedYAMLError
    from yaml.nodes import MappingNode, ScalarNode, SequenceNode

    class Refused(MarkedYAMLError):
        pass

    class Int(int):
        text = ""

    class Float(float):
        text = ""

    class Loader(yaml.SafeLoader):
        def __init__(self, stream):
            super().__init__(stream)
            self.limits = _LoaderLimits()

        def compose_node(self, parent, index):
            lim = self.limits
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                lim.aliases += 1
                if lim.aliases > MAX_ALIASES:
                    raise Refused(None, None, f"more than {MAX_ALIASES} aliases (*name)", event.start_mark)
                node = super().compose_node(parent, index)
                if id(node) not in lim.weights:
                    raise Refused(None, None, "an alias inside the value it names (a recursive structure)",
                                  event.start_mark)
                return node
            lim.depth += 1
            if lim.depth > MAX_DEPTH:
                raise Refused(None, None, f"nesting deeper than {MAX_DEPTH} levels", event.start_mark)
            # the dotted key of this value (routes.paths, services[0].name), for messages
            segment = (f"[{index}]" if isinstance(index, int) else
                       _key_text(index.value) if isinstance(index, ScalarNode) else None)
            if segment is not None:
                lim.path.append(segment)
            here = list(lim.path)
            try:
                node = super().compose_node(parent, index)
            finally:
                lim.depth -= 1
                if segment is not None:
                    lim.path.pop()
            if isinstance(node, ScalarNode):
                if re.search("[\ud800-\udfff]", node.value):
                    raise Refused(None, None, "an unpaired surrogate escape (\\uD800-\\uDFFF) in a string",
                                  node.start_mark)
                weight = 1
            elif isinstance(node, SequenceNode):
                weight = 1 + sum(lim.weights[id(n)] for n in node.value)
            else:
                weight = 1
                seen: dict = {}
                for k, v in node.value:
                    weight += lim.weights[id(k)] + lim.weights[id(v)]
                    if isinstance(k, ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                        first = seen.setdefault((k.tag, k.value), k)
                        if first is not k:
                            err = Refused(None, None, f"duplicate key {shown(k.value)} (first at line "
                                                      f"{first.start_mark.line + 1})", k.start_mark)
                            err.key = _dotted([*here, _key_text(k.value)])
                            err.first_line = first.start_mark.line + 1
                            raise err
            if weight > MAX_NODES:
                raise Refused(None, None, f"more than {MAX_NODES} values once aliases are expanded",
                              node.start_mark)
            lim.weights[id(node)] = weight
            return node

        def construct_yaml_int(self, node):
            text = self.construct_scalar(node)
            if len(text) > MAX_NUMBER_TEXT:
                raise Refused(None, None, f"an integer of more than {MAX_NUMBER_TEXT} characters", node.start_mark)
            value = Int(super().construct_yaml_int(node))
            value.text = text
            return value

        def construct_yaml_timestamp(self, node, *args):
            try:
                return super().construct_yaml_timestamp(node, *args)
            except (ValueError, OverflowError) as exc:  # 2024-13-45 looks like a date but is none
                raise ConstructorError(None, None, f"not a valid date ({exc})", node.start_mark) from None

        def construct_yaml_float(self, node):
            value = Float(super().construct_yaml_float(node))
            value.text = self.construct_scalar(node)
            return value

    Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)
    Loader.add_constructor("tag:yaml.org,2002:float", Loader.construct_yaml_float)
    Loader.add_constructor("tag:yaml.org,2002:timestamp", Loader.construct_yaml_timestamp)
    assert MappingNode  # the node classes above are what compose_node returns
    _LOADER = Loader
    return Loader


def read_yaml(path: Path, what: str, hint: str):
    """Parse a YAML file; a missing, unreadable, oversized, invalid or hostile file is a one-line
    ConfigError (at most MAX_FILE_BYTES, MAX_DEPTH levels, MAX_ALIASES aliases, no duplicate keys)."""
    path = Path(path)
    try:
        raw = _read_bounded(path, MAX_FILE_BYTES)
    except _FileProblem as exc:
        if str(exc) == "does not exist":
            raise ConfigError(f"{path}: no such {what} file ({hint})", file=str(path), key="") from None
        raise ConfigError(f"{path}: the {what} must be a regular file of at most {_size(MAX_FILE_BYTES)}; "
                          f"it {exc}", file=str(path), key="") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: not UTF-8 text (byte {exc.start})",
                          file=str(path), key="") from None
    import yaml  # lazy: the CLI's --help must not pay for it

    loader = None
    try:
        loader = _loader()(text)  # the reader refuses NUL and other non-printable characters here
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        if getattr(exc, "key", None):
            line = mark.line + 1 if mark else "?"
            raise ConfigError(f"{path}: {exc.key}: expected each key once (YAML forbids duplicates; the last one "
                              f"would silently win), got it again at line {line} (first at line {exc.first_line})",
                              file=str(path), key=exc.key) from None
        problem = getattr(exc, "problem", None) or str(exc)
        problem = " ".join(str(problem).split())
        if len(problem) > 160:
            problem = problem[:157] + "..."
        kind = "refused" if type(exc).__name__ == "Refused" else "not valid YAML"
        raise ConfigError(f"{path}: {kind}{where}: {problem}", file=str(path), key="") from None
    except (ValueError, OverflowError, RecursionError, MemoryError) as exc:
        # e.g. a date like 2024-13-45, which the YAML timestamp constructor cannot build
        raise ConfigError(f"{path}: not valid YAML: {shown(str(exc), 120)}", file=str(path), key="") from None
    finally:
        if loader is not None:
            loader.dispose()


def load(path: str | os.PathLike | None = None, env: dict | None = None) -> ServiceSpec:
    """Read and validate a descriptor file (default: ./cdlib.yml, or $CDLIB_FILE)."""
    env = os.environ if env is None else env
    if path is not None and not str(path):
        # an empty -f would otherwise mean "the default file": another descriptor than the one asked for
        raise ConfigError("--file: expected a descriptor path, got an empty value", key="--file")
    path = Path(path or env.get("CDLIB_FILE") or DEFAULT_FILE)
    data = read_yaml(path, "descriptor", "pass -f PATH or create cdlib.yml")
    return parse(data, str(path), path.absolute().parent, env)
