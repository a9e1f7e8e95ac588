"""The stack's secret config values, read and checked before any resource is registered.

Each value must have been set with ``pulumi config set --secret``: a plain value in the stack file
is refused, since it would sit unencrypted in the repository. The API key list is validated by the
front door's own parser (``epp.auth.keys``) against the names the stack serves, so a bad entry
stops ``pulumi preview`` with the entry named (``apiKeys[2].models[0]: ...``), never quoting a key.
Values come back as Pulumi secret Outputs: whatever is built from them stays secret in the state.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from epp.auth.keys import ApiKeyError, parse_api_keys
from pulumi.runtime.config import get_config, is_config_secret

from components.config import (
    API_KEYS_KEY,
    HF_TOKEN_KEY,
    TLS_CERTIFICATE_KEY,
    TLS_PRIVATE_KEY_KEY,
    ConfigError,
    PlatformConfig,
)

ALERT_WEBHOOK_URL_KEY = "alertWebhookUrl"
"""Secret config value: the URL alerts are POSTed to (Alertmanager's webhook format)."""

KEY_FORMAT = "a YAML or JSON list of {name, key | sha256, models?, requestsPerMinute?}"


@dataclass(frozen=True)
class StackSecrets:
    """The secret inputs of one stack, each a Pulumi secret Output (None when not set)."""

    hf_token: pulumi.Output[str] | None = None
    api_keys: pulumi.Output[str] | None = None
    """The key list's text, exactly as set (the front door parses it again when it mounts it)."""
    tls_certificate: pulumi.Output[str] | None = None
    tls_private_key: pulumi.Output[str] | None = None
    alert_webhook_url: pulumi.Output[str] | None = None


def as_secret(value: pulumi.Input[str]) -> pulumi.Output[str]:
    """``value`` as a Pulumi secret, whatever marked it (or forgot to)."""
    output: pulumi.Output[str] = pulumi.Output.secret(value)
    return output


class _Reader:
    def __init__(self, config: pulumi.Config) -> None:
        self._config = config
        self.errors: list[str] = []

    def text(self, key: str) -> str | None:
        """The value of ``key`` if it was set as a secret; a plain value is an error."""
        full_key = self._config.full_key(key)
        raw = get_config(full_key)
        if raw is None:
            return None
        if not is_config_secret(full_key):
            self.errors.append(
                f"{key}: is set in plain text in the stack file; remove it "
                f"(`pulumi config rm {key}`) and set it encrypted: `pulumi config set --secret {key} ...`"
            )
            return None
        return str(raw)


def read_stack_secrets(config: pulumi.Config, platform: PlatformConfig) -> StackSecrets:
    """Every secret the stack's config asks for, checked; raise :class:`ConfigError` naming each problem."""
    reader = _Reader(config)
    hf_token = reader.text(HF_TOKEN_KEY)
    api_keys = reader.text(API_KEYS_KEY)
    certificate = reader.text(TLS_CERTIFICATE_KEY)
    private_key = reader.text(TLS_PRIVATE_KEY_KEY)
    webhook = reader.text(ALERT_WEBHOOK_URL_KEY)
    errors = reader.errors
    if webhook is not None and not webhook.startswith(("https://", "http://")):
        errors.append(f"{ALERT_WEBHOOK_URL_KEY}: is not an http(s) URL")

    if hf_token is None and not any(e.startswith(HF_TOKEN_KEY) for e in errors):
        for index, model in platform.gated_models:
            errors.append(
                f"{HF_TOKEN_KEY}: platform.models[{index}] ({model.hugging_face_id}) is gated, so its server "
                f"cannot download the weights without a token; accept the model's licence on Hugging Face, "
                f"then `pulumi config set --secret {HF_TOKEN_KEY} hf_...` (or set "
                f"platform.models[{index}].gated: false if it is not gated)"
            )

    mode = platform.gateway.auth.mode
    if mode == "api-keys" and api_keys is None and not any(e.startswith(API_KEYS_KEY) for e in errors):
        errors.append(
            f"{API_KEYS_KEY}: platform.gateway.auth.mode is api-keys (the default) but no keys are set; "
            f"set them, encrypted, with `pulumi config set --secret {API_KEYS_KEY} \"$(cat keys.yaml)\"` "
            f"({KEY_FORMAT}), or opt out with platform.gateway.auth.mode: none"
        )
    elif mode == "none" and api_keys is not None:
        errors.append(
            f"{API_KEYS_KEY}: keys are set but platform.gateway.auth.mode is none, so nothing would check "
            f"them; set the mode to api-keys or remove them (`pulumi config rm {API_KEYS_KEY}`)"
        )
    elif api_keys is not None:
        try:
            parse_api_keys(api_keys, platform.served_names, where=API_KEYS_KEY)
        except ApiKeyError as exc:
            errors.extend(exc.errors)

    tls = platform.gateway.tls
    self_managed = tls is not None and tls.certificate == "self-managed"
    for key, value in ((TLS_CERTIFICATE_KEY, certificate), (TLS_PRIVATE_KEY_KEY, private_key)):
        if self_managed and value is None and not any(e.startswith(key) for e in errors):
            errors.append(
                f"{key}: platform.gateway.tls.certificate is self-managed; set the PEM with "
                f"`pulumi config set --secret {key} < FILE`"
            )
        elif not self_managed and value is not None:
            errors.append(f"{key}: only used with platform.gateway.tls.certificate: self-managed")
    if errors:
        raise ConfigError(errors)

    def optional(value: str | None) -> pulumi.Output[str] | None:
        return None if value is None else as_secret(value)

    return StackSecrets(
        hf_token=optional(hf_token),
        api_keys=optional(api_keys),
        tls_certificate=optional(certificate),
        tls_private_key=optional(private_key),
        alert_webhook_url=optional(webhook),
    )
