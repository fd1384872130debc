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
SWARM_HEALTH = "500ms"  # the HEALTHCHECK interval of the images Swarm tests run

DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
COPY www /www
EXPOSE {port}
{healthcheck}
ENTRYPOINT ["/bin/busybox", "httpd", "-f", "-p", "{port}", "-h", "/www"]
"""
HEALTHCHECK = ('HEALTHCHECK --interval={interval} --timeout=2s --retries=3 '
               'CMD ["/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:{port}/health"]')


def write_context(directory: Path, version: str, health: bool = True, health_interval: str = "2s") -> Path:
    """Write the build context into directory and return it."""
    www = directory / "www"
    www.mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, directory / "busybox")
    (www / "version").write_text(version + "\n")
    (www / "index.html").write_text(f"<html><body><h1>cdlib test web {version}</h1></body></html>\n")
    if health:
        (www / "health").write_text("ok\n")
    (directory / "Dockerfile").write_text(DOCKERFILE.format(
        port=PORT, healthcheck=HEALTHCHECK.format(port=PORT, interval=health_interval) if health else ""))
    return directory


def build_busybox_web_image(runtime_or_client, tag: str, version: str, health: bool = True,
                            health_interval: str = "2s") -> str:
    """Build the image as tag and return its id.

    health_interval: how often Docker runs the HEALTHCHECK. Swarm reports a task running only once
    its first check passed, which comes one interval after the start: Swarm tests pass SWARM_HEALTH
    (a plain container is never waited on by its Docker health, so there 2 s spare the CPU).

    runtime_or_client: anything with ``build_image(context, dockerfile, tags, buildargs)`` (a cdlib
    runtime), or a ``docker.DockerClient``.
    """
    with tempfile.TemporaryDirectory(prefix="cdlibt-img-") as tmp:
        context = write_context(Path(tmp), version, health, health_interval)
        if hasattr(runtime_or_client, "build_image"):
            return runtime_or_client.build_image(str(context), "Dockerfile", [tag], {})
        image, _log = runtime_or_client.images.build(path=str(context), tag=tag, rm=True, forcerm=True)
        return image.id
