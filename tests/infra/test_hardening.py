"""Review findings on the stacks: graceful shutdown, runtime identity, health checks, BBR availability."""

from __future__ import annotations

from render import StackRun, render_stack
from tests.infra.conftest import DEPLOYMENT, named, of_type, pod_spec

BACKEND_POLICY = "kubernetes:networking.gke.io/v1:GCPBackendPolicy"


def test_a_vllm_pod_being_replaced_finishes_the_generations_it_has_started(stack_run: StackRun) -> None:
    [backend_policy, *_] = of_type(stack_run, BACKEND_POLICY)
    request_timeout = backend_policy.props["spec"]["default"]["timeoutSec"]

    for deployment in of_type(stack_run, DEPLOYMENT):
        if not deployment.props["metadata"]["name"].startswith("vllm-"):
            continue
        pod = pod_spec(deployment)
        [container] = pod["containers"]
        drain = container["lifecycle"]["preStop"]["exec"]["command"]
        assert drain[0] == "sleep"
        drain_seconds = int(drain[1])
        assert drain_seconds >= 10, "the load balancer and the EPP need time to drop the endpoint"
        assert pod["terminationGracePeriodSeconds"] >= drain_seconds + request_timeout


def test_a_longer_gateway_timeout_gives_vllm_a_longer_grace_period() -> None:
    run = render_stack("gpu", {"gateway": {"requestTimeoutSec": 1800}})
    pod = pod_spec(named(run, DEPLOYMENT, "vllm-phi3"))

    assert pod["terminationGracePeriodSeconds"] > 1800
