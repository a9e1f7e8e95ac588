"""Mocked Pulumi runs of the program: the resources a stack registers and its Kubernetes objects.

Used by the infra tests, the policy tests and ``python -m render <stack>`` (``make render``).
"""

from render.harness import (
    RegisteredResource,
    StackRun,
    kubernetes_objects,
    load_stack_config,
    render_stack,
    run_stack,
)

__all__ = [
    "RegisteredResource",
    "StackRun",
    "kubernetes_objects",
    "load_stack_config",
    "render_stack",
    "run_stack",
]
