from __future__ import annotations

import json

from epp.requestcontrol.model_refresh import ModelRefresh

from tests.epp.extproc_support import pool
from tests.epp.requestcontrol.support import exchange, routed

NOT_FOUND = json.dumps(
    {"error": {"message": "The model `x` does not exist.", "type": "NotFoundError"}}
).encode()


class Refresher:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def request_refresh(self, address: str) -> bool:
        self.asked.append(address)
        return True


def test_a_pod_saying_model_not_found_has_its_models_re_read() -> None:
    datastore = pool(("10.0.0.1", 8000, ["m"]))
    refresher = Refresher()
    plugin = ModelRefresh(refresher)
    plugin.response_complete(routed(exchange(status=404, body=NOT_FOUND), datastore, "10.0.0.1:8000"))
    assert refresher.asked == ["10.0.0.1:8000"]


def test_other_404s_and_unrouted_requests_refresh_nothing() -> None:
    datastore = pool(("10.0.0.1", 8000, ["m"]))
    refresher = Refresher()
    plugin = ModelRefresh(refresher)
    plain = exchange(status=404, body=b'{"detail": "Not Found"}')
    plugin.response_complete(routed(plain, datastore, "10.0.0.1:8000"))
    plugin.response_complete(exchange(status=404, body=NOT_FOUND))
    plugin.response_complete(routed(exchange(status=200, body=NOT_FOUND), datastore, "10.0.0.1:8000"))
    assert refresher.asked == []
