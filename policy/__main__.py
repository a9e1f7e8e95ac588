"""The policy pack: wires the pure rules of `rules.py` to the Pulumi policy SDK, every rule mandatory.

The Pulumi CLI runs this file as `python -m pulumi.policy <engine> policy`, which executes this
directory's `__main__` with the directory first on sys.path; that is why `rules` is imported as a
top-level module. Importing it under any other name builds the policies without serving them.
"""

from collections.abc import Callable

import rules
from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyPack,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

PACK_NAME = "gke-llm-gateway"


def _resource_validation(
    rule: rules.ResourceRule,
) -> Callable[[ResourceValidationArgs, ReportViolation], None]:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        stack = rules.stack_of_urn(args.urn)
        for message in rule.check(args.resource_type, args.props, stack):
            report_violation(message, None)

    return validate


def _stack_validation(rule: rules.StackRule) -> Callable[[StackValidationArgs, ReportViolation], None]:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        resources = [
            rules.StackResource(type=r.resource_type, name=r.name, urn=r.urn, props=r.props)
            for r in args.resources
        ]
        for violation in rule.check(resources):
            report_violation(violation.message, violation.urn)

    return validate


def build_policies() -> list[Policy]:
    """One mandatory policy per rule of `rules.RESOURCE_RULES` and `rules.STACK_RULES`."""
    policies: list[Policy] = [
        ResourceValidationPolicy(
            name=rule.name,
            description=rule.description,
            validate=_resource_validation(rule),
            enforcement_level=EnforcementLevel.MANDATORY,
        )
        for rule in rules.RESOURCE_RULES
    ]
    policies.extend(
        StackValidationPolicy(
            name=rule.name,
            description=rule.description,
            validate=_stack_validation(rule),
            enforcement_level=EnforcementLevel.MANDATORY,
        )
        for rule in rules.STACK_RULES
    )
    return policies


if __name__ == "__main__":
    # Starts the analyzer's gRPC server, prints its port for the CLI and serves until stopped.
    PolicyPack(name=PACK_NAME, policies=build_policies(), enforcement_level=EnforcementLevel.MANDATORY)
