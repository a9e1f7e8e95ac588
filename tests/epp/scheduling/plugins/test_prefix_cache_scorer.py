import pytest
from epp.scheduling import ConfigError

from tests.epp.scheduling.builders import GEMMA, PHI3, endpoint, plugin, request

SYSTEM = "You are a careful assistant. " * 10  # 290 characters: 4 full 64-character blocks
PROMPT = SYSTEM + "Question: what is the capital of France? " * 4


def picked(scorer, req, pod):
    """Score once (as the profile does), then tell the scorer the pick."""
    state = {}
    scorer.score(state, req, [pod])
    scorer.post_pick(state, req, pod)


def test_an_endpoint_that_served_the_prompt_scores_one_and_the_others_zero():
    scorer = plugin("prefix-cache-scorer")
    warm, cold = endpoint("warm"), endpoint("cold")
    picked(scorer, request(prompt=PROMPT), warm)
    assert scorer.score({}, request(prompt=PROMPT), [warm, cold]) == [1.0, 0.0]


def test_score_is_the_share_of_leading_blocks_already_sent_there():
    scorer = plugin("prefix-cache-scorer", {"blockSize": 10})
    pod = endpoint("pod")
    picked(scorer, request(prompt="a" * 40), pod)  # blocks a1..a4
    # 4 of 8 leading blocks match; a later matching block after a mismatch does not count.
    assert scorer.score({}, request(prompt="a" * 40 + "b" * 40), [pod]) == [0.5]
    assert scorer.score({}, request(prompt="b" * 10 + "a" * 70), [pod]) == [0.0]


def test_a_different_model_does_not_share_the_prefix():
    scorer = plugin("prefix-cache-scorer")
    pod = endpoint("pod", models=(GEMMA, PHI3))
    picked(scorer, request(GEMMA, PROMPT), pod)
    assert scorer.score({}, request(PHI3, PROMPT), [pod]) == [0.0]


def test_prompts_shorter_than_a_block_score_zero_and_index_nothing():
    scorer = plugin("prefix-cache-scorer")
    pod = endpoint("pod")
    picked(scorer, request(prompt="hi"), pod)
    assert scorer.score({}, request(prompt="hi"), [pod]) == [0.0]
    assert scorer.index.size(pod.address) == 0


def test_matching_stops_at_max_prefix_blocks_to_match():
    scorer = plugin("prefix-cache-scorer", {"blockSize": 8, "maxPrefixBlocksToMatch": 2})
    pod = endpoint("pod")
    picked(scorer, request(prompt="x" * 80), pod)
    assert scorer.index.size(pod.address) == 2
    assert scorer.score({}, request(prompt="x" * 16 + "y" * 64), [pod]) == [1.0]


def test_a_forgotten_endpoint_loses_its_index():
    scorer = plugin("prefix-cache-scorer")
    pod = endpoint("pod")
    picked(scorer, request(prompt=PROMPT), pod)
    scorer.forget(pod.address)
    assert scorer.index.size(pod.address) == 0
    assert scorer.score({}, request(prompt=PROMPT), [pod]) == [0.0]


def test_the_upstream_name_hash_block_size_is_accepted():
    assert plugin("prefix-cache-scorer", {"hashBlockSize": 16}).block_size == 16


@pytest.mark.parametrize("field", ["blockSize", "maxPrefixBlocksToMatch", "lruCapacityPerServer"])
def test_sizes_must_be_positive_integers(field):
    with pytest.raises(ConfigError) as caught:
        plugin("prefix-cache-scorer", {field: 0})
    assert str(caught.value) == (
        f"plugin 'prefix-cache-scorer': parameter '{field}': must be a positive integer, got 0"
    )


def test_an_unknown_parameter_is_named_with_the_accepted_ones():
    with pytest.raises(ConfigError) as caught:
        plugin("prefix-cache-scorer", {"blocksize": 64})
    assert str(caught.value) == (
        "plugin 'prefix-cache-scorer': parameter 'blocksize': unknown parameter "
        "(accepted: blockSize, maxPrefixBlocksToMatch, lruCapacityPerServer)"
    )


def test_a_replica_scores_the_pod_its_peer_sent_the_prompt_to_as_if_it_had_sent_it_itself():
    mine, peers = plugin("prefix-cache-scorer"), plugin("prefix-cache-scorer")
    warm, cold = endpoint("warm"), endpoint("cold")
    shared = []
    peers.share = shared.append
    picked(peers, request(prompt=PROMPT), warm)
    [pick] = shared
    assert (pick.plugin, pick.model, pick.address) == ("prefix-cache-scorer", GEMMA, warm.address)
    mine.apply_shared(pick, hashes_agree=False)  # another hash seed: its hashes mean nothing here
    assert mine.score({}, request(prompt=PROMPT), [warm, cold]) == [0.0, 0.0]
    mine.apply_shared(pick, hashes_agree=True)
    assert mine.score({}, request(prompt=PROMPT), [warm, cold]) == [1.0, 0.0]
