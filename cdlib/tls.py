"""Certificate files for the proxy's HTTPS routes: checked before anything changes, and digested so
that a rotated certificate changes the rendered configuration.

:func:`pair_problem` is what the descriptor's ``routes.tls.cert`` / ``routes.tls.key`` go through at
parse time: each file must be a readable regular file of at most :data:`MAX_PEM_BYTES`, the
certificate file must hold at least one PEM certificate, the key file a PEM private key without a
passphrase (the proxy starts unattended), and the key must be the certificate's. The check uses
the standard library's ``ssl`` module (OpenSSL underneath, the library nginx and HAProxy use), and
its answer never quotes a byte of either file: a key is a secret, and a path given by mistake may
name any file.

:func:`material_digest` is what the proxy adapters append to a rendered configuration (one comment
line) when a route has TLS: nginx and HAProxy read the files only when they load the configuration,
so a certificate renewed in place (same paths, new content) would otherwise render the very same
text, and ``proxy apply`` would see nothing to apply. With the digest in the text the change goes
through the normal validate -> swap -> reload -> restore sequence. The digest is SHA-256 over both
files' bytes together: it identifies the content without revealing it.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .config.schema import FileProblem, read_bounded, size_text
from .errors import ProxyError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .model import Backend

MAX_PEM_BYTES = 1 << 20  # a certificate chain or a key; far larger than any real one

_CERT_BEGIN = b"-----BEGIN CERTIFICATE-----"
_KEY_BEGIN = (b"-----BEGIN PRIVATE KEY-----", b"-----BEGIN RSA PRIVATE KEY-----", b"-----BEGIN EC PRIVATE KEY-----",
              b"-----BEGIN ENCRYPTED PRIVATE KEY-----", b"-----BEGIN DSA PRIVATE KEY-----")
_MISMATCH = {"KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED", "X509_CHECK_PRIVATE_KEY_FAILED"}


class _Passphrase(Exception):
    """Raised by the password callback: the key is encrypted."""


def _ask_passphrase() -> str:
    raise _Passphrase


def _read(path: Path, what: str) -> tuple[bytes | None, str | None]:
    try:
        return read_bounded(path, MAX_PEM_BYTES), None
    except FileProblem as exc:
        return None, f"a readable {what} file of at most {size_text(MAX_PEM_BYTES)}; {path} {exc}"


def pair_problem(cert: Path, key: Path) -> tuple[str, str] | None:
    """Why the proxy could not serve HTTPS with this certificate file and key file, or None.

    The answer is (the field at fault: ``cert`` or ``key``, what was expected and what was found),
    in words that name the files and never their content."""
    cert_data, problem = _read(cert, "PEM certificate")
    if problem:
        return "cert", problem
    key_data, problem = _read(key, "PEM private key")
    if problem:
        return "key", problem
    assert cert_data is not None and key_data is not None
    if _CERT_BEGIN not in cert_data:
        return "cert", f"a PEM certificate file (-----BEGIN CERTIFICATE-----); {cert} holds none"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cadata=cert_data.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError):
        return "cert", f"a PEM certificate file; {cert} does not hold a certificate OpenSSL can read"
    if not any(marker in key_data for marker in _KEY_BEGIN):
        return "key", f"a PEM private key file (-----BEGIN PRIVATE KEY-----); {key} holds none"
    if b"ENCRYPTED" in key_data:
        return "key", (f"a private key without a passphrase (the proxy starts unattended); {key} is encrypted")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key), password=_ask_passphrase)
    except _Passphrase:
        return "key", f"a private key without a passphrase (the proxy starts unattended); {key} is encrypted"
    except ssl.SSLError as exc:
        if exc.reason in _MISMATCH:
            return "key", f"the private key of routes.tls.cert; {key} does not match {cert}"
        return "key", f"a PEM private key file OpenSSL can read; {key} is not one ({exc.reason or 'PEM lib'})"
    except OSError as exc:  # the file changed between the reads
        return "cert", f"a readable PEM certificate file; {cert} or {key} cannot be read ({exc.strerror})"
    return None


def material_digest(pairs: Iterable[tuple[str, str]]) -> str:
    """SHA-256 over the bytes of every (certificate, key) file pair, in the order given (the callers
    sort them). ProxyError naming the file when one cannot be read: the proxy could not load it
    either."""
    h = hashlib.sha256()
    for cert, key in pairs:
        for name in (cert, key):
            try:
                data = read_bounded(Path(name), MAX_PEM_BYTES)
            except FileProblem as exc:
                raise ProxyError(f"TLS file {name} {exc}; check routes.tls of the service that names it") from None
            h.update(len(data).to_bytes(8, "big"))
            h.update(data)
    return h.hexdigest()


def digest_line(backends: Iterable[Backend]) -> str:
    """The comment line a rendered configuration ends with when a backend has TLS ('' when none
    has): ``# tls material sha256:<digest>``. ``#`` starts a comment in nginx.conf and haproxy.cfg."""
    pairs = sorted({(b.routes.tls_cert, b.routes.tls_key) for b in backends
                    if b.routes.tls_cert and b.routes.tls_key})
    if not pairs:
        return ""
    return f"# tls material sha256:{material_digest(pairs)}\n"
