"""The runtime port: containers (or Swarm tasks) of one color of one service.

One color is N instances named ``<service>-<color>-<n>`` (n from 1), labelled with
``cdlib.service``, ``cdlib.color`` and ``cdlib.release``, so an adapter finds by label what an
earlier process started. Every method is idempotent where the journal needs it to be: undoing a
step that was only half done (the process was killed) must work.

A color's old instances can be *set aside* (renamed ``<name>.aside-<release>``, kept as they are)
so that a new release can take the names; rollback puts them back, cleanup removes them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..clock import Clock, as_clock
from ..errors import Unhealthy
from ..model import Instance

LABEL_SERVICE = "cdlib.service"
LABEL_COLOR = "cdlib.color"
LABEL_RELEASE = "cdlib.release"
LABEL_INDEX = "cdlib.index"
# a test suite's container (cdlib.testrun.container) carries the service label and this one: it is
# never an instance of the service
LABEL_TEST = "cdlib.test"
ASIDE = ".aside-"
FIRST_RETRY = 0.02  # seconds before the first health retry (see Runtime.wait_healthy)


@dataclass(frozen=True)
class StartRequest:
    """Everything needed to start one color; built by the core from the descriptor."""

    service: str
    color: str
    release: str
    image: str  # full reference repository:tag
    port: int  # the container port
    replicas: int
    env: tuple[tuple[str, str], ...] = ()
    bind: str = "127.0.0.1"
    address: str = "127.0.0.1"  # what clients use to reach a published port
    init: bool = True
    stop_timeout: int = 10
    network: str | None = None
    first_index: int = 1
    labels: tuple[tuple[str, str], ...] = field(default=())
    # host ports are chosen from this range and pinned at creation, so a stopped instance that is
    # started again (quick rollback, undo of a cleanup) comes back on the same port and the proxy
    # configuration that pointed at it is right again, byte for byte
    host_ports: tuple[int, int] = (20000, 29999)
    # instance name -> the host port it had (from its registration): an instance that is created
    # again (heal, scale back up) gets its old port, so the proxy configuration stays byte-identical
    pinned_ports: tuple[tuple[str, int], ...] = ()
    health_path: str = "/"
    # Swarm only (target.swarm): how a color's service is reached (dnsrr: each task's host-mode
    # port; vip: one ingress port, published_port, 0 = picked from host_ports), where its tasks may
    # run, what they get, how soon a dead task is replaced
    endpoint_mode: str = "dnsrr"
    published_port: int = 0
    constraints: tuple[str, ...] = ()
    restart_delay: float = 1.0
    limit_cpus: float = 0.0  # 0: no limit / no reservation
    limit_memory: int = 0  # bytes
    reserve_cpus: float = 0.0
    reserve_memory: int = 0


class Runtime(ABC):
    kind = "runtime"
    # an instance that stops and starts again keeps its host port (pinned at creation); False for
    # Swarm's host-mode ports, which the engine picks anew for every task: the undo of stop-old then
    # registers resumed instances where they run and renders the proxy from the registry
    stable_ports = True
    clock: Clock | None = None  # what wait_healthy measures and sleeps with (None: the real clock)

    @abstractmethod
    def start(self, req: StartRequest) -> list[Instance]:
        """Create and start req.replicas instances (indices first_index..). Instances whose name
        already exists with the same release label are reused (so a retried step converges)."""

    @abstractmethod
    def instances(self, service: str, color: str | None = None, release: str | None = None,
                  include_aside: bool = False) -> list[Instance]:
        """Every instance (running or not) of the service found by label, sorted by name."""

    @abstractmethod
    def stop(self, service: str, color: str, release: str | None = None) -> list[str]:
        """Stop (keep) the running instances; return their names."""

    @abstractmethod
    def resume(self, service: str, color: str, release: str | None = None) -> list[Instance]:
        """Start stopped instances again (quick rollback); return them, running."""

    @abstractmethod
    def remove(self, service: str, color: str, release: str | None = None,
               aside: bool = False) -> list[str]:
        """Remove instances of the color (only those of release when given; only the set-aside
        ones when aside). Return their names."""

    @abstractmethod
    def set_aside(self, service: str, color: str, release: str) -> list[str]:
        """Rename the color's current instances out of the way, tagged with release."""

    @abstractmethod
    def restore_aside(self, service: str, color: str, release: str) -> list[str]:
        """Undo set_aside: give the set-aside instances their names back."""

    # -- healing and scaling (the live color, outside a release) ---------------------------------
    def scale(self, req: StartRequest, replicas: int) -> list[Instance]:
        """Make req's color run exactly ``replicas`` instances (req.replicas is not used) and
        return the running ones, sorted by name. Instances 1..replicas run: a stopped or dead one
        is started again, a missing one is created (with its port from req.pinned_ports when it
        has one); those above are stopped and kept (the caller drains them first: doomed() names
        them; discard() removes them once the change is final). With replicas equal to the
        count that should run, this is the repair of ``heal``. Idempotent."""
        raise NotImplementedError(f"{self.kind} runtime cannot scale")

    def doomed(self, service: str, color: str, replicas: int) -> list[str]:
        """The names of the running instances that scale(..., replicas) would stop (those whose
        index is above replicas), sorted: a scale down de-registers them and drains the proxy first."""
        raise NotImplementedError(f"{self.kind} runtime cannot scale")

    def discard(self, service: str, color: str, names: Sequence[str]) -> list[str]:
        """Remove these stopped instances of the color (a scale down that closed, or what heal finds
        stopped above the count); return the names removed, sorted. Idempotent: a name already gone
        is skipped, and so is one that runs (it may be in the proxy: never removed from under it)."""
        raise NotImplementedError(f"{self.kind} runtime cannot scale")

    # -- images (build and push belong to the host that runs them) --------------------------------
    def build_image(self, context: str, dockerfile: str, tags: Sequence[str],
                    buildargs: dict | None = None) -> str:
        raise NotImplementedError(f"{self.kind} runtime cannot build images")

    def push_image(self, ref: str) -> str:
        raise NotImplementedError(f"{self.kind} runtime cannot push images")

    def ping(self) -> None:
        """Raise RuntimeBackendError when the runtime cannot be reached: checked before a release
        opens, so an unreachable engine fails it with nothing to undo."""

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.kind

    # -- health --------------------------------------------------------------------------------------
    def check_health(self, instance: Instance, path: str, timeout: float = 2.0) -> bool:
        """One health probe over HTTP: a 2xx or 3xx answer on path."""
        return http_ok(instance.url + path, timeout)

    def wait_healthy(self, instances: Sequence[Instance], path: str, timeout: float,
                     interval: float = 0.2) -> float:
        """Wait until every instance answers its health path; return the seconds it took.
        Raise Unhealthy naming the instances that did not answer in time.

        The first retries come sooner than interval (FIRST_RETRY, then twice as long each time, up
        to interval): most services answer a few tens of milliseconds after their container
        started, and a full interval's wait would be spent idle."""
        clock = as_clock(self.clock)
        t0 = clock.monotonic()
        pending = list(instances)
        pause = min(interval, FIRST_RETRY)
        while True:
            pending = [i for i in pending if not self.check_health(i, path, timeout=min(2.0, timeout))]
            if not pending:
                return clock.monotonic() - t0
            if clock.monotonic() - t0 >= timeout:
                names = ", ".join(f"{i.name} ({i.url}{path})" for i in pending)
                raise Unhealthy(f"not healthy after {timeout:g}s: {names}; check the container logs "
                                f"and health.path/health.timeout", instances=[i.name for i in pending])
            clock.sleep(pause)
            pause = min(interval, pause * 2)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    import urllib.error  # not at import time: every CLI command loads this module
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout) as resp:
            return 200 <= resp.status < 400
    except (urllib.error.URLError, OSError, ValueError):
        return False


def aside_name(name: str, release: str) -> str:
    return f"{name}{ASIDE}{release}"


def is_aside(name: str) -> bool:
    return ASIDE in name
