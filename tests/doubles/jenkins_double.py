"""A Jenkins controller double: the part of Jenkins' HTTP API that job management uses, answering
the way Jenkins core answers (ItemGroupMixIn, AbstractItem.doConfigDotXml, CrumbFilter), so that python-jenkins and
cdlib's client behave against it as they do against the real thing.

- Items: a tree of folders and jobs. Every URL under a missing folder (or of an item the caller may
  not read) is a 404, as Jenkins hides what you cannot see. Names ignore case, as Jenkins' item maps
  do (``CaseInsensitiveComparator``): ``job/TEAM/`` is the folder ``team``, and ``Team`` cannot be
  created beside it.
- ``createItem`` with an XML body: 200 with an empty body; as a form with ``mode=<folder class>``:
  302 to ``job/NAME/configure``, which is served (python-jenkins follows it); duplicate or unsafe
  names: 400 with ``X-Error`` (``A job already exists with the name ‘x’``, ``‘:’ is an unsafe
  character``); no Content-Type: 400 ``No Content-Type header set``; a form without mode: 400
  ``No mode given``; malformed XML: 500 (and nothing is created); a missing parent folder: 404.
- ``config.xml``: GET returns the stored config as ``application/xml`` without a charset (Jenkins
  copies the file to the response), re-serialised as Jenkins does: an XML 1.1
  declaration with double quotes, ``plugin="name@version"`` attributes on plugin classes, two-space
  indentation, ``&quot;``/``&apos;`` in text, ``<actions/>`` added, and default fields filled in
  (``removeLastBuild`` in a LogRotator, ``abortPrevious``, the Git plugin's submodule fields, a
  string parameter's ``trim``). Elements of plugins named in ``missing_plugins`` are dropped when a
  config is stored, like Jenkins drops what no installed plugin can read. POST: 200 with an empty
  body; malformed XML or a different root element: 500 with Jenkins' IOException text.
- ``doDelete``: deletes the whole subtree, 302 to the parent; ``build``: 201 with a queue
  ``Location``; ``api/json`` with ``?tree=`` (nested) and ``_class`` everywhere; ``X-Jenkins`` on
  every answer.
- Security: with ``users`` ({user: api token}) Basic auth is checked (401 with
  ``WWW-Authenticate``); ``permissions`` ({user: {permission ids}}) gives 403 with
  ``X-You-Are-Authenticated-As`` and ``X-Required-Permission``; anonymous callers get 403
  "Authentication required" unless ``anonymous_read``. Crumbs are served at ``crumbIssuer/api/json``
  when ``crumbs`` is on; an anonymous POST (or any POST with ``strict_crumbs``) needs the crumb header.

``requests`` records every request (method, path, query, status, user); ``writes`` counts the
requests that changed something. ``ui_*`` methods change items directly, as a person in the UI would.
"""

from __future__ import annotations

import base64
import hashlib
import html
import itertools
import json
import re
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FOLDER_CLASS = "com.cloudbees.hudson.plugins.folder.Folder"
JOB_CLASS = "org.jenkinsci.plugins.workflow.job.WorkflowJob"
ROOT_CLASSES = {"flow-definition": JOB_CLASS, "project": "hudson.model.FreeStyleProject"}
GROUP_CLASSES = {FOLDER_CLASS, "org.jenkinsci.plugins.workflow.multibranch.WorkflowMultiBranchProject"}
UNSAFE = set("?*/\\%!@#$^&|<>[]:;")

# element (tag, or class attribute) -> plugin, for the plugin="..." attributes and missing plugins
PLUGIN_OF = {
    "flow-definition": "workflow-job@1436.vfa_244484591f",
    "org.jenkinsci.plugins.workflow.cps.CpsScmFlowDefinition": "workflow-cps@3894.vd0f0248b_a_fc4",
    "org.jenkinsci.plugins.workflow.cps.CpsFlowDefinition": "workflow-cps@3894.vd0f0248b_a_fc4",
    "hudson.plugins.git.GitSCM": "git@5.2.2",
    "com.cloudbees.jenkins.GitHubPushTrigger": "github@1.40.0",
    FOLDER_CLASS: "cloudbees-folder@6.955.v81e2a_35c08d3",
    "com.cloudbees.hudson.plugins.folder.health.WorstChildHealthMetric": "cloudbees-folder@6.955.v81e2a_35c08d3",
}

PERMISSION_TITLES = {
    "hudson.model.Hudson.Read": "Overall/Read", "hudson.model.Hudson.Administer": "Overall/Administer",
    "hudson.model.Item.Read": "Job/Read", "hudson.model.Item.ExtendedRead": "Job/ExtendedRead",
    "hudson.model.Item.Create": "Job/Create", "hudson.model.Item.Configure": "Job/Configure",
    "hudson.model.Item.Delete": "Job/Delete", "hudson.model.Item.Build": "Job/Build",
}
IMPLIED = {"hudson.model.Item.ExtendedRead": "hudson.model.Item.Configure"}
ALL_PERMISSIONS = frozenset(PERMISSION_TITLES)
WRITE_ACTIONS = ("createItem", "config.xml", "doDelete")


class Reply(Exception):
    """An HTTP answer raised from deep inside a handler."""

    def __init__(self, status: int, body: str = "", headers: dict | None = None, content_type="text/html",
                 charset: bool = True):
        super().__init__(status)
        self.status, self.body, self.headers, self.content_type = status, body, headers or {}, content_type
        self.charset = charset


def _page(title: str, text: str) -> str:
    return (f"<html><head><title>{html.escape(title)} [Jenkins]</title></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>")


def _failure(status: int, message: str) -> Reply:
    """Jenkins' Failure: an error page plus the message in X-Error."""
    return Reply(status, _page("Error", message), {"X-Error": message})


def _oops(text: str) -> Reply:
    """An uncaught exception: Jenkins' "oops" page with the stack trace text."""
    return Reply(500, "<html><head><title>Jenkins [Jenkins]</title></head><body><h2>Oops!</h2>"
                      f"<pre>{html.escape(text)}\n\tat hudson.model.AbstractItem.updateByXml(AbstractItem.java:846)"
                      "</pre></body></html>")


@dataclass
class Item:
    name: str
    parent: Item | None
    root: str = ""  # the root element of its config.xml
    config: ET.Element | None = None
    children: dict = field(default_factory=dict)  # by name in lower case: Jenkins ignores case
    queue: int = 0

    @property
    def item_class(self) -> str:
        return ROOT_CLASSES.get(self.root, self.root) if self.root else "hudson.model.Hudson"

    @property
    def is_group(self) -> bool:
        return self.parent is None or self.item_class in GROUP_CLASSES

    @property
    def fullname(self) -> str:
        parts = []
        node = self
        while node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/".join(reversed(parts))

    @property
    def url_path(self) -> str:
        return "".join(f"job/{urllib.parse.quote(p)}/" for p in self.fullname.split("/") if p)

    def field(self, tag: str) -> str:
        el = self.config.find(tag) if self.config is not None else None
        return (el.text or "") if el is not None else ""


@dataclass
class Request:
    method: str
    path: str
    query: str
    status: int
    user: str


def check_good_name(name: str) -> str | None:
    """Jenkins.checkGoodName: the message of the Failure it throws, or None."""
    if not name or not name.strip():
        return "No name is specified"
    if name in (".", ".."):
        return f"“{name}” is not an allowed name"
    for ch in name:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            return f"‘{ch}’ is an unsafe character"
        if ch in UNSAFE:
            return f"‘{ch}’ is an unsafe character"
    if name.endswith("."):
        return "A name cannot end with ‘.’"
    return None


# ---- XML as Jenkins re-serialises it --------------------------------------------------------------
def _parse(text: bytes | str) -> ET.Element:
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    text = re.sub(r"^\s*<\?xml[^>]*\?>", "", text, count=1)  # expat refuses a 1.1 declaration
    return ET.fromstring(text)


def _strip_whitespace(el: ET.Element) -> None:
    if len(el) and el.text is not None and not el.text.strip():
        el.text = None
    for child in el:
        child.tail = None
        _strip_whitespace(child)


def _element_key(el: ET.Element) -> str:
    return el.get("class") or el.tag


def _drop_missing(el: ET.Element, missing: set[str]) -> None:
    for child in list(el):
        plugin = PLUGIN_OF.get(_element_key(child)) or PLUGIN_OF.get(child.tag)
        if plugin and plugin.split("@")[0] in missing:
            el.remove(child)
        else:
            _drop_missing(child, missing)


def _ensure(parent: ET.Element, tag: str, text: str | None = None, after: str | None = None,
            index: int | None = None, attrib: dict | None = None) -> None:
    if parent.find(tag) is not None:
        return
    el = ET.Element(tag, attrib or {})
    el.text = text
    if index is not None:
        parent.insert(index, el)
        return
    pos = len(parent)
    if after is not None:
        found = [i for i, c in enumerate(parent) if c.tag == after]
        pos = found[0] + 1 if found else pos
    parent.insert(pos, el)


def _fill_defaults(root: ET.Element) -> None:
    """The fields Jenkins writes although the uploaded config left them out."""
    if root.tag == "flow-definition" or root.tag in GROUP_CLASSES:
        _ensure(root, "actions", index=0)
    for rotator in root.iter("strategy"):
        if rotator.get("class") == "hudson.tasks.LogRotator":
            _ensure(rotator, "removeLastBuild", "false")
    for prop in root.iter("org.jenkinsci.plugins.workflow.job.properties.DisableConcurrentBuildsJobProperty"):
        _ensure(prop, "abortPrevious", "false")
    for scm in root.iter("scm"):
        if scm.get("class") == "hudson.plugins.git.GitSCM":
            _ensure(scm, "doGenerateSubmoduleConfigurations", "false", after="branches")
            _ensure(scm, "submoduleCfg", after="doGenerateSubmoduleConfigurations", attrib={"class": "empty-list"})
    for param in root.iter("hudson.model.StringParameterDefinition"):
        _ensure(param, "trim", "false")


def _add_plugins(el: ET.Element) -> None:
    plugin = PLUGIN_OF.get(_element_key(el)) or PLUGIN_OF.get(el.tag)
    if plugin and "plugin" not in el.attrib:
        el.set("plugin", plugin)
    for child in el:
        _add_plugins(child)


def _escape_text(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&apos;").replace("\r", "&#xd;"))


def _write(el: ET.Element, depth: int, out: list[str]) -> None:
    pad = "  " * depth
    attrs = "".join(f' {k}="{html.escape(v, quote=True)}"' for k, v in el.attrib.items())
    if len(el):
        out.append(f"{pad}<{el.tag}{attrs}>")
        for child in el:
            _write(child, depth + 1, out)
        out.append(f"{pad}</{el.tag}>")
    elif el.text:
        out.append(f"{pad}<{el.tag}{attrs}>{_escape_text(el.text)}</{el.tag}>")
    else:
        out.append(f"{pad}<{el.tag}{attrs}/>")


def serialise(root: ET.Element) -> str:
    out = ['<?xml version="1.1" encoding="UTF-8"?>']
    _write(root, 0, out)
    return "\n".join(out)


# ---- the tree= parameter ----------------------------------------------------------------------------
def parse_tree(spec: str) -> dict:
    """'jobs[name,jobs[name]],mode' -> {'jobs': {'name': None, 'jobs': {'name': None}}, 'mode': None}"""
    spec = re.sub(r"\{[^}]*\}", "", spec)
    pos = 0

    def level() -> dict:
        nonlocal pos
        out: dict = {}
        name = ""
        while pos < len(spec):
            ch = spec[pos]
            pos += 1
            if ch == "[":
                out[name.strip()] = level()
                name = ""
            elif ch == "]":
                break
            elif ch == ",":
                if name.strip():
                    out[name.strip()] = None
                name = ""
            else:
                name += ch
        if name.strip():
            out[name.strip()] = None
        return out

    return level()


# ---- the server ----------------------------------------------------------------------------------------
class JenkinsDouble:
    def __init__(self, *, users: dict[str, str] | None = None, permissions: dict[str, set[str]] | None = None,
                 anonymous_read: bool = False, crumbs: bool = True, strict_crumbs: bool = False,
                 missing_plugins: tuple[str, ...] = (), serve_configure: bool = True, version: str = "2.462.3",
                 prefix: str = ""):
        self.users = users
        self.permissions = permissions
        self.anonymous_read = anonymous_read
        self.crumbs = crumbs
        self.strict_crumbs = strict_crumbs
        self.missing_plugins = set(missing_plugins)
        self.serve_configure = serve_configure
        self.version = version
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.root = Item("", None)
        self.requests: list[Request] = []
        self._lock = threading.RLock()
        self._queue = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> JenkinsDouble:
        double = self

        class Handler(_Handler):
            server_double = double

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="jenkins-double", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> JenkinsDouble:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the double first"
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.prefix}/"

    # -- the request log -------------------------------------------------------------------------
    @property
    def writes(self) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.method == "POST" and r.status < 400
                       and r.path.rsplit("/", 1)[-1] in WRITE_ACTIONS)

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def crumb_for(self, user: str) -> str:
        return hashlib.sha256(f"cdlibt-crumb:{user}".encode()).hexdigest()[:32]

    # -- items, as the UI sees them --------------------------------------------------------------
    def item(self, fullname: str) -> Item | None:
        node = self.root
        for part in [p for p in fullname.split("/") if p]:
            node = node.children.get(part.lower()) if node.is_group else None
            if node is None:
                return None
        return node

    def exists(self, fullname: str) -> bool:
        return self.item(fullname) is not None

    def config(self, fullname: str) -> str:
        with self._lock:
            it = self.item(fullname)
            assert it is not None and it.config is not None, fullname
            return serialise(self._served(it.config))

    def names(self) -> list[str]:
        """Every item's full name, parents before children."""
        out = []

        def walk(node: Item) -> None:
            for child in sorted(node.children.values(), key=lambda c: c.name):
                out.append(child.fullname)
                if child.is_group:
                    walk(child)

        with self._lock:
            walk(self.root)
        return out

    def ui_create(self, fullname: str, xml: str) -> None:
        with self._lock:
            parent_name, _, name = fullname.rpartition("/")
            parent = self.item(parent_name)
            assert parent is not None and parent.is_group and name.lower() not in parent.children, fullname
            self._store_new(parent, name, xml.encode())

    def ui_create_folder(self, fullname: str) -> None:
        self.ui_create(fullname, f"<{FOLDER_CLASS}><properties/></{FOLDER_CLASS}>")

    def ui_set_config(self, fullname: str, xml: str) -> None:
        with self._lock:
            it = self.item(fullname)
            assert it is not None, fullname
            self._store(it, xml.encode(), creating=False)

    def ui_edit(self, fullname: str, path: str, text: str) -> None:
        """Change one element's text, e.g. ui_edit("a/b", "description", "new")."""
        with self._lock:
            it = self.item(fullname)
            el = it.config.find(path)
            assert el is not None, path
            el.text = text

    # -- storing configs ---------------------------------------------------------------------------
    def _store_new(self, parent: Item, name: str, body: bytes) -> Item:
        item = Item(name, parent)
        self._store(item, body, creating=True)
        parent.children[name.lower()] = item
        return item

    def _store(self, item: Item, body: bytes, creating: bool) -> None:
        try:
            root = _parse(body)
        except (ET.ParseError, UnicodeDecodeError) as exc:
            what = "Failed to persist config.xml" if creating else "Failed to process config.xml"
            raise _oops(f"java.io.IOException: {what}\nCaused by: com.ctc.wstx.exc.WstxParsingException: {exc}") from None
        if not creating and root.tag != item.root:
            raise _oops(f"java.io.IOException: Expecting class {item.item_class} but got class "
                        f"{ROOT_CLASSES.get(root.tag, root.tag)} instead")
        _strip_whitespace(root)
        for el in root.iter():
            el.attrib.pop("plugin", None)
        _drop_missing(root, self.missing_plugins)
        _fill_defaults(root)
        item.root = root.tag
        item.config = root

    def _served(self, config: ET.Element) -> ET.Element:
        copy = ET.fromstring(ET.tostring(config))
        _add_plugins(copy)
        return copy

    # -- JSON ---------------------------------------------------------------------------------------
    def _fields(self, item: Item) -> dict:
        url = self.url + item.url_path
        if item.parent is None:
            return {"_class": "hudson.model.Hudson", "mode": "NORMAL", "nodeDescription": "the Jenkins controller's "
                    "built-in node", "nodeName": "", "numExecutors": 2, "description": None,
                    "useSecurity": self.users is not None, "url": url}
        out = {"_class": item.item_class, "name": item.name, "fullName": item.fullname, "displayName": item.name,
               "fullDisplayName": item.fullname.replace("/", " » "), "url": url,
               "description": item.field("description") or None}
        if not item.is_group:
            disabled = item.field("disabled") == "true"
            out.update({"buildable": not disabled, "color": "disabled" if disabled else "notbuilt",
                        "inQueue": False, "keepDependencies": False, "nextBuildNumber": 1, "builds": [],
                        "lastBuild": None, "property": []})
        return out

    def describe(self, item: Item, tree: dict | None, user: str) -> dict:
        base = self._fields(item)
        children = [c for _, c in sorted(item.children.items())] if item.is_group else []
        children = [c for c in children if self._may(user, "hudson.model.Item.Read")]
        if tree is None:
            out = dict(base)
            if item.is_group:
                out["jobs"] = [{k: v for k, v in self._fields(c).items() if k in ("_class", "name", "url", "color")}
                               for c in children]
            return out
        out = {"_class": base["_class"]}
        for key, sub in tree.items():
            if key == "jobs" and item.is_group:
                out["jobs"] = [self.describe(c, sub or {}, user) for c in children]
            elif key in base:
                out[key] = base[key]
        return out

    # -- security -----------------------------------------------------------------------------------
    def _may(self, user: str, permission: str) -> bool:
        if self.permissions is None:
            return user != "anonymous" or self.anonymous_read or self.users is None
        granted = self.permissions.get(user, set())
        return permission in granted or (permission in IMPLIED and IMPLIED[permission] in granted)

    def need(self, user: str, permission: str) -> None:
        if self._may(user, permission):
            return
        if permission == "hudson.model.Item.Read":
            raise Reply(404, _page("Not Found", "Not Found"))
        headers = {"X-You-Are-Authenticated-As": user, "X-Required-Permission": permission}
        if user == "anonymous":
            body = ('<html><head><meta http-equiv="refresh" content="1;url=/login?from=%2F"/></head>'
                    "<body>Authentication required</body></html>")
            raise Reply(403, body, headers)
        title = PERMISSION_TITLES.get(permission, permission)
        raise Reply(403, _page("Access Denied", f"{user} is missing the {title} permission"), headers)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no ~40 ms delayed-ACK stall per keep-alive request
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stalls
    server_double: JenkinsDouble

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    # -- plumbing ---------------------------------------------------------------------------------
    def _handle(self, method: str) -> None:
        d = self.server_double
        parsed = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        user = "anonymous"
        try:
            path = parsed.path
            if d.prefix and not (path == d.prefix or path.startswith(d.prefix + "/")):
                raise Reply(404, _page("Not Found", path))
            path = path[len(d.prefix):]
            user = self._authenticate()
            with d._lock:
                reply = self._route(method, path, urllib.parse.parse_qs(parsed.query), body, user)
        except Reply as r:
            reply = r
        except Exception as exc:  # a bug in the double: answer like Jenkins' oops page, keep serving
            reply = _oops(f"{type(exc).__name__}: {exc}")
        with d._lock:
            d.requests.append(Request(method, parsed.path, parsed.query, reply.status, user))
        payload = reply.body.encode("utf-8")
        self.send_response(reply.status)
        self.send_header("X-Jenkins", d.version)
        self.send_header("Content-Type", reply.content_type + (";charset=utf-8" if reply.charset else ""))
        self.send_header("Content-Length", str(len(payload)))
        for k, v in reply.headers.items():
            # Jenkins' messages have curly quotes; Jetty sends them as UTF-8 bytes
            self.send_header(k, v.encode("utf-8").decode("latin-1"))
        self.end_headers()
        self.wfile.write(payload)

    def _authenticate(self) -> str:
        d = self.server_double
        header = self.headers.get("Authorization") or ""
        if not header.startswith("Basic ") or d.users is None:
            return "anonymous"
        try:
            user, _, token = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            user, token = "", ""
        if d.users.get(user) != token or not token:
            raise Reply(401, _page("Unauthorized", f"Invalid password/token for user: {user}"),
                        {"WWW-Authenticate": 'Basic realm="Jenkins"'})
        return user

    def _form(self, body: bytes) -> dict:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype == "application/x-www-form-urlencoded":
            return urllib.parse.parse_qs(body.decode("utf-8"))
        return {}

    # -- routes ---------------------------------------------------------------------------------------
    def _route(self, method: str, path: str, query: dict, body: bytes, user: str) -> Reply:
        d = self.server_double
        segments = [urllib.parse.unquote(s) for s in path.split("/") if s != ""]
        if segments[:1] == ["crumbIssuer"]:
            if not d.crumbs:
                raise Reply(404, _page("Not Found", "no crumb issuer"))
            return Reply(200, json.dumps({"_class": "hudson.security.csrf.DefaultCrumbIssuer",
                                          "crumb": d.crumb_for(user), "crumbRequestField": "Jenkins-Crumb"}),
                         content_type="application/json")
        d.need(user, "hudson.model.Hudson.Read")
        if method == "POST" and d.crumbs and (user == "anonymous" or d.strict_crumbs):
            if self.headers.get("Jenkins-Crumb") != d.crumb_for(user):
                raise Reply(403, _page("Error", "No valid crumb was included in the request"))
        if segments[:1] == ["me"]:
            return Reply(200, json.dumps({"_class": "hudson.model.User", "id": user, "fullName": user}),
                         content_type="application/json")
        item = d.root
        while len(segments) >= 2 and segments[0] == "job":
            child = item.children.get(segments[1].lower()) if item.is_group else None
            if child is None or not d._may(user, "hudson.model.Item.Read"):
                raise Reply(404, _page("Not Found", "Not Found"))
            item = child
            segments = segments[2:]
        action = "/".join(segments)
        if action == "api/json" and method == "GET":
            tree = parse_tree(query["tree"][0]) if "tree" in query else None
            return Reply(200, json.dumps(d.describe(item, tree, user)), content_type="application/json")
        if action == "createItem" and method == "POST" and item.is_group:
            return self._create(item, query, body, user)
        if item.parent is not None and action == "config.xml":
            return self._config(item, method, body, user)
        if item.parent is not None and action == "doDelete" and method == "POST":
            d.need(user, "hudson.model.Item.Delete")
            del item.parent.children[item.name.lower()]
            return Reply(302, "", {"Location": d.url + item.parent.url_path})
        if item.parent is not None and action == "configure" and method == "GET":
            if not d.serve_configure:
                raise Reply(404, _page("Not Found", "Not Found"))
            d.need(user, "hudson.model.Item.Configure")
            return Reply(200, _page(f"{item.fullname} Config", "configure"))
        if item.parent is not None and action in ("build", "buildWithParameters") and method == "POST":
            d.need(user, "hudson.model.Item.Build")
            return Reply(201, "", {"Location": f"{d.url}queue/item/{next(d._queue)}/"})
        if action == "" and method == "GET":
            return Reply(200, _page(item.fullname or "Dashboard", "Jenkins"))
        raise Reply(404, _page("Not Found", "Not Found"))

    def _create(self, parent: Item, query: dict, body: bytes, user: str) -> Reply:
        d = self.server_double
        d.need(user, "hudson.model.Item.Create")
        form = self._form(body)
        name = (query.get("name") or form.get("name") or [None])[0]
        mode = (query.get("mode") or form.get("mode") or [None])[0]
        if name is None:
            raise _failure(400, "Query parameter 'name' is required")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        is_xml = ctype in ("text/xml", "application/xml")
        if mode != "copy" and not is_xml and not ctype:
            raise _failure(400, "No Content-Type header set")
        problem = check_good_name(name)
        if problem:
            raise _failure(400, problem)
        if name.lower() in parent.children:
            raise _failure(400, f"A job already exists with the name ‘{name}’")
        if mode == "copy":
            source = parent.children.get((query.get("from") or form.get("from") or [""])[0].lower())
            if source is None:
                raise _failure(400, "No such job: " + str(query.get("from")))
            d._store_new(parent, name, ET.tostring(source.config))
            return Reply(302, "", {"Location": d.url + parent.url_path + f"job/{urllib.parse.quote(name)}/"})
        if is_xml:
            d._store_new(parent, name, body)
            return Reply(200, "")
        if mode is None:
            raise _failure(400, "No mode given")
        if mode not in GROUP_CLASSES and mode not in ROOT_CLASSES.values():
            raise _failure(400, f"No item type ‘{mode}’ is known")
        root = mode if mode in GROUP_CLASSES else next(t for t, c in ROOT_CLASSES.items() if c == mode)
        d._store_new(parent, name, f"<{root}/>".encode())
        return Reply(302, "", {"Location": d.url + parent.url_path + f"job/{urllib.parse.quote(name)}/configure"})

    def _config(self, item: Item, method: str, body: bytes, user: str) -> Reply:
        d = self.server_double
        if method == "GET":
            d.need(user, "hudson.model.Item.ExtendedRead")
            return Reply(200, serialise(d._served(item.config)), content_type="application/xml", charset=False)
        d.need(user, "hudson.model.Item.Configure")
        d._store(item, body, creating=False)
        return Reply(200, "")
