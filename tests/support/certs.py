"""Self-signed certificates made at test time with Debian's openssl (no CA, nothing downloaded).

``make_pair(directory, "shop", hosts=("shop.test",))`` writes ``shop.pem`` (the certificate, its
subjectAltName naming every host, and 127.0.0.1) and ``shop.key`` (an unencrypted EC P-256 key,
mode 0600) and returns both paths. ``encrypt_key`` writes a passphrase-protected copy of a key,
which cdlib must refuse (the proxy starts unattended).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _run(*args: str) -> None:
    proc = subprocess.run([OPENSSL, *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()[:500]}")


def make_pair(directory: Path, name: str = "server", hosts: tuple[str, ...] = ("localhost",),
              days: int = 2) -> Pair:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    san = ",".join([f"DNS:{h}" for h in hosts] + ["IP:127.0.0.1"])
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", str(days), "-subj", f"/CN={hosts[0]}",
         "-addext", f"subjectAltName={san}")
    key.chmod(0o600)
    return Pair(cert, key)


def encrypt_key(key: Path, out: Path, passphrase: str = "cdlib-test") -> Path:
    _run("pkey", "-in", str(key), "-aes256", "-passout", f"pass:{passphrase}", "-out", str(out))
    return out


def fingerprint(cert: Path) -> str:
    """The certificate's SHA-256 fingerprint as openssl prints it (AA:BB:...), to tell two apart."""
    proc = subprocess.run([OPENSSL, "x509", "-noout", "-fingerprint", "-sha256", "-in", str(cert)],
                          capture_output=True, text=True, timeout=30, check=True)
    return proc.stdout.strip().split("=", 1)[1]
