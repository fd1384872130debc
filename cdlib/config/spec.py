"""The service descriptor's value types (frozen) and the checks of single values they share.

:class:`ServiceSpec` is what :func:`cdlib.config.parse` returns; the other types are its sections.
The checks here (an image reference, a Docker host URL, an IP address) need no file and no
context, so the command line uses them too (``--tag``, ``--image``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import netaddr
from ..errors import ConfigError
from ..model import Routes
from ..netaddr import LISTEN_RE as LISTEN_RE
from ..netaddr import listen_problem as listen_problem
from .schema import shown

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
TARGET_KINDS = ("docker", "swarm")  # the runtimes cdlib can run (wiring.open_runtime opens each)
PLANNED_TARGET_KINDS: tuple[str, ...] = ()  # known, refused at parse time until a runtime runs them
ENDPOINT_MODES = ("dnsrr", "vip")  # target.swarm.endpoint_mode
DOCKER_SCHEMES = ("unix", "tcp", "ssh", "npipe", "http", "https")


def cdlib_home(env: Mapping[str, str] | None = None) -> Path:
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


def ip_problem(value: str) -> bool:
    """True when ``value`` is not an IPv4 address or an IPv6 address (without brackets)."""
    return not netaddr.is_ip(value)


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
    if host and not netaddr.check_host(host):
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
class SwarmSpec:
    """target.swarm: how a color's Swarm service runs and is reached (target.kind swarm)."""

    endpoint_mode: str = "dnsrr"  # dnsrr: each task's host-mode port; vip: one ingress port (routing mesh)
    published_port: int = 0  # vip: the ingress port; 0: picked from target.host_ports
    constraints: tuple[str, ...] = ()  # placement constraints, e.g. node.role==worker
    restart_delay: float = 1.0  # seconds before Swarm replaces a dead task
    limit_cpus: float = 0.0  # 0: none
    limit_memory: int = 0  # bytes; 0: none
    reserve_cpus: float = 0.0
    reserve_memory: int = 0


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
    swarm: SwarmSpec = SwarmSpec()

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
    tls_listen: str | None = None  # the HTTPS listen address; required when a route has TLS (None: no HTTPS)
    # where the proxy runs: a process on this machine, a container or a Swarm service on the target
    # engine (docs/proxy-placement.md); the rest is for container and service only
    run: str = "process"  # process | container | service
    name: str | None = None  # the container or service, cdlibpx...; None: cdlibpx-<kind>-<listen port>
    image: str | None = None  # None: the image 'cdlib proxy image' builds for the kind
    replicas: int = 1  # service, mode replicated: replica n listens on the listen port + n - 1
    mode: str = "replicated"  # service: replicated | global (one replica per node)
    engines: tuple[tuple[str, str], ...] = ()  # service: node hostname -> Docker host of that node

    @property
    def listen_host(self) -> str:
        """The host a client on this machine connects to (:func:`cdlib.netaddr.parse_listen`)."""
        return _client_address(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return _client_address(self.listen)[1]

    @property
    def url(self) -> str:
        return f"http://{netaddr.format_hostport(*_client_address(self.listen))}"


def _client_address(listen: str) -> tuple[str, int]:
    try:
        return netaddr.parse_listen(listen)
    except ValueError as exc:
        raise ConfigError(f"proxy.listen: expected {exc}, got {shown(listen)}", key="proxy.listen") from None


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    image: ImageSpec
    port: int
    health: HealthSpec = HealthSpec()
    probe: ProbeSpec = ProbeSpec()
    replicas: int | None = None  # None: not in the descriptor (a release runs the live color's count, else 1)
    env: tuple[tuple[str, str], ...] = ()
    routes: Routes = Routes()
    tests: dict[str, SuiteSpec] = field(default_factory=dict)  # by test type
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

