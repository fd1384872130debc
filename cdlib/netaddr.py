"""Host names, addresses and ports: the one place where ``host:port`` text is checked, split and written.

Used by the store URLs (``etcd://h1:2379,[::1]:2379``), the registry address variables, the etcd
endpoints and the proxy's ``listen`` address. Pure: no I/O, no client library.
"""

from __future__ import annotations

import re

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
HOST_NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?", re.ASCII)
IPV4_RE = re.compile(r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|"
                     r"[1-9]?[0-9])){3}", re.ASCII)
PORT_RE = re.compile(r"[0-9]{1,5}", re.ASCII)
# proxy.listen: PORT, or ADDRESS:PORT where ADDRESS is IPv4, [IPv6] or localhost (checked further in listen_problem)
LISTEN_RE = re.compile(r"(?:(?P<host>[0-9.]+|\[[0-9a-fA-F:]+\]|localhost):)?(?P<port>[0-9]{1,5})\Z", re.ASCII)
LISTEN_EXPECTED = "PORT or ADDRESS:PORT (an IP address, [IPv6] or localhost)"
# a wildcard address a server listens on -> the address a client on the same machine connects to
_CLIENT_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def is_ipv6(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def check_host(host: str) -> bool:
    """A DNS name, an IPv4 address or an IPv6 address (without brackets), ASCII only."""
    if not host or len(host) > 253:
        return False
    if ":" in host:
        return is_ipv6(host)
    if re.fullmatch(r"[0-9.]+", host, re.ASCII):
        return bool(IPV4_RE.fullmatch(host))
    return bool(HOST_NAME_RE.fullmatch(host))


def is_ip(value: str) -> bool:
    """An IPv4 address or an IPv6 address without brackets."""
    return is_ipv6(value) if ":" in value else bool(IPV4_RE.fullmatch(value))


def port_number(text: str) -> int | None:
    """'1'..'65535' -> the port; None for anything else."""
    if PORT_RE.fullmatch(text) and 1 <= int(text) <= 65535:
        return int(text)
    return None


def parse_hostport(item: str, default_port: int) -> tuple[str, int] | None:
    """'host', 'host:port', '[v6]' or '[v6]:port' -> (host, port), the host without brackets; None
    when it is not one (a bad host name, a port outside 1-65535, an IPv6 address without brackets)."""
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        if not sep or ":" not in host:
            return None
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text = item.partition(":")
        if not sep:
            port_text = None
        if ":" in (port_text or ""):
            return None
    if port_text is None:
        port = default_port
    else:
        found = port_number(port_text)
        if found is None:
            return None
        port = found
    return (host, port) if check_host(host) else None


def format_hostport(host: str, port: int) -> str:
    """(host, port) as a URL or a configuration file writes it: IPv6 addresses in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_problem(value: object) -> str | None:
    """Why ``value`` is not PORT or ADDRESS:PORT (an IPv4 address, [IPv6] or localhost), or None."""
    m = LISTEN_RE.match(value) if isinstance(value, str) else None
    if not m:
        return LISTEN_EXPECTED
    host = m.group("host")
    if host and host != "localhost":
        ok = is_ipv6(host[1:-1]) if host.startswith("[") else bool(IPV4_RE.fullmatch(host))
        if not ok:
            return "PORT or ADDRESS:PORT with a valid IP address"
    if not 1 <= int(m.group("port")) <= 65535:
        return "a port from 1 to 65535"
    return None


def parse_listen(value: str) -> tuple[str, int]:
    """A listen address -> (the host a client on this machine connects to, the port).

    ``8880`` and ``0.0.0.0:8880`` -> ("127.0.0.1", 8880); ``[::]:8880`` -> ("::1", 8880) (an IPv6
    wildcard socket may refuse IPv4: nginx listens with ipv6only=on); ``[::1]:8880`` -> ("::1", 8880),
    the host without brackets; any other address as written. ValueError naming what is expected when
    :func:`listen_problem` refuses the value.
    """
    problem = listen_problem(value)
    if problem:
        raise ValueError(problem)
    m = LISTEN_RE.match(value)
    assert m is not None
    host = (m.group("host") or "0.0.0.0").strip("[]")
    return _CLIENT_ADDRESS.get(host, host), int(m.group("port"))
