"""Compare the catalog's jobs with the server's and upload only real differences.

Jenkins does not give back the XML it was sent: ``GET config.xml`` has an XML 1.1 declaration,
``plugin="name@version"`` attributes, its own whitespace and quoting, ``<actions/>``, fields filled
in with their defaults (``removeLastBuild``, ``abortPrevious``, the Git plugin's submodule fields)
and job properties in the order the last writer left them. Comparing bytes would upload every job
on every run. So both sides are normalised (declaration, ``plugin`` attributes, ``actions`` and
whitespace dropped; ``<a></a>`` equals ``<a/>``; job properties and triggers sorted) and compared by
structure, where

- the root of a job and the list containers (properties, parameter definitions, triggers, remotes,
  branches, Git extensions) must match exactly: an extra parameter or trigger is a change someone
  made in the UI;
- any other element may carry extra children: fields Jenkins filled in are not differences; except
  a Git remote and a branch spec, where Jenkins fills in nothing (it drops empty fields), so a
  refspec or a credentials id added in the UI is a difference;
- a folder is compared the same lenient way throughout (people add views and folder properties),
  and updated the same way: what the catalog sets is written into the server's config, so views,
  folder credentials and libraries people added survive an update.

Jenkins ignores case in item names (``Team`` and ``team`` are one folder; ``job/TEAM/`` finds it),
so catalog and server names are matched without case.

``plan`` reads the server once (one listing, then the config of each item it has to compare) and
says per item: create, update (the catalog changed since the last apply), drift (the catalog did
not change, so the difference was made in the Jenkins UI), adopt (an existing job without cdlib's
marker), unchanged, recreate or refuse (the item's type changed), delete or orphan (a managed item
no longer in the catalog). ``apply`` carries the plan out, reads every item back after writing it
and fails when Jenkins changed it while saving (a plugin the config needs is missing). A second
apply with nothing changed writes nothing.
"""

from __future__ import annotations

import difflib
import re
import time
import xml.etree.ElementTree as ET
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from ..errors import CdlibError, ConfigError, JenkinsError
from ..model import Outcome, StepReport
from .catalog import Catalog
from .jenkins import JenkinsBadRequest, JenkinsClient, Remote
from .render import MARKER_RE, Rendered, Renderer, managed, marker, render_catalog

LIST_CONTAINERS = frozenset({"properties", "parameterDefinitions", "triggers", "userRemoteConfigs", "branches",
                             "extensions", "a"})
UNORDERED = frozenset({"properties", "triggers"})
# elements Jenkins writes back with no field added (empty fields are dropped): extra children are changes
STRICT_ELEMENTS = frozenset({"hudson.plugins.git.UserRemoteConfig", "hudson.plugins.git.BranchSpec"})
WRITE_ACTIONS = ("create", "update", "drift", "adopt", "recreate")


# ---- normalising and comparing ------------------------------------------------------------------------
def parse_config(text: str) -> ET.Element:
    """A config.xml as a normalised tree (XML 1.0 or 1.1, any quoting and indentation)."""
    body = re.sub(r"^\s*<\?xml[^>]*\?>", "", text or "", count=1)  # expat refuses version 1.1
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise JenkinsError(f"config.xml is not well-formed XML: {exc}") from exc
    for el in list(root):
        if el.tag == "actions":  # Jenkins manages these (declarative property trackers, ...)
            root.remove(el)
    _normalise(root)
    return root


def _normalise(el: ET.Element) -> None:
    el.attrib.pop("plugin", None)
    el.tail = None
    if len(el):
        if el.text is not None and not el.text.strip():
            el.text = None
        for child in el:
            _normalise(child)
        if el.tag in UNORDERED:
            el[:] = sorted(el, key=_key)
    elif not el.text:
        el.text = None


def _key(el: ET.Element) -> str:
    return el.tag + (f"[{el.get('class')}]" if el.get("class") else "")


def _label(el: ET.Element) -> str:
    return el.tag.rsplit(".", 1)[-1] if "." in el.tag and not el.tag.startswith("com.cloudbees.hudson") else el.tag


def _short(text: str | None) -> str:
    text = " ".join((text or "").split())
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _mask_rev(root: ET.Element) -> None:
    """The marker's rev says which catalog wrote the item; it is not itself a setting to compare.
    The item it names is (a copy of a managed job names the original), but without case, as Jenkins."""
    description = root.find("description")
    if description is not None and description.text:
        description.text = MARKER_RE.sub(
            lambda m: f"[managed by cdlib as {m.group('name').lower()}]" if m.group("name") else "[managed by cdlib]",
            description.text)


def differences(desired: ET.Element, actual: ET.Element, kind: str = "job") -> list[str]:
    """What differs between the catalog's config and the server's, as short paths; [] when equal.

    Both trees must come from parse_config; the marker's rev in the descriptions is masked in place.
    """
    out: list[str] = []
    if desired.tag != actual.tag:
        return [f"type: {actual.tag} on the server, {desired.tag} in the catalog"]
    _mask_rev(desired)
    _mask_rev(actual)
    _compare(desired, actual, "", kind == "job", kind == "job", out)
    return out


def _compare(d: ET.Element, a: ET.Element, path: str, strict: bool, lists: bool, out: list[str]) -> None:
    here = path or d.tag
    if dict(d.attrib) != dict(a.attrib):
        out.append(f"{here}: attributes {dict(a.attrib)} on the server, {dict(d.attrib)} in the catalog")
    if not len(d) and not len(a):
        if (d.text or "") != (a.text or ""):
            out.append(f"{here}: {_short(a.text)} on the server, {_short(d.text)} in the catalog")
        return
    prefix = f"{path}/" if path else ""
    if lists and d.tag in LIST_CONTAINERS and path:
        dc, ac = list(d), list(a)
        for i in range(max(len(dc), len(ac))):
            if i >= len(ac):
                out.append(f"{prefix}{_label(dc[i])}: missing on the server")
            elif i >= len(dc):
                out.append(f"{prefix}{_label(ac[i])}: added on the server")
            elif _key(dc[i]) != _key(ac[i]):
                out.append(f"{prefix}{_label(dc[i])}: {_label(ac[i])} on the server instead")
            else:
                same = [c for c in dc if _key(c) == _key(dc[i])]
                _compare(dc[i], ac[i], f"{prefix}{_label(dc[i])}" + (f"[{same.index(dc[i]) + 1}]" if len(same) > 1 else ""),
                         lists and dc[i].tag in STRICT_ELEMENTS, lists, out)
        return
    used: set[int] = set()
    for child in d:
        match = next((i for i, c in enumerate(a) if i not in used and c.tag == child.tag), None)
        if match is None:
            out.append(f"{prefix}{_label(child)}: missing on the server")
            continue
        used.add(match)
        _compare(child, a[match], f"{prefix}{_label(child)}", lists and child.tag in STRICT_ELEMENTS, lists, out)
    if strict:
        for i, c in enumerate(a):
            if i not in used:
                out.append(f"{prefix}{_label(c)}: added on the server")


def project(desired: ET.Element, actual: ET.Element, kind: str = "job") -> ET.Element:
    """The server's config without what the comparison ignores (fields Jenkins filled in), for diffs."""
    return _project(desired, actual, False, kind == "job")


def _project(d: ET.Element, a: ET.Element, nested: bool, lists: bool) -> ET.Element:
    out = ET.Element(a.tag, dict(a.attrib))
    out.text = a.text
    if lists and nested and d.tag in LIST_CONTAINERS:
        for i, c in enumerate(a):
            out.append(_project(d[i], c, True, lists) if i < len(d) and _key(d[i]) == _key(c) else c)
        return out
    used: set[int] = set()
    pairs: dict[int, ET.Element] = {}
    for child in d:
        match = next((i for i, c in enumerate(a) if i not in used and c.tag == child.tag), None)
        if match is not None:
            used.add(match)
            pairs[match] = child
    for i, c in enumerate(a):
        if i in pairs:
            out.append(_project(pairs[i], c, True, lists))
        elif lists and (not nested or d.tag in STRICT_ELEMENTS):  # compared strictly: keep what the server added
            out.append(c)
    return out


def pretty(el: ET.Element) -> str:
    """A stable text form of a normalised tree, for unified diffs."""
    lines: list[str] = []

    def write(e: ET.Element, depth: int) -> None:
        attrs = "".join(f' {k}="{v}"' for k, v in sorted(e.attrib.items()))
        pad = "  " * depth
        if len(e):
            lines.append(f"{pad}<{e.tag}{attrs}>")
            for c in e:
                write(c, depth + 1)
            lines.append(f"{pad}</{e.tag}>")
        elif e.text:
            text = e.text.replace("&", "&amp;").replace("<", "&lt;")
            lines.append(f"{pad}<{e.tag}{attrs}>{text}</{e.tag}>")
        else:
            lines.append(f"{pad}<{e.tag}{attrs}/>")

    write(el, 0)
    return "\n".join(lines) + "\n"


def merge_into(server_text: str, desired_xml: str) -> str:
    """The server's config with everything the catalog sets written into it, and nothing removed.

    For folders, which are compared leniently: a folder's views, credentials, libraries and
    properties are added by people, and posting the catalog's bare folder would delete them.
    Children are paired the way the comparison pairs them (by tag, in order); after the merge the
    comparison finds no difference.
    """
    strip = re.compile(r"^\s*<\?xml[^>]*\?>")
    try:
        server = ET.fromstring(strip.sub("", server_text, count=1))
        desired = ET.fromstring(strip.sub("", desired_xml, count=1))
    except ET.ParseError as exc:
        raise JenkinsError(f"config.xml is not well-formed XML: {exc}") from exc
    _merge(desired, server)
    return "<?xml version='1.1' encoding='UTF-8'?>\n" + ET.tostring(server, encoding="unicode")


def _merge(d: ET.Element, a: ET.Element) -> None:
    plugin = a.get("plugin")
    a.attrib.clear()
    a.attrib.update(d.attrib)
    if plugin:
        a.set("plugin", plugin)
    if not len(d):
        if len(a) == 0 or (d.text or "").strip():
            a.text = d.text
        return
    used: set[int] = set()
    for child in d:
        match = next((i for i, c in enumerate(a) if i not in used and c.tag == child.tag), None)
        if match is None:
            a.append(child)
            used.add(len(a) - 1)
        else:
            used.add(match)
            _merge(child, a[match])


def _drop_properties(root: ET.Element, classes: tuple[str, ...]) -> None:
    props = root.find("properties")
    if props is not None and classes:
        for p in list(props):
            if p.tag in classes:
                props.remove(p)


# ---- the plan -----------------------------------------------------------------------------------------
@dataclass
class Action:
    fullname: str
    kind: str  # job | folder
    action: str  # create update drift adopt unchanged recreate refuse delete orphan keep
    changes: list[str] = field(default_factory=list)
    detail: str = ""
    diff: str = ""
    desired: Rendered | None = None
    via: str | None = None  # deleted together with this folder
    done: bool = False
    server: str | None = None  # the server's config.xml as read (a folder update is merged into it)

    @property
    def wanted(self) -> Rendered:
        """The desired item: every action but delete and orphan has one."""
        assert self.desired is not None, self.fullname
        return self.desired

    def to_dict(self) -> dict:
        return {"name": self.fullname, "kind": self.kind, "action": self.action, "changes": self.changes,
                "detail": self.detail, "diff": self.diff, "done": self.done}


@dataclass
class Plan:
    actions: list[Action]
    remote_count: int

    def count(self, action: str) -> int:
        return sum(1 for a in self.actions if a.action == action)

    @property
    def refused(self) -> list[Action]:
        return [a for a in self.actions if a.action == "refuse"]


def plan(catalog: Catalog, client: JenkinsClient, *, prune: bool = False, recreate: bool = False,
         workers: int = 4, renderer: Renderer | None = None) -> Plan:
    """Compare the catalog with the server; nothing is written."""
    renderer = renderer or Renderer()
    items = render_catalog(catalog, renderer)
    remote = client.list_items()
    by_key = {name.lower(): r for name, r in remote.items()}  # Jenkins ignores case in item names
    actions: list[Action] = []
    to_read: list[tuple[Action, Remote]] = []
    for item in items:
        r = by_key.get(item.fullname.lower())
        act = Action(item.fullname, item.kind, "unchanged", desired=item)
        actions.append(act)
        if r is None:
            act.action = "create"
        elif r.item_class != item.item_class:
            _type_change(act, r, remote, recreate)
        elif item.kind == "folder" and not _ours(r.description, item.fullname):
            act.action, act.detail = "keep", "an existing folder cdlib did not create: left as it is"
        else:
            to_read.append((act, r))
    configs = _read_all(client, [a.fullname for a, _ in to_read], workers)
    for act, r in to_read:
        _compare_item(act, r, configs[act.fullname], catalog, renderer)
    actions += _orphans(remote, {i.fullname.lower() for i in items}, prune)
    return Plan(actions, len(remote))


def _ours(description: str | None, fullname: str) -> bool:
    """Written by cdlib for this item (or by an older cdlib, whose marker named no item)."""
    m = marker(description)
    return m is not None and (m.name is None or m.names(fullname))


def _inside(remote: dict[str, Remote], fullname: str) -> list[str]:
    prefix = fullname.lower() + "/"
    return [n for n in remote if n.lower().startswith(prefix)]


def _type_change(act: Action, r: Remote, remote: dict[str, Remote], recreate: bool) -> None:
    what = f"{r.item_class.rsplit('.', 1)[-1]} on the server, {act.wanted.item_class.rsplit('.', 1)[-1]} in the catalog"
    act.changes = [f"type: {what}"]
    inside = _inside(remote, act.fullname)
    if not recreate:
        act.action, act.detail = "refuse", f"the item's type differs ({what}); --recreate deletes and creates it"
    elif inside:
        act.action = "refuse"
        act.detail = (f"the item's type differs ({what}) and it holds {len(inside)} item(s); move or delete "
                      "them first (recreating would delete them)")
    else:
        act.action, act.detail = "recreate", f"the item's type differs ({what}): deleted and created again"


def _read_all(client: JenkinsClient, names: list[str], workers: int) -> dict[str, str | None]:
    if workers <= 1 or len(names) <= 1:
        return {n: client.get_config(n) for n in names}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cdlib-jobs") as pool:
        return dict(zip(names, pool.map(client.get_config, names), strict=True))


def _compare_item(act: Action, r: Remote, text: str | None, catalog: Catalog, renderer: Renderer) -> None:
    if text is None:  # deleted between the listing and the read
        act.action = "create"
        return
    act.server = text
    actual = parse_config(text)
    desired_item = act.wanted
    if act.kind == "job":
        spec = catalog.job(act.fullname)
        disabled = actual.find("disabled")
        if spec is not None and spec.disabled is None and disabled is not None and disabled.text == "true":
            # the catalog says nothing about it: keep a job disabled in the UI disabled
            desired_item = renderer.job(spec, disabled=True, rev=act.wanted.rev)
            act.desired = desired_item
        _drop_properties(actual, catalog.ignore_properties)
    desired = parse_config(desired_item.xml)
    act.changes = differences(desired, actual, act.kind)
    if not act.changes:
        return
    if not _ours(r.description, act.fullname):
        act.action = "adopt"
        act.detail = ("exists without cdlib's marker for it (made outside cdlib, copied from or renamed from a "
                      "managed job, or the marker was removed in the UI): apply takes it over")
    elif (m := marker(r.description)) is not None and m.name is None:
        act.action, act.detail = "update", "written by an older cdlib, whose marker names no item"
    elif m is not None and m.rev == desired_item.rev:
        act.action, act.detail = "drift", "changed in the Jenkins UI since the last apply: apply overwrites it"
    else:
        act.action, act.detail = "update", "the catalog changed since the last apply"
    act.diff = "".join(difflib.unified_diff(
        pretty(project(desired, actual, act.kind)).splitlines(keepends=True), pretty(desired).splitlines(keepends=True),
        f"jenkins:{act.fullname}", f"catalog:{act.fullname}", n=2))


def _orphans(remote: dict[str, Remote], desired: set[str], prune: bool) -> list[Action]:
    """Managed items that the catalog no longer has: delete (with --prune) or report them.

    ``desired`` holds the catalog's full names in lower case. Only an item whose marker names the
    item itself is a candidate: a copy or a renamed job keeps the marker of the job it came from.
    """
    candidates = {n for n, r in remote.items() if n.lower() not in desired and managed(r.description, n)[0]}
    out = []
    for name in sorted(candidates, key=lambda n: (n.count("/"), n)):
        r = remote[name]
        kind = "folder" if r.is_folder else "job"
        inside = _inside(remote, name)
        foreign = [n for n in inside if n not in candidates]
        if foreign:
            out.append(Action(name, kind, "keep", detail=f"managed by cdlib and no longer in the catalog, but it holds "
                                                          f"items that are not: {', '.join(sorted(foreign)[:3])}"))
            continue
        act = Action(name, kind, "delete" if prune else "orphan")
        act.detail = ("managed by cdlib and no longer in the catalog" +
                      ("" if prune else ": --prune deletes it"))
        parent = next((o for o in out if o.action in ("delete", "orphan") and name.startswith(o.fullname + "/")), None)
        if parent is not None:
            act.via = parent.fullname
            act.detail += f" (with its folder {parent.fullname})"
        out.append(act)
    return out


# ---- carrying it out ----------------------------------------------------------------------------------
def execute(p: Plan, catalog: Catalog, client: JenkinsClient, *, workers: int = 4) -> None:
    """Folders top-down, then jobs (in parallel), then deletions; fails at the first error."""
    folders = [a for a in p.actions if a.kind == "folder" and a.action in WRITE_ACTIONS and a.desired]
    jobs = [a for a in p.actions if a.kind == "job" and a.action in WRITE_ACTIONS and a.desired]
    for act in folders:
        _write(act, client, catalog)
    if workers <= 1 or len(jobs) <= 1:
        for act in jobs:
            _write(act, client, catalog)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cdlib-jobs") as pool:
            futures = [pool.submit(_write, act, client, catalog) for act in jobs]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            for f in futures:
                if f.done() and not f.cancelled() and (exc := f.exception()) is not None:
                    raise exc
    for act in p.actions:
        if act.action == "delete":
            if act.via is None:
                client.delete(act.fullname)
            act.done = True


def _write(act: Action, client: JenkinsClient, catalog: Catalog) -> None:
    item = act.wanted
    if act.action == "create":
        try:
            client.create(item.fullname, item.xml)
        except JenkinsBadRequest as exc:
            if "already exists" not in str(exc):
                raise
            client.update(item.fullname, item.xml)  # created by someone else since the listing
            act.detail = "created by someone else meanwhile: updated instead"
    elif act.action == "recreate":
        client.delete(item.fullname)
        client.create(item.fullname, item.xml)
    elif act.kind == "folder" and act.server is not None:
        client.update(item.fullname, merge_into(act.server, item.xml))
    else:
        client.update(item.fullname, item.xml)
    _read_back(act, client, catalog)
    act.done = True


def _read_back(act: Action, client: JenkinsClient, catalog: Catalog) -> None:
    text = client.get_config(act.fullname)
    if text is None:
        raise JenkinsError(f"{act.fullname}: written, but Jenkins does not have it when read back", item=act.fullname)
    actual = parse_config(text)
    _drop_properties(actual, catalog.ignore_properties)
    changes = differences(parse_config(act.wanted.xml), actual, act.kind)
    if changes:
        raise JenkinsError(f"{act.fullname}: Jenkins changed the config while saving it ({'; '.join(changes[:4])}): "
                           "is a plugin it needs missing? Jenkins drops what no installed plugin reads",
                           item=act.fullname, changes=changes)


# ---- the verbs ------------------------------------------------------------------------------------------
def diff(catalog: Catalog, client: JenkinsClient, *, prune: bool = False, recreate: bool = False,
         workers: int = 4) -> Outcome:
    t0 = time.monotonic()
    p = plan(catalog, client, prune=prune, recreate=recreate, workers=workers)
    return _outcome("diff", catalog, client, p, t0, dry_run=True)


def apply(catalog: Catalog, client: JenkinsClient, *, prune: bool = False, recreate: bool = False,
          dry_run: bool = False, workers: int = 4) -> Outcome:
    t0 = time.monotonic()
    p = plan(catalog, client, prune=prune, recreate=recreate, workers=workers)
    if dry_run:
        return _outcome("apply", catalog, client, p, t0, dry_run=True)
    if p.refused:
        names = ", ".join(a.fullname for a in p.refused[:5])
        error = ConfigError(f"nothing was changed: the type of {names} differs from the catalog; "
                            "run apply --recreate to delete and create them")
        return _outcome("apply", catalog, client, p, t0, dry_run=False, error=error)
    try:
        execute(p, catalog, client, workers=workers)
    except CdlibError as exc:
        done = sum(1 for a in p.actions if a.done)
        exc = type(exc)(f"{exc} ({done} of {_pending(p)} changes were made; apply again once fixed)", **exc.data)
        return _outcome("apply", catalog, client, p, t0, dry_run=False, error=exc)
    return _outcome("apply", catalog, client, p, t0, dry_run=False)


def _pending(p: Plan) -> int:
    return sum(1 for a in p.actions if a.action in WRITE_ACTIONS or (a.action == "delete"))


SUMMARY = (("create", "to create", "created"), ("update", "to update", "updated"),
           ("drift", "changed in the UI", "changed in the UI, overwritten"), ("adopt", "to adopt", "adopted"),
           ("recreate", "to recreate", "recreated"), ("delete", "to delete", "deleted"),
           ("refuse", "refused", "refused"), ("orphan", "orphaned", "orphaned"), ("keep", "kept", "kept"),
           ("unchanged", "unchanged", "unchanged"))


def _outcome(verb: str, catalog: Catalog, client: JenkinsClient, p: Plan, t0: float, *, dry_run: bool,
             error: CdlibError | None = None) -> Outcome:
    applied = verb == "apply" and not dry_run and error is None
    word = 2 if applied else 1
    counts = {a: p.count(a) for a, _, _ in SUMMARY}
    parts = [f"{counts[a]} {labels[word - 1]}" for a, *labels in SUMMARY if counts[a]]
    title = f"jobs {verb}" + (" --dry-run" if dry_run and verb == "apply" else "")
    head = (f"{title}: {', '.join(parts) or 'nothing in the catalog'} "
            f"({client.requests} requests, {client.writes} writes to {client.url})")
    lines = [head if error is None else f"{error}"]
    if error is not None:
        lines.append(head)
    for a in p.actions:
        if a.action != "unchanged":
            changes = f": {'; '.join(a.changes[:3])}" + (" ..." if len(a.changes) > 3 else "") if a.changes else ""
            lines.append(f"  {a.action:<9} {a.fullname}{changes}" + (f" ({a.detail})" if a.detail else ""))
    if verb == "diff":  # the diff verb shows what would change, line by line
        lines += [a.diff.rstrip("\n") for a in p.actions if a.diff]
    steps = [StepReport(a.fullname, a.action, 0.0, "; ".join(a.changes[:3]) or a.detail) for a in p.actions]
    data = {"action": verb, "dry_run": dry_run, "catalog": catalog.source, "url": client.url,
            "counts": counts, "requests": client.requests, "writes": client.writes,
            "seconds": round(time.monotonic() - t0, 3), "items": [a.to_dict() for a in p.actions]}
    ok = error is None
    return Outcome("jobs", "", ok, 0 if error is None else error.exit_code, "\n".join(lines), steps, data)
