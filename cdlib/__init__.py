"""cdlib: continuous-deployment primitives for containerized microservices.

The verbs (``cdlib.deploy``, ``cdlib.switch``, ``cdlib.release``, ...) are the same at the three
doors: this Python API, the CLI (``python -m cdlib VERB``) and the Jenkins steps (``cdlibVerb``).
They are loaded on first use, so ``import cdlib`` stays cheap.
"""

__version__ = "0.1.0"

_API = ("status", "color", "history", "build", "push", "test", "deploy", "switch", "cleanup", "rollback",
        "release", "heal", "scale", "load_spec", "proxy_render", "proxy_apply", "proxy_watch")


def __getattr__(name):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'cdlib' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
