"""A tiny web image for tests, built ``FROM scratch`` with a copy of the host's static busybox
(nothing can be pulled from a public registry here).

The image serves ``/www`` with busybox httpd on port 8080: ``/version`` holds the version,
``/index.html`` names it, and with ``health=True`` ``/health`` answers ``ok`` and the image
carries an exec-form HEALTHCHECK (a scratch image has no shell for the shell form). With
``health=False`` ``/health`` is a 404, which is how tests get an instance that never turns healthy.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

BUSYBOX = "/bin/busybox"
PORT = 8080

DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
COPY www /www
EXPOSE {port}
{healthcheck}
ENTRYPOINT ["/bin/busybox", "httpd", "-f", "-p", "{port}", "-h", "/www"]
"""
HEALTHCHECK = ('HEALTHCHECK --interval=2s --timeout=2s --retries=3 '
               'CMD ["/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:{port}/health"]')


def write_context(directory: Path, version: str, health: bool = True) -> Path:
    """Write the build context into directory and return it."""
    www = directory / "www"
    www.mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, directory / "busybox")
    (www / "version").write_text(version + "\n")
    (www / "index.html").write_text(f"<html><body><h1>cdlib test web {version}</h1></body></html>\n")
    if health:
        (www / "health").write_text("ok\n")
    (directory / "Dockerfile").write_text(DOCKERFILE.format(
        port=PORT, healthcheck=HEALTHCHECK.format(port=PORT) if health else ""))
    return directory


def build_busybox_web_image(runtime_or_client, tag: str, version: str, health: bool = True) -> str:
    """Build the image as tag and return its id.

    runtime_or_client: anything with ``build_image(context, dockerfile, tags, buildargs)`` (a cdlib
    runtime), or a ``docker.DockerClient``.
    """
    with tempfile.TemporaryDirectory(prefix="cdlibt-img-") as tmp:
        context = write_context(Path(tmp), version, health)
        if hasattr(runtime_or_client, "build_image"):
            return runtime_or_client.build_image(str(context), "Dockerfile", [tag], {})
        image, _log = runtime_or_client.images.build(path=str(context), tag=tag, rm=True, forcerm=True)
        return image.id
