"""The GitHub workflows, read as GitHub would read them: what runs on a push, a pull request, a deploy.

Actions cannot run here, so these tests hold the workflows to what the project relies on: the test
job runs `.ci/run`; each committed stack gets a policy-checked preview commented on its pull request,
with keyless GCP credentials; every action is pinned to a release.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"
COMMITTED_STACKS = sorted(path.name.split(".")[1] for path in REPO.glob("Pulumi.*.yaml"))


def _workflow(name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(loaded, dict), f"{name} is not a YAML mapping"
    # YAML 1.1 reads the bare key `on` as the boolean True.
    if True in loaded:
        loaded["on"] = loaded.pop(True)
    return loaded


def _steps(workflow: dict[str, Any], job: str) -> list[dict[str, Any]]:
    steps = workflow["jobs"][job]["steps"]
    assert isinstance(steps, list)
    return steps


def _step_using(steps: list[dict[str, Any]], action: str) -> tuple[int, dict[str, Any]]:
    matches = [
        (i, step) for i, step in enumerate(steps) if str(step.get("uses", "")).startswith(f"{action}@")
    ]
    assert len(matches) == 1, f"expected exactly one step using {action}, found {len(matches)}"
    return matches[0]


def _step_running(steps: list[dict[str, Any]], fragment: str) -> int:
    matches = [i for i, step in enumerate(steps) if fragment in str(step.get("run", ""))]
    assert matches, f"no step runs {fragment!r}"
    return matches[0]


@pytest.mark.parametrize("name", ["test.yml", "preview.yml", "deploy.yml"])
def test_every_workflow_parses_and_pins_each_action_to_a_release(name: str) -> None:
    workflow = _workflow(name)

    assert workflow["name"]
    assert workflow["on"]
    assert workflow["jobs"]
    for job_name, job in workflow["jobs"].items():
        assert job.get("timeout-minutes"), f"{name}: job {job_name} has no timeout"
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+(\.\d+)*", step["uses"]), (
                    f"{name}: {step['uses']} is not pinned to a release"
                )


def test_every_push_and_pull_request_runs_the_ci_entry_point_on_python_311() -> None:
    workflow = _workflow("test.yml")
    steps = _steps(workflow, "test")

    assert "push" in workflow["on"]
    assert "pull_request" in workflow["on"]
    checkout, _ = _step_using(steps, "actions/checkout")
    python, setup = _step_using(steps, "actions/setup-python")
    run = _step_running(steps, "bash .ci/run")
    assert str(setup["with"]["python-version"]) == "3.11"
    assert checkout < python < run


def test_a_pull_request_previews_every_committed_stack() -> None:
    workflow = _workflow("preview.yml")
    job = workflow["jobs"]["preview"]

    assert list(workflow["on"]) == ["pull_request"]
    assert COMMITTED_STACKS == ["gpu", "tpu"]
    assert sorted(job["strategy"]["matrix"]["stack"]) == COMMITTED_STACKS
    assert job["strategy"]["fail-fast"] is False


def test_the_preview_gets_gcp_credentials_by_workload_identity_federation_not_a_key() -> None:
    workflow = _workflow("preview.yml")
    steps = _steps(workflow, "preview")

    assert workflow["permissions"]["id-token"] == "write"
    assert workflow["permissions"]["pull-requests"] == "write"
    _, auth = _step_using(steps, "google-github-actions/auth")
    assert auth["with"] == {
        "workload_identity_provider": "${{ vars.GCP_WORKLOAD_IDENTITY_PROVIDER }}",
        "service_account": "${{ vars.GCP_SERVICE_ACCOUNT }}",
    }
    _, gcloud = _step_using(steps, "google-github-actions/setup-gcloud")
    assert "gke-gcloud-auth-plugin" in gcloud["with"]["install_components"]


def test_the_preview_runs_the_policy_pack_and_comments_the_plan_on_the_pull_request() -> None:
    steps = _steps(_workflow("preview.yml"), "preview")

    pulumi, preview = _step_using(steps, "pulumi/actions")
    auth, _ = _step_using(steps, "google-github-actions/auth")
    buildx, _ = _step_using(steps, "docker/setup-buildx-action")
    program_venv = _step_running(steps, "pip install -r requirements.txt")
    pack_venv = _step_running(steps, "policy/.venv/bin/python -m pip install -r policy/requirements.txt")
    assert max(auth, buildx, program_venv, pack_venv) < pulumi
    assert preview["with"]["command"] == "preview"
    assert "matrix.stack" in preview["with"]["stack-name"]
    assert preview["with"]["comment-on-pr"] is True
    assert preview["with"]["policyPacks"] == "policy"
    assert preview["env"]["PULUMI_ACCESS_TOKEN"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}"


def test_the_policy_pack_the_workflows_name_is_a_pack_with_its_own_venv() -> None:
    pack = yaml.safe_load((REPO / "policy" / "PulumiPolicy.yaml").read_text())

    assert pack["runtime"] == {"name": "python", "options": {"virtualenv": ".venv"}}
    assert (REPO / "policy" / "__main__.py").is_file()
    assert (REPO / "policy" / "requirements.txt").is_file()


def test_a_deploy_happens_only_by_hand_for_a_chosen_stack_under_the_policy_pack() -> None:
    workflow = _workflow("deploy.yml")
    steps = _steps(workflow, "up")

    assert list(workflow["on"]) == ["workflow_dispatch"]
    assert workflow["on"]["workflow_dispatch"]["inputs"]["stack"]["options"] == COMMITTED_STACKS
    assert workflow["permissions"]["id-token"] == "write"
    _step_using(steps, "google-github-actions/auth")
    _, up = _step_using(steps, "pulumi/actions")
    assert up["with"]["command"] == "up"
    assert "inputs.stack" in up["with"]["stack-name"]
    assert up["with"]["policyPacks"] == "policy"
