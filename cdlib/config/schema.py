"""Reading YAML input files safely and walking them with errors that name the file and the key.

:func:`read_yaml` parses a descriptor or a job catalog within fixed limits (size, nesting, aliases,
no duplicate keys); :class:`Reader` walks the parsed data, one call per field, and turns a bad value
into a one-line :class:`~cdlib.errors.ConfigError` naming the file and the dotted key. Shared by the
service descriptor (:mod:`cdlib.config`) and the job catalog (:mod:`cdlib.jobs.catalog`).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from ..errors import ConfigError
from ..model import ENV_NAME_RE

if TYPE_CHECKING:
    from yaml import SafeLoader

MAX_FILE_BYTES = 1 << 20  # a descriptor, a catalog or a proxy template
MAX_DEPTH = 50  # nesting of mappings and lists in a YAML file
MAX_ALIASES = 100  # alias uses (*name) in a YAML file
MAX_NODES = 100_000  # values in a YAML file once every alias is expanded
MAX_NUMBER_TEXT = 100  # characters of one integer as written
MAX_ENV_VALUE = 65536
MAX_COMMAND = 65536
SHOWN = 60  # at most this many characters of a value are echoed in a message


def shown(value: object, limit: int = SHOWN) -> str:
    """A value as a message may echo it: a bounded repr (a huge string, a deep or aliased structure
    or a giant integer costs no more than ``limit`` characters to show)."""
    import reprlib

    class _Repr(reprlib.Repr):
        def repr_int(self, x: int, level: int) -> str:
            if x.bit_length() > 200:
                return f"<an integer of about {int(x.bit_length() * 0.30103)} digits>"
            return int.__repr__(x)

        def repr_instance(self, x: object, level: int) -> str:
            if isinstance(x, int) and not isinstance(x, bool):
                return self.repr_int(int(x), level)
            if isinstance(x, float):
                return float.__repr__(x)
            try:
                return reprlib.Repr.repr_instance(self, x, level)
            except Exception:  # noqa: BLE001 - a value that cannot even be shown
                return f"<{type(x).__name__}>"

    r = _Repr()
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxset = 2, 3, 3, 3, 3
    r.maxstring = r.maxother = r.maxlong = limit
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,40}\Z", re.ASCII)


def key_text(name: object) -> str:
    """A mapping key as it appears in a dotted key: itself when short and printable, else shown()."""
    if isinstance(name, str) and 0 < len(name) <= SHOWN and name.isprintable() and " " not in name:
        return name
    return shown(name, 40)


def as_text(value: object) -> object:
    """A number where text is expected, as it was written in the file (``tag: 1.10`` stays "1.10",
    ``0123`` stays "0123"); a number from Python code as str() writes it."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return getattr(value, "text", None) or str(value)
    return value


YamlMap = dict[Any, Any]
"""A mapping as read from a YAML file: its keys and values are whatever the file holds."""


class Reader:
    """Walks parsed YAML, producing errors that name the file and the dotted key.

    ``source`` is the file name every message starts with. Each method reads one field ``name`` of
    the mapping ``data`` found at the dotted ``key`` ("" at the top level) and returns its checked
    value or the default; a bad value raises a ConfigError like
    ``cdlib.yml: health.timeout: expected a number from 1 to 3600, got 'soon'``.
    """

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, expected: str, got: object = ...) -> ConfigError:
        tail = "" if got is ... else f", got {shown(got)}"
        return ConfigError(f"{self.source}: {key}: expected {expected}{tail}", file=self.source, key=key)

    def section(self, data: YamlMap, key: str, name: str, allowed: set[str]) -> YamlMap:
        value = data.get(name)
        full = f"{key}.{name}" if key else name
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(full, "a mapping", value)
        self.only(value, full, allowed)
        return value

    def only(self, data: YamlMap, key: str, allowed: set[str]) -> None:
        for name in data:
            if name not in allowed:
                keys = ", ".join(sorted(allowed))
                if isinstance(name, str) and _PLAIN_KEY_RE.fullmatch(name):
                    raise self.fail(f"{key}.{name}" if key else name, f"no such key (allowed: {keys})")
                # not shown: a file that is no descriptor at all (-f /etc/shadow) would have a line echoed
                raise self.fail(key or "(top level)", f"only the keys {keys}; found another key (not shown: it "
                                                      "does not look like a key name)")

    @overload
    def string(self, data: YamlMap, key: str, name: str, pattern: re.Pattern[str] | None = None, *,
               default: str, required: bool = False, what: str = "a string") -> str: ...

    @overload
    def string(self, data: YamlMap, key: str, name: str, pattern: re.Pattern[str] | None = None,
               default: None = None, *, required: Literal[True], what: str = "a string") -> str: ...

    @overload
    def string(self, data: YamlMap, key: str, name: str, pattern: re.Pattern[str] | None = None,
               default: str | None = None, required: bool = False, what: str = "a string") -> str | None: ...

    def string(self, data: YamlMap, key: str, name: str, pattern: re.Pattern[str] | None = None,
               default: str | None = None, required: bool = False, what: str = "a string") -> str | None:
        """The string at ``name``: ``default`` when it is absent or null (a ConfigError instead when
        ``required``); never None when ``required`` or when the default is a string."""
        full = f"{key}.{name}" if key else name
        if name not in data or data[name] is None:
            if required:
                raise self.fail(full, what + " (required)")
            return default
        value = as_text(data[name])
        if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
            raise self.fail(full, what, value)
        return value

    def number(self, data: YamlMap, key: str, name: str, default: float, low: float, high: float,
               integer: bool = False) -> float:
        full = f"{key}.{name}" if key else name
        value = data.get(name, default)
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
            what = "an integer" if integer else "a number"
            raise self.fail(full, f"{what} from {low:g} to {high:g}", value)
        return value

    def boolean(self, data: YamlMap, key: str, name: str, default: bool) -> bool:
        value = data.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(f"{key}.{name}" if key else name, "true or false", value)
        return value

    def str_list(self, data: YamlMap, key: str, name: str, pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
        full = f"{key}.{name}" if key else name
        value = data.get(name) or []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(full, f"a list of {what}", value)
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not pattern.fullmatch(item):
                raise self.fail(f"{full}[{i}]", what, item)
            out.append(item)
        dup = next((x for i, x in enumerate(out) if x in out[:i]), None)
        if dup is not None:
            raise self.fail(full, f"a list of distinct {what}", dup)
        return tuple(out)

    def env(self, data: YamlMap, key: str, name: str) -> tuple[tuple[str, str], ...]:
        full = f"{key}.{name}" if key else name
        value = data.get(name) or {}
        if not isinstance(value, dict):
            raise self.fail(full, "a mapping of NAME: value", value)
        out: list[tuple[str, str]] = []
        for k, v in value.items():
            if not isinstance(k, str) or not ENV_NAME_RE.fullmatch(k):
                raise self.fail(f"{full}.{key_text(k)}", "an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
            v = as_text(v)
            if not isinstance(v, str):
                raise self.fail(f"{full}.{k}", "a string or a number", v)
            if "\x00" in v or re.search("[\ud800-\udfff]", v) or len(v) > MAX_ENV_VALUE:
                # a NUL cannot be passed to a process at all; a lone surrogate cannot be encoded
                raise self.fail(f"{full}.{k}", f"a value without NUL characters, at most {MAX_ENV_VALUE} "
                                               "characters", v)
            out.append((k, v))
        return tuple(sorted(out))

    @overload
    def path(self, data: YamlMap, key: str, name: str, base: Path, default: Path) -> Path: ...

    @overload
    def path(self, data: YamlMap, key: str, name: str, base: Path, default: None = None) -> Path | None: ...

    def path(self, data: YamlMap, key: str, name: str, base: Path, default: Path | None = None) -> Path | None:
        value = self.string(data, key, name)
        if value is None:
            return default
        if not value or len(value) > 4096 or re.search("[\x00-\x1f\x7f\ud800-\udfff]", value):
            raise self.fail(f"{key}.{name}", "a file path (no control characters, at most 4096)", value)
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (base / p)


class FileProblem(Exception):
    """Why a file cannot be read; its text completes "<path> ...", e.g. "is a directory"."""


def size_text(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n >> 10} KiB"


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; FileProblem otherwise (a device such
    as /dev/zero, a FIFO or a directory is refused without reading: it could block or never end)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileProblem("does not exist") from None
    except OSError as exc:
        raise FileProblem(f"cannot be read ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise FileProblem("is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise FileProblem("is not a regular file")
        if info.st_size > limit:
            raise FileProblem(f"is larger than {size_text(limit)}")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            try:
                chunk = os.read(fd, min(65536, limit + 1 - size))
            except OSError as exc:
                raise FileProblem(f"cannot be read ({exc.strerror})") from None
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileProblem(f"is larger than {size_text(limit)}")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _dotted(segments: list[str]) -> str:
    out = ""
    for seg in segments:
        out += seg if seg.startswith("[") or not out else "." + seg
    return out


class _LoaderLimits:
    """Counts kept while one YAML document is composed."""

    def __init__(self) -> None:
        self.path: list[str] = []  # the dotted key being composed
        self.depth = 0
        self.aliases = 0
        self.weights: dict[int, int] = {}  # id(node) -> values below it once aliases are expanded


_LOADER: type[SafeLoader] | None = None


def _loader() -> type[SafeLoader]:
    """A SafeLoader that refuses what safe_load lets through: duplicate keys, alias bombs, deep
    nesting, giant integers, lone surrogates. Built on first use (yaml is imported lazily)."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml
    from yaml.constructor import ConstructorError
    from yaml.error import Mark, MarkedYAMLError
    from yaml.nodes import Node, ScalarNode, SequenceNode

    class Refused(MarkedYAMLError):
        key = ""  # a duplicate key: its dotted key and the line of its first occurrence
        first_line = 0

    def start(event: object) -> Mark | None:
        """Where a parser event starts (SafeLoader's pure-Python parser makes yaml.error.Mark ones)."""
        mark = getattr(event, "start_mark", None)
        return mark if isinstance(mark, Mark) else None

    class Int(int):
        text = ""

    class Float(float):
        text = ""

    class Loader(yaml.SafeLoader):
        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self.limits = _LoaderLimits()

        # index: a position in a sequence or the key node of a mapping value (types-PyYAML says int, so
        # the two super() calls below ignore arg-type)
        def compose_node(self, parent: Node | None, index: int | Node) -> Node | None:
            lim = self.limits
            event = self.peek_event()  # type: ignore[no-untyped-call]  # unannotated in types-PyYAML
            if isinstance(event, yaml.AliasEvent):
                lim.aliases += 1
                if lim.aliases > MAX_ALIASES:
                    raise Refused(None, None, f"more than {MAX_ALIASES} aliases (*name)", start(event))
                node = super().compose_node(parent, index)  # type: ignore[arg-type]
                if id(node) not in lim.weights:
                    raise Refused(None, None, "an alias inside the value it names (a recursive structure)",
                                  start(event))
                return node
            lim.depth += 1
            if lim.depth > MAX_DEPTH:
                raise Refused(None, None, f"nesting deeper than {MAX_DEPTH} levels", start(event))
            # the dotted key of this value (routes.paths, services[0].name), for messages
            segment = (f"[{index}]" if isinstance(index, int) else
                       key_text(index.value) if isinstance(index, ScalarNode) else None)
            if segment is not None:
                lim.path.append(segment)
            here = list(lim.path)
            try:
                node = super().compose_node(parent, index)  # type: ignore[arg-type]
            finally:
                lim.depth -= 1
                if segment is not None:
                    lim.path.pop()
            assert node is not None  # the composer always returns a node (types-PyYAML: Node | None)
            if isinstance(node, ScalarNode):
                if re.search("[\ud800-\udfff]", node.value):
                    raise Refused(None, None, "an unpaired surrogate escape (\\uD800-\\uDFFF) in a string",
                                  node.start_mark)
                weight = 1
            elif isinstance(node, SequenceNode):
                weight = 1 + sum(lim.weights[id(n)] for n in node.value)
            else:
                weight = 1
                seen: dict[tuple[str, Any], Node] = {}
                for k, v in node.value:
                    weight += lim.weights[id(k)] + lim.weights[id(v)]
                    if isinstance(k, ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                        first = seen.setdefault((k.tag, k.value), k)
                        if first is not k:
                            err = Refused(None, None, f"duplicate key {shown(k.value)} (first at line "
                                                      f"{first.start_mark.line + 1})", k.start_mark)
                            err.key = _dotted([*here, key_text(k.value)])
                            err.first_line = first.start_mark.line + 1
                            raise err
            if weight > MAX_NODES:
                raise Refused(None, None, f"more than {MAX_NODES} values once aliases are expanded",
                              node.start_mark)
            lim.weights[id(node)] = weight
            return node

        def construct_yaml_int(self, node: ScalarNode) -> Int:
            text = self.construct_scalar(node)
            if len(text) > MAX_NUMBER_TEXT:
                raise Refused(None, None, f"an integer of more than {MAX_NUMBER_TEXT} characters", node.start_mark)
            value = Int(super().construct_yaml_int(node))
            value.text = text
            return value

        def construct_yaml_timestamp(self, node: ScalarNode, *args: Any) -> Any:
            try:
                return super().construct_yaml_timestamp(node, *args)
            except (ValueError, OverflowError) as exc:  # 2024-13-45 looks like a date but is none
                raise ConstructorError(None, None, f"not a valid date ({exc})", node.start_mark) from None

        def construct_yaml_float(self, node: ScalarNode) -> Float:
            value = Float(super().construct_yaml_float(node))
            value.text = self.construct_scalar(node)
            return value

    Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)
    Loader.add_constructor("tag:yaml.org,2002:float", Loader.construct_yaml_float)
    Loader.add_constructor("tag:yaml.org,2002:timestamp", Loader.construct_yaml_timestamp)
    _LOADER = Loader
    return Loader


def read_yaml(path: Path, what: str, hint: str) -> object:
    """Parse a YAML file; a missing, unreadable, oversized, invalid or hostile file is a one-line
    ConfigError (at most MAX_FILE_BYTES, MAX_DEPTH levels, MAX_ALIASES aliases, no duplicate keys)."""
    path = Path(path)
    try:
        raw = read_bounded(path, MAX_FILE_BYTES)
    except FileProblem as exc:
        if str(exc) == "does not exist":
            raise ConfigError(f"{path}: no such {what} file ({hint})", file=str(path), key="") from None
        raise ConfigError(f"{path}: the {what} must be a regular file of at most {size_text(MAX_FILE_BYTES)}; "
                          f"it {exc}", file=str(path), key="") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: not UTF-8 text (byte {exc.start})",
                          file=str(path), key="") from None
    import yaml  # lazy: the CLI's --help must not pay for it

    loader = None
    try:
        loader = _loader()(text)  # the reader refuses NUL and other non-printable characters here
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        key = getattr(exc, "key", None)
        if isinstance(key, str) and key:
            line = mark.line + 1 if mark else "?"
            first_line = getattr(exc, "first_line", None)
            raise ConfigError(f"{path}: {key}: expected each key once (YAML forbids duplicates; the last one "
                              f"would silently win), got it again at line {line} (first at line {first_line})",
                              file=str(path), key=key) from None
        problem = getattr(exc, "problem", None) or str(exc)
        problem = " ".join(str(problem).split())
        if len(problem) > 160:
            problem = problem[:157] + "..."
        kind = "refused" if type(exc).__name__ == "Refused" else "not valid YAML"
        raise ConfigError(f"{path}: {kind}{where}: {problem}", file=str(path), key="") from None
    except (ValueError, OverflowError, RecursionError, MemoryError) as exc:
        # e.g. a date like 2024-13-45, which the YAML timestamp constructor cannot build
        raise ConfigError(f"{path}: not valid YAML: {shown(str(exc), 120)}", file=str(path), key="") from None
    finally:
        if loader is not None:
            loader.dispose()
