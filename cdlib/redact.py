"""URLs as a message may show them: the one rule for leaving credentials out.

``scheme://user:password@host`` -> ``scheme://user@host``: the password goes, the user name stays (it
is no secret, and ``ssh://deploy@build-1`` says which account Docker uses). Anything else before
the ``@`` becomes ``***``: a single word (it may be a token used as the user, as in
``https://TOKEN@host``) or a user name with odd characters. Works on a single URL and on free text
holding URLs (an exception's message); ``user:password@host`` without a scheme is treated the same.
This is a rule on the shape of the text; :func:`cdlib.secrets.mask` also masks known secret values
wherever they appear.
"""

from __future__ import annotations

import re

# scheme://USERINFO@ where USERINFO runs to the last '@' before a space (a password may hold '@' or '/')
_URL_USERINFO_RE = re.compile(r"(://)(\S*)@")
# ... or holds a space (malformed, but never shown): to the last '@' on the line before a '/'
_SPACED_USERINFO_RE = re.compile(r"(://)([^/\n]*\s[^/\n]*)@")
# user:password@host without a scheme: a password (anything up to the last '@' before a '/') is there
_BARE_USERINFO_RE = re.compile(r"\A()([^/]*:[^/]*)@")
_USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}\Z", re.ASCII)


def _userinfo(m: re.Match) -> str:
    user, sep, _ = m.group(2).partition(":")
    return f"{m.group(1)}{user if sep and _USER_RE.match(user) else '***'}@"


def redact_url(text: object, limit: int | None = None) -> str:
    """``text`` (a URL, or free text with URLs in it) without the passwords of its URLs; cut to
    ``limit`` characters (``...`` at the end) when a limit is given."""
    out = _SPACED_USERINFO_RE.sub(_userinfo, _URL_USERINFO_RE.sub(_userinfo, str(text)))
    if "://" not in out and "@" in out:
        out = _BARE_USERINFO_RE.sub(_userinfo, out)
    return out if limit is None else shorten(out, limit)


def shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# scheme://user:password@host as secrets are collected from it (the user part never holds ':' or '@';
# the password may be empty): each URL of a value on its own, so two URLs in one value give two passwords
_PASSWORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:([^@\s/]*)@")


def url_passwords(text: str) -> set[str]:
    """The passwords of the URLs in ``text``, as written and percent-decoded (the values to mask)."""
    from urllib.parse import unquote

    out = set()
    for m in _PASSWORD_RE.finditer(text):
        password = m.group(1)
        if password:
            out.add(password)
            out.add(unquote(password))
    return out
