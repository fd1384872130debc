"""`cdlib jobs diff/apply` and the Jenkins client against the Jenkins double (tests/doubles/jenkins_double.py).

The behavioural tests (first apply, idempotence, drift, type changes, prune) also run against a real
Jenkins when JENKINS_URL (with JENKINS_USER and JENKINS_API_TOKEN) is set; they work under a folder
of their own (cdlibt-<random>) and delete it afterwards. Without JENKINS_URL that variant is skipped:
no Jenkins can run on the test machines. Error statuses, permissions and plugin loss need the double.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jenkins
import pytest
import requests

from cdlib.cli import main
from cdlib.errors import JenkinsError
from cdlib.jobs import catalog as cat
from cdlib.jobs import sync
from cdlib.jobs.jenkins import (
    JenkinsAuthError,
    JenkinsBadRequest,
    JenkinsClient,
    JenkinsForbidden,
    JenkinsNotFound,
    JenkinsServerError,
    JenkinsUnreachable,
)
from tests.doubles.jenkins_double import FOLDER_CLASS, JenkinsDouble

USER = "cdlibt-admin"
TOKEN = "cdlibt-11a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7"
READ = {"hudson.model.Hudson.Read", "hudson.model.Item.Read", "hudson.model.Item.ExtendedRead"}


def services(root: str) -> list[dict]:
    return [
        {"name": "cdlibt-alpha", "repository": "https://git.example.com/shop/alpha.git",
         "description": "Alpha & co <api>"},
        {"name": "cdlibt-beta", "folder": f"{root}/team/deep", "repository": "git@git.example.com:shop/beta.git",
         "parameters": [{"name": "LOCK_WAIT", "default": "300"}, {"name": "FAST", "type": "boolean"},
                        {"name": "MODE", "type": "choice", "choices": ["safe", "quick"]}],
         "triggers": {"scm_poll": "H/5 * * * *"}},
        {"name": "cdlibt-gamma", "folder": root, "repository": "https://git.example.com/gamma.git",
         "keep_builds": None, "triggers": {"github_push": False, "cron": "H 3 * * *"}},
    ]


def make_catalog(root: str, entries: list[dict] | None = None, **top) -> cat.Catalog:
    data = {"defaults": {"folder": f"{root}/team", "keep_builds": 10, "credentials": "git-ci",
                         "triggers": {"github_push": True}},
            "services": services(root) if entries is None else entries, **top}
    return cat.parse(data, "cdlibt-catalog.yml")


# ---- targets: the double, or a real Jenkins ----------------------------------------------------------------
class DoubleTarget:
    root = "cdlibt-jobs"

    def __init__(self, double: JenkinsDouble):
        self.double = double

    def client(self, **kw) -> JenkinsClient:
        return JenkinsClient(self.double.url, USER, TOKEN, timeout=5, retries=0, **kw)

    def edit(self, fullname: str, path: str, text: str) -> None:
        self.double.ui_edit(fullname, path, text)

    def create_raw(self, fullname: str, xml: str) -> None:
        self.double.ui_create(fullname, xml)

    def exists(self, fullname: str) -> bool:
        return self.double.exists(fullname)


class RealTarget:
    def __init__(self):
        self.root = f"cdlibt-{uuid.uuid4().hex[:8]}"
        self.url, self.user, self.token = (os.environ["JENKINS_URL"], os.environ.get("JENKINS_USER"),
                                           os.environ.get("JENKINS_API_TOKEN"))

    def client(self, **kw) -> JenkinsClient:
        return JenkinsClient(self.url, self.user, self.token, timeout=30, **kw)

    def edit(self, fullname: str, path: str, text: str) -> None:
        """What a person does in the UI, through the same config.xml a UI save writes."""
        import xml.etree.ElementTree as ET

        client = self.client()
        root = sync.parse_config(client.get_config(fullname))
        root.find(path).text = text
        client.update(fullname, ET.tostring(root, encoding="unicode"))

    def create_raw(self, fullname: str, xml: str) -> None:
        self.client().create(fullname, xml)

    def exists(self, fullname: str) -> bool:
        return self.client().get_config(fullname) is not None

    def cleanup(self) -> None:
        client = self.client()
        if client.get_config(self.root) is not None:
            client.delete(self.root)


@pytest.fixture
def double():
    with JenkinsDouble(users={USER: TOKEN}) as d:
        yield d


@pytest.fixture(params=["double", "real"])
def target(request):
    if request.param == "double":
        with JenkinsDouble(users={USER: TOKEN}) as d:
            yield DoubleTarget(d)
        return
    if not os.environ.get("JENKINS_URL"):
        pytest.skip("JENKINS_URL is not set: no real Jenkins to run the contract against")
    t = RealTarget()
    try:
        yield t
    finally:
        t.cleanup()


def actions(outcome) -> dict[str, str]:
    return {i["name"]: i["action"] for i in outcome.data["items"]}


# ---- behaviour, on the double and on a real Jenkins ---------------------------------------------------------
def test_first_apply_creates_folders_and_jobs_then_a_second_writes_nothing(target):
    catalog = make_catalog(target.root)
    client = target.client()
    first = sync.apply(catalog, client)
    assert first.ok and first.exit_code == 0, first.message
    expected = [target.root, f"{target.root}/team", f"{target.root}/team/deep", f"{target.root}/cdlibt-gamma",
                f"{target.root}/team/cdlibt-alpha", f"{target.root}/team/deep/cdlibt-beta"]
    assert [i["name"] for i in first.data["items"]] == expected
    assert set(actions(first).values()) == {"create"}
    assert all(target.exists(n) for n in expected)
    assert first.data["writes"] == len(expected)

    again = target.client()
    second = sync.apply(catalog, again)
    assert second.ok, second.message
    assert set(actions(second).values()) == {"unchanged"}
    assert again.writes == 0 and second.data["writes"] == 0
    assert "6 unchanged" in second.message


def test_a_catalog_change_updates_only_that_job(target):
    sync.apply(make_catalog(target.root), target.client())
    entries = services(target.root)
    entries[0]["branch"] = "*/release"
    client = target.client()
    out = sync.apply(make_catalog(target.root, entries), client)
    assert out.ok, out.message
    changed = {n: a for n, a in actions(out).items() if a != "unchanged"}
    assert changed == {f"{target.root}/team/cdlibt-alpha": "update"}
    assert client.writes == 1
    item = next(i for i in out.data["items"] if i["action"] == "update")
    assert item["changes"] == ["definition/scm/branches/BranchSpec/name: '*/main' on the server, '*/release' in the catalog"]
    assert item["done"] is True


def test_a_change_made_in_the_ui_is_drift_and_apply_overwrites_it(target):
    catalog = make_catalog(target.root)
    sync.apply(catalog, target.client())
    job = f"{target.root}/team/cdlibt-alpha"
    target.edit(job, "definition/scriptPath", "Jenkinsfile.hacked")

    seen = sync.diff(catalog, target.client())
    assert seen.ok and actions(seen)[job] == "drift"
    item = next(i for i in seen.data["items"] if i["name"] == job)
    assert item["changes"] == ["definition/scriptPath: 'Jenkinsfile.hacked' on the server, 'Jenkinsfile' in the catalog"]
    assert "-    <scriptPath>Jenkinsfile.hacked</scriptPath>" in item["diff"]
    assert "+    <scriptPath>Jenkinsfile</scriptPath>" in item["diff"]
    assert "changed in the Jenkins UI" in seen.message

    client = target.client()
    fixed = sync.apply(catalog, client)
    assert fixed.ok and actions(fixed)[job] == "drift" and client.writes == 1
    assert "changed in the UI, overwritten" in fixed.message.splitlines()[0]
    assert set(actions(sync.apply(catalog, target.client())).values()) == {"unchanged"}


def test_a_type_change_is_refused_unless_recreate(target):
    root = target.root
    catalog = make_catalog(root)
    sync.apply(catalog, target.client())
    job = f"{root}/cdlibt-gamma"
    target.client().delete(job)
    target.create_raw(job, "<project><description>a freestyle job</description><builders/></project>")

    client = target.client()
    refused = sync.apply(catalog, client)
    assert not refused.ok and refused.exit_code == 2
    assert refused.message.splitlines()[0].startswith(f"nothing was changed: the type of {job} differs")
    assert actions(refused)[job] == "refuse" and client.writes == 0

    recreated = sync.apply(catalog, target.client(), recreate=True)
    assert recreated.ok, recreated.message
    assert actions(recreated)[job] == "recreate"
    assert sync.parse_config(target.client().get_config(job)).tag == "flow-definition"


def test_prune_deletes_only_managed_jobs_missing_from_the_catalog(target):
    root = target.root
    sync.apply(make_catalog(root), target.client())
    target.create_raw(f"{root}/team/cdlibt-handmade", "<flow-definition><description>made by hand</description>"
                      "<keepDependencies>false</keepDependencies><properties/><triggers/><disabled>false</disabled>"
                      "</flow-definition>")
    smaller = make_catalog(root, services(root)[:1])  # alpha stays; beta (and its folders) and gamma go
    kept = sync.apply(smaller, target.client())
    assert kept.ok
    orphans = {n for n, a in actions(kept).items() if a == "orphan"}
    assert orphans == {f"{root}/cdlibt-gamma", f"{root}/team/deep", f"{root}/team/deep/cdlibt-beta"}
    assert target.exists(f"{root}/cdlibt-gamma")

    dry = sync.apply(smaller, target.client(), prune=True, dry_run=True)
    assert {n for n, a in actions(dry).items() if a == "delete"} == orphans and dry.data["writes"] == 0
    assert target.exists(f"{root}/cdlibt-gamma")

    client = target.client()
    pruned = sync.apply(smaller, client, prune=True)
    assert pruned.ok, pruned.message
    assert not target.exists(f"{root}/cdlibt-gamma") and not target.exists(f"{root}/team/deep")
    assert target.exists(f"{root}/team/cdlibt-handmade") and target.exists(f"{root}/team/cdlibt-alpha")
    assert client.writes == 2  # gamma, and deep with beta inside it
    assert "3 deleted" in pruned.message


# ---- what only the double can show ---------------------------------------------------------------------------
def test_jenkins_reserialisation_is_not_a_difference(double):
    """XML 1.1 vs 1.0, quotes, whitespace, plugin attributes, actions, filled-in defaults, property order."""
    target = DoubleTarget(double)
    catalog = make_catalog(target.root)
    sync.apply(catalog, target.client())
    job = f"{target.root}/team/deep/cdlibt-beta"
    served = double.config(job)
    assert served.startswith('<?xml version="1.1" encoding="UTF-8"?>') and 'plugin="git@' in served
    assert "<removeLastBuild>false</removeLastBuild>" in served and "<actions/>" in served
    reordered = served.replace('<?xml version="1.1" encoding="UTF-8"?>', "<?xml version='1.0' encoding='UTF-8'?>")
    props = sync.parse_config(reordered).find("properties")
    import xml.etree.ElementTree as ET

    root = sync.parse_config(reordered)
    root.find("properties")[:] = list(reversed(list(props)))
    double.ui_set_config(job, "<?xml version='1.0' encoding='UTF-8'?>\n" + ET.tostring(root, encoding="unicode"))
    out = sync.diff(catalog, target.client())
    assert actions(out)[job] == "unchanged", out.message


def test_ui_additions_to_lists_are_drift(double):
    target = DoubleTarget(double)
    catalog = make_catalog(target.root)
    sync.apply(catalog, target.client())
    job = f"{target.root}/team/cdlibt-alpha"
    text = double.config(job).replace(
        "<triggers>\n", "<triggers>\n        <hudson.triggers.TimerTrigger><spec>@hourly</spec></hudson.triggers.TimerTrigger>\n", 1)
    double.ui_set_config(job, text)
    out = sync.diff(catalog, target.client())
    item = next(i for i in out.data["items"] if i["name"] == job)
    assert item["action"] == "drift"
    assert item["changes"] == ["properties/PipelineTriggersJobProperty/triggers/TimerTrigger: added on the server"]


def test_a_refspec_or_credentials_added_to_the_git_remote_in_the_ui_is_drift(double):
    """Jenkins fills in no field of a Git remote (it drops empty ones), so an extra child there is a
    setting someone made: which refs are fetched, or with which credentials."""
    target = DoubleTarget(double)
    entries = services(target.root)
    entries[2]["credentials"] = None  # gamma checks out without credentials
    catalog = make_catalog(target.root, entries)
    sync.apply(catalog, target.client())
    alpha, gamma = f"{target.root}/team/cdlibt-alpha", f"{target.root}/cdlibt-gamma"
    url = "<url>https://git.example.com/shop/alpha.git</url>"
    double.ui_set_config(alpha, double.config(alpha).replace(
        url, url + "<refspec>+refs/pull/*:refs/remotes/origin/pr/*</refspec>", 1))
    url = "<url>https://git.example.com/gamma.git</url>"
    double.ui_set_config(gamma, double.config(gamma).replace(url, url + "<credentialsId>someone-else</credentialsId>", 1))
    out = sync.diff(catalog, target.client())
    items = {i["name"]: i for i in out.data["items"]}
    assert items[alpha]["action"] == "drift" and items[gamma]["action"] == "drift", out.message
    assert items[alpha]["changes"] == ["definition/scm/userRemoteConfigs/UserRemoteConfig/refspec: added on the server"]
    assert items[gamma]["changes"] == [
        "definition/scm/userRemoteConfigs/UserRemoteConfig/credentialsId: added on the server"]
    assert "-          <credentialsId>someone-else</credentialsId>" in items[gamma]["diff"]
    client = target.client()
    assert sync.apply(catalog, client).ok and client.writes == 2
    assert "refspec" not in double.config(alpha) and "someone-else" not in double.config(gamma)


def test_a_property_a_plugin_adds_everywhere_can_be_ignored(double):
    """Some plugins (GitLab, Jira, ...) add a property to every job on save: drift forever, unless ignored."""
    target = DoubleTarget(double)
    catalog = make_catalog(target.root)
    sync.apply(catalog, target.client())
    job = f"{target.root}/team/cdlibt-alpha"
    plugin_property = "com.dabsquared.gitlabjenkins.connection.GitLabConnectionProperty"
    double.ui_set_config(job, double.config(job).replace(
        "<properties>\n", f"<properties>\n    <{plugin_property}><gitLabConnection/></{plugin_property}>\n", 1))
    assert actions(sync.diff(catalog, target.client()))[job] == "drift"
    ignoring = make_catalog(target.root, ignore_properties=[plugin_property])
    client = target.client()
    out = sync.apply(ignoring, client)
    assert set(actions(out).values()) == {"unchanged"} and client.writes == 0


def test_a_removed_marker_means_adopt_and_a_disabled_job_stays_disabled(double):
    target = DoubleTarget(double)
    catalog = make_catalog(target.root)
    sync.apply(catalog, target.client())
    alpha, gamma = f"{target.root}/team/cdlibt-alpha", f"{target.root}/cdlibt-gamma"
    double.ui_edit(alpha, "description", "someone rewrote this")
    double.ui_edit(gamma, "disabled", "true")
    out = sync.diff(catalog, target.client())
    assert actions(out)[alpha] == "adopt" and actions(out)[gamma] == "unchanged"
    client = target.client()
    assert sync.apply(catalog, client).ok and client.writes == 1
    assert "<disabled>true</disabled>" in double.config(gamma)
    assert f"[managed by cdlib as {alpha}, rev " in double.config(alpha)
    entries = services(target.root)
    entries[2]["disabled"] = False  # now the catalog says it: the UI's choice is drift, overwritten
    enabled = sync.apply(make_catalog(target.root, entries), target.client())
    assert actions(enabled)[gamma] == "drift" and "<disabled>false</disabled>" in double.config(gamma)


def test_a_folder_with_foreign_items_is_neither_recreated_nor_pruned(double):
    target = DoubleTarget(double)
    root = target.root
    catalog = make_catalog(root)
    sync.apply(catalog, target.client())
    double.ui_create(f"{root}/team/deep/cdlibt-handmade", "<flow-definition><description>mine</description></flow-definition>")
    pruned = sync.apply(make_catalog(root, services(root)[:1]), target.client(), prune=True)
    assert actions(pruned)[f"{root}/team/deep"] == "keep"
    assert actions(pruned)[f"{root}/team/deep/cdlibt-beta"] == "delete"
    assert double.exists(f"{root}/team/deep/cdlibt-handmade") and not double.exists(f"{root}/team/deep/cdlibt-beta")

    # a folder where the catalog wants a job, and it holds an item: refused even with --recreate
    entries = services(root)[:1] + [{"name": "deep", "folder": f"{root}/team", "repository": "https://g/x.git"}]
    refused = sync.apply(make_catalog(root, entries), target.client(), recreate=True)
    assert refused.exit_code == 2 and actions(refused)[f"{root}/team/deep"] == "refuse"
    assert "holds 1 item(s)" in refused.message


def test_existing_unmanaged_folders_are_kept(double):
    target = DoubleTarget(double)
    double.ui_create_folder(target.root)
    out = sync.apply(make_catalog(target.root), target.client())
    assert out.ok and actions(out)[target.root] == "keep"
    assert "[managed by cdlib" not in double.config(target.root)


def test_a_config_jenkins_changes_while_saving_fails_the_read_back():
    with JenkinsDouble(users={USER: TOKEN}, missing_plugins=("github",)) as d:
        target = DoubleTarget(d)
        out = sync.apply(make_catalog(target.root), target.client(), workers=1)
    assert not out.ok and out.exit_code == 1
    first = out.message.splitlines()[0]
    assert "Jenkins changed the config while saving it" in first
    assert "GitHubPushTrigger: missing on the server" in first and "is a plugin it needs missing?" in first
    assert "apply again once fixed" in first


def test_a_create_that_races_another_writer_updates_instead(double, monkeypatch):
    target = DoubleTarget(double)
    catalog = make_catalog(target.root)
    sync.apply(catalog, target.client())
    client = target.client()
    monkeypatch.setattr(client, "list_items", lambda depth=10: {})  # the listing missed everything
    out = sync.apply(catalog, client)
    assert out.ok, out.message
    assert all(i["detail"] == "created by someone else meanwhile: updated instead" for i in out.data["items"])


def test_names_that_differ_only_in_case_are_one_item_as_in_jenkins(double):
    """Jenkins' item maps ignore case: 'CdlibT-Jobs' in the catalog is the folder 'cdlibt-jobs' on the
    server. Matching names by their exact spelling made apply --prune create (then update) every item
    and delete them all again as orphans of the old spelling."""
    target = DoubleTarget(double)
    sync.apply(make_catalog(target.root), target.client())
    before = double.names()
    respelled = make_catalog("CdlibT-Jobs")
    out = sync.apply(respelled, target.client(), prune=True)
    assert out.ok, out.message
    assert not {"create", "delete", "orphan", "adopt"} & set(actions(out).values()), actions(out)
    assert double.names() == before
    assert double.exists("CDLIBT-JOBS/team/cdlibt-alpha")  # the double resolves names as Jenkins does
    client = target.client()
    again = sync.apply(respelled, client, prune=True)
    assert set(actions(again).values()) == {"unchanged"} and client.writes == 0, again.message


def test_prune_spares_copies_renamed_jobs_and_look_alike_descriptions(double):
    """'New Item > Copy from' and a rename keep the description, marker included; a person may also end
    a description with something like the marker. None of these was written by cdlib for that item."""
    target = DoubleTarget(double)
    root = target.root
    sync.apply(make_catalog(root), target.client())
    alpha = f"{root}/team/cdlibt-alpha"
    double.ui_create(f"{alpha}-hotfix", double.config(alpha))  # a copy, made in the UI
    double.ui_create(f"{root}/team/cdlibt-lookalike", "<flow-definition><description>Release tooling "
                     "[managed by cdlib-ops team]</description><disabled>false</disabled></flow-definition>")
    pruned = sync.apply(make_catalog(root, services(root)[:2]), target.client(), prune=True)
    assert pruned.ok, pruned.message
    assert actions(pruned)[f"{root}/cdlibt-gamma"] == "delete" and not double.exists(f"{root}/cdlibt-gamma")
    assert double.exists(f"{alpha}-hotfix") and double.exists(f"{root}/team/cdlibt-lookalike")
    assert f"{alpha}-hotfix" not in actions(pruned) and f"{root}/team/cdlibt-lookalike" not in actions(pruned)


def test_an_older_marker_without_a_name_is_updated_and_never_pruned(double):
    target = DoubleTarget(double)
    root = target.root
    catalog = make_catalog(root)
    sync.apply(catalog, target.client())
    alpha, gamma = f"{root}/team/cdlibt-alpha", f"{root}/cdlibt-gamma"
    for job in (alpha, gamma):
        double.ui_set_config(job, double.config(job).replace(f"[managed by cdlib as {job}, rev ", "[managed by cdlib, rev "))
    out = sync.apply(make_catalog(root, [services(root)[0], services(root)[1]]), target.client(), prune=True)
    assert out.ok, out.message
    assert actions(out)[alpha] == "update" and gamma not in actions(out) and double.exists(gamma)
    assert f"[managed by cdlib as {alpha}, rev " in double.config(alpha)


def test_a_folder_update_keeps_what_people_added_to_the_folder(double):
    """Folders are compared leniently because people add views, libraries and credentials to them; an
    update (here: the description was edited in the UI) must write the catalog's settings into the
    folder, not replace the folder's config and delete what was added."""
    target = DoubleTarget(double)
    catalog = make_catalog(target.root)
    sync.apply(catalog, target.client())
    folder = f"{target.root}/team"
    library = ("<org.jenkinsci.plugins.workflow.libs.FolderLibraries><libraries><org.jenkinsci.plugins.workflow."
               "libs.LibraryConfiguration><name>team-lib</name></org.jenkinsci.plugins.workflow.libs."
               "LibraryConfiguration></libraries></org.jenkinsci.plugins.workflow.libs.FolderLibraries>")
    served = double.config(folder)
    assert "  <properties/>" in served and "Pipeline jobs of the services in" in served
    edited = served.replace("  <properties/>", f"  <properties>{library}</properties>", 1)
    double.ui_set_config(folder, edited.replace("Pipeline jobs of the services in", "Jobs of the team", 1))
    assert actions(sync.diff(catalog, target.client()))[folder] == "drift"

    out = sync.apply(catalog, target.client())
    assert out.ok and actions(out)[folder] == "drift", out.message
    config = double.config(folder)
    assert "<name>team-lib</name>" in config and f"[managed by cdlib as {folder}, rev " in config
    client = target.client()
    assert set(actions(sync.apply(catalog, client)).values()) == {"unchanged"} and client.writes == 0


def test_config_xml_without_a_charset_is_read_as_the_utf8_it_is(double):
    """Jenkins sends config.xml as application/xml without a charset; requests then guesses the encoding
    from the bytes, and a short config rich in accented letters is guessed wrong."""
    text = "öafñägfdäeöebàbcgükbbhäü"
    double.ui_create("cdlibt-enc", f"<flow-definition><description>{text}</description></flow-definition>")
    raw = requests.get(double.url + "job/cdlibt-enc/config.xml", auth=(USER, TOKEN), timeout=5)
    assert "charset" not in raw.headers["Content-Type"]
    assert text not in raw.text  # the guess that made config.xml unreadable
    config = JenkinsClient(double.url, USER, TOKEN, timeout=5).get_config("cdlibt-enc")
    assert sync.parse_config(config).find("description").text == text


def test_listing_reaches_folders_deeper_than_one_request(double):
    target = DoubleTarget(double)
    sync.apply(make_catalog(target.root), target.client())
    client = target.client()
    listed = client.list_items(depth=1)
    assert f"{target.root}/team/deep/cdlibt-beta" in listed
    assert listed[f"{target.root}/team/deep"].is_folder
    assert client.requests >= 3  # the first listing, then the folders below its depth


def test_dry_run_is_diff(double):
    target = DoubleTarget(double)
    catalog = make_catalog(target.root)
    dry = sync.apply(catalog, target.client(), dry_run=True)
    diff = sync.diff(catalog, target.client())
    assert actions(dry) == actions(diff) and set(actions(dry).values()) == {"create"}
    assert double.writes == 0 and double.names() == []
    assert dry.message.startswith("jobs apply --dry-run: 6 to create")


def test_crumbs_on_off_and_strict(tmp_path):
    for options in ({"crumbs": False}, {"crumbs": True, "strict_crumbs": True}):
        with JenkinsDouble(users={USER: TOKEN}, **options) as d:
            out = sync.apply(make_catalog("cdlibt-jobs"), DoubleTarget(d).client())
            assert out.ok, (options, out.message)
            crumb_requests = [r for r in d.requests if r.path.endswith("crumbIssuer/api/json")]
            assert crumb_requests and all(r.status == (200 if options["crumbs"] else 404) for r in crumb_requests)


# ---- errors, by HTTP status --------------------------------------------------------------------------------------
def _one_line_without_token(exc: Exception) -> str:
    text = str(exc)
    assert "\n" not in text and TOKEN not in text
    return text


def test_401_names_the_variables_to_check(double):
    client = JenkinsClient(double.url, USER, "cdlibt-wrong-token-0123456789", timeout=5)
    with pytest.raises(JenkinsAuthError) as exc:
        client.list_items()
    text = _one_line_without_token(exc.value)
    assert exc.value.status == 401 and "cdlibt-wrong-token" not in text
    assert text == (f"Jenkins at {double.url} rejected user '{USER}' (401): check JENKINS_USER and JENKINS_API_TOKEN "
                    "(an API token from the user's Security page, not a password)")


def test_403_names_the_missing_permission():
    with JenkinsDouble(users={USER: TOKEN, "cdlibt-reader": "cdlibt-reader-token"},
                       permissions={USER: set(), "cdlibt-reader": READ}) as d:
        reader = JenkinsClient(d.url, "cdlibt-reader", "cdlibt-reader-token", timeout=5)
        out = sync.apply(make_catalog("cdlibt-jobs"), reader)
        assert not out.ok and out.exit_code == 1
        assert out.message.splitlines()[0].startswith(
            "Jenkins user 'cdlibt-reader' may not create 'cdlibt-jobs' (403): missing the Job/Create permission "
            "(hudson.model.Item.Create); ask a Jenkins administrator to grant it")
        with pytest.raises(JenkinsForbidden) as exc:
            JenkinsClient(d.url, USER, TOKEN, timeout=5).list_items()
        assert exc.value.status == 403 and exc.value.permission == "hudson.model.Hudson.Read"
        assert "missing the Overall/Read permission" in _one_line_without_token(exc.value)
        with pytest.raises(JenkinsForbidden) as exc:
            JenkinsClient(d.url, timeout=5).list_items()
        assert "Jenkins user 'anonymous' may not" in str(exc.value) and "set JENKINS_USER and JENKINS_API_TOKEN" in str(exc.value)


def test_400_is_translated_although_python_jenkins_reports_a_bare_http_error(double):
    raw = jenkins.Jenkins(double.url, USER, TOKEN, timeout=5)
    with pytest.raises(requests.HTTPError) as quirk:  # not a JenkinsException: the reason for the translation
        raw.create_job("cdlibt-bad:name", "<flow-definition/>")
    assert not isinstance(quirk.value, jenkins.JenkinsException)

    client = JenkinsClient(double.url, USER, TOKEN, timeout=5)
    with pytest.raises(JenkinsBadRequest) as exc:
        client.create("cdlibt-bad:name", "<flow-definition/>")
    assert exc.value.status == 400
    assert _one_line_without_token(exc.value) == "Jenkins refused to create 'cdlibt-bad:name' (400): ‘:’ is an unsafe character"
    client.create("cdlibt-twice", "<flow-definition/>")
    with pytest.raises(JenkinsBadRequest, match="A job already exists with the name ‘cdlibt-twice’"):
        client.create("cdlibt-twice", "<flow-definition/>")


def test_404_for_a_missing_folder_and_none_for_a_missing_config(double):
    client = JenkinsClient(double.url, USER, TOKEN, timeout=5)
    with pytest.raises(JenkinsNotFound) as exc:
        client.create("cdlibt-nowhere/job", "<flow-definition/>")
    assert exc.value.status == 404
    assert _one_line_without_token(exc.value).startswith(
        "Jenkins has no 'cdlibt-nowhere/job' or its folder 'cdlibt-nowhere' (404)")
    assert client.get_config("cdlibt-nowhere/job") is None


def test_500_gives_jenkins_reason_not_an_authentication_guess(double):
    client = JenkinsClient(double.url, USER, TOKEN, timeout=5)
    client.create("cdlibt-job", "<flow-definition/>")
    with pytest.raises(JenkinsServerError) as exc:
        client.update("cdlibt-job", "<flow-definition><description>broken</flow-definition>")
    text = _one_line_without_token(exc.value)
    assert exc.value.status == 500 and "authentication" not in text.lower()
    assert text.startswith("Jenkins failed to update 'cdlibt-job' (500): java.io.IOException: Failed to process config.xml")
    with pytest.raises(JenkinsServerError, match="Expecting class org.jenkinsci.plugins.workflow.job.WorkflowJob but got "
                                                 "class com.cloudbees.hudson.plugins.folder.Folder instead"):
        client.update("cdlibt-job", f"<{FOLDER_CLASS}/>")
    with pytest.raises(JenkinsServerError, match="Failed to persist config.xml"):
        client.create("cdlibt-other", "<flow-definition>")
    assert not double.exists("cdlibt-other")


def test_unreachable_and_silent_servers():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(JenkinsUnreachable) as exc:
        JenkinsClient(f"http://127.0.0.1:{port}/", USER, TOKEN, timeout=2, retries=0).list_items()
    assert _one_line_without_token(exc.value).startswith(f"cannot reach Jenkins at http://127.0.0.1:{port}/")
    assert exc.value.status is None

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    accepted = []
    stop = threading.Event()

    def hold():  # accept and never answer
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        client = JenkinsClient(f"http://127.0.0.1:{silent.getsockname()[1]}/", USER, TOKEN, timeout=0.5, retries=0)
        with pytest.raises(JenkinsUnreachable, match=r"did not answer within 0.5s"):
            client.list_items()
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        silent.close()


class _Stub:
    """A tiny HTTP server answering by path: {path prefix: (status, content type, body, delay)}."""

    def __init__(self, routes: dict):
        routes_ = routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the stdlib's name
                for prefix, (status, ctype, body, delay) in routes_.items():
                    if self.path.startswith(prefix):
                        time.sleep(delay)
                        data = body.encode()
                        self.send_response(status)
                        self.send_header("Content-Type", ctype)
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                        return
                self.send_error(500)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_crumb_issuer_404_is_not_reported_for_a_later_timeout():
    """With crumbs off, the crumb issuer answers 404 before the real request; when that request then
    times out, the error is the timeout, not 'Jenkins has no ... (404)'."""
    with _Stub({"/crumbIssuer/": (404, "text/html", "<html>Not Found</html>", 0),
                "/": (200, "application/json", "{}", 2.0)}) as url:
        with pytest.raises(JenkinsUnreachable, match=r"did not answer within 0.5s"):
            JenkinsClient(url, USER, TOKEN, timeout=0.5, retries=0).list_items()


def test_an_answer_that_is_not_json_is_a_one_line_jenkins_error():
    """A JENKINS_URL that is not the Jenkins root, or a login proxy in front of it, answers 200 with HTML."""
    with _Stub({"/crumbIssuer/": (404, "text/html", "<html>Not Found</html>", 0),
                "/": (200, "text/html", "<html><body>\n<h1>Sign in</h1>\n</body></html>", 0)}) as url:
        with pytest.raises(JenkinsError) as exc:
            JenkinsClient(url, USER, TOKEN, timeout=5, retries=0).list_items()
    text = _one_line_without_token(exc.value)
    assert text.startswith(f"{url}api/json answered 200 with text/html, not Jenkins' JSON") and "JENKINS_URL" in text


def test_the_token_never_shows(double):
    client = JenkinsClient(double.url, USER, TOKEN, timeout=5)
    assert TOKEN not in repr(client) and TOKEN not in str(vars(client).get("url"))
    with pytest.raises(Exception) as exc:
        JenkinsClient(f"http://{USER}:{TOKEN}@127.0.0.1:1/", USER, TOKEN)
    assert TOKEN not in str(exc.value) and "without user or token" in str(exc.value)


def test_python_jenkins_create_folder_quirk_and_why_sync_does_not_depend_on_it():
    """create_folder POSTs a form; Jenkins answers 302 to job/NAME/configure, which requests follows. If that
    page is a 404, python-jenkins raises NotFoundException although the folder was created. The double
    serves the page (so python-jenkins works against it) and can reproduce the quirk; sync creates
    folders with createItem and the folder's XML, so it works either way."""
    with JenkinsDouble(users={USER: TOKEN}) as d:
        jenkins.Jenkins(d.url, USER, TOKEN, timeout=5).create_folder("cdlibt-f")
        assert d.exists("cdlibt-f")
        assert any(r.path == "/job/cdlibt-f/configure" and r.status == 200 for r in d.requests)
    with JenkinsDouble(users={USER: TOKEN}, serve_configure=False) as d:
        with pytest.raises(jenkins.NotFoundException):
            jenkins.Jenkins(d.url, USER, TOKEN, timeout=5).create_folder("cdlibt-f")
        assert d.exists("cdlibt-f")  # created all the same
        d.reset_log()
        out = sync.apply(make_catalog("cdlibt-jobs"), DoubleTarget(d).client())
        assert out.ok, out.message
        assert not any(r.path.endswith("/configure") for r in d.requests)


# ---- the command line ----------------------------------------------------------------------------------------------
def test_the_cli_applies_and_reports_errors_in_one_line(double, tmp_path, monkeypatch, capsys):
    catalog_file = tmp_path / "catalog.yml"
    catalog_file.write_text(json.dumps({"defaults": {"folder": "cdlibt-jobs"}, "services": [
        {"name": "cdlibt-one", "repository": "https://git.example.com/one.git"}]}))
    monkeypatch.setenv("JENKINS_URL", double.url)
    monkeypatch.setenv("JENKINS_USER", USER)
    monkeypatch.setenv("JENKINS_API_TOKEN", TOKEN)
    assert main(["jobs", "apply", "--catalog", str(catalog_file)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("jobs apply: 2 created") and "  create    cdlibt-jobs/cdlibt-one" in out

    assert main(["jobs", "diff", "--catalog", str(catalog_file), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verb"] == "jobs" and doc["action"] == "diff" and doc["counts"]["unchanged"] == 2 and doc["writes"] == 0

    monkeypatch.setenv("JENKINS_API_TOKEN", "cdlibt-wrong-token-0123456789")
    assert main(["jobs", "apply", "--catalog", str(catalog_file)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "(401): check JENKINS_USER and JENKINS_API_TOKEN" in err
    assert "cdlibt-wrong-token" not in err

    monkeypatch.delenv("JENKINS_URL")
    assert main(["jobs", "diff", "--catalog", str(catalog_file)]) == 2
    assert "JENKINS_URL is not set" in capsys.readouterr().err


# ---- the double itself answers as Jenkins does ---------------------------------------------------------------------
def test_the_double_answers_like_jenkins(double):
    auth = (USER, TOKEN)
    double.ui_create_folder("cdlibt-f")
    double.ui_create("cdlibt-f/cdlibt-j", "<flow-definition><description>d</description><disabled>false</disabled>"
                                          "</flow-definition>")
    r = requests.get(double.url + "api/json", params={"tree": "jobs[name,jobs[name,color]]"}, auth=auth, timeout=5)
    assert r.status_code == 200 and r.headers["X-Jenkins"] == double.version
    assert r.json() == {"_class": "hudson.model.Hudson", "jobs": [
        {"_class": FOLDER_CLASS, "name": "cdlibt-f", "jobs": [
            {"_class": "org.jenkinsci.plugins.workflow.job.WorkflowJob", "name": "cdlibt-j", "color": "notbuilt"}]}]}
    assert requests.get(double.url + "job/cdlibt-nope/job/x/api/json", auth=auth, timeout=5).status_code == 404

    form = requests.post(double.url + "job/cdlibt-f/createItem", params={"name": "sub"}, auth=auth, timeout=5,
                         data={"name": "sub", "mode": FOLDER_CLASS}, allow_redirects=False)
    assert form.status_code == 302 and form.headers["Location"] == double.url + "job/cdlibt-f/job/sub/configure"
    no_mode = requests.post(double.url + "createItem", params={"name": "x"}, data={"name": "x"}, auth=auth, timeout=5)
    assert no_mode.status_code == 400 and no_mode.headers["X-Error"] == "No mode given"
    bare = requests.post(double.url + "createItem", params={"name": "x"}, auth=auth, timeout=5)
    assert bare.status_code == 400 and bare.headers["X-Error"] == "No Content-Type header set"

    gone = requests.post(double.url + "job/cdlibt-f/doDelete", auth=auth, timeout=5, allow_redirects=False)
    assert gone.status_code == 302 and not double.exists("cdlibt-f/cdlibt-j")
    build = requests.post(double.url + "job/x/build", auth=auth, timeout=5)
    assert build.status_code == 404

    anonymous = requests.get(double.url + "api/json", timeout=5)
    assert anonymous.status_code == 403 and "Authentication required" in anonymous.text
    assert anonymous.headers["X-You-Are-Authenticated-As"] == "anonymous"
    assert anonymous.headers["X-Required-Permission"] == "hudson.model.Hudson.Read"
    bad = requests.get(double.url + "api/json", auth=(USER, "cdlibt-wrong"), timeout=5)
    assert bad.status_code == 401 and bad.headers["WWW-Authenticate"] == 'Basic realm="Jenkins"'
    assert double.writes == 2  # the folder form and the delete; refused requests write nothing
