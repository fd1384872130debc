"""Reading the registry: the live color, what the proxy serves, stored values, routes in use."""

from __future__ import annotations

from . import keys
from .context import Ctx
from .errors import ConfigError
from .model import Backend, Instance, Routes


def live_record(store, service: str) -> dict | None:
    return store.get_json(keys.live(service))


def backends(store, override: Backend | None = None) -> list[Backend]:
    """What the proxy serves: every service's live color and its registered instances, with one
    service replaced by override (the color being switched to)."""
    out = {}
    for entry in store.list(keys.ROOT):
        if not entry.key.endswith("/live"):
            continue
        name = keys.service_of(entry.key)
        live = entry.json()
        spec = store.get_json(keys.spec(name)) or {}
        servers = tuple(sorted((i["address"], int(i["port"])) for i in store.registrations(name, live["color"])))
        if not servers:
            continue
        out[name] = Backend(name, live["color"], live.get("release", ""), Routes.from_dict(spec.get("routes", {})),
                            servers, spec.get("health_path", "/"))
    if override is not None:
        out[override.service] = override
    return [out[k] for k in sorted(out)]


def backend_for(ctx: Ctx, instances: list[Instance]) -> Backend:
    return Backend(ctx.service, ctx.rec["color"], ctx.rec["id"], ctx.spec.routes,
                   tuple(sorted((i.address, i.port) for i in instances)), ctx.spec.health.path)


def instances_from(data: list[dict]) -> list[Instance]:
    return [Instance.from_dict(d) for d in data]


def raw_value(store, key: str) -> str | None:
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
        taken = sorted(own[k] for k in own.keys() & route_keys(Routes.from_dict(entry.json().get("routes", {}))))
        if taken:
            raise ConfigError(f"{ctx.spec.source or 'cdlib.yml'}: routes: {', '.join(taken)} is already routed to "
                              f"service {other}; give {ctx.service} a path or host of its own", key="routes")
