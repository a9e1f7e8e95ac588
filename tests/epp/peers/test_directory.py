"""Where the other replicas are: names resolved, this replica left out, a failed lookup survived."""

import asyncio
import socket

import pytest
from epp.peers.directory import follow, own_addresses, parse_peers, resolve


def test_peers_are_host_port_pairs_and_a_bad_one_is_named():
    assert parse_peers("epp-peers.llm.svc:9004, 10.0.0.2:9004,[::1]:7") == [
        ("epp-peers.llm.svc", 9004), ("10.0.0.2", 9004), ("::1", 7)
    ]
    for bad in ("epp-peers", "a:b", "a:0", "a:70000", ":9"):
        with pytest.raises(ValueError, match="is not HOST:PORT"):
            parse_peers(bad)
    for bad in ("a..b:9006", f"{'x' * 64}.svc:9006"):  # the resolver would choke on these names
        with pytest.raises(ValueError, match="is not a host name or address"):
            parse_peers(bad)


async def test_only_addresses_of_the_family_the_replica_sends_on_are_peers():
    found = await resolve([("127.0.0.1", 9005), ("::1", 9005)], frozenset(), socket.AF_INET)
    assert found == {("127.0.0.1", 9005)}


async def test_a_name_resolves_to_every_replica_but_this_one_which_is_told_by_address_and_port():
    own = await own_addresses("127.0.0.1", 9004)
    assert ("127.0.0.1", 9004) in own
    # Replicas on one host (the one box) differ by port: the others stay.
    found = await resolve([("localhost", 9004), ("127.0.0.1", 9005)], own)
    assert ("127.0.0.1", 9005) in found
    assert ("127.0.0.1", 9004) not in found


async def test_a_lookup_that_fails_keeps_the_last_peers_and_is_counted():
    answers: list[set[tuple[str, int]]] = []
    errors: list[int] = []
    task = asyncio.ensure_future(
        follow([("no-such-replica.invalid", 9004)], frozenset(), answers.append, 0.01,
               lambda: errors.append(1))
    )
    try:
        for _ in range(500):
            if len(errors) >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert len(errors) >= 2
    assert answers == []


def test_the_host_name_is_among_this_replicas_own_addresses():
    try:
        mine = socket.gethostbyname(socket.gethostname())
    except OSError:
        pytest.skip("this host's name does not resolve")
    own = asyncio.run(own_addresses("0.0.0.0", 9004))
    assert (mine, 9004) in own
    assert ("0.0.0.0", 9004) not in own
