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
# What the BBR may hold beyond the budget while the bodies are held (docs/security.md, "Memory"): the
# message in hand, copied twice on its way to Python (2 x 1 MiB chunk), the allocator's free space
# left between blocks during the burst (measured 6 to 10 MiB), and what gRPC took into the 256 KB
# windows of streams not refused yet (dropped as each is refused). Measured growth on this 2-core
# machine: +61 to +69 MiB (the budget holds 4 of the 15 MB bodies, 58.6 MiB), also with the BBR at
# nice 19; before gRPC's window was bounded and bodies counted from their headers, +70 to +420 MiB
# (gRPC took whole bodies in ahead of the reads).
MARGIN_KIB = 16 * 1024
# What may stay resident after they closed: measured +1 to +5 MiB (+6 to +140 MiB before the free
# memory was given back after a burst).
RETURNED_KIB = 8 * 1024


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
    # Each body is counted at its declared 15 MB from its headers on: 4 fit the budget, the next ones
    # get a 503 on their headers instead of memory ("held": no answer within 0.5 s of the last byte).
    assert set(result.refused) <= {"held", "503"}, result
    assert result.light_loaded_ms <= 2 * result.light_alone_ms + 5, result  # + 5 ms: a 2-core p50 moves
    # Memory comes back once they close.
    assert result.bbr_after_kib - result.bbr_before_kib <= RETURNED_KIB, result
