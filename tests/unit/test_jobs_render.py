"""The job catalog and its rendering to config.xml: golden files, shapes of real Jenkins configs,
escaping, the managed marker, and one-line errors for a bad catalog.

Golden files live in tests/golden/jobs/; regenerate them with CDLIB_UPDATE_GOLDEN=1 after a
deliberate template change, and read the diff before committing it.
"""

from __future__ import annotations

import os
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from cdlib.cli import main
from cdlib.errors import ConfigError
from cdlib.jobs import catalog as cat
from cdlib.jobs.render import MARKER_RE, Renderer, managed, render_catalog, write_tree
from cdlib.jobs.sync import differences, parse_config

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "jobs"
SAMPLES = ROOT / "tests" / "fixtures" / "jenkins-config-xml"

# features the bundled catalog does not use: a job at the Jenkins root, no credentials, all three
# triggers, every parameter type, a disabled job, characters that need escaping
EDGE_CATALOG = textwrap.dedent("""\
    defaults:
      keep_builds: 5
    services:
      - name: edge
        repository: ssh://git@git.example.com:2222/x/edge.git
        branch: refs/heads/main
        jenkinsfile: ci/release.Jenkinsfile
        disabled: true
        lightweight: false
        description: "Tags <b>&</b> 'quotes' \\"double\\" ]]> end"
        triggers: {scm_poll: "H/15 * * * *", cron: "@daily", github_push: true}
        parameters:
          - {name: NOTE, type: string, default: "a & b <c>", description: "free text", trim: true}
          - {name: FAST, type: boolean, default: true}
          - {name: MODE, type: choice, choices: [safe, "fast & loose"], description: pick one}
    """)


def golden_name(item) -> str:
    return f"{item.kind}__{item.fullname.replace('/', '__')}.xml"


def rendered_items():
    items = render_catalog(cat.load(ROOT / "jenkins" / "catalog.yml"))
    items += render_catalog(cat.parse(yaml.safe_load(EDGE_CATALOG), "edge.yml"))
    return items


def parse(xml: str) -> ET.Element:
    return ET.fromstring(xml.split("?>", 1)[1])


def sample(name: str) -> ET.Element:
    return parse((SAMPLES / name).read_text())


# ---- golden files ------------------------------------------------------------------------------------
def test_rendering_matches_the_golden_files():
    items = rendered_items()
    if os.environ.get("CDLIB_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for stale in GOLDEN.glob("*.xml"):
            stale.unlink()
        for item in items:
            (GOLDEN / golden_name(item)).write_text(item.xml, encoding="utf-8")
    assert sorted(p.name for p in GOLDEN.glob("*.xml")) == sorted(golden_name(i) for i in items), \
        "golden files and rendered items differ: run with CDLIB_UPDATE_GOLDEN=1"
    for item in items:
        expected = (GOLDEN / golden_name(item)).read_text(encoding="utf-8")
        assert item.xml == expected, f"{golden_name(item)} differs: run with CDLIB_UPDATE_GOLDEN=1 and review the diff"


def test_rendering_is_deterministic():
    first = [(i.fullname, i.xml) for i in rendered_items()]
    assert first == [(i.fullname, i.xml) for i in rendered_items()]


def test_folders_come_before_their_jobs_and_parents_before_children():
    items = render_catalog(cat.load(ROOT / "jenkins" / "catalog.yml"))
    names = [i.fullname for i in items]
    for i, item in enumerate(items):
        parent = item.fullname.rpartition("/")[0]
        if parent:
            assert parent in names[:i], f"{item.fullname} comes before its folder {parent}"
    assert {i.fullname for i in items if i.kind == "folder"} == {"platform", "services", "shop", "shop/services"}


# ---- the shapes of real Jenkins configs -------------------------------------------------------------
def _order(children: list[str], reference: list[str]) -> list[str]:
    return [c for c in children if c in reference]


def _tags(el: ET.Element | None) -> list[str]:
    return [c.tag for c in el] if el is not None else []


def test_jobs_have_the_shape_of_real_pipeline_jobs():
    ref = sample("pipeline-scm-git-parameters.xml")
    ref_push = sample("pipeline-scm-git-github-push-trigger.xml")
    ref_discard = sample("pipeline-scm-git-build-discarder.xml")
    for item in (i for i in rendered_items() if i.kind == "job"):
        job = parse(item.xml)
        assert job.tag == ref.tag == "flow-definition"
        # the root's children appear in the order Jenkins writes them, and only known ones
        assert set(_tags(job)) <= set(_tags(ref)), item.fullname
        assert _tags(job) == _order(_tags(ref), _tags(job)), item.fullname
        definition, ref_def = job.find("definition"), ref.find("definition")
        assert definition.get("class") == ref_def.get("class") == "org.jenkinsci.plugins.workflow.cps.CpsScmFlowDefinition"
        assert _tags(definition) == ["scm", "scriptPath", "lightweight"]
        assert _tags(definition) == _order(_tags(ref_def), _tags(definition))
        scm, ref_scm = definition.find("scm"), ref_def.find("scm")
        assert scm.get("class") == ref_scm.get("class") == "hudson.plugins.git.GitSCM"
        assert set(_tags(scm)) <= set(_tags(ref_scm)) and _tags(scm) == _order(_tags(ref_scm), _tags(scm))
        remote = scm.find("userRemoteConfigs/hudson.plugins.git.UserRemoteConfig")
        assert remote is not None and remote.find("url").text
        assert scm.find("branches/hudson.plugins.git.BranchSpec/name").text
        props = job.find("properties")
        discarder = props.find("jenkins.model.BuildDiscarderProperty")
        if discarder is not None:
            ref_strategy = ref_discard.find("properties/jenkins.model.BuildDiscarderProperty/strategy")
            assert discarder.find("strategy").get("class") == ref_strategy.get("class") == "hudson.tasks.LogRotator"
            assert _tags(discarder.find("strategy")) == _tags(ref_strategy)
        for p in props.iter("hudson.model.StringParameterDefinition"):
            ref_p = ref.find("properties/hudson.model.ParametersDefinitionProperty/parameterDefinitions/"
                             "hudson.model.StringParameterDefinition")
            assert _tags(p) == _tags(ref_p)
        push = props.find("org.jenkinsci.plugins.workflow.job.properties.PipelineTriggersJobProperty/triggers/"
                          "com.cloudbees.jenkins.GitHubPushTrigger")
        if push is not None:
            ref_trigger = ref_push.find("properties/org.jenkinsci.plugins.workflow.job.properties."
                                        "PipelineTriggersJobProperty/triggers/com.cloudbees.jenkins.GitHubPushTrigger")
            assert _tags(push) == _tags(ref_trigger) == ["spec"]
        # every job refuses concurrent builds, as the Jenkinsfile's disableConcurrentBuilds() does
        assert props.find("org.jenkinsci.plugins.workflow.job.properties.DisableConcurrentBuildsJobProperty") is not None
        # Jenkins adds actions and plugin versions itself
        assert job.find("actions") is None and not any("plugin" in e.attrib for e in job.iter())


def test_folders_have_the_shape_of_a_real_folder():
    ref = sample("folder.xml")
    for item in (i for i in rendered_items() if i.kind == "folder"):
        folder = parse(item.xml)
        assert folder.tag == ref.tag == "com.cloudbees.hudson.plugins.folder.Folder"
        assert _tags(folder) == ["description", *_tags(ref)]
        for path in ("folderViews", "healthMetrics/com.cloudbees.hudson.plugins.folder.health.WorstChildHealthMetric",
                     "icon", "folderViews/views/hudson.model.AllView/owner"):
            assert folder.find(path).attrib == {k: v for k, v in ref.find(path).attrib.items() if k != "plugin"}


def test_the_comparison_treats_a_real_export_like_the_template_it_came_from():
    """A job re-serialised by Jenkins (1.1 declaration, plugin attributes, actions) normalises to the
    same tree as our render of the same settings."""
    spec = cat.JobSpec(name="pipeline", repository="https://github.com/suryadevta/test_code", branch="*/master",
                       jenkinsfile="jenkins", keep_builds=10)
    ours = parse_config(Renderer().job(spec).xml)
    real = parse_config((SAMPLES / "pipeline-scm-git-build-discarder.xml").read_text())
    assert ours.find("definition/scm/userRemoteConfigs").tag == real.find("definition/scm/userRemoteConfigs").tag
    assert ET.tostring(ours.find("properties/jenkins.model.BuildDiscarderProperty")) == \
        ET.tostring(real.find("properties/jenkins.model.BuildDiscarderProperty"))
    assert ET.tostring(ours.find("definition/scm/branches")) == ET.tostring(real.find("definition/scm/branches"))
    assert real.find("actions") is None and "plugin" not in real.attrib


@pytest.mark.parametrize("name, spec", [
    ("pipeline-scm-git-build-discarder.xml", {"repository": "https://github.com/suryadevta/test_code",
                                              "branch": "*/master", "jenkinsfile": "jenkins"}),
    ("pipeline-scm-git-github-push-trigger.xml", {"repository": "https://github.com/prashanth-1993/hello-world-servlet.git",
                                                  "branch": "*/master"}),
    ("pipeline-scm-git-parameters.xml", {"repository": "https://github.com/Rakeshgoniguntla/jenkinspipeline.git",
                                         "jenkinsfile": "jenkinsparambuild2"}),
])
def test_the_git_definition_of_a_real_export_equals_the_render_of_its_settings(name, spec):
    """Jenkins' own serialisation of the SCM definition (submodule fields, plugin versions) is no
    difference, although remotes and branch specs are compared strictly."""
    def definition_only(root: ET.Element) -> ET.Element:
        job = ET.Element(root.tag)
        job.append(root.find("definition"))
        return job

    ours = definition_only(parse_config(Renderer().job(cat.JobSpec(name="pipeline", **spec)).xml))
    real = definition_only(parse_config((SAMPLES / name).read_text()))
    assert differences(ours, real) == []
    real.find("definition/scm/userRemoteConfigs/hudson.plugins.git.UserRemoteConfig").append(ET.Element("refspec"))
    real.find("definition/scm/userRemoteConfigs/hudson.plugins.git.UserRemoteConfig/refspec").text = "+refs/*:refs/*"
    assert differences(ours, real) == ["definition/scm/userRemoteConfigs/UserRemoteConfig/refspec: added on the server"]


# ---- escaping and the marker ----------------------------------------------------------------------------
def test_every_value_is_xml_escaped():
    item = next(i for i in rendered_items() if i.fullname == "edge")
    job = parse(item.xml)
    assert job.find("description").text.startswith("Tags <b>&</b> 'quotes' \"double\" ]]> end\n\n[managed by cdlib")
    params = job.find("properties/hudson.model.ParametersDefinitionProperty/parameterDefinitions")
    assert params[0].find("defaultValue").text == "a & b <c>"
    assert [s.text for s in params[2].iter("string")] == ["safe", "fast & loose"]
    assert "<b>" not in item.xml and "&amp;" in item.xml


def test_the_marker_carries_the_rev_of_the_render_without_it():
    renderer = Renderer()
    spec = cat.JobSpec(name="svc", repository="https://git.example.com/svc.git", description="Svc.")
    item = renderer.job(spec)
    description = parse(item.xml).find("description").text
    assert managed(description) == (True, item.rev)
    assert MARKER_RE.search(description).group("rev") == item.rev
    assert renderer.job(spec).rev == item.rev
    changed = renderer.job(cat.JobSpec(name="svc", repository="https://git.example.com/svc.git",
                                       description="Svc.", branch="*/develop"))
    assert changed.rev != item.rev
    assert managed("a job someone made") == (False, None)
    assert managed(None) == (False, None)
    # the marker names the item it was written for: a copy or a renamed job is not managed as itself
    assert description.endswith("[managed by cdlib as svc, rev " + item.rev +
                                "; changes made here are overwritten by cdlib jobs apply]")
    assert managed(description, "svc") == (True, item.rev) and managed(description, "SVC") == (True, item.rev)
    assert managed(description, "svc-copy") == (False, None)
    assert managed("Ops tooling [managed by cdlib-ops team]") == (False, None)
    assert managed("[managed by cdlib, rev 0123456789ab; changes made here are overwritten by cdlib jobs apply]",
                   "svc") == (False, None)  # an older marker names no item: never pruned
    # disabled kept from the server: same rev, different XML
    kept = renderer.job(spec, disabled=True, rev=item.rev)
    assert kept.rev == item.rev and "<disabled>true</disabled>" in kept.xml


def test_render_writes_the_folder_tree(tmp_path, capsys):
    out = tmp_path / "jobs"
    assert main(["jobs", "render", "--out", str(out), "--catalog", str(ROOT / "jenkins" / "catalog.yml")]) == 0
    files = sorted(str(p.relative_to(out)) for p in out.rglob("config.xml"))
    assert files == ["platform/config.xml", "platform/notifications/config.xml", "services/config.xml",
                     "services/demo/config.xml", "shop/config.xml", "shop/services/catalog-search/config.xml",
                     "shop/services/config.xml", "shop/services/orders/config.xml"]
    assert "4 jobs and 4 folders" in capsys.readouterr().out
    assert (out / "services" / "demo" / "config.xml").read_text() == (GOLDEN / "job__services__demo.xml").read_text()


def test_write_tree_reports_an_unwritable_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"^--out .*: cannot write"):
        write_tree(rendered_items()[:1], blocker)


# ---- catalog errors ----------------------------------------------------------------------------------------
GOOD = {"name": "svc", "repository": "https://git.example.com/svc.git"}


@pytest.mark.parametrize("data, message", [
    ({"services": [{**GOOD, "name": "Svc"}]}, "cat.yml: services[0].name: expected a service name"),
    ({"services": [{**GOOD, "name": "a:b"}]}, "cat.yml: services[0].name: expected a service name (Jenkins: ‘:’ is an unsafe character"),
    ({"services": [{**GOOD, "folder": "team:a"}]}, "cat.yml: services[0].folder: expected a folder path like team-a/services (Jenkins: ‘:’"),
    ({"services": [{**GOOD, "folder": "a//b"}]}, "cat.yml: services[0].folder: expected a folder path"),
    ({"services": [{**GOOD, "folder": "a/b."}]}, "cat.yml: services[0].folder: expected a folder path like team-a/services (Jenkins: a name cannot end"),
    ({"services": [GOOD, GOOD]}, "cat.yml: services[1].name: expected a job name not used before in folder '/' (taken by services[0])"),
    ({"services": [{**GOOD, "folder": "svc"}, GOOD]}, "cat.yml: services[1].name: expected a name that is not also a folder"),
    ({"services": [{**GOOD, "repository": "not a url"}]}, "cat.yml: services[0].repository: expected a Git URL"),
    ({"services": [{"name": "svc"}]}, "cat.yml: services[0].repository: expected a value (required)"),
    ({"services": [{**GOOD, "triggers": {"scm_poll": "every 5 minutes"}}]}, "cat.yml: services[0].triggers.scm_poll: expected a Jenkins cron line"),
    ({"services": [{**GOOD, "triggers": {"webhook": True}}]}, "cat.yml: services[0].triggers.webhook: expected no such key"),
    ({"services": [{**GOOD, "colour": "blue"}]}, "cat.yml: services[0].colour: expected no such key"),
    ({"defaults": {"name": "x"}, "services": [GOOD]}, "cat.yml: defaults.name: expected no such key"),
    ({"defaults": {"keep_builds": 0}, "services": [GOOD]}, "cat.yml: defaults.keep_builds: expected an integer from 1 to 100000"),
    ({"services": [{**GOOD, "jenkinsfile": "../Jenkinsfile"}]}, "cat.yml: services[0].jenkinsfile: expected a relative path"),
    ({"services": [{**GOOD, "credentials": "git ci"}]}, "cat.yml: services[0].credentials: expected a Jenkins credentials id"),
    ({"services": [{**GOOD, "description": "x [managed by cdlib]"}]}, "cat.yml: services[0].description: expected text without"),
    ({"services": [{**GOOD, "parameters": [{"name": "M", "type": "choice"}]}]}, "cat.yml: services[0].parameters[0].choices: expected a non-empty list"),
    ({"services": [{**GOOD, "parameters": [{"name": "M", "type": "choice", "choices": ["a"], "default": "a"}]}]},
     "cat.yml: services[0].parameters[0].default: expected no such key"),
    ({"services": [{**GOOD, "parameters": [{"name": "1X"}]}]}, "cat.yml: services[0].parameters[0].name: expected a parameter name"),
    ({"services": [{**GOOD, "parameters": [{"name": "X"}, {"name": "X", "type": "boolean"}]}]},
     "cat.yml: services[0].parameters: expected distinct parameter names"),
    ({"services": []}, "cat.yml: services: expected a non-empty list"),
    ({"services": [GOOD], "ignore_properties": ["not a class"]}, "cat.yml: ignore_properties[0]: expected Java class names"),
    (["a list"], "cat.yml: expected a mapping with defaults and services"),
    # XML 1.1 (the declaration Jenkins writes and the templates copy) forbids C1 controls and turns NEL,
    # U+2028 and U+2029 into line feeds: such a value would read back changed on every apply
    ({"services": [{**GOOD, "description": "Orders\u2028API"}]}, "cat.yml: services[0].description: expected text without"),
    ({"services": [{**GOOD, "parameters": [{"name": "N", "default": "a\x85b"}]}]},
     "cat.yml: services[0].parameters[0].default: expected text without control characters"),
    ({"services": [{**GOOD, "parameters": [{"name": "N", "description": "a\x80"}]}]},
     "cat.yml: services[0].parameters[0].description: expected text without control characters"),
    ({"services": [{**GOOD, "parameters": [{"name": "M", "type": "choice", "choices": ["a\u2029b"]}]}]},
     "cat.yml: services[0].parameters[0].choices[0]: expected choices (one line each)"),
    ({"services": [{**GOOD, "jenkinsfile": "ci/\x9bJenkinsfile"}]}, "cat.yml: services[0].jenkinsfile: expected a relative path"),
    # Jenkins ignores case in item names: two spellings of one folder are one folder
    ({"services": [{**GOOD, "folder": "Team"}, {**GOOD, "name": "other", "folder": "team/sub"}]},
     "cat.yml: services[1].folder: expected the folder spelled as services[0] spells it ('Team')"),
])
def test_a_bad_catalog_gives_one_line_naming_the_file_and_key(data, message):
    with pytest.raises(ConfigError) as exc:
        cat.parse(data, "cat.yml")
    assert str(exc.value).startswith(message), str(exc.value)
    assert "\n" not in str(exc.value)
    assert exc.value.exit_code == 2


def test_services_inherit_and_override_the_defaults():
    c = cat.parse({"defaults": {"folder": "team", "keep_builds": 7, "triggers": {"github_push": True, "cron": "@daily"},
                                "parameters": [{"name": "A"}]},
                   "services": [GOOD, {**GOOD, "name": "other", "keep_builds": None, "triggers": {"cron": None},
                                       "parameters": []}]}, "cat.yml")
    first, second = c.job("team/svc"), c.job("team/other")
    assert first.keep_builds == 7 and first.triggers == cat.Triggers(github_push=True, cron="@daily")
    assert [p.name for p in first.parameters] == ["A"]
    assert second.keep_builds is None and second.triggers == cat.Triggers(github_push=True, cron=None)
    assert second.parameters == ()
    assert c.folders == ("team",)


def test_the_cli_reports_a_bad_catalog_with_exit_code_2(tmp_path, capsys):
    path = tmp_path / "catalog.yml"
    path.write_text("services:\n  - name: UPPER\n    repository: https://x/y.git\n")
    assert main(["jobs", "render", "--out", str(tmp_path / "out"), "--catalog", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cdlib: error: {path}: services[0].name: expected a service name") and "\n" not in err
    path.write_text("services: [\n")
    assert main(["jobs", "render", "--out", str(tmp_path / "out"), "--catalog", str(path)]) == 2
    assert "not valid YAML at line" in capsys.readouterr().err
    assert main(["jobs", "render", "--out", str(tmp_path / "out"), "--catalog", str(tmp_path / "missing.yml")]) == 2
    assert "no such catalog file" in capsys.readouterr().err
