"""The one Jinja2 environment every renderer uses (proxy configurations, Jenkins job XML).

Why one place: every template gets the same strictness (an undefined variable is an error, not an
empty string that silently drops a directive), the same whitespace rules (so golden files stay
stable), and the same error translation (a template error names the template and its line).

Configuration files (nginx.conf, haproxy.cfg) are rendered without autoescaping: HTML escaping
means nothing to them. Their values are already checked by the patterns in :mod:`cdlib.model`; the
``cfg_token`` filter checks them again where they are written, so a value that slipped past the
model (a Backend built by hand, a registration edited in the store) can never add a directive.
Templates whose name ends in ``.xml.j2`` or ``.html.j2`` are autoescaped.

jinja2 is imported inside the functions: the CLI must not pay its import cost at start-up.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CdlibError, ProxyError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import jinja2

PROXY_TEMPLATES = Path(__file__).parent / "proxy" / "templates"

# characters that end a token or start a comment, a string, a block or a variable in nginx and HAProxy
_UNSAFE = frozenset(";{}'\"`#$\\")


def cfg_token(value: object) -> str:
    """A value written into a configuration file as one bare token, or ProxyError.

    Rejects whitespace, ``; { } ' " ` # $ \\`` and control characters: any of them could end the
    directive and start another one (or a comment, or a variable expansion).
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ProxyError(f"unsafe configuration value {value!r}: expected a string or an integer")
    text = str(value)
    if not text:
        raise ProxyError("unsafe configuration value '': an empty value would change the directive")
    for ch in text:
        if ch.isspace() or ch in _UNSAFE or ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0:
            raise ProxyError(f"unsafe configuration value {text!r}: it contains {ch!r}; names, paths and "
                             "hosts must match the patterns of cdlib.yml")
    return text


def environment(search_paths: Iterable[str | os.PathLike], extra_loader=None) -> jinja2.Environment:
    """A strict environment that loads templates from ``search_paths`` (first match wins).

    ``extra_loader`` is consulted first; ``render_template`` uses it for a user's override file.
    """
    import jinja2

    loader: jinja2.BaseLoader = jinja2.FileSystemLoader([str(p) for p in search_paths])
    if extra_loader is not None:
        loader = jinja2.ChoiceLoader([extra_loader, loader])
    env = jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=jinja2.select_autoescape(enabled_extensions=("xml.j2", "html.j2", "xml", "html"),
                                            default_for_string=False, default=False),
    )
    env.filters["cfg_token"] = cfg_token
    return env


def render_template(name: str, context: Mapping, override: Path | None = None, *,
                    search_paths: Iterable[str | os.PathLike] | None = None,
                    error: type[CdlibError] = ProxyError) -> str:
    """Render the packaged template ``name``, or the user's ``override`` file instead of it.

    The override can stand alone or ``{% extends "<name>" %}`` the packaged template and replace
    only its blocks. Every template error becomes ``error`` (ProxyError by default) naming the
    template file and the line; a ProxyError raised by ``cfg_token`` keeps its class.

    An error in the override file never quotes it: the descriptor may name any file the agent can
    read (``proxy.template: /etc/shadow``), and Jinja2's messages repeat the tokens they choke on.
    Such an error says what kind of mistake is on which line of which file, nothing more. Errors in
    the packaged templates keep Jinja2's whole message: their text is cdlib's own.
    """
    import jinja2

    paths = [Path(p) for p in (search_paths if search_paths is not None else [PROXY_TEMPLATES])]
    extra = None
    target = name
    if override is not None:
        override = Path(override)
        try:
            source = override.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise error(f"proxy.template: {override}: not a valid Jinja2 template (not UTF-8 text)",
                        template=str(override), key="proxy.template") from exc
        except OSError as exc:
            raise error(f"cannot read the template {override}: {exc.strerror or type(exc).__name__}; "
                        "check proxy.template in cdlib.yml", template=str(override), key="proxy.template") from exc
        target = f"override:{override}"
        extra = jinja2.FunctionLoader(
            lambda n: (source, str(override), lambda: True) if n == target else None)
    env = environment(paths, extra)
    try:
        return env.get_template(target).render(**context)
    except jinja2.TemplateSyntaxError as exc:
        where = exc.filename or exc.name or target
        if override is not None and where in (str(override), target):
            raise error(f"proxy.template: {override}: not a valid Jinja2 template (line {exc.lineno})",
                        template=str(override), line=exc.lineno, key="proxy.template") from exc
        raise error(f"template {where}, line {exc.lineno}: {exc.message}",
                    template=str(where), line=exc.lineno) from exc
    except Exception as exc:  # noqa: BLE001 - a template can raise anything ({{ 1/0 }}); none may cross
        where, line = _template_frame(exc, paths, override)
        if override is not None and where in (str(override), "?"):
            raise _override_error(exc, override, line, error) from exc
        if isinstance(exc, jinja2.TemplateNotFound):
            raise error(f"template {exc.name} not found in {', '.join(map(str, paths))}",
                        template=str(exc.name)) from exc
        what = exc.message if isinstance(exc, CdlibError) else (getattr(exc, "message", None) or exc)
        cls = type(exc) if isinstance(exc, ProxyError) else error
        raise cls(f"template {where}, line {line}: {what}", template=where, line=line) from exc


def _override_error(exc: BaseException, override: Path, line: int | None,
                    error: type[CdlibError]) -> CdlibError:
    """The error for a failure in the user's template: its kind and line, never its words."""
    import jinja2

    at = f"line {line}" if line is not None else "a line"
    if isinstance(exc, jinja2.UndefinedError):
        what = (f"{at} uses a variable or attribute the proxy does not define (docs/proxy.md lists the "
                "variables a template gets)")
    elif isinstance(exc, jinja2.TemplateNotFound):
        what = f"{at} extends or includes a template that does not exist (only the packaged one can be extended)"
    elif isinstance(exc, ProxyError):
        what = (f"{at} writes an unsafe configuration value (whitespace, ; {{ }} quotes, # $ or \\ in a "
                "value passed through cfg_token)")
        return ProxyError(f"proxy.template: {override}: {what}", template=str(override), line=line,
                          key="proxy.template")
    else:
        what = f"{at} failed to render ({type(exc).__name__})"
    return error(f"proxy.template: {override}: not a valid Jinja2 template: {what}", template=str(override),
                 line=line, key="proxy.template")


def _template_frame(exc: BaseException, paths: list[Path], override: Path | None) -> tuple[str, int | None]:
    """The innermost traceback frame that belongs to a template file (Jinja2 rewrites tracebacks
    so that template code shows up with the template's file name and line)."""
    roots = [str(p.absolute()) for p in paths]
    found: tuple[str, int | None] = ("?", None)
    for frame in traceback.extract_tb(exc.__traceback__):
        filename = frame.filename
        if (override is not None and filename == str(override)) or any(
                os.path.abspath(filename).startswith(r + os.sep) for r in roots):
            found = (filename, frame.lineno)
    return found
