"""The deployed data plane on one machine: simulated vLLM pods, EPPs, BBR and a real Envoy.

- ``topology``: the YAML topology (models, replicas, pools) and the presets in ``presets/``.
- ``supervisor``: child processes in their own process groups, readiness, death reports.
- ``probes``: readiness checks (HTTP /health, gRPC health, Envoy admin /ready).
- ``box``: ``OneBox``, the async context manager that starts and stops the whole thing.
- ``envoy``: Envoy configurations (owned by the ext_proc side).
- ``demo`` and ``cli``: ``python -m onebox run|demo``.
"""
