"""A thin client over python-jenkins for job management, with errors reported by HTTP status.

python-jenkins 1.8 reports failures unevenly: a 400 (duplicate or unsafe name) comes
out as a bare ``requests.HTTPError``; 401, 403 and 500 all become "Possibly authentication failed";
a 404 loses its context. This client keeps the failing response (python-jenkins' response handler
is the one place every answer passes through), and turns it into a one-line JenkinsError subclass
chosen by status code, with what to check next:

    400 JenkinsBadRequest   Jenkins' own reason from X-Error (duplicate name, unsafe character)
    401 JenkinsAuthError    check JENKINS_USER and JENKINS_API_TOKEN
    403 JenkinsForbidden    the missing permission from X-Required-Permission (or the crumb)
    404 JenkinsNotFound     the item or its folder does not exist (or the user may not see it)
    500 JenkinsServerError  Jenkins' reason from its error page (bad XML, a root type change)
    --  JenkinsUnreachable  connection refused, DNS, timeout

Every error has ``status``. The API token never appears in a message or a repr.

Connection settings come from JENKINS_URL, JENKINS_USER and JENKINS_API_TOKEN. Every request has a
timeout (python-jenkins has none by default) and connection failures are retried. One
python-jenkins object is kept per thread, so ``sync`` can read configs in parallel.
"""

from __future__ import annotations

import html
import os
import re
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ConfigError, JenkinsError
from ..extras import require
from ..redact import redact_url

FOLDER_CLASSES = {"com.cloudbees.hudson.plugins.folder.Folder"}
PERMISSION_TITLES = {
    "hudson.model.Hudson.Read": "Overall/Read", "hudson.model.Hudson.Administer": "Overall/Administer",
    "hudson.model.Item.Read": "Job/Read", "hudson.model.Item.ExtendedRead": "Job/ExtendedRead",
    "hudson.model.Item.Create": "Job/Create", "hudson.model.Item.Configure": "Job/Configure",
    "hudson.model.Item.Delete": "Job/Delete", "hudson.model.Item.Build": "Job/Build",
}
_EXCEPTION_RE = re.compile(r"((?:java|javax|hudson|jenkins|org|com)\.[\w.$]+(?:Exception|Error|Failure))(?::[ \t]*([^\n]*))?")


class JenkinsHTTPError(JenkinsError):
    """Jenkins answered with an error status."""


class JenkinsBadRequest(JenkinsHTTPError):
    """400: Jenkins refused the request (duplicate name, unsafe character, missing parameter)."""


class JenkinsAuthError(JenkinsHTTPError):
    """401: the user name or the API token is wrong."""


class JenkinsForbidden(JenkinsHTTPError):
    """403: the user lacks a permission (or the CSRF crumb was refused)."""


class JenkinsNotFound(JenkinsHTTPError):
    """404: no such item (or folder), or one the user may not see."""


class JenkinsServerError(JenkinsHTTPError):
    """500: Jenkins failed to process the request, e.g. a config.xml it cannot read."""


class JenkinsUnreachable(JenkinsError):
    """No HTTP answer at all: connection refused, name resolution, timeout."""


@dataclass(frozen=True)
class Remote:
    """An item as the server lists it."""

    fullname: str
    item_class: str
    description: str | None = None

    @property
    def is_folder(self) -> bool:
        return self.item_class in FOLDER_CLASSES


def _job_path(fullname: str) -> str:
    return "".join(f"job/{urllib.parse.quote(p, safe='')}/" for p in fullname.split("/") if p)


def _header(response, name: str) -> str:
    """A header value; Jetty sends non-ASCII (Jenkins' curly quotes) as UTF-8 bytes."""
    value = response.headers.get(name) or ""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def server_reason(body: str) -> str:
    """Jenkins' reason from an error page: the first exception and its first cause."""
    text = html.unescape(re.sub(r"<[^>]+>", "\n", body or ""))
    found = _EXCEPTION_RE.findall(text)
    if not found:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return _one_line(" ".join(lines[:3])) if lines else "no reason given"
    first = f"{found[0][0]}: {found[0][1].strip()}" if found[0][1].strip() else found[0][0]
    cause = next((f for f in found[1:] if f[1].strip()), None)
    return _one_line(first + (f"; caused by {cause[0]}: {cause[1].strip()}" if cause else ""))


class JenkinsClient:
    """Job management over python-jenkins: list, read, create, update and delete items."""

    def __init__(self, url: str, user: str | None = None, token: str | None = None, *, timeout: float = 30.0,
                 retries: int = 2):
        if not re.fullmatch(r"https?://[^\s/@]+(?:/\S*)?", url or "", re.ASCII):
            raise ConfigError(f"JENKINS_URL: expected http(s)://host[:port][/path] without user or token, got "
                              f"{redact_url(url)!r}", key="JENKINS_URL")
        self.url = url if url.endswith("/") else url + "/"
        self.user = user
        self._token = token
        self.timeout = timeout
        self.retries = retries
        self._local = threading.local()
        self._lock = threading.Lock()
        self._servers: list = []
        self.requests = 0
        self.writes = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs) -> JenkinsClient:
        env = os.environ if env is None else env
        url = env.get("JENKINS_URL") or ""
        if not url:
            raise ConfigError("JENKINS_URL is not set: export JENKINS_URL=https://jenkins.example.com/ "
                              "(and JENKINS_USER, JENKINS_API_TOKEN)", key="JENKINS_URL")
        user, token = env.get("JENKINS_USER") or None, env.get("JENKINS_API_TOKEN") or None
        if bool(user) != bool(token):
            raise ConfigError("set both JENKINS_USER and JENKINS_API_TOKEN (an API token from the user's "
                              "Security page), or neither for anonymous access", key="JENKINS_USER")
        return cls(url, user, token, **kwargs)

    def close(self) -> None:
        """Close the HTTP sessions of every thread that used this client."""
        with self._lock:
            servers, self._servers = self._servers, []
        for server in servers:
            server._session.close()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"JenkinsClient(url={self.url!r}, user={self.user!r})"

    # -- python-jenkins, one object per thread ----------------------------------------------------
    def _server(self):
        server = getattr(self._local, "server", None)
        if server is None:
            server = _recording_class()(self.url, self.user, self._token, timeout=self.timeout,
                                        retries=self.retries)
            server.client = self
            self._local.server = server
            with self._lock:
                self._servers.append(server)
        server.failed = None
        return server

    def _count(self, method: str) -> None:
        with self._lock:
            self.requests += 1
            if method == "POST":
                self.writes += 1

    def _call(self, what: str, name: str, fn):
        jenkins = require("jenkins", "jenkins")
        import requests

        server = self._server()
        try:
            return fn(server)
        except (jenkins.JenkinsException, requests.RequestException, ValueError) as exc:
            raise self._translate(exc, server.failed, what, name) from None

    def _translate(self, exc: Exception, response, what: str, name: str) -> JenkinsError:
        jenkins = require("jenkins", "jenkins")
        import requests

        target = f"'{name}'" if name else "the root"
        if response is not None:
            return self._by_status(response, what, target, name)
        if isinstance(exc, (requests.Timeout, jenkins.TimeoutException)):
            return JenkinsUnreachable(f"Jenkins at {redact_url(self.url)} did not answer within {self.timeout:g}s "
                                      f"({what} {target}): check the server's load or raise --timeout", status=None)
        if isinstance(exc, requests.RequestException):
            reason = _one_line(str(getattr(exc, "args", [exc])[0] if getattr(exc, "args", None) else exc), 200)
            return JenkinsUnreachable(f"cannot reach Jenkins at {redact_url(self.url)} ({what} {target}): "
                                      f"{self._scrub(reason)}; check JENKINS_URL and the network", status=None)
        return JenkinsError(f"Jenkins: {what} {target} failed: {self._scrub(_one_line(str(exc)))}", status=None)

    def _by_status(self, response, what: str, target: str, name: str) -> JenkinsError:
        status = response.status_code
        body = response.text or ""
        if status == 400:
            reason = _header(response, "X-Error") or server_reason(body)
            return JenkinsBadRequest(f"Jenkins refused to {what} {target} (400): {reason}", status=400, item=name)
        if status == 401:
            who = f"user '{self.user}'" if self.user else "anonymous access"
            return JenkinsAuthError(f"Jenkins at {redact_url(self.url)} rejected {who} (401): check JENKINS_USER and "
                                    "JENKINS_API_TOKEN (an API token from the user's Security page, not a password)",
                                    status=401)
        if status == 403:
            permission = _header(response, "X-Required-Permission")
            user = _header(response, "X-You-Are-Authenticated-As") or self.user or "anonymous"
            if permission:
                title = PERMISSION_TITLES.get(permission, permission)
                hint = ("set JENKINS_USER and JENKINS_API_TOKEN" if user == "anonymous"
                        else "ask a Jenkins administrator to grant it")
                return JenkinsForbidden(f"Jenkins user '{user}' may not {what} {target} (403): missing the {title} "
                                        f"permission ({permission}); {hint}", status=403, permission=permission,
                                        item=name)
            if "crumb" in body.lower():
                return JenkinsForbidden(f"Jenkins refused the CSRF crumb ({what} {target}, 403): authenticate with "
                                        "an API token (JENKINS_USER, JENKINS_API_TOKEN), which needs no crumb",
                                        status=403, item=name)
            return JenkinsForbidden(f"Jenkins denied {what} {target} (403): {server_reason(body)}", status=403,
                                    item=name)
        if status == 404:
            folder = name.rpartition("/")[0]
            where = f"'{name}' or its folder '{folder}'" if folder else target
            return JenkinsNotFound(f"Jenkins has no {where} (404), or user '{self.user or 'anonymous'}' may not see "
                                   f"it (Job/Read): cannot {what} {target}", status=404, item=name)
        if status >= 500:
            return JenkinsServerError(f"Jenkins failed to {what} {target} ({status}): {server_reason(body)}",
                                      status=status, item=name)
        return JenkinsHTTPError(f"Jenkins answered {status} to {what} {target}: {server_reason(body)}",
                                status=status, item=name)

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    # -- operations ----------------------------------------------------------------------------
    def whoami(self) -> str:
        """The authenticated user's id (checks URL and credentials in one request)."""
        return self._call("read the user of", "", lambda s: s.get_whoami()).get("id", "")

    def version(self) -> str:
        def call(s):
            s._maybe_add_auth()  # python-jenkins' get_version skips authentication
            return s.get_version()

        return self._call("read the version of", "", call)

    def list_items(self, depth: int = 10) -> dict[str, Remote]:
        """Every item the user can see, by full name, with its class and description.

        One request for ``depth`` levels of folders (like python-jenkins' get_all_jobs), then one per
        folder found deeper down.
        """
        import requests

        fields = "name,description"
        tree = fields
        for _ in range(depth):
            tree = f"{fields},jobs[{tree}]"
        query = "api/json?tree=" + urllib.parse.quote(f"jobs[{tree}]", safe="[],")
        out: dict[str, Remote] = {}
        pending = [""]
        while pending:
            folder = pending.pop(0)
            url = self.url + _job_path(folder) + query
            answer = self._call("list the items of", folder,
                                lambda s, url=url: _json(s.jenkins_request(requests.Request("GET", url)), url))
            self._walk(folder, answer.get("jobs") or [], out, pending)
        return out

    def _walk(self, folder: str, jobs: list, out: dict, pending: list) -> None:
        for job in jobs:
            name = f"{folder}/{job['name']}" if folder else job["name"]
            out[name] = Remote(name, job.get("_class", ""), job.get("description"))
            if "jobs" in job:
                self._walk(name, job["jobs"] or [], out, pending)
            elif job.get("_class") in FOLDER_CLASSES:  # below the depth of this request: ask again
                pending.append(name)

    def get_config(self, fullname: str) -> str | None:
        """The item's config.xml as Jenkins serialises it, or None when it does not exist.

        Jenkins sends it as ``application/xml`` without a charset (it copies the file), so the text
        is decoded as its XML declaration says (UTF-8 from Jenkins), not as requests would guess.
        """
        jenkins = require("jenkins", "jenkins")
        import requests

        def call(s):
            folder_url, short_name = s._get_job_folder(fullname)
            url = s._build_url(jenkins.CONFIG_JOB, {"folder_url": folder_url, "short_name": short_name})
            return _xml_text(s.jenkins_request(requests.Request("GET", url)).content, fullname)

        try:
            return self._call("read the config of", fullname, call)
        except JenkinsNotFound:
            return None

    def create(self, fullname: str, xml: str) -> None:
        """POST createItem with the XML (the parent folder must exist)."""
        jenkins = require("jenkins", "jenkins")
        import requests

        def call(s):
            folder_url, short_name = s._get_job_folder(fullname)
            url = s._build_url(jenkins.CREATE_JOB, {"folder_url": folder_url, "short_name": short_name})
            s.jenkins_open(requests.Request("POST", url, data=xml.encode("utf-8"), headers=jenkins.DEFAULT_HEADERS))

        self._call("create", fullname, call)

    def update(self, fullname: str, xml: str) -> None:
        """POST config.xml (Jenkins refuses a different root element with a 500)."""
        self._call("update", fullname, lambda s: s.reconfig_job(fullname, xml))

    def delete(self, fullname: str) -> None:
        """POST doDelete: the item and, for a folder, everything in it."""
        self._call("delete", fullname, lambda s: s.delete_job(fullname))


def _json(response, url: str) -> dict:
    """The JSON of a read API answer; anything else means JENKINS_URL is not a Jenkins."""
    import json

    try:
        doc = json.loads(response.text)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        kind = (response.headers.get("Content-Type") or "no content type").split(";")[0]
        raise JenkinsError(f"{redact_url(url.split('?')[0])} answered {response.status_code} with {kind}, not "
                           "Jenkins' JSON: check that JENKINS_URL is the Jenkins root (a login page of a proxy "
                           "in front of Jenkins answers like this too)", status=response.status_code)
    return doc


_DECLARED_ENCODING = re.compile(rb"^\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']")


def _xml_text(data: bytes, fullname: str) -> str:
    """A config.xml's bytes as text, in the encoding its declaration names (UTF-8 without one)."""
    import codecs

    m = _DECLARED_ENCODING.match(data)
    encoding = m.group(1).decode("ascii") if m else "utf-8"
    try:
        codecs.lookup(encoding)
    except LookupError:
        encoding = "utf-8"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise JenkinsError(f"the config.xml of '{fullname}' is not valid {encoding}: {exc.reason} at byte "
                           f"{exc.start}", item=fullname) from exc


_RECORDING = None


def _recording_class():
    """python-jenkins' client, remembering the last failed response and counting requests."""
    global _RECORDING
    if _RECORDING is None:
        jenkins = require("jenkins", "jenkins")

        class Recording(jenkins.Jenkins):
            failed = None
            client: JenkinsClient | None = None

            def _request(self, req, stream=None):
                # the failure to report is the one of the last request: a 404 from the crumb issuer
                # (crumbs off) must not be reported for a later request that timed out
                self.failed = None
                if self.client is not None:
                    self.client._count(req.method)
                return super()._request(req, stream)

            def _response_handler(self, response):
                if response.status_code >= 400:
                    self.failed = response
                return super()._response_handler(response)

        _RECORDING = Recording
    return _RECORDING
