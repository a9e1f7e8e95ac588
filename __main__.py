"""The Pulumi program: check the stack config and its secrets, build the platform, export what users need."""

import pulumi

from components.config import CONFIG_KEY, parse_platform_config
from components.platform import Platform, PlatformArgs
from components.secrets import read_stack_secrets

config = pulumi.Config()
platform_config = parse_platform_config(config.require_object(CONFIG_KEY))
secrets = read_stack_secrets(config, platform_config)
platform = Platform("platform", PlatformArgs(config=platform_config, secrets=secrets))

pulumi.export("gatewayAddress", platform.gateway_address)
pulumi.export("gatewayUrl", platform.gateway_url)
pulumi.export("servedModels", platform.curls)
pulumi.export("imageRef", platform.image_ref)
pulumi.export("modelImages", platform.model_images)
pulumi.export("kubeconfig", pulumi.Output.secret(platform.kubeconfig))
if platform.dashboard_url is not None:
    pulumi.export("dashboardUrl", platform.dashboard_url)
if platform.dns_records is not None:
    pulumi.export("dnsRecords", platform.dns_records)
