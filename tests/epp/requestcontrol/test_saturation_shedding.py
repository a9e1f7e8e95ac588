from __future__ import annotations

from collections.abc import Sequence

import pytest
from epp.datastore import Endpoint
from epp.refusals import RequestError
from epp.requestcontrol.saturation_shedding import SaturationShedding
from epp.scheduling.types import LLMRequest

from tests.epp.extproc_support import pool


class Detector:
    def __init__(self, saturated: bool) -> None:
        self.value = saturated
        self.asked: list[tuple[str, ...]] = []

    def saturated(self, endpoints: Sequence[Endpoint], now: float) -> bool:
        self.asked.append(tuple(e.address for e in endpoints))
        return self.value


def request(model: str, subset: frozenset[str] | None = None) -> LLMRequest:
    return LLMRequest(request_id="r", model=model, prompt="hi", headers={}, subset=subset)


async def test_a_saturated_model_is_a_429_and_only_its_own_endpoints_are_asked() -> None:
    datastore = pool(("10.0.0.1", 8000, ["a"]), ("10.0.0.2", 8000, ["b"]))
    detector = Detector(True)
    with pytest.raises(RequestError) as caught:
        await SaturationShedding(detector).admit(request("a"), datastore.view)
    assert (caught.value.status, caught.value.reason) == (429, "saturated")
    assert detector.asked == [("10.0.0.1:8000",)]


async def test_room_somewhere_or_nobody_serving_is_no_shedding() -> None:
    datastore = pool(("10.0.0.1", 8000, ["a"]))
    await SaturationShedding(Detector(False)).admit(request("a"), datastore.view)
    # Nobody in the subset serves it: not saturation, but scheduling's 503.
    busy = Detector(True)
    await SaturationShedding(busy).admit(request("a", frozenset({"10.9.9.9:1"})), datastore.view)
    assert busy.asked == []
