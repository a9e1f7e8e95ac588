"""The Pulumi program: validate the stack config, build the platform, export what a user needs."""

import pulumi

from components.config import CONFIG_KEY, HF_TOKEN_KEY, parse_platform_config
from components.platform import Platform, PlatformArgs

config = pulumi.Config()
platform_config = parse_platform_config(config.require_object(CONFIG_KEY))
platform = Platform(
    "platform", PlatformArgs(config=platform_config, hf_token=config.get_secret(HF_TOKEN_KEY))
)

pulumi.export("gatewayAddress", platform.gateway_address)
pulumi.export("servedModels", platform.curls)
pulumi.export("imageRef", platform.image_ref)
pulumi.export("kubeconfig", pulumi.Output.secret(platform.kubeconfig))
