"""Dead and hung pods leave rotation fast, on the scaleout box (4 simulated pods of one model behind
the real Envoy, BBR and EPP), under a steady load of independent requests.

Run alone, the figures print with ``-s`` (or run ``python -m onebox.faults``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from onebox import faults
from onebox.box import OneBox
from onebox.envoy.limits import GatewayTimeouts
from onebox.supervisor import Backoff
from onebox.topology import load_preset

pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

UPSTREAM_IDLE = 3.0
SETTLE = 2.0


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def box() -> AsyncIterator[OneBox]:
    # A killed pod stays dead for the whole run (as a crash-looping pod would), not restarted.
    timeouts = GatewayTimeouts(upstream_idle=UPSTREAM_IDLE)
    restart = Backoff(first=120.0, longest=120.0)
    async with OneBox(load_preset("scaleout"), time_scale=0, timeouts=timeouts, restart=restart) as box:
        yield box


async def test_a_stopped_pod_gets_no_new_request_2_s_after_it_stopped_and_is_back_once_continued(
    box: OneBox,
) -> None:
    result = await faults.stopped_pod_under_load(box, "gemma-1", settle=SETTLE)
    print(result)
    assert result.last_sent_to_pod is not None  # it did get requests before it was ejected
    assert result.last_sent_to_pod < SETTLE
    stuck = [a for a in result.answers if a.status != 200]
    assert {(a.status, a.error_type) for a in stuck} <= {(504, "timeout_error")}
    assert all(a.at - a.sent >= UPSTREAM_IDLE for a in stuck)  # ended by the upstream idle timeout
    assert result.failed_after == []
    assert result.served_again is not None


async def test_after_kill_9_of_one_of_four_pods_under_load_under_1_percent_fail_from_2_s_on(
    box: OneBox,
) -> None:
    result = await faults.killed_pod(box, "gemma-2", settle=SETTLE)
    print(result)
    assert len(result.after) > 300
    assert result.failure_ratio < 0.01
    assert not box.child("gemma-2").running
    # what failed was answered: a JSON 502 naming the connect failure, never a hang or an empty body
    assert {(a.status, a.kind) for a in result.answers if a.status != 200} <= {(502, "json-error")}
