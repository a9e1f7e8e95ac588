import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from epp.datastore import SEND_SHOWS_AFTER, Endpoint
from epp.scheduling import Scheduler, load_profile, parse_config
from epp.scheduling.errors import ConfigError
from epp.scheduling.plugins.scorers.prefix_affinity import (
    PrefixAffinityParameters,
    PrefixAffinityScorer,
    home_key,
)

from tests.epp.scheduling.builders import GEMMA, PHI3, endpoint, plugin, request

NOW = 1000.0
SYSTEM = "You are a support agent for a bicycle shop; answer briefly and politely. " * 30
HEADER = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def scorer(replicas: int = 1, **parameters: object) -> PrefixAffinityScorer:
    """The scorer with these (config-spelled) parameters, in an EPP of ``replicas`` replicas, on a
    clock stopped at NOW."""
    validated = PrefixAffinityParameters.model_validate(parameters)
    return PrefixAffinityScorer.from_parameters(
        "prefix-affinity-scorer", validated, clock=lambda: NOW, replicas=replicas
    )


def pods(count: int, prefix: str = "gemma") -> list[Endpoint]:
    return [endpoint(f"{prefix}-{i}", updated_at=NOW) for i in range(count)]


def loaded(pod: Endpoint, waiting: int = 0, running: int = 0) -> Endpoint:
    pod.metrics.waiting, pod.metrics.running = waiting, running
    return pod


def answered(
    pod: Endpoint, *sent: float, waiting: int = 0, running: int = 0, scraped: float = NOW - 0.03
) -> Endpoint:
    """``pod`` after this EPP routed requests to it at ``sent`` (monotonic times) and saw all their
    answers begin (none in flight), scraped at ``scraped`` showing ``waiting`` and ``running``."""
    for at in sent:
        pod.load.routed(at)
    pod.load.count = 0
    pod.metrics.updated_at = scraped
    return loaded(pod, waiting, running)


def best(scores: list[float], candidates: list[Endpoint]) -> Endpoint:
    return candidates[max(range(len(scores)), key=scores.__getitem__)]


def pick(
    affinity: PrefixAffinityScorer, prompt: str, candidates: list[Endpoint], model: str = GEMMA
) -> Endpoint:
    """One scheduling cycle with the scorer alone: score, take the best, let it learn."""
    state: dict[str, object] = {}
    req = request(model, prompt)
    chosen = best(affinity.score(state, req, candidates), candidates)
    affinity.post_pick(state, req, chosen)
    return chosen


def one_offs_go_to(affinity: PrefixAffinityScorer, pool: list[Endpoint], count: int = 4) -> list[Endpoint]:
    """Where ``count`` one-off prompts of different lengths (whichever pod each one's home is) go,
    none of them routed (the loads stay as they are)."""
    return [
        pick(affinity, f"one-off question {i}: " + "why does my chain skip? " * (3 + i), pool)
        for i in range(count)
    ]


def group_prompt(group: int, question: str = "Where is my order?") -> str:
    return f"group {group}: {SYSTEM}{question}"


def test_every_prompt_of_a_group_goes_to_its_home_pod_in_an_idle_pool():
    affinity, pool = scorer(replicas=2), pods(4)
    home = affinity.home(request(prompt=group_prompt(1)), pool)
    assert home is not None
    for question in ("Where is my order?", "Do you sell tandems?", "Can I pay in cash?"):
        assert pick(affinity, group_prompt(1, question), pool) is home


def test_a_hot_home_pod_loses_the_prefix_and_a_cool_one_keeps_it():
    affinity, pool = scorer(replicas=2, loadBound=1.5), pods(4)
    prompt = group_prompt(7)
    home = pick(affinity, prompt, pool)  # an idle pool: the prefix goes to its home
    assert home is affinity.home(request(prompt=prompt), pool)
    others = [p for p in pool if p is not home]

    # Cool: the home runs 4 while the others run 2 each; within 1.5 x the mean + 1, it keeps the prefix.
    loaded(home, running=4)
    for pod in others:
        loaded(pod, running=2)
    assert pick(affinity, group_prompt(7, "Do you repair e-bikes?"), pool) is home

    # Hot: 12 waiting at the home while the others run 1 or 2: over the bound, the prefix moves,
    # to the least-loaded pod when no other pod has cached it.
    loaded(home, waiting=12, running=4)
    loaded(others[1], running=1)
    assert pick(affinity, prompt, pool) is others[1]


def test_in_a_two_pod_pool_a_long_queue_still_loses_the_prefix():
    affinity = scorer()
    warm, cold = pods(2)
    pick(affinity, group_prompt(5), [warm])
    loaded(warm, waiting=20)
    assert pick(affinity, group_prompt(5), [warm, cold]) is cold


def test_a_prompt_never_seen_goes_to_the_least_loaded_pod_its_home_only_breaks_ties():
    affinity, pool = scorer(replicas=2), pods(4)
    prompt = group_prompt(9)
    home = affinity.home(request(prompt=prompt), pool)
    assert home is not None
    others = [p for p in pool if p is not home]
    loaded(home, running=1)
    for pod in others[1:]:
        loaded(pod, running=1)
    assert pick(affinity, prompt, pool) is others[0]  # one request less than the home

    another = group_prompt(10)
    home = affinity.home(request(prompt=another), pool)
    for pod in pool:
        loaded(pod, running=3)
    assert pick(affinity, another, pool) is home  # equal loads: every replica picks the home


def spilled_once(affinity: PrefixAffinityScorer, pool: list[Endpoint], group: int) -> tuple[Endpoint, ...]:
    """The group's (rendezvous) home, the pod it spilled to once (the only candidate then), and the
    rest of ``pool``."""
    home = affinity.home(request(prompt=group_prompt(group)), pool)
    assert home is not None
    spill, *rest = [p for p in pool if p is not home]
    pick(affinity, group_prompt(group), [spill])
    return home, spill, *rest


def test_a_spilled_prefix_goes_where_it_was_cached_before_rather_than_to_the_least_loaded_pod():
    affinity, pool = scorer(loadBound=1.5), pods(4)
    prompt = group_prompt(3)
    home, spill, *rest = spilled_once(affinity, pool, 3)

    loaded(home, waiting=20)
    loaded(spill, running=2)  # busier than the others, but within the bound and holding the prefix
    assert pick(affinity, group_prompt(3, "Another question?"), pool) is spill

    loaded(spill, waiting=20)  # over the bound too: the least-loaded pod
    loaded(rest[0], running=1)
    assert pick(affinity, prompt, pool) is rest[1]


def test_load_is_the_in_flight_count_where_metrics_are_stale_and_at_least_it_where_fresh():
    affinity = scorer(metricsStalenessThreshold=0.2)
    fresh, stale = endpoint("fresh", updated_at=NOW - 0.1), endpoint("stale", updated_at=NOW - 5)
    never = endpoint("never", updated_at=0.0)
    loaded(fresh, waiting=2, running=3)
    loaded(stale, waiting=40)
    for pod, in_flight in ((fresh, 1), (stale, 4), (never, 2)):
        pod.load.count = in_flight
    # A waiting request counts twice (waitingWeight 2): 2 x 2 + 3.
    assert affinity.loads([fresh, stale, never]) == [7, 4, 2]
    fresh.load.count = 9  # this EPP sent more than the last scrape saw
    assert affinity.loads([fresh]) == [9]
    assert scorer(waitingWeight=1).loads([loaded(endpoint("plain", updated_at=NOW), 2, 3)]) == [5]


def queuing_and_running(waiting: int, running: int, others: int) -> tuple[Endpoint, Endpoint]:
    """Two pods scraped 10 ms ago: one with ``waiting`` requests queued beside ``running``, the
    other with ``others`` running and none queued."""
    queuing, busy = pods(2)
    for pod in (queuing, busy):
        pod.metrics.updated_at = NOW - 0.01
    return loaded(queuing, waiting=waiting, running=running), loaded(busy, running=others)


def test_a_pod_with_a_queue_is_busier_than_one_with_as_many_requests_all_running():
    # A pod of few slots (or a slower one) queues what a larger pod would run. Both pods hold six
    # requests; on the small one two of them wait for a slot, so a request sent there waits too:
    # one-off prompts go to the pod whose requests all run, until it holds two more.
    affinity, (small, large) = scorer(), queuing_and_running(2, 4, 6)
    plain = scorer(waitingWeight=1)  # counted once, as before: a tie, which either pod may win
    assert plain.loads([small, large]) == [6, 6]
    assert affinity.loads([small, large]) == [8, 6]
    for i in range(2):
        prompt = f"one-off question {i}: " + "how do I fit a chain? " * (3 + i)
        chosen = pick(affinity, prompt, [small, large])
        assert chosen is large
        chosen.load.routed(NOW)
    assert affinity.loads([small, large]) == [8, 8]


def test_on_a_queuing_pod_a_request_sent_since_the_scrape_waits_and_an_answer_ended_lets_one_start():
    # The scrape showed a queue: what was routed there since waits too (counts as a waiting request),
    # and an answer that ended since let a waiting one take its slot (one waiting request fewer).
    affinity, (queuing, busy) = scorer(), queuing_and_running(1, 4, 6)
    queuing.load.routed(NOW - 0.005)
    busy.load.routed(NOW - 0.005)
    assert affinity.loads([queuing, busy]) == [2 + 4 + 2, 6 + 1]
    queuing.load.answer_ended(NOW - 0.002)
    busy.load.answer_ended(NOW - 0.002)
    assert affinity.loads([queuing, busy]) == [2 + 4 + 2 - 2, 6 + 1 - 1]
    assert scorer(waitingWeight=1).loads([queuing, busy]) == [5, 6]


def test_a_burst_between_two_scrapes_goes_to_the_pod_with_fewer_requests_as_the_counts_say():
    # Both pods had 3 requests at the last scrape, 10 ms ago; eight one-off prompts arrive before the
    # next one. Each pick counts on its pod at once, so the picks alternate as the counts say (either
    # pod on a tie), instead of herding onto whichever pod the scrape showed as least loaded.
    affinity, pool = scorer(), pods(2)
    for pod in pool:
        loaded(pod, running=3)
        pod.metrics.updated_at = NOW - 0.01
    picks = []
    for i in range(8):
        chosen = pick(affinity, f"question {i}: " + "how do I true a wheel? " * (3 + i), pool)
        chosen.load.routed(NOW)
        picks.append(pool.index(chosen))
        assert abs(pool[0].load.count - pool[1].load.count) <= 1, picks
    assert affinity.loads(pool) == [7, 7]


def test_requests_routed_before_the_last_scrape_are_not_counted_twice():
    affinity, (pod,) = scorer(), pods(1)
    pod.load.routed(NOW - 0.08)  # routed, then seen by the scrape below as running
    loaded(pod, running=1)
    pod.metrics.updated_at = NOW - 0.03
    pod.load.routed(NOW - 0.01)  # after the scrape: not in its figures
    assert affinity.loads([pod]) == [2]


def test_a_request_routed_just_before_a_scrape_counts_though_the_scrape_may_have_missed_it():
    # Routed 10 ms before the scrape was sent: still on its way through the proxy (or being tokenized)
    # when the pod read its queue. Counted on top of the scrape, twice at worst, never nowhere: a pod
    # that looks a request lighter than it is takes the next one too.
    affinity, (pod,) = scorer(), pods(1)
    loaded(pod, running=1)  # another request, which the scrape saw
    pod.load.routed(NOW - 0.04)
    pod.metrics.updated_at = NOW - 0.03
    assert SEND_SHOWS_AFTER > 0.01
    assert affinity.loads([pod]) == [2]


def test_a_client_that_sends_as_soon_as_its_answer_ends_goes_to_the_pod_that_just_freed():
    # At the last scrape, 10 ms ago, pod 0 ran 2 requests and pod 1 one. Both of pod 0's answers
    # were followed to their end since: pod 0 is idle now, though the scrape still counts them.
    affinity, pool = scorer(), pods(2)
    loaded(pool[0], running=2)
    loaded(pool[1], running=1)
    for pod in pool:
        pod.metrics.updated_at = NOW - 0.01
    pool[0].load.answer_ended(NOW - 0.005)
    pool[0].load.answer_ended(NOW - 0.002)
    assert affinity.loads(pool) == [0, 1]
    assert one_offs_go_to(affinity, pool) == [pool[0]] * 4


def test_in_a_closed_loop_the_pod_whose_requests_are_the_oldest_gets_the_next_one():
    # The scrape, 30 ms ago: pod 0 ran three requests, routed long ago; pod 1 two newer ones. Since,
    # two requests came, one to each pod. In a closed loop they came because two answers ended,
    # unseen (streams are not followed): most likely the two oldest, on pod 0. Pod 0 now holds two,
    # pod 1 three. Counting the sends but not the ends, pod 0 looked the busier (4 against 3) until
    # the next scrape.
    affinity, pool = scorer(), pods(2)
    answered(pool[0], NOW - 0.9, NOW - 0.85, NOW - 0.8, NOW - 0.01, running=3)
    answered(pool[1], NOW - 0.5, NOW - 0.45, NOW - 0.02, running=2)
    assert affinity.loads(pool) == [2, 3]
    assert one_offs_go_to(affinity, pool) == [pool[0]] * 4


def test_a_replica_of_several_guesses_no_unseen_end():
    # The scrapes count the other replicas' requests too: which of them ended, one cannot tell.
    affinity, pool = scorer(replicas=2), pods(2)
    answered(pool[0], NOW - 0.9, NOW - 0.85, NOW - 0.8, NOW - 0.01, running=3)
    answered(pool[1], NOW - 0.5, NOW - 0.45, NOW - 0.02, running=2)
    assert affinity.loads(pool) == [4, 3]


def test_a_pod_that_queued_at_its_scrape_keeps_its_queue_no_end_is_guessed_there():
    # Pod 0's scrape: three running, one queued (2 x 1 + 3 = 5), all routed long ago; pod 1's: one
    # running. The two requests routed since (to pod 1) stand for two ends, but not on pod 0: a queue
    # is load measured to last (a pod with fewer slots, or a slower one). Pod 1's one request is the
    # only one left to have ended.
    affinity, pool = scorer(), pods(2)
    answered(pool[0], NOW - 0.9, NOW - 0.85, NOW - 0.8, NOW - 0.75, waiting=1, running=3)
    answered(pool[1], NOW - 0.3, NOW - 0.01, NOW - 0.005, running=1)
    assert affinity.loads(pool) == [5, 2]


def test_a_lone_epp_remembers_the_pod_it_sent_a_request_to_least_recently_across_a_lull():
    # Both pods idle at a fresh scrape; the last requests went to pod 1 three seconds ago and to pod 0
    # two seconds ago (a long answer, a quiet client). The tie still goes to pod 1.
    affinity, pool = scorer(), pods(2)
    answered(pool[1], NOW - 3, scraped=NOW - 0.01)
    answered(pool[0], NOW - 2, scraped=NOW - 0.01)
    assert one_offs_go_to(affinity, pool) == [pool[1]] * 4


def test_answers_that_ended_before_the_last_scrape_are_not_taken_off_twice():
    affinity, (pod,) = scorer(), pods(1)
    pod.load.answer_ended(NOW - 0.05)  # ended, then not counted by the scrape below
    loaded(pod, running=2)
    pod.metrics.updated_at = NOW - 0.03
    pod.load.answer_ended(NOW - 0.01)  # after the scrape: still in its figures
    assert affinity.loads([pod]) == [1]
    pod.load.count = 3  # never below this EPP's own requests in flight
    assert affinity.loads([pod]) == [3]


def test_an_idle_pool_does_not_flap_one_request_in_flight_is_within_the_bound():
    affinity, pool = scorer(), pods(4)
    prompt = group_prompt(11)
    home = pick(affinity, prompt, pool)
    home.load.count = 1  # the only request in the pool so far is the home's own
    assert pick(affinity, group_prompt(11, "And a second question?"), pool) is home


def test_a_prompt_under_one_block_goes_to_the_least_loaded_pod():
    affinity, pool = scorer(), pods(3)
    loaded(pool[0], running=2)
    loaded(pool[2], running=1)
    assert pick(affinity, "hi", pool) is pool[1]
    assert affinity.index.size(pool[1].address) == 0


def test_scores_stay_within_zero_and_one():
    affinity, pool = scorer(), pods(4)
    for i, pod in enumerate(pool):
        loaded(pod, waiting=i * 7)
    for prompt in ("", "x" * 63, group_prompt(1), "y" * 100_000):
        assert all(0.0 <= s <= 1.0 for s in affinity.score({}, request(prompt=prompt), pool))


def test_block_hashes_are_computed_once_per_cycle_and_reused_by_the_post_pick():
    affinity, pool = scorer(), pods(2)
    state: dict[str, object] = {}
    req = request(prompt=group_prompt(2))
    affinity.score(state, req, pool)
    cached = state["prefix-affinity-scorer"]
    affinity.score(state, req, pool)
    assert state["prefix-affinity-scorer"] is cached
    affinity.post_pick(state, req, pool[0])
    assert affinity.index.size(pool[0].address) == len(group_prompt(2)) // 64


def default_scheduler(seed: int, replicas: int = 2) -> Scheduler:
    return Scheduler.from_config(load_profile("default"), rng=random.Random(seed), replicas=replicas)


def test_two_replicas_fed_different_requests_place_every_prefix_on_the_same_pod():
    pool = pods(4)
    first, second = default_scheduler(seed=1), default_scheduler(seed=2)
    # Each replica sees its own half of the traffic, in its own order, and learns its own index.
    groups = list(range(40))
    for g in groups[::2]:
        first.schedule(request(prompt=group_prompt(g)), pool)
    for g in reversed(groups[1::2]):
        second.schedule(request(prompt=group_prompt(g)), pool)
    for g in groups:
        prompt = group_prompt(g, "A question neither replica has seen?")
        one = first.schedule(request(prompt=prompt), pool).endpoint
        other = second.schedule(request(prompt=prompt), pool).endpoint
        assert one is other, f"group {g}"
    # ... and the groups spread over the pool rather than piling up on one pod.
    homes = Counter(first.schedule(request(prompt=group_prompt(g)), pool).endpoint for g in groups)
    assert len(homes) == 4


def test_a_restarted_replica_in_another_process_computes_the_same_home():
    addresses = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000", "[fd00::7]:8000"]
    script = (
        "import sys\n"
        "from epp.datastore import Endpoint\n"
        "from epp.scheduling import LLMRequest\n"
        "from epp.scheduling.plugins.scorers.prefix_affinity import PrefixAffinityScorer\n"
        "from epp.contract import split_host_port\n"
        "pool = []\n"
        "for a in sys.argv[1:]:\n"
        "    host, port = split_host_port(a)\n"
        "    pool.append(Endpoint(name=a, ip=host, port=port, models=frozenset({'m'}), models_known=True))\n"
        "s = PrefixAffinityScorer('p')\n"
        "print(' '.join(s.home(LLMRequest('r', 'm', f'group {g}: ' + 'x' * 2000), pool).address\n"
        "               for g in range(20)))\n"
    )
    homes = set()
    for seed in ("1", "2"):  # built-in string hashes differ between these processes
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", script, *addresses], env=env, capture_output=True, text=True, timeout=60,
            check=True, cwd=Path(__file__).resolve().parents[4],
        )
        homes.add(done.stdout.strip())
    assert len(homes) == 1
    assert len(set(homes.pop().split())) > 1


def test_a_pod_leaving_moves_only_the_prefixes_homed_on_it():
    affinity, pool = scorer(), pods(5)
    prompts = [group_prompt(g) for g in range(1000)]
    before = {p: affinity.home(request(prompt=p), pool) for p in prompts}
    leaving = pool[2]
    remaining = [p for p in pool if p is not leaving]
    affinity.forget(leaving.address)
    after = {p: affinity.home(request(prompt=p), remaining) for p in prompts}

    moved = {p for p in prompts if after[p] is not before[p]}
    assert moved == {p for p in prompts if before[p] is leaving}
    assert 120 <= len(moved) <= 280  # about 1/5 of 1,000
    # The leaving pod's prefixes spread over the others rather than all landing on one.
    assert len(Counter(after[p] for p in moved)) == 4


def test_a_new_pod_takes_about_one_nth_of_the_prefixes_and_only_from_the_others():
    affinity, pool = scorer(), pods(4)
    prompts = [group_prompt(g) for g in range(1000)]
    before = {p: affinity.home(request(prompt=p), pool) for p in prompts}
    newcomer = endpoint("gemma-new", updated_at=NOW)
    after = {p: affinity.home(request(prompt=p), [*pool, newcomer]) for p in prompts}

    moved = [p for p in prompts if after[p] is not before[p]]
    assert all(after[p] is newcomer for p in moved)
    assert 120 <= len(moved) <= 280  # about 1/5 of 1,000


def test_the_home_depends_on_the_model_and_the_leading_blocks_only():
    key = home_key(GEMMA, group_prompt(1, "first?"), 64, 16)
    assert key == home_key(GEMMA, group_prompt(1, "a different question"), 64, 16)
    assert key != home_key(PHI3, group_prompt(1, "first?"), 64, 16)
    assert key != home_key(GEMMA, group_prompt(2, "first?"), 64, 16)
    assert home_key(GEMMA, "x" * 63, 64, 16) is None


def test_an_upstream_config_with_the_prefix_cache_scorer_still_loads_and_keeps_affinity():
    config = parse_config(
        HEADER
        + """plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
  parameters: {hashBlockSize: 64, maxPrefixBlocksToMatch: 256, lruCapacityPerServer: 31250}
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - {pluginRef: max-score-picker}
"""
    )
    upstream = Scheduler.from_config(config, rng=random.Random(5))
    pool = pods(4)
    first = upstream.schedule(request(prompt=group_prompt(1)), pool).endpoint
    for question in ("again?", "and again?"):
        result = upstream.schedule(request(prompt=group_prompt(1, question)), pool, explain=True)
        assert result.endpoint is first
        assert result.scores[first.address]["prefix-cache-scorer"] > 2.9


def test_the_parameters_have_documented_defaults_and_upstream_block_size_spelling():
    affinity = plugin("prefix-affinity-scorer")
    assert (affinity.load_bound, affinity.block_size, affinity.home_blocks) == (2.0, 64, 16)
    assert affinity.max_blocks == 256
    assert affinity.index.capacity == 31250
    assert affinity.staleness == 0.2
    assert affinity.waiting_weight == 2
    spelled = {"hashBlockSize": 32, "metricsStalenessThreshold": "1s"}
    upstream_spelling = plugin("prefix-affinity-scorer", spelled)
    assert (upstream_spelling.block_size, upstream_spelling.staleness) == (32, 1.0)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (
            {"loadBound": 0.5},
            "parameter 'loadBound': must be a number of at least 1 (a multiple of the mean load), got 0.5",
        ),
        ({"loadBound": "2"}, "parameter 'loadBound': must be a number of at least 1"),
        ({"blockSize": 0}, "parameter 'blockSize': must be a positive integer, got 0"),
        ({"homePrefixBlocks": -1}, "parameter 'homePrefixBlocks': must be a positive integer, got -1"),
        ({"maxPrefixBlocksToMatch": 1.5}, "parameter 'maxPrefixBlocksToMatch': must be a positive integer"),
        ({"lruCapacityPerServer": 0}, "parameter 'lruCapacityPerServer': must be a positive integer, got 0"),
        ({"metricsStalenessThreshold": "soon"}, "parameter 'metricsStalenessThreshold': must be a positive"),
        ({"waitingWeight": 0}, "parameter 'waitingWeight': must be a positive integer, got 0"),
        ({"loadbound": 2}, "parameter 'loadbound': unknown parameter"),
    ],
)
def test_a_bad_parameter_is_named_in_the_error(parameters, message):
    with pytest.raises(ConfigError) as caught:
        plugin("prefix-affinity-scorer", parameters)
    assert str(caught.value).startswith(f"plugin 'prefix-affinity-scorer': {message}")


def test_per_scorer_scores_are_kept_only_when_asked_for() -> None:
    # The request path asks only with debug logging on: no dict of scores per request otherwise.
    pick = Scheduler.from_config(load_profile("default"))
    pool = [endpoint(f"gemma-{i}") for i in range(3)]
    assert pick.schedule(request(prompt=group_prompt(1)), pool).scores == {}
    explained = pick.schedule(request(prompt=group_prompt(1)), pool, explain=True).scores
    assert set(explained) == {e.address for e in pool}


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_prefix_new_to_a_replica_of_several_goes_home_and_one_new_to_the_only_replica_by_load(
    replicas: int,
):
    # Another replica may have sent this group home already: a replica that put its first request on
    # the pod that looked least loaded to it would hold a second copy of the prefix there. A lone EPP
    # has sent it nowhere: the least loaded pod takes it.
    affinity, pool = scorer(replicas=replicas), pods(4)
    prompt = group_prompt(12)
    home = affinity.home(request(prompt=prompt), pool)
    assert home is not None
    others = [p for p in pool if p is not home]
    loaded(home, running=2)
    loads = [1, 2, 3]  # mean 2, the home's own load
    for pod, load in zip(others, loads, strict=True):
        loaded(pod, running=load)
    assert pick(affinity, prompt, pool) is (home if replicas > 1 else others[0])


def test_a_replica_of_several_keeps_a_group_at_its_home_within_the_bound_not_at_its_own_spill():
    # The other replicas keep sending the group home; were this one to keep its own spill pod alive
    # beside it (less loaded, holding the prefix by this replica's index), the group would be cached
    # on two pods. Only over the bound does the spill pod take it.
    affinity, pool = scorer(replicas=2), pods(4)
    home, spill, *rest = spilled_once(affinity, pool, 5)
    loaded(home, running=2)
    for pod in rest:
        loaded(pod, running=2)
    assert pick(affinity, group_prompt(5, "Another question?"), pool) is home
    loaded(home, waiting=20)
    assert pick(affinity, group_prompt(5, "And another?"), pool) is spill


def test_two_replicas_fed_different_shares_of_sixteen_groups_put_four_on_each_pod_the_same_ones():
    # Rendezvous homes alone would crowd some pods with these groups; each replica deals the groups it
    # has seen recur out evenly, in the same order, so both send every group to the same pod.
    clock = [NOW]
    parameters = PrefixAffinityParameters.model_validate({})
    replicas = [
        PrefixAffinityScorer.from_parameters("p", parameters, clock=lambda: clock[0], replicas=2)
        for _ in range(2)
    ]
    pool = pods(4)
    rendezvous = Counter(replicas[0].home(request(prompt=group_prompt(g)), pool) for g in range(16))
    assert max(rendezvous.values()) > 4
    rng = random.Random(7)
    for sight in range(12):  # an idle pool: each request goes to its home
        clock[0] += 0.3
        for g in rng.sample(range(16), 16):
            pick(rng.choice(replicas), group_prompt(g, f"question {sight}"), pool)
    clock[0] += 1.0
    placed = [{g: pick(r, group_prompt(g, "and now?"), pool).name for g in range(16)} for r in replicas]
    assert placed[0] == placed[1]
    assert sorted(Counter(placed[0].values()).values()) == [4, 4, 4, 4]


def test_answers_seen_to_end_rank_the_pods_but_do_not_push_a_prefix_out_of_its_home():
    affinity, pool = scorer(), pods(4)
    prompt = group_prompt(3)
    home = pick(affinity, prompt, pool)  # an idle pool: the prefix goes to its home
    others = [p for p in pool if p is not home]
    # The last scrape saw the home run 4 and each other pod 2; since, both answers on every other pod
    # ended. Within the bound on the scraped loads (mean 2.5), the prefix stays; were the bound judged
    # on the loads less the ends (mean 1), the home would be over it and the group would move.
    loaded(home, running=4)
    for pod in others:
        loaded(pod, running=2)
        pod.load.answer_ended(NOW + 0.5)
        pod.load.answer_ended(NOW + 0.5)
    assert pick(affinity, group_prompt(3, "Do you repair e-bikes?"), pool) is home
    # A one-off prompt (under one block: no home) goes to a pod whose answers ended, not to one still
    # busy: the ends rank the pods.
    loaded(others[0], running=1)
    others[0].load.ends.clear()
    assert affinity.loads(pool) == [4 if p is home else 1 if p is others[0] else 0 for p in pool]
    assert pick(affinity, "hi", pool) in others[1:]


def test_a_replica_count_below_one_is_refused():
    with pytest.raises(ValueError, match="replicas"):
        Scheduler.from_config(load_profile("default"), replicas=0)


def sent_in_order(pods_: list[Endpoint]) -> None:
    """Each pod got one request before the last scrape, the first pod longest ago (its scraped load
    already counts it)."""
    for i, pod in enumerate(pods_):
        pod.load.routed(NOW - 1.0 + 0.1 * i)


def test_a_lone_epp_breaks_a_tie_towards_the_pod_it_sent_a_request_to_least_recently():
    # Under a closed loop a pod's oldest request is the likeliest to have ended since the last scrape,
    # while its scraped load still counts it: of equally loaded pods, that one most likely has room.
    affinity, pool = scorer(), pods(4)
    for pod in pool:
        loaded(pod, running=2)
    prompt = group_prompt(21)
    home = affinity.home(request(prompt=prompt), pool)
    order = [p for p in pool if p is not home] + [home]  # the home was sent to last
    sent_in_order(order)
    assert affinity.loads(pool) == [2, 2, 2, 2]
    assert pick(affinity, prompt, pool) is order[0]
    assert pick(affinity, "hi", pool) is order[0]  # under one block: no home either way
    loaded(order[0], running=3)  # a load difference is never outweighed
    assert pick(affinity, "hi", pool) is order[1]


def test_a_replica_of_several_breaks_the_same_tie_by_the_prompts_home():
    affinity, pool = scorer(replicas=2), pods(4)
    for pod in pool:
        loaded(pod, running=2)
    prompt = group_prompt(21)
    home = affinity.home(request(prompt=prompt), pool)
    sent_in_order([p for p in pool if p is not home] + [home])
    assert pick(affinity, prompt, pool) is home


def test_a_lone_epp_keeps_a_group_where_it_sent_it_rather_than_copy_it_to_its_home():
    affinity, pool = scorer(), pods(4)
    prompt = group_prompt(22)
    home = affinity.home(request(prompt=prompt), pool)
    elsewhere = next(p for p in pool if p is not home)
    for pod in pool:
        loaded(pod, running=0 if pod is elsewhere else 1)
    assert pick(affinity, prompt, pool) is elsewhere  # new: placed by load
    for pod in pool:
        loaded(pod, running=1)
    # Equal loads, home within the bound: the pod holding the prefix keeps it (a pair of replicas
    # would send it home, where the other may have sent it).
    assert pick(affinity, group_prompt(22, "Do you sell bells?"), pool) is elsewhere
    paired = scorer(replicas=2)
    paired.index = affinity.index
    assert pick(paired, group_prompt(22, "Do you rent bikes?"), pool) is home


def test_a_lone_epp_places_groups_behind_a_system_message_every_pod_holds_as_if_it_were_not_there():
    # Real chat traffic shares a leading system message: every pod holds its blocks, so holding them
    # says nothing about where a group's own prefix is.
    affinity, pool = scorer(), pods(4)
    shared = "You are a helpful assistant of the Example Corporation. Answer in English. " * 4
    for pod in pool:
        pick(affinity, shared + f"warm-up {pod.name}", [pod])  # each pod got the message once
    prompt = shared + group_prompt(23)
    home = affinity.home(request(prompt=prompt), pool)
    elsewhere = next(p for p in pool if p is not home)
    for pod in pool:
        loaded(pod, running=0 if pod is elsewhere else 1)
    assert pick(affinity, prompt, pool) is elsewhere  # new beyond the message: placed by load
    for pod in pool:
        loaded(pod, running=1)
    assert pick(affinity, shared + group_prompt(23, "Do you sell bells?"), pool) is elsewhere
