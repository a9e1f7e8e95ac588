from tests.epp.scheduling.builders import endpoint, plugin


def test_picks_every_endpoint_eventually_regardless_of_score():
    pods = [endpoint("a"), endpoint("b"), endpoint("c")]
    picker = plugin("random-picker", seed=3)
    chosen = {picker.pick(pods, [0.0, 0.0, 9.0])[0].name for _ in range(100)}
    assert chosen == {"a", "b", "c"}


def test_max_num_of_endpoints_returns_distinct_endpoints():
    pods = [endpoint("a"), endpoint("b"), endpoint("c")]
    picks = plugin("random-picker", {"maxNumOfEndpoints": 5}).pick(pods, [0.0, 0.0, 0.0])
    assert sorted(e.name for e in picks) == ["a", "b", "c"]


def test_the_same_seed_gives_the_same_picks():
    pods = [endpoint(str(i)) for i in range(10)]

    def run():
        picker = plugin("random-picker", seed=5)
        return [picker.pick(pods, [0.0] * 10)[0].name for _ in range(20)]

    first = run()
    assert run() == first
    assert len(set(first)) > 1
