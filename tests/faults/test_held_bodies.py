"""A key holder holding big request bodies open cannot take the front door's memory, nor slow
another tenant down (issue 20 item 1): 40 connections each sending 15 MB for a model the key may not
use, named at the body's end, withholding the last 2 bytes. Before the budget the BBR went from 253 MB
to 810 MB and stayed there, and another tenant's requests went from 5 ms to 649 ms. Run alone, the
figures print with ``-s``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from onebox import faults
from onebox.box import OneBox
from onebox.topology import load_preset

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

GEMMA = "google/gemma-2b-it"
PHI = "microsoft/Phi-3-mini-4k-instruct"
ATTACKER = "sk-attacker-0123456789abcdefghijklmnop"
LIGHT = "sk-light-user-0123456789abcdefghijklmn"
BUDGET = 64 << 20
# NOT the target (budget + a small margin), which is not met yet: a regression guard. Measured
# on this 2-core machine: growth +81 to +359 MiB for the 64 MiB budget, varying run to run; the bodies
# the budget counts stay within it, and what else the BBR holds is not pinned down (gRPC's receive
# buffers are a guess). Without the budget and the early model check the growth was +804 MiB (the
# issue measured 253 -> 810 MB on main), growing with the attackers' number.
MARGIN_KIB = 384 * 1024


async def test_held_bodies_stay_within_the_budget_and_another_tenant_is_not_slowed(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump([
        {"name": "attacker", "key": ATTACKER, "models": [GEMMA]},
        {"name": "light", "key": LIGHT},
    ]))
    async with OneBox(load_preset("gpu"), api_keys=keys, time_scale=0, bbr_buffered_bytes=BUDGET) as box:
        result = await faults.held_bodies(box, ATTACKER, PHI, LIGHT, GEMMA)
    print(result)
    assert result.light_answers == {"200": 30}, result
    assert result.growth_kib <= BUDGET // 1024 + MARGIN_KIB, result
    # Envoy stops reading a body the BBR has not answered yet (flow control), so each attacker gets a
    # few MB in; once those fill the budget, the next ones get a 503 instead of memory.
    assert set(result.refused) <= {"held", "503"}, result
    assert result.light_loaded_ms <= 2 * result.light_alone_ms + 5, result  # + 5 ms: a 2-core p50 moves
    # Memory comes back once they close.
    assert result.bbr_after_kib - result.bbr_before_kib <= MARGIN_KIB, result
