"""No growth: 20,000 requests through the gpu box (real Envoy, BBR, EPPs, simulators) leave the
resident memory of every process within a small fixed margin of where it was after warm-up.

The BBR used to grow by ~120 bytes per request (+2.3 MB per 20,000): each of its ext_proc streams
stayed open until Envoy reset it. Run alone, the figures print with ``-s``.
"""

from __future__ import annotations

import pytest

from onebox import faults
from onebox.box import OneBox
from onebox.topology import load_preset

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

REQUESTS = 20_000
# Allocator and connection-pool warm-up still moves RSS by a few hundred KiB after the warm-up
# requests; the BBR's old leak was ~2,300 KiB over this many requests.
MARGIN_KIB = 1536


async def test_20000_requests_leave_every_process_resident_memory_flat() -> None:
    async with OneBox(load_preset("gpu"), time_scale=0) as box:
        result = await faults.soak(box, REQUESTS, concurrency=32, warmup=5_000)
    print(result)
    assert result.answers == {"200": REQUESTS}
    grown = {name: kib for name, kib in result.growth_kib().items() if kib > MARGIN_KIB}
    assert grown == {}
