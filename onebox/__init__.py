"""The deployed data plane on one machine: simulated vLLM pods, EPPs, BBR and a real Envoy.

- ``topology``: the YAML topology (models, replicas, pools) and the presets in ``presets/``.
- ``supervisor``: child processes in their own process groups, the ports they report, readiness,
  death reports.
- ``children``: how to run a simulated pod, an EPP and the BBR (command, reported ports, probe).
- ``envoy``: Envoy's bootstrap configurations (``envoy.bootstrap``) and running Envoy
  (``envoy.process``).
- ``probes``: readiness checks (HTTP /health, gRPC health, Envoy admin /ready).
- ``box``: ``OneBox``, the async context manager that starts and stops the whole thing.
- ``cli``: ``python -m onebox run``.

``onebox`` does not use ``bench``; the demo (``python -m bench.demo``) uses both.
"""

import os

# The box forks its children (EPPs, BBRs, Envoy, pods) from a process that uses gRPC (health probes);
# they exec at once and need none of its gRPC state, so gRPC's fork handlers stay out (with them a
# child between fork and exec has been seen to abort). Set before gRPC loads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
