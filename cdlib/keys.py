"""The key layout in the store: one prefix per service, readable with etcdctl or consul kv.

    cdlib/services/<service>/live                    {"color", "release", "image", "since"}
    cdlib/services/<service>/spec                    routes, port, health path: what the proxy renders
    cdlib/services/<service>/replicas                {"replicas", "color", "since", "via"}: how many run live
        cdlib/services/<service>/lock                    the release lock and its holder record
    cdlib/services/<service>/release                 the open release journal
    cdlib/services/<service>/history/<release-id>    closed releases, oldest first by id
    cdlib/services/<service>/instances/<color>/<name>  registered, healthy instances
    cdlib/proxy/lock                                 held while a proxy configuration changes
"""

from __future__ import annotations

ROOT = "cdlib/services/"
# one change of the proxies at a time (render from the registry, apply, write the live color):
# services released at the same time must not render over each other's switch
PROXY_LOCK = "cdlib/proxy/lock"


def service(name: str) -> str:
    return f"{ROOT}{name}/"


def live(name: str) -> str:
    return f"{ROOT}{name}/live"


def spec(name: str) -> str:
    return f"{ROOT}{name}/spec"


def replicas(name: str) -> str:
    """How many instances of the live color should run (set by the release that made it live and by
    'scale'; read by 'heal' and inherited by a release whose descriptor sets no replicas)."""
    return f"{ROOT}{name}/replicas"


def lock(name: str) -> str:
    return f"{ROOT}{name}/lock"


def release(name: str) -> str:
    return f"{ROOT}{name}/release"


def history(name: str, release_id: str = "") -> str:
    return f"{ROOT}{name}/history/{release_id}"


def instances(name: str, color: str | None = None) -> str:
    return f"{ROOT}{name}/instances/" + (f"{color}/" if color else "")


def instance(name: str, color: str, instance_name: str) -> str:
    return f"{ROOT}{name}/instances/{color}/{instance_name}"


def service_of(key: str) -> str | None:
    """cdlib/services/<name>/... -> <name>"""
    if not key.startswith(ROOT):
        return None
    return key[len(ROOT):].split("/", 1)[0] or None
