"""The whole exception tree of cdlib.

Every error a caller can see derives from :class:`CdlibError`. Messages are one line and say what
to do next; the data sits in attributes; the underlying cause is chained (``raise ... from exc``).
Adapters translate their client library's exceptions where they enter, so nothing from docker,
requests, etcd3gw, consul or jenkins ever crosses a port.

``exit_code`` is what the CLI (and therefore the Groovy steps) returns for the error:
0 done, 1 failed and rolled back, 2 bad usage or input, 3 lock held, 4 undo incomplete, 5 failed
and the state is unknown (an unexpected error, or the result could not be written: run
``cdlib status``, then ``cdlib rollback``). No class here carries exit 5: the CLI gives it to an
exception outside this tree, to an error a release verb raised instead of rolling back, and to a
result file it cannot write.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

EXIT_OK = 0
EXIT_ROLLED_BACK = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_UNDO_INCOMPLETE = 4
EXIT_UNKNOWN = 5

#: what to do after an exit 5, in every message that reports one
UNKNOWN_HINT = "the state is unknown: run 'cdlib status', then 'cdlib rollback'"


class CdlibError(Exception):
    """Root of every cdlib error."""

    exit_code = EXIT_ROLLED_BACK

    def __init__(self, message: str, **data: Any) -> None:
        # one line, always: a newline in a message breaks Jenkins log greps and JSON consumers
        super().__init__(" ".join(str(message).split()))
        self.data = data
        for key, value in data.items():
            setattr(self, key, value)

    @property
    def message(self) -> str:
        return str(self)


# -- input -------------------------------------------------------------------------------------
class ConfigError(CdlibError):
    """Bad descriptor, bad environment or bad command-line input. Nothing was changed."""

    exit_code = EXIT_USAGE


class UsageError(ConfigError):
    """A verb was called in a state where it makes no sense (e.g. switch without a deploy)."""


class MissingClient(ConfigError):
    """An optional client library (etcd3gw, py-consul, python-jenkins, ...) is not installed.
    Raised before anything is changed; the message names the pip extra that installs it."""


# -- concurrency -------------------------------------------------------------------------------
class LockHeld(CdlibError):
    """Another release of the same service holds the lock."""

    exit_code = EXIT_LOCKED


class ConflictError(CdlibError):
    """A compare-and-set lost against a concurrent writer."""


# -- outside systems ---------------------------------------------------------------------------
class StoreError(CdlibError):
    """The store (sqlite, etcd, consul) failed or cannot be reached."""


class RuntimeBackendError(CdlibError):
    """The container runtime (Docker host, Swarm) failed or cannot be reached."""


class ProxyError(CdlibError):
    """The proxy (nginx, HAProxy) refused, failed to reload, or did not route as expected."""


class TestRunnerError(CdlibError):
    """A test suite could not be run at all (as opposed to: it ran and failed)."""

    __test__ = False  # not a pytest class


class JenkinsError(CdlibError):
    """Jenkins refused or failed a request."""


# -- release outcomes --------------------------------------------------------------------------
class ReleaseFailed(CdlibError):
    """A release step failed; what was done has been undone."""


class Unhealthy(ReleaseFailed):
    """The new color did not become healthy in time."""


class TestsFailed(ReleaseFailed):
    """A test suite ran and failed."""

    __test__ = False


class NothingToRollBack(CdlibError):
    """``rollback`` found no open release and no earlier release to return to."""

    exit_code = EXIT_USAGE


class UndoIncomplete(CdlibError):
    """A release failed and at least one undo failed too: a person is needed."""

    exit_code = EXIT_UNDO_INCOMPLETE


# -- reading wrapped exceptions ------------------------------------------------------------------
def causes(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps, each once: ``__cause__``, ``__context__``, a ``reason``
    attribute (urllib3's MaxRetryError) and exceptions passed as arguments (requests wraps
    urllib3's errors that way). Depth first, the arguments before the chained exceptions; a cycle
    ends the walk. For adapters that look for the underlying transport or TLS failure."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        cur = todo.pop()
        if not isinstance(cur, BaseException) or id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        todo.extend([cur.__cause__, cur.__context__, getattr(cur, "reason", None),
                     *[a for a in getattr(cur, "args", ()) if isinstance(a, BaseException)]])
