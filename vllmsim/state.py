"""What the routes of one simulator instance read: its configuration, engine, metrics and identity.

``api`` serves a ``SimState``; ``server`` owns one and adds the listening socket's lifecycle.
"""

from __future__ import annotations

import random
import time
from collections import deque

from vllmsim.config import SimConfig
from vllmsim.engine import Engine
from vllmsim.metrics import SimMetrics


class SimState:
    """The engine, its metrics and the instance's name and readiness, shared by every route."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.engine = Engine(config, self.rng)
        self.metrics = SimMetrics(config, self.engine)
        self.started_at = int(time.time())
        self.ready = False
        self.pod_name = config.pod_name or ""
        # The headers of the last generation requests (names lower-cased): what reached the pod.
        self.received_headers: deque[dict[str, str]] = deque(maxlen=64)
        # Every request a proxy sent (it carries x-request-id; a picker's probes do not): method and
        # raw path, whatever the route, so a test can tell what reached the pod.
        self.proxied: deque[tuple[str, str]] = deque(maxlen=256)
