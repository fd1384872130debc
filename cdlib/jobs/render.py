"""Catalog -> config.xml, offline and deterministic (the same catalog always gives the same bytes).

Every generated item carries a marker as the last line of its description:

    [managed by cdlib as shop/services/orders, rev 0123456789ab; changes made here are overwritten by cdlib jobs apply]

It tells people not to edit the job in the UI; it tells ``jobs apply --prune`` which jobs it may
delete (only one whose marker names the item itself: "New Item > Copy from" and a rename in the UI
keep the description, so a copy or a renamed job carries the marker of another item and is never
pruned); and ``rev`` (the first 12 hex digits of the SHA-256 of the item's XML rendered without the
marker) tells ``jobs diff`` whether a difference comes from the catalog (rev changed: an update) or
from the Jenkins UI (same rev: drift). Jenkins ignores case in item names, so the name in the marker
is compared without case.

Templates are ``templates/*.xml.j2``, rendered through cdlib.render's environment (strict undefined,
XML autoescape). jinja2 is imported only when something is rendered.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .catalog import Catalog, JobSpec

TEMPLATES = Path(__file__).parent / "templates"
JOB_TEMPLATE = "pipeline-job.xml.j2"
FOLDER_TEMPLATE = "folder.xml.j2"

JOB_ROOT = "flow-definition"
JOB_CLASS = "org.jenkinsci.plugins.workflow.job.WorkflowJob"
FOLDER_CLASS = "com.cloudbees.hudson.plugins.folder.Folder"
ROOT_CLASSES = {JOB_ROOT: JOB_CLASS, FOLDER_CLASS: FOLDER_CLASS, "project": "hudson.model.FreeStyleProject"}

MARKER = "[managed by cdlib as {name}, rev {rev}; changes made here are overwritten by cdlib jobs apply]"
# exactly the marker cdlib writes (an older one had no name): a description a person wrote that merely
# ends in "[managed by cdlib ...]" must not make a job look managed, since --prune deletes managed jobs
MARKER_RE = re.compile(r"\[managed by cdlib(?: as (?P<name>[^\s,\]]+))?, rev (?P<rev>[0-9a-f]{12}); "
                       r"changes made here are overwritten by cdlib jobs apply\]\s*$")


@dataclass(frozen=True)
class Rendered:
    """One item to have on the server."""

    fullname: str
    kind: str  # job | folder
    xml: str
    rev: str
    root: str  # the root element: its type

    @property
    def item_class(self) -> str:
        return ROOT_CLASSES.get(self.root, self.root)

    def path(self, out: Path) -> Path:
        """Where ``render --out`` writes it: OUT/<folder path>/<job>/config.xml."""
        return out.joinpath(*self.fullname.split("/"), "config.xml")


@dataclass(frozen=True)
class Marker:
    """What an item's description says about who wrote it."""

    name: str | None  # the item the marker was written for (None: a marker of an older cdlib)
    rev: str

    def names(self, fullname: str) -> bool:
        """Whether the marker was written for this item (Jenkins ignores case in item names)."""
        return self.name is not None and self.name.lower() == fullname.lower()


def marker(description: str | None) -> Marker | None:
    """The marker at the end of a description, or None when there is none."""
    m = MARKER_RE.search(description or "")
    return Marker(m.group("name"), m.group("rev")) if m else None


def managed(description: str | None, fullname: str | None = None) -> tuple[bool, str | None]:
    """(is the item managed by cdlib, the rev of the catalog that last wrote it).

    With ``fullname``, only a marker written for that very item counts: a job copied from a managed
    one, or a managed job renamed in the UI, carries a marker naming another item and is not managed.
    """
    m = marker(description)
    if m is None or (fullname is not None and not m.names(fullname)):
        return (False, None)
    return (True, m.rev)


def root_class(root_tag: str) -> str:
    """The Java class Jenkins reports in ``_class`` for an item whose config.xml has this root."""
    return ROOT_CLASSES.get(root_tag, root_tag)


class Renderer:
    """Holds one Jinja2 environment for a whole catalog (a template is compiled once, not per job)."""

    def __init__(self):
        from ..render import environment

        self._env = environment([TEMPLATES])
        self._cache: dict = {}

    def _template(self, name: str):
        if name not in self._cache:
            self._cache[name] = self._env.get_template(name)
        return self._cache[name]

    def _render(self, name: str, context: dict) -> str:
        import jinja2

        try:
            return self._template(name).render(**context)
        except jinja2.TemplateError as exc:  # a bug in a packaged template, not bad input
            raise ConfigError(f"template {name}: {exc}", template=name) from exc

    def _marked(self, name: str, context: dict, user_description: str, rev: str | None,
                fullname: str) -> tuple[str, str]:
        """Render with the marker; the rev is the hash of the same render without it."""
        if rev is None:
            bare = self._render(name, {**context, "description": user_description})
            rev = hashlib.sha256(bare.encode("utf-8")).hexdigest()[:12]
        text = "\n\n".join(t for t in (user_description, MARKER.format(name=fullname, rev=rev)) if t)
        return self._render(name, {**context, "description": text}), rev

    def job(self, spec: JobSpec, *, disabled: bool | None = None, rev: str | None = None) -> Rendered:
        """The job's config.xml. ``disabled`` overrides the catalog (sync keeps the server's state
        when the catalog says nothing); ``rev`` is then the catalog render's, passed in."""
        context = {
            "repository": spec.repository, "branch": spec.branch, "credentials": spec.credentials,
            "jenkinsfile": spec.jenkinsfile, "lightweight": spec.lightweight, "keep_builds": spec.keep_builds,
            "disabled": bool(spec.disabled if disabled is None else disabled),
            "triggers": spec.triggers, "parameters": spec.parameters,
        }
        xml, rev = self._marked(JOB_TEMPLATE, context, spec.description, rev, spec.fullname)
        return Rendered(spec.fullname, "job", xml, rev, JOB_ROOT)

    def folder(self, path: str) -> Rendered:
        text = f"Pipeline jobs of the services in {path}, generated from the cdlib job catalog."
        xml, rev = self._marked(FOLDER_TEMPLATE, {}, text, None, path)
        return Rendered(path, "folder", xml, rev, FOLDER_CLASS)


def render_catalog(catalog: Catalog, renderer: Renderer | None = None) -> list[Rendered]:
    """Folders first (parents before children), then the jobs, each list sorted by name."""
    renderer = renderer or Renderer()
    return [renderer.folder(f) for f in catalog.folders] + [renderer.job(j) for j in catalog.jobs]


def write_tree(items: list[Rendered], out: Path) -> list[Path]:
    """Write each item to OUT/<folder path>/<job>/config.xml (folders: OUT/<path>/config.xml)."""
    written = []
    for item in items:
        path = item.path(Path(out))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(item.xml, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--out {out}: cannot write {path}: {exc.strerror or exc}", key="--out") from exc
        written.append(path)
    return written
