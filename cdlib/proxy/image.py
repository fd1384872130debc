"""Proxy images built on this machine from the Debian nginx and HAProxy binaries.

Nothing can be pulled from a public registry, so the image of a containerized proxy is assembled
``FROM scratch`` out of what the host has installed: the proxy binary, every shared library ``ldd``
lists for it and the loader, ``/etc/passwd`` and ``/etc/group`` entries for the users the workers
switch to, nginx's mime types, the directories the binary opens by default, and a static busybox.
busybox is what the container adapter execs besides the proxy itself: ``mv`` (the swap by rename),
``kill`` (the reload signal), ``cat`` (reading the active file and ``/proc`` for the drain) and
``sleep`` (the container's main process: the proxy master runs under it, so a refused start never
takes the container down with it).

The tag names the Debian package version (``cdlib/nginx:1.22.1-9-deb12u11``; ``+`` and ``:`` are
not allowed in a tag and become ``-``) and a label holds the digest of the recipe (the files and
their contents' digests): :func:`ensure_image` does nothing when an image with that tag and that
recipe exists, so it is cheap to call before every use.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ProxyError

KINDS = ("nginx", "haproxy")
BINARIES = {"nginx": "/usr/sbin/nginx", "haproxy": "/usr/sbin/haproxy"}
BUSYBOX = "/bin/busybox"
RECIPE_LABEL = "cdlib.proxy.recipe"
KIND_LABEL = "cdlib.proxy.kind"
REPOSITORY = "cdlib/{kind}"
# the main process: starts the proxy again when the container restarts with a configuration in it
START_SCRIPT = "/usr/local/bin/cdlib-proxy-start"
CONFIG_DIR = "/cdlib"

PASSWD = """\
root:x:0:0:root:/root:/sbin/nologin
www-data:x:33:33:www-data:/var/www:/sbin/nologin
haproxy:x:101:101::/var/lib/haproxy:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
"""
GROUP = """\
root:x:0:
www-data:x:33:
haproxy:x:101:
nogroup:x:65534:
nobody:x:65534:
"""
# directories the binaries open by their compiled-in defaults, and the configuration directory
DIRS = {
    "nginx": ("/run", "/tmp", "/var/lock", "/var/log/nginx", "/var/lib/nginx", "/etc/nginx", CONFIG_DIR,
              f"{CONFIG_DIR}/temp"),
    "haproxy": ("/run", "/tmp", "/var/lib/haproxy", "/etc/haproxy", CONFIG_DIR),
}
EXTRA_FILES = {"nginx": ("/etc/nginx/mime.types",), "haproxy": ()}
START = {
    "nginx": f"{BINARIES['nginx']} -p {CONFIG_DIR}/ -c {CONFIG_DIR}/nginx.conf",
    "haproxy": f"{BINARIES['haproxy']} -W -S {CONFIG_DIR}/master.sock,mode,600 -D -f {CONFIG_DIR}/haproxy.cfg",
}
CONFIG_FILE = {"nginx": "nginx.conf", "haproxy": "haproxy.cfg"}
DOCKERFILE = """\
FROM scratch
COPY rootfs/ /
LABEL {kind_label}="{kind}" {recipe_label}="{recipe}"
ENTRYPOINT ["/bin/busybox", "sh", "{start}"]
"""
_LDD_RE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")


@dataclass(frozen=True)
class Recipe:
    kind: str
    version: str  # the Debian package version of the binary
    files: tuple[str, ...]  # absolute host paths copied to the same path in the image
    dirs: tuple[str, ...]
    digest: str

    @property
    def tag(self) -> str:
        return f"{REPOSITORY.format(kind=self.kind)}:{tag_version(self.version)}"


def tag_version(version: str) -> str:
    """A Debian version as a Docker tag: ``1:1.2+deb12u1`` -> ``1-1.2-deb12u1``."""
    text = re.sub(r"[^A-Za-z0-9_.-]", "-", version).lstrip(".-")
    return text[:128] or "unknown"


def libraries(binary: str) -> list[str]:
    """Every shared library ``ldd`` lists for ``binary``, the loader included (absolute paths)."""
    try:
        proc = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProxyError(f"cannot run ldd on {binary}: {exc}; install libc-bin") from exc
    if proc.returncode != 0:
        raise ProxyError(f"ldd {binary} failed: {(proc.stderr or proc.stdout).strip().splitlines()[:1]}")
    return sorted({m.group(1) for m in _LDD_RE.finditer(proc.stdout)})


def package_version(path: str) -> str:
    """The version of the Debian package that installed ``path`` (dpkg), else 'local'."""
    try:
        owner = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True, timeout=30, check=False)
        package = owner.stdout.split(":", 1)[0].strip() if owner.returncode == 0 else ""
        if package:
            ver = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                                 timeout=30, check=False)
            if ver.returncode == 0 and ver.stdout.strip():
                return ver.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "local"


def recipe(kind: str) -> Recipe:
    """What the image of ``kind`` is made of, from this host's files; ProxyError when the binary is
    not installed."""
    if kind not in KINDS:
        raise ProxyError(f"no proxy image for {kind!r}: expected one of {', '.join(KINDS)}")
    binary = BINARIES[kind]
    for needed, package in ((binary, kind), (BUSYBOX, "busybox-static")):
        if not os.path.isfile(needed):
            raise ProxyError(f"{needed} not found: install the Debian package {package} to build the {kind} image")
    files = [binary, BUSYBOX, *libraries(binary), *(f for f in EXTRA_FILES[kind] if os.path.isfile(f))]
    files = sorted(dict.fromkeys(files))
    h = hashlib.sha256()
    for name in files:
        h.update(name.encode() + b"\0")
        with open(name, "rb") as fh:
            h.update(hashlib.sha256(fh.read()).digest())
    h.update(PASSWD.encode() + GROUP.encode() + START[kind].encode() + DOCKERFILE.encode())
    return Recipe(kind, package_version(binary), tuple(files), DIRS[kind], h.hexdigest()[:16])


def write_context(rec: Recipe, directory: Path) -> Path:
    """The build context: ``rootfs/`` with every file at its path, and the Dockerfile."""
    root = directory / "rootfs"
    for name in rec.files:
        target = root / name.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(name), target)  # a library is often a symlink: copy what it names
    for d in rec.dirs:
        (root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    start = root / START_SCRIPT.lstrip("/")
    start.parent.mkdir(parents=True, exist_ok=True)
    conf = f"{CONFIG_DIR}/{CONFIG_FILE[rec.kind]}"
    start.write_text(f"# started by the container: runs the proxy again when a configuration is in place\n"
                     f"[ -f {conf} ] && {START[rec.kind]}\n"
                     f"exec /bin/busybox sleep 2147483647\n")
    (directory / "Dockerfile").write_text(DOCKERFILE.format(kind=rec.kind, recipe=rec.digest, start=START_SCRIPT,
                                                            kind_label=KIND_LABEL, recipe_label=RECIPE_LABEL))
    return directory


def ensure_image(client, kind: str) -> dict:
    """Build the image of ``kind`` unless an image with its tag and recipe exists already.

    ``client`` is a ``docker.DockerClient``. Returns {"kind", "tag", "id", "built"}. Docker's own
    exceptions are translated to ProxyError."""
    import docker
    import requests

    rec = recipe(kind)
    try:
        try:
            image = client.images.get(rec.tag)
            if (image.labels or {}).get(RECIPE_LABEL) == rec.digest:
                return {"kind": kind, "tag": rec.tag, "id": image.id, "built": False}
        except docker.errors.ImageNotFound:
            pass
        with tempfile.TemporaryDirectory(prefix=f"cdlib-{kind}-image-") as tmp:
            write_context(rec, Path(tmp))
            image, _log = client.images.build(path=tmp, tag=rec.tag, rm=True, forcerm=True)
    except docker.errors.BuildError as exc:
        raise ProxyError(f"building {rec.tag} failed: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise ProxyError(f"building {rec.tag} failed: {str(exc).splitlines()[0] if str(exc) else exc}; "
                         "is dockerd running?") from exc
    return {"kind": kind, "tag": rec.tag, "id": image.id, "built": True}


def image_tag(kind: str) -> str:
    """The tag ensure_image builds for ``kind`` on this host (reads the package version only)."""
    if kind not in KINDS:
        raise ProxyError(f"no proxy image for {kind!r}: expected one of {', '.join(KINDS)}")
    return f"{REPOSITORY.format(kind=kind)}:{tag_version(package_version(BINARIES[kind]))}"
