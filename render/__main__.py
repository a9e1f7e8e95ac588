"""``python -m render <stack>``: print every Kubernetes object the stack would create, as YAML."""

from __future__ import annotations

import argparse
import sys

import yaml

from render.harness import kubernetes_objects, render_stack


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (CRD descriptions, the EPP config) as readable literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m render",
        description="Print, as a multi-document YAML stream, every Kubernetes object a stack would "
        "create (mocked Pulumi run: no cloud, no CLI). Secret values are masked; the stack's encrypted "
        "apiKeys cannot be read here, so a generated placeholder key list stands in for it.",
    )
    parser.add_argument("stack", help="stack name: reads Pulumi.<stack>.yaml from the repository root")
    args = parser.parse_args(argv)
    try:
        run = render_stack(args.stack)
    except (FileNotFoundError, ValueError) as exc:
        print(f"render: {exc}", file=sys.stderr)
        return 2
    objects = kubernetes_objects(run.resources, mask_secrets=True)
    yaml.dump_all(objects, sys.stdout, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
