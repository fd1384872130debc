"""Reading the registry: the live color, what the proxy serves, stored values, routes in use."""

from __future__ import annotations

from typing import Any

from . import journal as jr
from . import keys
from .context import Ctx
from .errors import ConfigError, NothingToRollBack
from .model import Backend, Instance, Routes
from .store.base import Store


def live_record(store: Store, service: str) -> dict[str, Any] | None:
    live: dict[str, Any] | None = store.get_json(keys.live(service))
    return live


def backends(store: Store, override: Backend | None = None) -> list[Backend]:
    """What the proxy serves: every service's live color and its registered instances, with one
    service replaced by override (the color being switched to)."""
    out: dict[str, Backend] = {}
    for entry in store.list(keys.ROOT):
        if not entry.key.endswith("/live"):
            continue
        name = keys.service_of(entry.key)
        if name is None:  # 'cdlib/services//live' names no service
            continue
        live = entry.json()
        found = registered_backend(store, name, live["color"], live.get("release", ""))
        if found is not None:
            out[name] = found
    if override is not None:
        out[override.service] = override
    return [out[k] for k in sorted(out)]


def registered_backend(store: Store, service: str, color: str, release: str) -> Backend | None:
    """The service's color as the registry has it: its registered servers, with the routes and health
    path of the service's spec key. None when no instance of the color is registered."""
    servers = tuple(sorted((i["address"], int(i["port"])) for i in store.registrations(service, color)))
    if not servers:
        return None
    spec = store.get_json(keys.spec(service)) or {}
    return Backend(service, color, release, Routes.from_dict(spec.get("routes", {})), servers,
                   spec.get("health_path", "/"))


def backend_for(ctx: Ctx, instances: list[Instance]) -> Backend:
    return Backend(ctx.service, ctx.rec.color, ctx.rec.id, ctx.spec.routes,
                   tuple(sorted((i.address, i.port) for i in instances)), ctx.spec.health.path)


def instances_from(data: list[dict[str, Any]]) -> list[Instance]:
    return [Instance.from_dict(d) for d in data]


def raw_value(store: Store, key: str) -> str | None:
    entry = store.get(key)
    return None if entry is None else entry.value


def route_keys(routes: Routes) -> dict[str, str]:
    """Normalized route -> as written: '/shop' and '/shop/' are one prefix to the proxy."""
    out = {f"path {p.rstrip('/') + '/'}": p for p in routes.paths}
    out.update({f"host {h}": h for h in routes.hosts})
    return out


def check_routes(ctx: Ctx) -> None:
    """A path or host that another service already routes would only fail at the switch, after the
    new color was started and tested (the proxy refuses to render it): refuse it before anything
    changes. Other services' routes are their spec keys, written when they registered."""
    own = route_keys(ctx.spec.routes)
    for entry in ctx.ports.store.list(keys.ROOT):
        other = keys.service_of(entry.key)
        if other == ctx.service or entry.key != keys.spec(other or ""):
            continue
        routes = Routes.from_dict(entry.json().get("routes", {}))
        taken = sorted(own[k] for k in own.keys() & route_keys(routes))
        if taken:
            raise ConfigError(f"{ctx.spec.source or 'cdlib.yml'}: routes: {', '.join(taken)} is already routed to "
                              f"service {other}; give {ctx.service} a path or host of its own", key="routes")
        if routes.tls_cert and ctx.spec.proxy.tls_listen is None:
            # the shared proxy renders every service: without an HTTPS address it could not keep the
            # other service's HTTPS, and would only refuse at the switch
            raise ConfigError(f"{ctx.spec.source or 'cdlib.yml'}: proxy.tls_listen: service {other} on this proxy "
                              f"serves HTTPS; set the proxy's HTTPS listen address here too", key="proxy.tls_listen")


def revert_target(store: Store, service: str, to: str | None) -> dict[str, Any]:
    """The history entry a rollback returns to: release ``to``, or (None) the release before the
    live one (the newest released one with another image). NothingToRollBack when there is none."""
    live = live_record(store, service)
    past = [h for h in jr.history(store, service) if h.get("outcome") == "released"]
    if to is not None:
        target = next((h for h in past if h["id"] == to), None)
        if target is None:
            raise NothingToRollBack(f"rollback --to: no successful release {to!r} of {service} in history; "
                                    "see 'cdlib history'")
        return target
    current = live.get("via") if live else None
    older = [h for h in past if h["id"] != current and h.get("image") != (live or {}).get("image")]
    if not live or not older:
        raise NothingToRollBack(f"{service} has no open release and no earlier release to return to")
    return older[0]
