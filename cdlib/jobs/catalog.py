"""The job catalog (``jenkins/catalog.yml``): defaults plus one entry per microservice.

    defaults:            any job key below; every service inherits it
      branch: "*/main"
      folder: services
      keep_builds: 30
      triggers: {github_push: true}
    ignore_properties: [] # job property classes a plugin adds on the server, left out of comparisons
    services:
      - name: orders                       # required: a cdlib service name, also the job name
        repository: git@git.example.com:shop/orders.git   # required
        folder: shop/services              # nested folders with "/"; "" is the Jenkins root
        branch: "*/main"                   # a Git branch spec
        credentials: git-ci                # Jenkins credentials id for the checkout
        jenkinsfile: Jenkinsfile           # path of the pipeline script in the repository
        lightweight: true                  # read only the Jenkinsfile before the build checks out
        description: Orders API
        keep_builds: 30                    # build discarder: keep N builds (null: keep all)
        disabled: null                     # true/false; null keeps what the server has
        triggers:
          scm_poll: "H/5 * * * *"          # SCMTrigger (polling)
          github_push: true                # GitHubPushTrigger (webhook)
          cron: "H 2 * * *"                # TimerTrigger (periodic builds)
        parameters:                        # replaces the defaults' list
          - {name: LOCK_WAIT, type: string, default: "300", description: ..., trim: true}
          - {name: DRY_RUN, type: boolean, default: false}
          - {name: TARGET, type: choice, choices: [blue-green, canary]}   # the first is the default

A service's keys override the defaults (``triggers`` key by key, the rest whole). Every value is
checked; a bad one raises ConfigError (exit code 2) with one line naming the file and the key.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..config.schema import Reader, read_yaml
from ..errors import ConfigError
from ..model import SERVICE_RE

DEFAULT_CATALOG = "jenkins/catalog.yml"

# Jenkins.checkGoodName rejects these anywhere in an item name
JENKINS_UNSAFE = set("?*/\\%!@#$^&|<>[]:;")
# anchored with \Z, not $ (which also matches before a trailing newline); used with fullmatch
FOLDER_SEGMENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z", re.ASCII)
REPOSITORY_RE = re.compile(r"(?:(?:https?|ssh|git|file)://[^\s\x00-\x1f\x7f-\x9f]+"
                           r"|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\s\x00-\x1f\x7f-\x9f]+)\Z")
BRANCH_RE = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]{1,200}\Z")
CREDENTIALS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}\Z", re.ASCII)
SCRIPT_PATH_RE = re.compile(r"(?!/)(?!(?:.*/)?\.\.(?:/|\Z))[^\x00-\x1f\x7f-\x9f\u2028\u2029\\]{1,200}\Z")
PARAM_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z", re.ASCII)
PROPERTY_CLASS_RE = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*(?:\.[A-Za-z_$][A-Za-z0-9_$]*)+\Z", re.ASCII)
CRON_FIELD_RE = re.compile(r"[0-9H*/,()-]+\Z", re.ASCII)
CRON_ALIASES = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
# The rendered config.xml declares XML 1.1, as Jenkins writes it. XML 1.1 forbids C1 controls (U+007F
# to U+009F) in text and turns NEL, U+2028 and U+2029 into line feeds when Jenkins parses the upload,
# so such a character would come back changed on every read: refused here, with lone surrogates and
# the non-characters U+FFFE/U+FFFF (not XML at all).
_NOT_XML_TEXT = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff"
TEXT_RE = re.compile(f"[^{_NOT_XML_TEXT}]*\\Z")
CHOICE_RE = re.compile(f"[^\n\r\t{_NOT_XML_TEXT}]{{1,200}}\\Z")
MARKER_TEXT = "[managed by cdlib"

JOB_KEYS = {"name", "repository", "folder", "branch", "credentials", "jenkinsfile", "lightweight", "description",
            "keep_builds", "disabled", "triggers", "parameters"}
TRIGGER_KEYS = {"scm_poll", "github_push", "cron"}
PARAM_TYPES = ("string", "boolean", "choice")


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str  # string | boolean | choice
    description: str = ""
    default: str | bool = ""
    choices: tuple[str, ...] = ()
    trim: bool = False


@dataclass(frozen=True)
class Triggers:
    scm_poll: str | None = None
    github_push: bool = False
    cron: str | None = None

    def __bool__(self) -> bool:
        return bool(self.scm_poll or self.github_push or self.cron)


@dataclass(frozen=True)
class JobSpec:
    """One microservice's pipeline job."""

    name: str
    repository: str
    folder: str = ""
    branch: str = "*/main"
    credentials: str | None = None
    jenkinsfile: str = "Jenkinsfile"
    lightweight: bool = True
    description: str = ""
    keep_builds: int | None = None
    disabled: bool | None = None  # None: keep the server's state
    triggers: Triggers = Triggers()
    parameters: tuple[Parameter, ...] = ()

    @property
    def fullname(self) -> str:
        return f"{self.folder}/{self.name}" if self.folder else self.name


@dataclass(frozen=True)
class Catalog:
    source: str
    jobs: tuple[JobSpec, ...]
    ignore_properties: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()  # every folder the jobs need, parents before children

    @cached_property
    def _by_name(self) -> dict[str, JobSpec]:
        return {j.fullname: j for j in self.jobs}

    def job(self, fullname: str) -> JobSpec | None:
        return self._by_name.get(fullname)


def jenkins_name_problem(name: str) -> str | None:
    """What Jenkins' checkGoodName would say about an item name, or None when it is acceptable."""
    if not name:
        return "the name is empty"
    if name in (".", ".."):
        return f"‘{name}’ is not an allowed name"
    for ch in name:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            return f"‘{ch!r}’ is an unsafe character (a control character)"
        if ch in JENKINS_UNSAFE:
            return f"‘{ch}’ is an unsafe character"
    if name.endswith("."):
        return "a name cannot end with ‘.’"
    return None


def folder_chain(folder: str) -> list[str]:
    """'a/b/c' -> ['a', 'a/b', 'a/b/c']: the folders that must exist, top-down."""
    parts = folder.split("/") if folder else []
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


# ------------------------------------------------------------------------------------------------
def load(path: str | os.PathLike | None = None) -> Catalog:
    """Read and check a catalog file (default jenkins/catalog.yml)."""
    path = Path(path or DEFAULT_CATALOG)
    data = read_yaml(path, "catalog", "pass --catalog PATH")
    return parse(data, str(path))


def parse(data: object, source: str = DEFAULT_CATALOG) -> Catalog:
    """Check a parsed catalog; raise ConfigError naming the first bad key."""
    r = Reader(source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with defaults and services at the top level",
                          file=source, key="")
    r.only(data, "", {"defaults", "services", "ignore_properties"})
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise r.fail("defaults", "a mapping of job keys", defaults)
    r.only(defaults, "defaults", JOB_KEYS - {"name", "repository"})
    base = _fields(r, defaults, "defaults")
    services = data.get("services")
    if not isinstance(services, list) or not services:
        raise r.fail("services", "a non-empty list of services (name, repository, ...)", services)
    ignore = r.str_list(data, "", "ignore_properties", PROPERTY_CLASS_RE, "Java class names")

    jobs: list[JobSpec] = []
    owner: dict[str, str] = {}  # by full name in lower case: Jenkins ignores case in item names
    spelled: dict[str, tuple[str, str]] = {}  # folder path in lower case -> (as written, by which service)
    for i, entry in enumerate(services):
        key = f"services[{i}]"
        if not isinstance(entry, dict):
            raise r.fail(key, "a mapping with name and repository", entry)
        r.only(entry, key, JOB_KEYS)
        own = _fields(r, entry, key)
        for required in ("name", "repository"):
            if required not in own:
                raise r.fail(f"{key}.{required}", "a value (required)")
        merged = {**base, **own}
        merged["triggers"] = Triggers(**{**base.get("triggers", {}), **own.get("triggers", {})})
        job = JobSpec(**merged)
        for f in folder_chain(job.folder):
            first, by = spelled.setdefault(f.lower(), (f, key))
            if first != f:
                raise r.fail(f"{key}.folder", f"the folder spelled as {by} spells it ('{first}'): Jenkins ignores "
                                              "case in item names, so both are one folder", job.folder)
        if job.fullname.lower() in owner:
            raise r.fail(f"{key}.name", f"a job name not used before in folder '{job.folder or '/'}' "
                                        f"(taken by {owner[job.fullname.lower()]})", job.name)
        owner[job.fullname.lower()] = key
        jobs.append(job)

    folders = sorted({f for j in jobs for f in folder_chain(j.folder)}, key=lambda f: (f.count("/"), f))
    for f in folders:
        if f.lower() in owner:
            raise r.fail(f"{owner[f.lower()]}.name", f"a name that is not also a folder of another service ('{f}')", f)
    jobs.sort(key=lambda j: j.fullname)
    return Catalog(source=source, jobs=tuple(jobs), ignore_properties=ignore, folders=tuple(folders))


def _fields(r: Reader, data: dict, key: str) -> dict:
    """The checked values of the job keys present in ``data`` (a service entry or the defaults)."""
    out: dict = {}
    if "name" in data:
        name = r.string(data, key, "name", required=True)
        problem = jenkins_name_problem(name)
        if problem or not SERVICE_RE.fullmatch(name):
            why = f"Jenkins: {problem}; " if problem else ""
            raise r.fail(f"{key}.name", f"a service name ({why}lower-case letters, digits and '-', 1 to 40, "
                                        "starting with a letter)", name)
        out["name"] = name
    if "repository" in data:
        out["repository"] = r.string(data, key, "repository", REPOSITORY_RE, required=True,
                                     what="a Git URL (https://, ssh://, git://, file:// or user@host:path)")
    if "folder" in data:
        folder = r.string(data, key, "folder", default="")
        for segment in folder.split("/") if folder else []:
            problem = jenkins_name_problem(segment)
            if problem or not FOLDER_SEGMENT_RE.fullmatch(segment):
                why = f"Jenkins: {problem}; " if problem else ""
                raise r.fail(f"{key}.folder", f"a folder path like team-a/services ({why}each part: letters, "
                                              "digits, '.', '_', '-', starting with a letter or digit)", folder)
        out["folder"] = folder
    if "branch" in data:
        out["branch"] = r.string(data, key, "branch", BRANCH_RE, required=True,
                                 what="a Git branch spec like */main (no spaces)")
    if "credentials" in data:
        out["credentials"] = r.string(data, key, "credentials", CREDENTIALS_RE,
                                      what="a Jenkins credentials id (letters, digits, '_', '.', '@', '-')")
    if "jenkinsfile" in data:
        out["jenkinsfile"] = r.string(data, key, "jenkinsfile", SCRIPT_PATH_RE, required=True,
                                      what="a relative path inside the repository (no '..')")
    if "lightweight" in data:
        out["lightweight"] = r.boolean(data, key, "lightweight", True)
    if "description" in data:
        text = r.string(data, key, "description", TEXT_RE, default="",
                        what="text without control characters")
        if MARKER_TEXT in text:
            raise r.fail(f"{key}.description", f"text without '{MARKER_TEXT}' (cdlib adds that marker itself)")
        if len(text) > 4000:
            raise r.fail(f"{key}.description", "at most 4000 characters", f"{text[:40]}...")
        out["description"] = text.strip()
    if "keep_builds" in data:
        out["keep_builds"] = (None if data["keep_builds"] is None
                              else int(r.number(data, key, "keep_builds", 0, 1, 100000, integer=True)))
    if "disabled" in data:
        out["disabled"] = None if data["disabled"] is None else r.boolean(data, key, "disabled", False)
    if "triggers" in data:
        out["triggers"] = _triggers(r, data, key)
    if "parameters" in data:
        out["parameters"] = _parameters(r, data, key)
    return out


def _triggers(r: Reader, data: dict, key: str) -> dict:
    """The trigger keys written here (a service overrides the defaults' triggers key by key)."""
    t = r.section(data, key, "triggers", TRIGGER_KEYS)
    tkey = f"{key}.triggers"
    given: dict[str, str | bool | None] = {}
    for name in ("scm_poll", "cron"):
        if name in t:
            given[name] = None if t[name] is None else _cron(r, t, tkey, name)
    if "github_push" in t:
        given["github_push"] = r.boolean(t, tkey, "github_push", False)
    return given


def _cron(r: Reader, data: dict, key: str, name: str) -> str:
    what = "a Jenkins cron line like 'H/5 * * * *' (5 fields) or @daily"
    value = " ".join(r.string(data, key, name, required=True, what=what).split())
    fields = value.split(" ")
    if value in CRON_ALIASES or (len(fields) == 5 and all(CRON_FIELD_RE.fullmatch(f) for f in fields)):
        return value
    raise r.fail(f"{key}.{name}", what, value)


def _parameters(r: Reader, data: dict, key: str) -> tuple[Parameter, ...]:
    items = data.get("parameters") or []
    if not isinstance(items, list):
        raise r.fail(f"{key}.parameters", "a list of parameters (name, type, default, description)", items)
    out = []
    for i, p in enumerate(items):
        pkey = f"{key}.parameters[{i}]"
        if not isinstance(p, dict):
            raise r.fail(pkey, "a mapping with name and type", p)
        r.only(p, pkey, {"name", "type", "description", "default", "choices", "trim"})
        name = r.string(p, pkey, "name", PARAM_NAME_RE, required=True,
                        what="a parameter name ([A-Za-z_][A-Za-z0-9_]*)")
        ptype = r.string(p, pkey, "type", re.compile(r"string|boolean|choice"), default="string",
                         what="string, boolean or choice")
        description = r.string(p, pkey, "description", TEXT_RE, default="",
                               what="text without control characters")
        if ptype == "string":
            r.only(p, pkey, {"name", "type", "description", "default", "trim"})
            param = Parameter(name, ptype, description, r.string(p, pkey, "default", TEXT_RE, default="",
                                                                 what="text without control characters"),
                              trim=r.boolean(p, pkey, "trim", False))
        elif ptype == "boolean":
            r.only(p, pkey, {"name", "type", "description", "default"})
            param = Parameter(name, ptype, description, r.boolean(p, pkey, "default", False))
        else:
            r.only(p, pkey, {"name", "type", "description", "choices"})
            choices = r.str_list(p, pkey, "choices", CHOICE_RE, "choices (one line each)")
            if not choices:
                raise r.fail(f"{pkey}.choices", "a non-empty list (the first choice is the default)")
            param = Parameter(name, ptype, description, choices[0], choices=choices)
        out.append(param)
    names = [p.name for p in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise r.fail(f"{key}.parameters", "distinct parameter names", dup)
    return tuple(out)
