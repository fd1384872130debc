"""The Python API: the same verbs as the CLI and the Groovy steps, as functions.

    import cdlib
    outcome = cdlib.release("examples/demo/cdlib.yml", tag="v2")
    if not outcome.ok: ...
    outcome.result.color, outcome.result.tests          # typed, per verb (cdlib.results)
    cdlib.release("cdlib.yml", tag="v3", dry_run=True)  # the plan only: nothing changes

Each function loads the descriptor, opens the ports, runs the verb and closes the ports. Failures
that were rolled back come back as an Outcome with ok False (exit_code 1); bad input, a held lock
and an incomplete undo raise CdlibError subclasses (ConfigError, LockHeld, UndoIncomplete).
Pass ``ports=`` (from ``cdlib.wiring.ports_for``) to use other adapters, e.g. memory ones in tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from . import config, dryrun, images
from . import verbs as rel
from .context import Ctx, Reporter
from .locks import DEFAULT_LOCK_TTL
from .model import Outcome
from .results import (
    ColorOutcome,
    HealOutcome,
    HistoryOutcome,
    PlanOutcome,
    ProxyOutcome,
    ReleaseOutcome,
    ScaleOutcome,
    StatusOutcome,
)
from .wiring import Ports, ports_for


def load_spec(file=None, *, tag: str | None = None, image: str | None = None, store: str | None = None):
    """The descriptor, the environment and the command-line overrides, all checked before anything
    runs. An empty --tag/--image/--store is refused (not taken as "not given"), and so is --tag with
    --image (the reference carries its own tag)."""
    import os
    from dataclasses import replace

    from . import secrets
    from .errors import ConfigError
    from .store import url as store_url

    spec = config.load(file)
    # a process that runs no suite (status, history --json) still masks what the suites were given
    secrets.register_env(name for suite in spec.tests.values() for name in suite.pass_env)
    if image is not None:
        if tag is not None:
            raise ConfigError("--tag: cannot be combined with --image (the image reference carries its tag)",
                              key="--tag")
        spec = spec.with_image(image, "--image")
    elif tag is not None:
        spec = spec.with_tag(tag, "--tag")
    if store is not None:
        store_url.check(store, "--store", os.environ)
        config.check_sqlite_file(store, "--store")
        spec = replace(spec, store=store)
    return spec


OutcomeT = TypeVar("OutcomeT", bound=Outcome)
PathLike = str | os.PathLike | None
Output = Callable[[str], None]


def _run(verb: Callable[[Ctx], OutcomeT], file: PathLike, report: Reporter | None, ports: Ports | None,
         junit_dir: PathLike = None, output: Output | None = None, dry_run: bool = False,
         **spec_args: str | None) -> OutcomeT:
    own = ports is None
    if ports is None:
        spec = load_spec(file, **spec_args)
        ports = ports_for(spec, junit_dir=Path(junit_dir) if junit_dir else None, on_output=output,
                          store=_empty_store(spec) if dry_run else None)
    try:
        return verb(Ctx(ports.spec, ports, report or (lambda s: None)))
    finally:
        if own:
            ports.close()


def _empty_store(spec: config.ServiceSpec):
    """A dry run only reads the store: an SQLite file that does not exist yet is an empty store,
    read as one without creating the file."""
    from .store import url as store_url
    from .wiring import open_store

    if not spec.store:
        return None
    parsed = store_url.parse(spec.store, "store")
    if parsed.kind == "sqlite" and not Path(parsed.path).exists():
        return open_store("memory:")
    return None


def status(file: PathLike = None, *, store: str | None = None, report: Reporter | None = None,
           ports: Ports | None = None, check_health: bool = True) -> StatusOutcome:
    return _run(lambda c: rel.status(c, check_health=check_health), file, report, ports, store=store)


def color(file: PathLike = None, *, next: bool = False, store: str | None = None,  # noqa: A002 (the CLI flag)
          ports: Ports | None = None) -> ColorOutcome:
    return _run(lambda c: rel.color(c, next_color=next), file, None, ports, store=store)


def history(file: PathLike = None, *, limit: int | None = 20, store: str | None = None,
            ports: Ports | None = None) -> HistoryOutcome:
    """Closed releases, newest first; ``limit`` of them (0 or None: all)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        from .errors import ConfigError

        raise ConfigError(f"--limit: expected a number of releases, 0 or more (0: all), got {config.shown(limit)}",
                          key="--limit")
    return _run(lambda c: rel.history(c, limit=limit), file, None, ports, store=store)


def deploy(file: PathLike = None, *, tag: str | None = None, image: str | None = None, store: str | None = None,
           lock_wait: float = 0.0, lock_ttl: float = DEFAULT_LOCK_TTL, report: Reporter | None = None,
           ports: Ports | None = None, dry_run: bool = False) -> ReleaseOutcome | PlanOutcome:
    """Start the next color beside the live one. ``dry_run=True``: say what would be done, change nothing."""
    verb = dryrun.deploy if dry_run else rel.deploy
    return _run(lambda c: verb(c, lock_wait=lock_wait, lock_ttl=lock_ttl), file, report, ports,
                dry_run=dry_run, tag=tag, image=image, store=store)


def test(test_type: str, file: PathLike = None, *, tag: str | None = None, store: str | None = None,
         target_url: str | None = None, junit: PathLike = None, junit_dir: PathLike = None,
         rollback_on_failure: bool = True, report: Reporter | None = None, output: Output | None = None,
         ports: Ports | None = None) -> ReleaseOutcome:
    return _run(lambda c: rel.run_tests(c, test_type, target_url=target_url, junit=Path(junit) if junit else None,
                                        rollback_on_failure=rollback_on_failure),
                file, report, ports, junit_dir=junit_dir, output=output, tag=tag, store=store)


test.__test__ = False  # type: ignore[attr-defined]  # not a pytest test function (pytest reads the attribute)


def switch(file: PathLike = None, *, store: str | None = None, report: Reporter | None = None,
           ports: Ports | None = None, dry_run: bool = False) -> ReleaseOutcome | PlanOutcome:
    verb: Callable[[Ctx], ReleaseOutcome | PlanOutcome] = dryrun.switch if dry_run else rel.switch
    return _run(verb, file, report, ports, dry_run=dry_run, store=store)


def cleanup(file: PathLike = None, *, store: str | None = None, report: Reporter | None = None,
            ports: Ports | None = None, dry_run: bool = False) -> ReleaseOutcome | PlanOutcome:
    verb: Callable[[Ctx], ReleaseOutcome | PlanOutcome] = dryrun.cleanup if dry_run else rel.cleanup
    return _run(verb, file, report, ports, dry_run=dry_run, store=store)


def rollback(file: PathLike = None, *, to: str | None = None, previous: bool = False, store: str | None = None,
             lock_wait: float = 0.0, lock_ttl: float = DEFAULT_LOCK_TTL, report: Reporter | None = None,
             ports: Ports | None = None, dry_run: bool = False) -> ReleaseOutcome | PlanOutcome:
    """Undo the open release; without one, change nothing (exit 0). ``previous=True`` returns to the
    release before the live one, ``to=RELEASE_ID`` to that release from history."""
    verb = dryrun.rollback if dry_run else rel.rollback
    return _run(lambda c: verb(c, to=to, previous=previous, lock_wait=lock_wait, lock_ttl=lock_ttl),
                file, report, ports, dry_run=dry_run, store=store)


def release(file: PathLike = None, *, tag: str | None = None, image: str | None = None, store: str | None = None,
            lock_wait: float = 0.0, lock_ttl: float = DEFAULT_LOCK_TTL, junit_dir: PathLike = None,
            report: Reporter | None = None, output: Output | None = None,
            ports: Ports | None = None, dry_run: bool = False) -> ReleaseOutcome | PlanOutcome:
    """deploy, pre-integration tests, switch, post-integration tests, cleanup; roll back on any
    failure. ``dry_run=True``: the plan (colors, containers, ports, the proxy diff, the store keys),
    and nothing changed."""
    verb = dryrun.release if dry_run else rel.release
    return _run(lambda c: verb(c, lock_wait=lock_wait, lock_ttl=lock_ttl), file, report, ports,
                junit_dir=junit_dir, output=output, dry_run=dry_run, tag=tag, image=image, store=store)


def heal(file: PathLike = None, *, watch: bool = False, interval: float = 30.0, max_rounds: int | None = None,
         max_seconds: float | None = None, store: str | None = None, log: Output | None = None,
         report: Reporter | None = None, ports: Ports | None = None) -> HealOutcome:
    """Bring the live color back to its replica count (dead instances started again on their pinned
    ports, registrations and the proxy repaired). One round, or with ``watch`` a round every
    ``interval`` seconds until stopped, ``max_rounds`` or ``max_seconds``. An open release is left
    alone (exit 0, ``result.skipped`` says why); when something needs repair and a live process holds
    the service lock, one round raises LockHeld (exit 3), and ``watch`` waits for the next round. A
    round with nothing to repair takes no lock."""
    return _run(lambda c: rel.heal(c, watch=watch, interval=interval, max_rounds=max_rounds,
                                   max_seconds=max_seconds, log=log), file, report, ports, store=store)


def scale(replicas: int | str, file: PathLike = None, *, store: str | None = None, lock_wait: float = 0.0,
          lock_ttl: float = DEFAULT_LOCK_TTL, report: Reporter | None = None,
          ports: Ports | None = None) -> ScaleOutcome:
    """Run ``replicas`` instances of the live color: N, or "+N" / "-N" relative to its count (1 to 100).
    The count is stored; the next release inherits it when its descriptor sets no replicas. A
    failure rolls the change back (exit 1); a process killed half way is undone by ``rollback``."""
    return _run(lambda c: rel.scale(c, replicas, lock_wait=lock_wait, lock_ttl=lock_ttl), file, report, ports,
                store=store)


def build(file: PathLike = None, *, tag: str | None = None, only: str | None = None,
          report: Reporter | None = None, ports: Ports | None = None) -> Outcome:
    return _run(lambda c: images.build(c.spec, c.ports.runtime, c.report, only=only), file, report, ports, tag=tag)


def push(file: PathLike = None, *, tag: str | None = None, only: str | None = None,
         report: Reporter | None = None, ports: Ports | None = None) -> Outcome:
    return _run(lambda c: images.push(c.spec, c.ports.runtime, c.report, only=only), file, report, ports, tag=tag)


def proxy_render(file: PathLike = None, *, store: str | None = None, ports: Ports | None = None) -> ProxyOutcome:
    from . import proxyctl

    return _run(proxyctl.render, file, None, ports, store=store)


def proxy_apply(file: PathLike = None, *, force: bool = False, store: str | None = None,
                report: Reporter | None = None, ports: Ports | None = None) -> ProxyOutcome:
    from . import proxyctl

    return _run(lambda c: proxyctl.apply(c, force=force), file, report, ports, store=store)


def proxy_watch(file: PathLike = None, *, debounce: float = 1.0, interval: float = 10.0,
                max_seconds: float | None = None, once: bool = False, store: str | None = None,
                log: Output = print, report: Reporter | None = None, ports: Ports | None = None) -> ProxyOutcome:
    from . import proxyctl

    return _run(lambda c: proxyctl.watch(c, debounce=debounce, interval=interval, max_seconds=max_seconds,
                                         once=once, log=log), file, report, ports, store=store)


def proxy_image(file: PathLike = None, *, kind: str | None = None, docker_host: str | None = None) -> ProxyOutcome:
    """Build the proxy image of ``kind`` (nginx, haproxy) from this machine's Debian binaries on
    the Docker engine, unless it is there already (cdlib.proxy.image). Without ``kind``: the
    descriptor's proxy.kind and target.docker_host. Result data: {"images": [{kind, tag, id, built}]}."""
    from .errors import ConfigError
    from .proxy.container import DockerEngine
    from .proxy.image import KINDS

    service = ""
    if kind is None:
        spec = load_spec(file)
        kind, service = spec.proxy.kind, spec.name
        docker_host = docker_host or spec.target.docker_host
    if kind not in KINDS:
        raise ConfigError(f"--kind: expected {' or '.join(KINDS)}, got {kind!r}", key="--kind")
    engine = DockerEngine(docker_host)
    try:
        built = engine.ensure_image(kind)
    finally:
        engine.close()
    verb = "built" if built["built"] else "already there:"
    return ProxyOutcome("proxy", service, True, 0, f"{verb} {built['tag']} ({built['id'][7:19]})", [],
                        {"images": [built]})


VERBS = ("status", "color", "history", "build", "push", "test", "deploy", "switch", "cleanup", "rollback",
         "release", "heal", "scale")
