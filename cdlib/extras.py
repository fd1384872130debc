"""Optional client libraries: imported where they are used, checked before anything changes.

An adapter imports its client through :func:`require`, so a missing package is one line with the
pip extra that installs it (:class:`~cdlib.errors.MissingClient`, exit 2) instead of a traceback.
:func:`check` answers the same question without importing the package (``importlib.util.find_spec``),
so the wiring can refuse a verb up front, before the first change, without paying for the import.

    etcd3gw = require("etcd3gw", "etcd")
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

from .errors import MissingClient

#: import name -> (the distribution pip installs, what needs it)
CLIENTS = {
    "etcd3gw": ("etcd3gw", "the etcd store"),
    "consul": ("py-consul", "the Consul store"),
    "jenkins": ("python-jenkins", "cdlib jobs (Jenkins)"),
    "docker": ("docker", "the Docker runtime"),
    "jinja2": ("jinja2", "rendering (proxy and Jenkins job templates)"),
    "yaml": ("pyyaml", "reading the descriptor"),
    "requests": ("requests", "the HTTP clients"),
}


def message(module: str, extra: str | None = None) -> str:
    """One line: what needs the package, which package, and the pip command that installs it."""
    top = module.split(".", 1)[0]
    dist, what = CLIENTS.get(top, (top, "cdlib"))
    install = f"pip install 'cdlib[{extra}]'" if extra else "pip install cdlib (it is a dependency of cdlib)"
    return f"{what} needs the Python package {dist}, which is not installed: {install}"


def missing(module: str, extra: str | None = None) -> MissingClient:
    return MissingClient(message(module, extra), module=module.split(".", 1)[0], extra=extra, key="extras")


def available(module: str) -> bool:
    """True when ``import module`` would find a real package, without importing it. A directory of
    the same name without ``__init__.py`` (e.g. the repository's ``jenkins/`` catalog directory on
    sys.path) is a namespace package, not the client, and counts as missing."""
    top = module.split(".", 1)[0]
    if top in sys.modules:
        mod = sys.modules[top]
        return mod is not None and getattr(mod, "__file__", None) is not None
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin not in (None, "namespace")


def check(module: str, extra: str | None = None) -> None:
    """Raise MissingClient when the package is not installed; import nothing."""
    if not available(module):
        raise missing(module, extra)


def require(module: str, extra: str | None = None):
    """Import module (a dotted name is fine: ``require("etcd3gw.exceptions", "etcd")``) and return
    it; a missing package raises MissingClient naming the pip extra. An ImportError inside an
    installed package (a broken dependency) is reported the same way, with its cause chained."""
    top = module.split(".", 1)[0]
    if not available(top):
        raise missing(module, extra)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing(module, extra) from exc


__all__ = ["CLIENTS", "available", "check", "message", "missing", "require"]
