"""Secret values, and masking them by value in everything cdlib writes.

A secret is masked wherever it appears, whatever the text around it: the console, ``--json`` and
result files, JUnit reports, the journal and history records in the store, the suite output lines
streamed to the console. Masking by value, not by variable name: a suite that prints a token it got
through ``pass_env`` under an innocent name (``DB_PASS``) must not leak it.

What is secret (``values()``):

- every value registered with :func:`register` (the test runners register the values of a suite's
  ``pass_env`` variables before the suite starts; other code registers what it learns, e.g. a
  password taken from a URL);
- the values of the known credential variables (:data:`KNOWN`) and of every environment variable
  whose name says it holds one (:data:`NAME_RE`: ``*TOKEN*``, ``*PASSWORD*``, ``*SECRET*``...).
  A variable named like that and ending in ``_FILE`` names a file holding the secret
  (``CONSUL_HTTP_TOKEN_FILE``): the file's content is secret, its path is not;
- the password of ``ETCDCTL_USER=user:password`` (a user name alone is not a secret: masking
  ``root`` or ``jenkins`` everywhere would garble every message and protect nothing);
- the password part of any URL with credentials in the environment (``CDLIB_STORE``,
  ``DOCKER_HOST``, ``http_proxy``...: ``scheme://user:password@host``);
- the credentials inside ``DOCKER_AUTH_CONFIG`` (the whole value, each ``auth`` and the password
  it encodes).

Each secret is masked in the forms it is likely to be written in: as is, URL-quoted (``%40`` for
``@``, ``+`` for a space), JSON-escaped (a ``"`` or ``\\`` in it), and base64 of the value alone
(an ``Authorization: Basic`` header of a ``user:password`` value). Values shorter than
:data:`MIN_LENGTH` characters are not masked: a two-letter password would turn every occurrence
of those letters into ``***`` and still not be safe; that is a documented limit.

Free text that is cut (the tail of a suite's output, a long line read in pieces) is masked before it
is cut; :func:`mask` with ``edges=True`` also masks a piece of a secret left at either end of a
cut piece.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import cast
from urllib.parse import quote, quote_plus

from .redact import url_passwords

MASK = "***"
MIN_LENGTH = 4  # shorter values are not masked (see the module docstring)
KNOWN = ("CDLIB_REGISTRY_PASSWORD", "CONSUL_HTTP_TOKEN", "JENKINS_API_TOKEN", "ETCDCTL_PASSWORD",
         "DOCKER_AUTH_CONFIG")
NAME_RE = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|API_KEY|PRIVATE_KEY|CREDENTIAL", re.IGNORECASE)
_FILE_LIMIT = 64 * 1024

_lock = threading.Lock()
_registered: set[str] = set()
_version = 0  # bumped whenever _registered changes
# [(environment items, _version), the values they give, paths of files that hold secrets]
_values_cache: list = [None, frozenset(), []]
_file_cache: dict[str, tuple[tuple[int, int], str | None]] = {}
_pattern_cache: dict[frozenset[str], re.Pattern | None] = {}


def register(*values: object) -> None:
    """Add values to mask from now on (None and empty values are ignored)."""
    global _version
    with _lock:
        for value in values:
            if isinstance(value, str) and value and value not in _registered:
                _registered.add(value)
                _registered.update(url_passwords(value))
                _version += 1


def register_env(names: Iterable[str], env: Mapping[str, str] | None = None) -> None:
    """Register the values these environment variables hold (a suite's ``pass_env``): call it when
    a descriptor is loaded, so a process that prints stored data masks them even though it runs
    no suite."""
    env = os.environ if env is None else env
    register(*(env.get(name) for name in names))


def register_url(url: object) -> None:
    """Register the password of a URL with credentials (``etcd://user:password@host``)."""
    if isinstance(url, str):
        register(*url_passwords(url))


def reset() -> None:
    """Forget every registered value (for tests)."""
    global _version
    with _lock:
        _registered.clear()
        _pattern_cache.clear()
        _version += 1


def is_secret_name(name: str) -> bool:
    """Whether an environment variable of this name holds a credential."""
    return name in KNOWN or bool(NAME_RE.search(name))


def values(env: Mapping[str, str] | None = None) -> frozenset[str]:
    """Every value to mask now: the registered ones and those the environment holds."""
    env = os.environ if env is None else env
    # os.environ decodes every item it hands out; its raw bytes are a much cheaper cache key (this
    # runs for every line a suite prints)
    raw = getattr(env, "_data", None) if env is os.environ else None
    fingerprint = tuple(raw.items()) if isinstance(raw, dict) else tuple(env.items())
    found: set[str] | frozenset[str]  # frozen once computed (the cache holds that one)
    files: list[str]
    with _lock:
        key = (fingerprint, _version)
        cached = _values_cache[0] == key
        found, files = (_values_cache[1], _values_cache[2]) if cached else (set(_registered), [])
    if not cached:
        for name, value in list(env.items()):
            if not value:
                continue
            if is_secret_name(name):
                if name.upper().endswith("_FILE"):
                    files.append(value)  # read below, every time: the file may change
                else:
                    found.add(value)
                    if name == "DOCKER_AUTH_CONFIG":
                        found.update(_docker_auth(value))
            elif name == "ETCDCTL_USER":
                user, sep, password = value.partition(":")
                if sep and password:
                    found.add(password)
            found.update(url_passwords(value))
        found = frozenset(v for v in found if len(v) >= MIN_LENGTH)
        with _lock:
            _values_cache[:] = [key, found, files]
    done = cast("frozenset[str]", found)
    if files:
        extra = {c for c in map(_file_content, files) if c and len(c) >= MIN_LENGTH}
        if extra:
            return done | extra
    return done


def forms(value: str) -> set[str]:
    """The ways one secret is likely to be written."""
    out = {value, quote(value, safe=""), quote(value), quote_plus(value), json.dumps(value)[1:-1],
           json.dumps(value, ensure_ascii=False)[1:-1]}
    raw = value.encode("utf-8")
    out.update({base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()})
    return {f for f in out if len(f) >= MIN_LENGTH}


def _pattern(secrets: Iterable[str]) -> re.Pattern | None:
    key = frozenset(secrets)
    with _lock:
        if key in _pattern_cache:
            return _pattern_cache[key]
    all_forms = set()
    for value in key:
        all_forms.update(forms(value))
    # longest first: a secret that contains another one is masked whole
    pattern = (re.compile("|".join(re.escape(f) for f in sorted(all_forms, key=lambda f: (-len(f), f))))
               if all_forms else None)
    with _lock:
        if len(_pattern_cache) > 64:
            _pattern_cache.clear()
        _pattern_cache[key] = pattern
    return pattern


def mask(text: object, *, edges: bool = False, env: Mapping[str, str] | None = None) -> str:
    """``text`` with every secret value replaced by ``***``.

    ``edges``: the text is a piece cut out of a longer one; a beginning of a secret at its end, or an
    end of a secret at its start (at least MIN_LENGTH characters of it), is masked too.
    """
    text = text if isinstance(text, str) else str(text)
    if not text:
        return text
    secrets = values(env)
    if not secrets:
        return text
    pattern = _pattern(secrets)
    if pattern is not None:
        text = pattern.sub(MASK, text)
    if edges:
        text = _mask_edges(text, secrets)
    return text


def _mask_edges(text: str, secrets: AbstractSet[str]) -> str:
    head = tail = 0
    for value in secrets:
        for form in forms(value):
            for n in range(min(len(form), len(text)) - 1, MIN_LENGTH - 1, -1):
                if n > tail and text.endswith(form[:n]):
                    tail = n
                if n > head and text.startswith(form[-n:]):
                    head = n
    if head + tail >= len(text):
        return MASK
    if tail:
        text = text[:-tail] + MASK
    if head:
        text = MASK + text[head:]
    return text


def mask_data(obj: object, *, env: Mapping[str, str] | None = None) -> object:
    """A copy of ``obj`` with every string in it masked, through dicts, lists and tuples (keys are
    left as they are: they are names, not values)."""
    secrets = values(env)
    if not secrets:
        return _copy(obj)
    pattern = _pattern(secrets)

    def walk(value):
        if isinstance(value, str):
            return pattern.sub(MASK, value) if pattern is not None else value
        if isinstance(value, Mapping):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, tuple):
            return tuple(walk(v) for v in value)
        return value

    return walk(obj)


def _copy(value):
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_copy(v) for v in value)
    return value


# -- where secrets hide ---------------------------------------------------------------------------
def _docker_auth(value: str) -> set[str]:
    """The credentials in a DOCKER_AUTH_CONFIG document: each base64 ``auth`` (user:password), the
    password it encodes, and explicit password / token fields."""
    try:
        doc = json.loads(value)
    except ValueError:
        return set()
    out: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for key, item in node.items():
                if isinstance(item, str) and item:
                    if key == "auth":
                        out.add(item)
                        try:
                            decoded = base64.b64decode(item, validate=True).decode("utf-8")
                        except (ValueError, UnicodeDecodeError):
                            continue
                        password = decoded.partition(":")[2]
                        if password:
                            out.add(password)
                    elif key.lower() in ("password", "identitytoken", "registrytoken"):
                        out.add(item)
                else:
                    walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(doc)
    return out


def _file_content(path: str) -> str | None:
    """The stripped content of a file holding a secret (cached by size and modification time)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    stamp = (st.st_mtime_ns, st.st_size)
    with _lock:
        cached = _file_cache.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        with open(path, "rb") as fh:
            content = fh.read(_FILE_LIMIT).decode("utf-8", "replace").strip() or None
    except OSError:
        content = None
    with _lock:
        _file_cache[path] = (stamp, content)
    return content
