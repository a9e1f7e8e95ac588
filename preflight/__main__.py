"""``python -m preflight <stack>``: run the checks with the user's credentials and print what to fix.

Google: Application Default Credentials (``gcloud auth application-default login``), the ones the
Pulumi Google provider uses. Hugging Face: ``$HF_TOKEN``, else the stack's ``hfToken``
(``pulumi config get``, when the Pulumi CLI is installed). Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping

from components.config import CONFIG_KEY, HF_TOKEN_KEY, ConfigError, parse_platform_config
from preflight.checks import Context, Finding, Response, run_checks
from render.harness import load_stack_config

TIMEOUT_SECONDS = 10.0
MARKS = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


def http(method: str, url: str, *, headers: Mapping[str, str] | None = None) -> Response:
    """One request with ``requests``; redirects are answers, not followed (a 302 from the Hub is a yes)."""
    import requests

    answer = requests.request(
        method, url, headers=dict(headers or {}), timeout=TIMEOUT_SECONDS, allow_redirects=False
    )
    try:
        body = answer.json() if answer.content else None
    except ValueError:
        body = None
    return Response(answer.status_code, body, dict(answer.headers))


def google_token() -> str:
    import google.auth
    from google.auth.transport.requests import Request

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    credentials.refresh(Request())  # type: ignore[no-untyped-call]
    return str(credentials.token)


def hugging_face_token(stack: str) -> str | None:
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    if shutil.which("pulumi") is None:
        return None
    done = subprocess.run(
        ["pulumi", "config", "get", HF_TOKEN_KEY, "--stack", stack],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.stdout.strip() or None if done.returncode == 0 else None


def report(findings: list[Finding]) -> str:
    lines = []
    for finding in findings:
        lines.append(f"{MARKS[finding.status]} {finding.check}: {finding.message}")
        if finding.fix and finding.status != "ok":
            lines.append(f"     fix: {finding.fix}")
    failed = sum(1 for f in findings if f.status == "fail")
    lines.append(f"{failed} check(s) failed" if failed else "all checks passed")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m preflight", description=__doc__)
    parser.add_argument("stack", help="stack name: reads Pulumi.<stack>.yaml")
    args = parser.parse_args(argv)
    try:
        project, config = load_stack_config(args.stack)
        platform = parse_platform_config(config.get(f"{project}:{CONFIG_KEY}"))
    except (FileNotFoundError, ConfigError) as exc:
        print(f"preflight: {exc}", file=sys.stderr)
        return 2
    try:
        token = google_token()
    except Exception as exc:  # google.auth's errors have no common base worth naming here
        print(
            f"FAIL credentials: no Google credentials ({type(exc).__name__})\n"
            "     fix: gcloud auth application-default login",
        )
        return 1
    context = Context(platform, http, token, hugging_face_token(args.stack))
    findings = run_checks(context)
    print(report(findings))
    return 1 if any(f.status == "fail" for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
