"""The Python API: the same verbs as the CLI and the Groovy steps, as functions.

    import cdlib
    outcome = cdlib.release("examples/demo/cdlib.yml", tag="v2")
    if not outcome.ok: ...

Each function loads the descriptor, opens the ports, runs the verb and closes the ports. Failures
that were rolled back come back as an Outcome with ok False (exit_code 1); bad input, a held lock
and an incomplete undo raise CdlibError subclasses (ConfigError, LockHeld, UndoIncomplete).
Pass ``ports=`` (from ``cdlib.wiring.ports_for``) to use other adapters, e.g. memory ones in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import config, images
from . import verbs as rel
from .context import Ctx
from .model import Outcome, StepReport
from .wiring import Ports, ports_for

Reporter = Callable[[StepReport], None]


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


def _run(verb: Callable[[Ctx], Outcome], file, report: Reporter | None, ports: Ports | None,
         junit_dir=None, output=None, **spec_args) -> Outcome:
    own = ports is None
    if own:
        spec = load_spec(file, **spec_args)
        ports = ports_for(spec, junit_dir=Path(junit_dir) if junit_dir else None, on_output=output)
    try:
        return verb(Ctx(ports.spec, ports, report or (lambda s: None)))
    finally:
        if own:
            ports.close()


def status(file=None, *, store=None, report=None, ports=None, check_health=True) -> Outcome:
    return _run(lambda c: rel.status(c, check_health=check_health), file, report, ports, store=store)


def color(file=None, *, next=False, store=None, ports=None) -> Outcome:  # noqa: A002 (the CLI flag)
    return _run(lambda c: rel.color(c, next_color=next), file, None, ports, store=store)


def history(file=None, *, limit=20, store=None, ports=None) -> Outcome:
    """Closed releases, newest first; ``limit`` of them (0 or None: all)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        from .errors import ConfigError

        raise ConfigError(f"--limit: expected a number of releases, 0 or more (0: all), got {config.shown(limit)}",
                          key="--limit")
    return _run(lambda c: rel.history(c, limit=limit), file, None, ports, store=store)


def deploy(file=None, *, tag=None, image=None, store=None, lock_wait=0.0, lock_ttl=rel.DEFAULT_LOCK_TTL,
           report=None, ports=None) -> Outcome:
    return _run(lambda c: rel.deploy(c, lock_wait=lock_wait, lock_ttl=lock_ttl), file, report, ports,
                tag=tag, image=image, store=store)


def test(test_type: str, file=None, *, tag=None, store=None, target_url=None, junit=None, junit_dir=None,
         rollback_on_failure=True, report=None, output=None, ports=None) -> Outcome:
    return _run(lambda c: rel.run_tests(c, test_type, target_url=target_url, junit=Path(junit) if junit else None,
                                        rollback_on_failure=rollback_on_failure),
                file, report, ports, junit_dir=junit_dir, output=output, tag=tag, store=store)


test.__test__ = False  # not a pytest test function


def switch(file=None, *, store=None, report=None, ports=None) -> Outcome:
    return _run(rel.switch, file, report, ports, store=store)


def cleanup(file=None, *, store=None, report=None, ports=None) -> Outcome:
    return _run(rel.cleanup, file, report, ports, store=store)


def rollback(file=None, *, to=None, previous=False, store=None, lock_wait=0.0, lock_ttl=rel.DEFAULT_LOCK_TTL,
             report=None, ports=None) -> Outcome:
    """Undo the open release; without one, change nothing (exit 0). ``previous=True`` returns to the
    release before the live one, ``to=RELEASE_ID`` to that release from history."""
    return _run(lambda c: rel.rollback(c, to=to, previous=previous, lock_wait=lock_wait, lock_ttl=lock_ttl),
                file, report, ports, store=store)


def release(file=None, *, tag=None, image=None, store=None, lock_wait=0.0, lock_ttl=rel.DEFAULT_LOCK_TTL,
            junit_dir=None, report=None, output=None, ports=None) -> Outcome:
    return _run(lambda c: rel.release(c, lock_wait=lock_wait, lock_ttl=lock_ttl), file, report, ports,
                junit_dir=junit_dir, output=output, tag=tag, image=image, store=store)


def build(file=None, *, tag=None, only=None, report=None, ports=None) -> Outcome:
    return _run(lambda c: images.build(c.spec, c.ports.runtime, c.report, only=only), file, report, ports, tag=tag)


def push(file=None, *, tag=None, only=None, report=None, ports=None) -> Outcome:
    return _run(lambda c: images.push(c.spec, c.ports.runtime, c.report, only=only), file, report, ports, tag=tag)


def proxy_render(file=None, *, store=None, ports=None) -> Outcome:
    from . import proxyctl

    return _run(proxyctl.render, file, None, ports, store=store)


def proxy_apply(file=None, *, force=False, store=None, report=None, ports=None) -> Outcome:
    from . import proxyctl

    return _run(lambda c: proxyctl.apply(c, force=force), file, report, ports, store=store)


def proxy_watch(file=None, *, debounce=1.0, interval=10.0, max_seconds=None, once=False, store=None, log=print,
                report=None, ports=None) -> Outcome:
    from . import proxyctl

    return _run(lambda c: proxyctl.watch(c, debounce=debounce, interval=interval, max_seconds=max_seconds,
                                         once=once, log=log), file, report, ports, store=store)


VERBS = ("status", "color", "history", "build", "push", "test", "deploy", "switch", "cleanup", "rollback",
         "release")
