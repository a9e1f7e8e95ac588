"""``python -m bench.picksim``: the EPP's scheduler against simulated pods in virtual time."""

from __future__ import annotations

import statistics

import pytest
from epp.scheduling import load_profile
from epp.scheduling.config import EndpointPickerConfig
from epp.scheduling.errors import ConfigError

from bench import picksim
from bench.picksim import (
    GEMMA,
    SETUPS,
    SimPod,
    cache_bound,
    heterogeneous,
    long_prompt,
    main,
    simulate,
    soonest_first_token,
    with_scorer_parameters,
)
from bench.workloads import RequestSpec, poisson_arrivals
from vllmsim.config import SimConfig


def rate(replicas: int, salts: int = 6, told: int | None = None, warmup: int = 0) -> float:
    setup = SETUPS["cache-bound"]
    specs = [setup.specs(f"salt {s} ") for s in range(salts)]
    runs = [simulate(s, replicas=replicas, concurrency=16, sim=setup.sim, told_replicas=told,
                     warmup=s[:warmup])
            for s in specs]  # fmt: skip
    return statistics.mean(r.requests_per_s for r in runs)


def test_two_epp_replicas_keep_095_of_a_lone_ones_warm_cache_bound_rate() -> None:
    # The bar for replicas that agree, on the matrix's measure (both after a warm pass). Each
    # replica deals the recurring groups out evenly over the pods, alike (epp.scheduling.
    # balanced_homes), and keeps a group at its home while that is within the bound; with rendezvous
    # homes alone the groups crowded some pods and spilled where each replica's own view said: 0.93.
    assert rate(2, warmup=96) >= 0.95 * rate(1, warmup=96)


def test_two_epp_replicas_keep_the_cache_bound_rate_of_one_that_places_as_they_do() -> None:
    # Each replica learns its own index; a prefix new to a replica must still go where the other
    # replica sent it (its home), not to a second pod, or the pods' caches hold fewer groups. Against
    # one replica under the same rule (told it has a peer): what splitting the traffic costs.
    assert rate(2) >= 0.95 * rate(1, told=2)


def test_a_lone_replica_places_the_cache_bound_groups_at_least_as_well_as_a_pair() -> None:
    # Alone, an EPP's index knows every pod a prefix went to: new prefixes are placed by load, and a
    # prefix it sent elsewhere stays there rather than getting a second copy at its home.
    assert rate(1) >= rate(1, told=2)


def test_one_off_long_prompts_keep_round_robins_rate() -> None:
    # A closed loop sends the next prompt as soon as an answer ends, and until the next scrape the pod
    # it left still looks as busy as the others. A lone EPP breaks that tie towards the pod it sent a
    # request to least recently (the likeliest to have freed a slot), and takes off every end it sees:
    # an answer not streamed at its headers, a followed stream at its last byte. Told it has peers, it
    # breaks the tie by the prompt's home instead, a pod at random for one-off prompts.
    setup = SETUPS["long-prompt"]
    runs = {
        "rr": {"place": lambda n, spec, pods, now: n % 4},
        "streamed": {},
        "not streamed": {"streamed": False},
        "streamed, followed": {"follow_up_to": 32},
        "streamed, home ties": {"told_replicas": 2},
    }
    rates: dict[str, list[float]] = {label: [] for label in runs}
    for s in range(3):
        specs = long_prompt(salt=f"salt {s} ")
        for label, how in runs.items():
            result = simulate(specs, concurrency=8, sim=setup.sim, **how)  # type: ignore[arg-type]
            rates[label].append(result.requests_per_s)
    rr, streamed, plain, followed, home_ties = (statistics.mean(r) for r in rates.values())
    assert min(streamed, plain, followed) >= 0.99 * rr
    assert home_ties < 0.95 * rr  # what the scrapes alone gave before (the matrix's row at 0.81-0.91)


def test_the_gateway_beats_round_robin_and_stays_under_the_pinned_ceiling() -> None:
    specs = cache_bound(salt="x ")
    setup = SETUPS["cache-bound"]
    gateway = simulate(specs, sim=setup.sim)
    rr = simulate(specs, sim=setup.sim, place=lambda n, spec, pods, now: n % 4)
    pinned = simulate(specs, sim=setup.sim, place=lambda n, spec, pods, now: (spec.group or 0) % 4)
    assert rr.hit_rate < gateway.hit_rate <= pinned.hit_rate
    assert rr.requests_per_s < gateway.requests_per_s <= pinned.requests_per_s * 1.01
    assert pinned.pods_per_group == 1.0
    assert rr.pods_per_group == 4.0


def test_a_repeated_prompt_hits_the_simulated_pods_cache_in_whole_blocks() -> None:
    pod = SimPod("10.0.0.1:8000", SimConfig(models=[GEMMA], kv_cache_blocks=64))
    spec = RequestSpec(0, GEMMA, (("user", "x" * 1000),), 4)
    for now in (0.0, 1.0):
        seq = pod.sequence(spec, "x" * 1000, now)
        [(done, started)] = pod.admit(seq, now)
        assert started is seq
        assert done > now
        pod.finish(seq, done)
    # 250 tokens, 15 full blocks of 16: the second request finds the 15 blocks (240 tokens) cached.
    assert (pod.queried, pod.hit) == (500, 240)


def test_the_command_prints_both_replica_counts_and_their_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--salts", "1"]) == 0
    out = capsys.readouterr().out
    for line in ("round robin:", "the ceiling", "gateway, 1 EPP replica:", "gateway, 2 EPP replicas:",
                 "2 replicas / 1 replica:"):  # fmt: skip
        assert line in out


def test_following_answers_that_are_not_streams_is_refused_before_anything_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--not-streamed", "--follow-up-to", "32"])
    assert "--follow-up-to is for streams" in capsys.readouterr().err


def test_headers_at_the_first_token_are_for_streams_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--not-streamed", "--headers-at-first-token"])
    assert "--headers-at-first-token is for streams" in capsys.readouterr().err


def test_a_tighter_load_bound_spreads_the_prefix_fits_groups_over_more_pods() -> None:
    setup = SETUPS["prefix-fits"]
    tight = with_scorer_parameters(load_profile("default"), loadBound=1.1)
    scorer = next(p for p in tight.plugins if p.type == "prefix-affinity-scorer")
    assert (scorer.parameters or {})["loadBound"] == 1.1
    with pytest.raises(ConfigError, match="loadBound"):  # the scorer's own check, before anything runs
        with_scorer_parameters(load_profile("default"), loadBound=0.5)

    def pods_per_group(config: EndpointPickerConfig | None) -> float:
        runs = [simulate(setup.specs(f"salt {s} "), concurrency=16, sim=setup.sim, config=config)
                for s in range(3)]  # fmt: skip
        return statistics.mean(r.pods_per_group for r in runs)

    assert pods_per_group(tight) > pods_per_group(None)


def hetero_rate(config: EndpointPickerConfig | None = None, **how: object) -> float:
    setup = SETUPS["heterogeneous"]
    runs = [simulate(heterogeneous(salt=f"salt {s} "), concurrency=32, sims=setup.sims, config=config,
                     **how)  # type: ignore[arg-type]
            for s in range(2)]  # fmt: skip
    return statistics.mean(r.requests_per_s for r in runs)


def test_on_heterogeneous_pods_the_closed_loop_rate_rises_once_a_queued_request_counts_twice() -> None:
    # Counted as running, a request that waits for a slot made the slow pod look as busy as a fast
    # pod holding as many requests, all running: the slow pod kept a queue while the fast ones had
    # free slots. Counted twice (waitingWeight 2, the default), the gateway's closed-loop rate rises
    # by more than a tenth; round robin stays far below.
    once = with_scorer_parameters(load_profile("default"), waitingWeight=1)
    default, counted_once = hetero_rate(), hetero_rate(once)
    assert default >= 1.1 * counted_once
    assert default >= 2 * hetero_rate(place=lambda n, spec, pods, now: n % 4)


def test_an_epp_that_sees_a_streams_headers_at_once_places_as_well_as_one_that_sees_every_end() -> None:
    # vLLM sends a stream's headers as soon as it takes the request, so the EPP's in-flight count ends
    # there and its picks rest on the scrapes and the requests it routed since. An EPP is ready only
    # once it has scraped its pods: counting from that scrape, its first burst spreads as evenly as
    # an EPP's that follows every stream to its end (without it, that burst went by the stale path
    # and the heterogeneous closed loop lost a tenth of its rate). An EPP that held its count to the
    # first token does no worse either.
    at_once = hetero_rate()
    assert at_once >= 0.97 * hetero_rate(follow_up_to=1 << 30)
    assert hetero_rate(headers_at_first_token=True) >= 0.97 * at_once


def test_an_open_loop_sends_each_request_at_its_arrival_whatever_is_in_flight() -> None:
    specs = heterogeneous()[:8]
    sim = SimConfig(models=[GEMMA], max_num_seqs=8)
    # Arrivals far apart: each request finds an idle pod, so every TTFT is an unloaded one.
    first = lambda n, spec, pods, now: 0  # noqa: E731
    apart = simulate(specs, sim=sim, arrivals=[10.0 * i for i in range(8)], place=first)
    # All at once on one pod, whatever the closed loop's concurrency: they share its batch, and their
    # first tokens come later.
    together = simulate(specs, sim=sim, arrivals=[0.0] * 8, place=lambda n, spec, pods, now: 0, concurrency=1)
    assert together.ttft_p50 > 1.5 * apart.ttft_p50
    assert apart.requests_per_s < 0.2  # 8 requests over 70 virtual seconds and a little
    with pytest.raises(ValueError, match="one arrival per spec"):
        simulate(specs, sim=sim, arrivals=[0.0])


def test_the_heterogeneous_command_prints_each_sides_ttft_at_equal_offered_load(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--workload", "heterogeneous", "--salts", "1", "--replicas", "1", "--time-scale", "3"]) == 0
    out = capsys.readouterr().out
    assert "time scale 3" in out
    assert "open loop, 96 arrivals at" in out
    for side in ("round robin", "(never the slow one)", "gateway, 1 EPP replica"):
        assert f"{side}: TTFT p50" in out


def test_the_bursty_setup_runs_the_matrixs_long_box_and_its_burst_above_round_robins_rate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench import matrix

    [model] = matrix.BOXES["long"].topology.models
    options = model.sim_for(0).model_dump(exclude_unset=True)
    assert {name: getattr(SETUPS["bursty"].sim, name) for name in options} == options
    row = next(r for r in matrix.rows() if r.name == "bursty")
    assert row.bursty is not None
    assert picksim.bursty_arrivals(19.0, 3.0, 1) == row.bursty.arrivals(19.0, 3.0, 1)
    assert main(["--workload", "bursty", "--salts", "1", "--replicas", "1"]) == 0
    out = capsys.readouterr().out
    assert "bursty open loop, " in out
    assert "gateway, 1 EPP replica: TTFT p50" in out


def test_the_heterogeneous_setup_is_the_matrixs_hetero_box_and_offered_load() -> None:
    from bench import matrix  # the matrix's own figures, imported only here (it loads matplotlib)

    [model] = matrix.BOXES["hetero"].topology.models
    setup = SETUPS["heterogeneous"]
    assert len(setup.sims) == model.replicas == 4
    for index, sim in enumerate(setup.sims):
        options = model.sim_for(index).model_dump(exclude_unset=True)
        assert {name: getattr(sim, name) for name in options} == options
    assert picksim.OFFERED == matrix.OFFERED_FRACTION
    with pytest.raises(ValueError, match="4 pod configurations for 3 pods"):
        simulate(heterogeneous()[:4], pods=3, sims=setup.sims)


def _pods(*sims: SimConfig) -> list[SimPod]:
    return [SimPod(f"10.0.0.{i + 1}:8000", sim) for i, sim in enumerate(sims)]


def _spec(text: str = "what is a KV cache? " * 40, max_tokens: int = 8) -> RequestSpec:
    return RequestSpec(index=0, model=GEMMA, messages=(("user", text),), max_tokens=max_tokens)


def _run(pod: SimPod, text: str, max_tokens: int = 8, now: float = 0.0) -> None:
    pod.admit(pod.sequence(_spec(text, max_tokens), text, now), now)


def test_the_oracle_sends_a_request_where_its_first_token_comes_soonest() -> None:
    fast = SimConfig(models=[GEMMA], max_num_seqs=2)
    slow = SimConfig(models=[GEMMA], max_num_seqs=2, per_token_us=900)
    pods = _pods(slow, fast, fast)
    spec = _spec()
    # All idle: the slow pod's prefill is the longest, the fast ones tie and rotate.
    assert {soonest_first_token(n, spec, pods, 0.0) for n in range(4)} == {1, 2}
    # A request running on pod 1 slows its batch: pod 2 is sooner.
    _run(pods[1], "other " * 50)
    assert soonest_first_token(1, spec, pods, 0.0) == 2
    # Pod 2 full of long answers, one more waiting: a free slot anywhere comes sooner.
    for text in ("a " * 300, "b " * 300, "c " * 300):
        _run(pods[2], text, max_tokens=500)
    assert soonest_first_token(2, spec, pods, 0.0) != 2
    # A pod holding the prompt's prefix prefills only the rest.
    cached = _pods(fast, fast)
    prompt = "".join(content for _, content in spec.messages)
    seq = cached[1].sequence(spec, prompt, 0.0)
    cached[1].admit(seq, 0.0)
    cached[1].finish(seq, 1.0)
    assert all(soonest_first_token(n, spec, cached, 1.0) == 1 for n in range(2))


def test_with_every_pod_full_the_oracle_waits_where_a_slot_frees_first_not_at_the_shortest_queue() -> None:
    # A slow pod of 4 slots with no queue, against a fast pod of 8 slots with 2 waiting: counted in
    # slots' worth the slow pod's queue is shorter, but the fast pod's short answers end first.
    slow = SimConfig(models=[GEMMA], max_num_seqs=4, itl_ms=24, prefill_overhead_ms=60, per_token_us=500)
    fast = SimConfig(models=[GEMMA], max_num_seqs=8)
    pods = _pods(slow, fast)
    for i in range(4):
        _run(pods[0], f"slow {i} " * 20, max_tokens=64)
    for i in range(10):
        _run(pods[1], f"fast {i} " * 20, max_tokens=8)
    assert (len(pods[0].waiting), len(pods[1].waiting)) == (0, 2)
    assert all(soonest_first_token(n, _spec(), pods, 0.0) == 1 for n in range(2))


def test_on_identical_pods_even_the_oracle_wins_round_robin_no_more_than_a_percent_or_two() -> None:
    # The bound behind the matrix's closed loops where round robin is already right: an oracle that
    # reads every pod's state at every pick (no EPP can) is within 2% of round robin's rate, so a
    # gateway's path costs show there in full.
    setup = SETUPS["bursty"]
    ratios = []
    for s in range(3):
        specs = setup.specs(f"salt {s} ")
        rr = simulate(specs, concurrency=16, sim=setup.sim, place=picksim.round_robin).requests_per_s
        oracle = simulate(specs, concurrency=16, sim=setup.sim, place=soonest_first_token).requests_per_s
        ratios.append(oracle / rr)
    assert 1.0 <= statistics.mean(ratios) <= 1.02


def test_on_heterogeneous_pods_at_equal_load_even_the_oracles_ttft_p50_is_over_095_of_round_robins() -> None:
    # Round robin's median request is already a fast pod's, unloaded: even the oracle only lowers the
    # batch it joins (a few percent), while it takes the tail down to a third.
    setup = SETUPS["heterogeneous"]
    p50, p95 = [], []
    for s in range(3):
        specs = setup.specs(f"salt {s} ")
        capacity = simulate(specs, concurrency=32, sims=setup.sims, place=picksim.round_robin).requests_per_s
        opened = specs[: setup.open_requests]
        arrivals = poisson_arrivals(picksim.OFFERED * capacity, len(opened), seed=s)
        rr, oracle = (simulate(opened, sims=setup.sims, arrivals=arrivals, place=place)
                      for place in (picksim.round_robin, soonest_first_token))  # fmt: skip
        p50.append(oracle.ttft_p50 / rr.ttft_p50)
        p95.append(oracle.ttft_p95 / rr.ttft_p95)
    assert 0.95 <= statistics.mean(p50) < 1.0
    assert statistics.mean(p95) < 0.4
