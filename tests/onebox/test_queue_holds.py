"""A request the EPP's flow-control queue holds is not cut by the gateway while it waits: the one box
raises Envoy's stream idle timeout past the queue's longest TTL (Envoy sees nothing pass either way
while the EPP holds a request, and its ext_proc message timeout does not bound that wait)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import yaml

from onebox.box import OneBox, _queue_holds, _timeouts_for
from onebox.envoy.limits import GatewayTimeouts
from onebox.scaler import epp_config_document, with_flow_control
from onebox.topology import ModelSpec, SimOptions, Topology

MODEL = "google/gemma-2b-it"


def queue_config(directory: Path, **flow: object) -> Path:
    path = directory / "flow-control.yaml"
    path.write_text(yaml.safe_dump(with_flow_control(epp_config_document(), queue_depth=0, **flow)))
    return path


def test_the_stream_idle_timeout_is_raised_past_the_queues_longest_ttl(tmp_path: Path) -> None:
    config = queue_config(tmp_path, defaultRequestTTL="400s", noEndpointRequestTTL="30s")
    holds = _queue_holds([], None, config)
    assert holds == (400.0, "flowControl.defaultRequestTTL")
    assert _timeouts_for([], None, holds).stream_idle == 405  # from the default 300 s
    given = _timeouts_for([], GatewayTimeouts(stream_idle=2, upstream_idle=50), holds)
    assert (given.stream_idle, given.upstream_idle) == (405, 50)
    assert _timeouts_for([], None, (60.0, "flowControl.defaultRequestTTL")).stream_idle == 300  # long enough
    assert _queue_holds([], None, None) is None  # the default profile does not queue


def test_a_queue_without_a_time_limit_is_refused(tmp_path: Path) -> None:
    config = queue_config(tmp_path, defaultRequestTTL="0s")
    with pytest.raises(ValueError, match=r"flowControl.defaultRequestTTL is 0s \(no limit\)"):
        OneBox(Topology(name="t", models=[ModelSpec(name="gemma", served_name=MODEL)]), epp_config=config)


@pytest.mark.envoy
@pytest.mark.slow
async def test_a_request_held_past_the_stream_idle_timeout_still_gets_its_answer(tmp_path: Path) -> None:
    # One pod with one slot, taken by a streamed answer of ~3 s; the next request waits in the EPP.
    topology = Topology(name="hold", models=[
        ModelSpec(name="gemma", served_name=MODEL, replicas=1, sim=SimOptions(max_num_seqs=1)),
    ])  # fmt: skip
    config = queue_config(tmp_path, defaultRequestTTL="20s", noEndpointRequestTTL="20s")
    # Asked for a 1 s stream idle timeout (Envoy's 504 after 1 s on main): raised past the 20 s TTL.
    timeouts = GatewayTimeouts(stream_idle=1.0)
    async with OneBox(topology, epp_config=config, timeouts=timeouts) as box, httpx.AsyncClient(
        base_url=box.gateway_url, timeout=30
    ) as client:
        assert box.timeouts.stream_idle == 25
        long = {"model": MODEL, "prompt": "hold the slot", "max_tokens": 250, "stream": True}
        first = asyncio.create_task(client.post("/v1/completions", json=long))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        held = await client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
        waited = time.monotonic() - started
        assert held.status_code == 200, held.text
        assert waited > 1.5  # it was held past the timeout it would have been cut at
        assert (await first).status_code == 200
