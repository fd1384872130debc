"""build and push: the service image and the test images, tagged with the commit.

Registry credentials (``CDLIB_REGISTRY_USER`` / ``CDLIB_REGISTRY_PASSWORD``) go to the engine with
each push and nowhere else: the password is masked by value in everything cdlib writes
(:mod:`cdlib.secrets`), and so is the value of every build argument named like a credential
(``NPM_TOKEN``, ``PIP_PASSWORD``...), which the engine's build output may echo.
"""

from __future__ import annotations

import time

from . import secrets
from .config import ImageSpec, ServiceSpec
from .errors import ConfigError
from .model import Outcome, StepReport
from .runtime.base import Runtime


def _targets(spec: ServiceSpec, build_only: bool) -> list[tuple[str, ImageSpec]]:
    """(label, image) for the service image and every distinct test image, with the release tag."""
    out = [("service", spec.image)]
    seen = {spec.image.repository}
    users: dict[str, list[str]] = {}
    for ttype, suite in spec.tests.items():
        if suite.image is not None:
            users.setdefault(suite.image.repository, []).append(ttype)
    for _, suite in sorted(spec.tests.items()):
        img = suite.image
        if img is None or img.repository in seen or (build_only and img.build is None):
            continue
        seen.add(img.repository)
        types = users[img.repository]
        label = f"{types[0]} tests" if len(types) == 1 else "test image"
        out.append((label, ImageSpec(img.repository, spec.image.tag, img.build)))
    return out


def _select(targets: list, only: str | None) -> list:
    """The service image comes first in targets, the test images after it."""
    parts: dict[str | None, list] = {"service": targets[:1], "tests": targets[1:]}
    return parts.get(only, targets)


def build(spec: ServiceSpec, runtime: Runtime, report=lambda s: None, only: str | None = None) -> Outcome:
    """Build the service image and the test images (only="service" or only="tests": just those,
    so a pipeline can run its pre-deployment tests before it builds the service image)."""
    if spec.image.build is None and only != "tests":
        raise ConfigError(f"{spec.source}: image.build: expected a build context to build "
                          f"{spec.image.repository} (image.build.context)", key="image.build")
    steps, built = [], []
    for label, img in _select(_targets(spec, build_only=True), only):
        args = dict(img.build.args)
        args.setdefault("CDLIB_TAG", spec.image.tag)
        secrets.register(*(v for k, v in args.items() if secrets.is_secret_name(k)))
        t0 = time.monotonic()
        image_id = runtime.build_image(str(img.build.context), img.build.dockerfile, [img.ref], args)
        step = StepReport(f"build {label}", "done", time.monotonic() - t0, f"{img.ref} ({image_id[:19]})")
        steps.append(step)
        report(step)
        built.append({"image": img.ref, "id": image_id})
    return Outcome("build", spec.name, True, 0, f"built {', '.join(b['image'] for b in built) or 'nothing'}", steps,
                   {"images": built, "tag": spec.image.tag})


def push(spec: ServiceSpec, runtime: Runtime, report=lambda s: None, only: str | None = None) -> Outcome:
    steps, pushed = [], []
    for label, img in _select(_targets(spec, build_only=False), only):
        t0 = time.monotonic()
        digest = runtime.push_image(img.ref)
        step = StepReport(f"push {label}", "done", time.monotonic() - t0, f"{img.ref} {digest}")
        steps.append(step)
        report(step)
        pushed.append({"image": img.ref, "digest": digest})
    return Outcome("push", spec.name, True, 0, f"pushed {', '.join(p['image'] for p in pushed)}", steps,
                   {"images": pushed, "tag": spec.image.tag})
