"""Envoy in the one box: ``bootstrap`` builds the configurations, ``process`` runs Envoy.

The names below are the package's public surface (the gateway tests and the benchmark use them).
"""

from onebox.envoy.bootstrap import (
    PoolRoute,
    ResponseMode,
    gateway_config,
    passthrough_config,
    render,
    round_robin_config,
    unified_gateway_config,
)
from onebox.envoy.process import EnvoyError, EnvoyProcess, envoy_binary, envoy_child

__all__ = [
    "EnvoyError",
    "EnvoyProcess",
    "PoolRoute",
    "ResponseMode",
    "envoy_binary",
    "envoy_child",
    "gateway_config",
    "passthrough_config",
    "render",
    "round_robin_config",
    "unified_gateway_config",
]
