"""Replicas that tell each other their picks place every recurring prefix alike, over real UDP."""

import asyncio
import contextlib
import random
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

from epp.peers import PeerRun, start_peers
from epp.peers.sync import REPLAY_WINDOW, PeerMetrics, PeerSync, seen_sequence
from epp.peers.wire import MAX_DATAGRAM, encode_pick, open_datagram, seal, seed_tag
from epp.scheduling.framework import SharedPick
from epp.scheduling.plugins.scorers.prefix_affinity import PrefixAffinityParameters, PrefixAffinityScorer
from prometheus_client import CollectorRegistry

from tests.epp.scheduling.builders import GEMMA, PHI3, endpoint, request

NOW = 1000.0
KEY = b"the pool's peer key: 32 bytes..."
SYSTEM = "You are a support agent for a bicycle shop; answer briefly and politely. " * 30


def group_prompt(group: int, question: str) -> str:
    return f"group {group}: {SYSTEM}{question}"


class Replica:
    """One EPP replica's prefix-affinity scorer on a shared manual clock, and its peer sync."""

    def __init__(self, clock: list[float], pool: list, registry: CollectorRegistry | None = None) -> None:
        parameters = PrefixAffinityParameters.model_validate({})
        self.scorer = PrefixAffinityScorer.from_parameters(
            "prefix-affinity-scorer", parameters, clock=lambda: clock[0], replicas=2
        )
        self.pool = pool
        self.registry = registry or CollectorRegistry()
        self.run: PeerRun | None = None

    async def start(self, known: Callable[[str], bool] | None = None, key: bytes = KEY) -> int:
        addresses = {e.address for e in self.pool}
        self.run = await start_peers(
            {self.scorer.name: self.scorer}, key, known or addresses.__contains__, bind="127.0.0.1",
            port=0, peers=[], registry=self.registry,
        )
        return self.run.port

    def pick(self, prompt: str, model: str = GEMMA) -> str:
        state: dict[str, object] = {}
        req = request(model, prompt)
        scores = self.scorer.score(state, req, self.pool)
        chosen = self.pool[max(range(len(scores)), key=scores.__getitem__)]
        self.scorer.post_pick(state, req, chosen)
        return chosen.name

    def received(self, outcome: str = "applied") -> float:
        value = self.registry.get_sample_value("epp_peer_picks_received_total", {"outcome": outcome})
        return value or 0.0

    async def close(self) -> None:
        if self.run is not None:
            await self.run.close()


async def delivered(replica: Replica, count: int, outcome: str = "applied") -> None:
    """Wait (at most 5 s) until ``replica`` has received ``count`` picks with ``outcome``."""
    for _ in range(500):
        if replica.received(outcome) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{replica.received(outcome)} of {count} picks arrived")


@contextlib.asynccontextmanager
async def pair(
    pool: list, *, share: bool = True, clock: list[float] | None = None, sender_key: bytes = KEY,
    receiver_knows: Callable[[str], bool] | None = None,
) -> AsyncIterator[tuple[Replica, Replica]]:
    """Two replicas of ``pool``; with ``share`` each sends its picks to the other (the first with
    ``sender_key``; the second knowing the pods ``receiver_knows`` says)."""
    clock = clock or [NOW]
    one, two = Replica(clock, pool), Replica(clock, pool)
    try:
        if share:
            ports = [await one.start(key=sender_key), await two.start(known=receiver_knows)]
            assert one.run is not None
            assert two.run is not None
            one.run.sync.set_peers([("127.0.0.1", ports[1])])
            two.run.sync.set_peers([("127.0.0.1", ports[0])])
        yield one, two
    finally:
        await one.close()
        await two.close()


def four_pods() -> list:
    return [endpoint(f"gemma-{i}", updated_at=NOW) for i in range(4)]


async def place_sixteen_groups_each_replica_seeing_half(share: bool) -> list[dict[int, str]]:
    clock = [NOW]
    async with pair(four_pods(), share=share, clock=clock) as (one, two):
        rng = random.Random(3)
        for sight in range(3):
            clock[0] += 0.3
            for g in rng.sample(range(16), 16):
                # Replica one takes the even groups, replica two the odd ones.
                (one if g % 2 == 0 else two).pick(group_prompt(g, f"question {sight}"))
        if share:
            await delivered(one, 24)
            await delivered(two, 24)
        clock[0] += 1.0
        return [{g: r.pick(group_prompt(g, "and now?")) for g in range(16)} for r in (one, two)]


async def test_replicas_that_each_see_half_the_groups_place_all_sixteen_alike_four_on_each_pod():
    placed = await place_sixteen_groups_each_replica_seeing_half(share=True)
    assert placed[0] == placed[1]
    assert sorted(Counter(placed[0].values()).values()) == [4, 4, 4, 4]


async def test_without_sharing_the_same_replicas_place_some_groups_apart():
    placed = await place_sixteen_groups_each_replica_seeing_half(share=False)
    assert placed[0] != placed[1]


async def test_a_replica_learns_where_its_peer_sent_a_prefix_it_has_never_seen():
    pool = four_pods()
    async with pair(pool) as (one, two):
        prompt = group_prompt(99, "where is my order?")
        sent_to = one.pick(prompt)
        await delivered(two, 1)
        hashes = one.scorer._prompt({}, request(GEMMA, prompt)).hashes
        held = {e.name: two.scorer.index.leading_matches(hashes, e.address) for e in pool}
        assert held[sent_to] == len(hashes)
        assert sum(held.values()) == len(hashes)


async def test_a_peer_with_another_hash_seed_shares_its_sightings_but_not_its_block_hashes():
    pool = four_pods()
    async with pair(pool) as (one, two):
        assert one.run is not None
        one.run.sync.seed_tag = b"otherseed"[:8]  # as a process started with another PYTHONHASHSEED
        one.pick(group_prompt(7, "hello?"))
        await delivered(two, 1, "hashes_differ")
        assert two.received("applied") == 0
        assert all(two.scorer.index.size(e.address) == 0 for e in pool)
        assert two.scorer._balanced._models[GEMMA].seen  # the sighting did arrive


async def test_a_pick_naming_a_pod_this_replica_does_not_know_changes_nothing():
    pool = four_pods()
    async with pair(pool, receiver_knows=lambda address: False) as (one, two):
        one.pick(group_prompt(1, "hi"))
        await delivered(two, 1, "unknown_endpoint")
        assert all(two.scorer.index.size(e.address) == 0 for e in pool)


async def test_a_stranger_without_the_key_is_counted_and_changes_nothing():
    pool = four_pods()
    async with pair(pool, sender_key=b"not the pool's key but long enough") as (stranger, replica):
        assert replica.run is not None
        stranger.pick(group_prompt(1, "let me in"))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.sendto(b"x" * 100, ("127.0.0.1", replica.run.port))
        rejected = None
        for _ in range(500):
            rejected = replica.registry.get_sample_value(
                "epp_peer_datagrams_rejected_total", {"reason": "auth"}
            )
            if rejected == 2:
                break
            await asyncio.sleep(0.01)
        assert rejected == 2
        assert replica.received() == 0
        assert all(replica.scorer.index.size(e.address) == 0 for e in pool)


def rejected(replica: Replica, reason: str) -> float:
    return replica.registry.get_sample_value("epp_peer_datagrams_rejected_total", {"reason": reason}) or 0.0


async def until(check: Callable[[], bool]) -> None:
    """Wait (at most 5 s) until ``check()`` holds."""
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within 5 s")


async def test_a_captured_datagram_sent_again_or_an_old_one_is_refused():
    pool = four_pods()
    async with pair(pool) as (_, two):
        assert two.run is not None
        record = encode_pick(SharedPick("prefix-affinity-scorer", GEMMA, 5, pool[0].address, (1, 2, 3)))
        assert record is not None
        now_ms = int(time.time() * 1000)
        fresh = seal(77, 1, now_ms, seed_tag(KEY), [record], KEY)
        old = seal(78, 1, now_ms - 60_000, seed_tag(KEY), [record], KEY)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            for datagram in (fresh, fresh, old):
                raw.sendto(datagram, ("127.0.0.1", two.run.port))
        await until(lambda: rejected(two, "replayed") == 1 and rejected(two, "stale") == 1)
        assert two.received() == 1  # the first copy only
        assert two.scorer.index.size(pool[0].address) == 3


async def test_a_datagram_the_network_reordered_is_used_once_and_one_far_behind_is_refused():
    pool = four_pods()
    async with pair(pool) as (_, two):
        assert two.run is not None
        now_ms = int(time.time() * 1000)

        def datagram(sequence: int) -> bytes:
            pod = pool[sequence % 4].address
            record = encode_pick(SharedPick("prefix-affinity-scorer", GEMMA, sequence, pod, (sequence,)))
            assert record is not None
            return seal(77, sequence, now_ms, seed_tag(KEY), [record], KEY)

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            for sequence in (1, 3, 2, 2, 200, 136, 137):  # 2 overtaken by 3; 136 is 64 behind 200
                raw.sendto(datagram(sequence), ("127.0.0.1", two.run.port))
                await asyncio.sleep(0.005)  # in this order
        await until(lambda: two.received() == 5 and rejected(two, "replayed") == 2)
        assert two.scorer.index.size(pool[2].address) == 1  # sequence 2's pick (its one hash) arrived


def test_a_senders_window_takes_each_sequence_number_once_up_to_63_behind_its_highest():
    window = None
    for sequence in (5, 7, 6, 4, 10):  # 6 and 4 overtaken, still taken
        window = seen_sequence(window, sequence)
        assert window is not None, sequence
    for seen in (4, 5, 6, 7, 10):
        assert seen_sequence(window, seen) is None, seen
    assert seen_sequence(window, 8) is not None
    window = seen_sequence(window, 7 + REPLAY_WINDOW)
    assert window is not None
    assert seen_sequence(window, 8) is not None  # 63 behind: still told apart
    assert seen_sequence(window, 7) is None  # 64 behind: too far to tell, refused
    assert seen_sequence(window, 10) is None  # seen, and still within the window
    assert seen_sequence(window, 7 + 3 * REPLAY_WINDOW) == (7 + 3 * REPLAY_WINDOW, 1)  # a jump forgets it


async def test_a_datagram_from_an_address_that_is_no_peers_is_not_even_opened():
    async with pair(four_pods()) as (_, two):
        assert two.run is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.bind(("127.0.0.2", 0))  # loopback, but not the address the peers are at
            raw.sendto(b"EPPs" + b"x" * 200, ("127.0.0.1", two.run.port))
        await until(lambda: rejected(two, "stranger") == 1)
        assert rejected(two, "auth") == 0


class Recorder:
    """A stand-in for the UDP transport that records what is sent, and refuses ``refused``."""

    def __init__(self, refused: object = None) -> None:
        self.sent: list[tuple[bytes, object]] = []
        self.refused = refused

    def sendto(self, data: bytes, addr: object) -> None:
        if addr == self.refused:
            raise ValueError("socket family mismatch")  # as uvloop raises it
        self.sent.append((data, addr))

    def close(self) -> None:
        pass

    @property
    def datagrams(self) -> list[bytes]:
        return [data for data, _ in self.sent]


def recording(sync: PeerSync, refused: object = None) -> Recorder:
    transport = Recorder(refused)
    sync.connection_made(transport)  # type: ignore[arg-type]
    return transport


async def test_a_peer_that_cannot_be_sent_to_is_logged_and_the_others_still_get_the_picks():
    registry = CollectorRegistry()
    sync = PeerSync({}, KEY, lambda address: True, PeerMetrics(registry), flush_delay=0.001)
    transport = recording(sync, refused=("::1", 9))
    sync.set_peers([("::1", 9), ("10.0.0.3", 9)])
    sync.publish(SharedPick("p", PHI3, 1, "10.0.0.9:8000", (1,)))
    sync.flush()  # raises nothing
    assert [addr for _, addr in transport.sent] == [("10.0.0.3", 9)]
    assert registry.get_sample_value("epp_peer_send_errors_total") == 1
    sync.close()


async def test_picks_of_one_loop_turn_travel_in_one_datagram():
    sync = PeerSync({}, KEY, lambda address: True, flush_delay=0.001)
    transport = recording(sync)
    sync.set_peers([("10.0.0.2", 9), ("10.0.0.3", 9)])
    for i in range(5):
        sync.publish(SharedPick("p", PHI3, i, "10.0.0.9:8000", (i,)))
    assert transport.sent == []
    await asyncio.sleep(0.05)
    sent = transport.datagrams
    assert len(sent) == 2
    assert sent[0] == sent[1]
    sync.close()


async def test_picks_that_do_not_fit_one_datagram_go_in_as_many_as_hold_them():
    sync = PeerSync({}, KEY, lambda address: True)
    transport = recording(sync)
    sync.set_peers([("10.0.0.2", 9)])
    for i in range(20):  # 8 KB each: 7 fit a datagram
        sync.publish(SharedPick("p", PHI3, i, "10.0.0.9:8000", tuple(range(1000))))
    sync.flush()
    sent = transport.datagrams
    assert len(sent) == 3
    assert all(len(datagram) <= MAX_DATAGRAM for datagram in sent)
    picks = [pick for datagram in sent for pick in open_datagram(datagram, KEY).picks]
    assert [pick.key for pick in picks] == list(range(20))
    sync.close()
