"""Block hashing and the per-endpoint LRU index (``epp.scheduling.prefix_index``), used by both
prefix scorers."""

from epp.scheduling.prefix_index import CachePrediction, PrefixIndex, block_hashes

from tests.epp.scheduling.builders import GEMMA, PHI3

SYSTEM = "You are a careful assistant. " * 10  # 290 characters: 4 full 64-character blocks
PROMPT = SYSTEM + "Question: what is the capital of France? " * 4


def test_hashes_cover_only_full_blocks_up_to_the_limit():
    assert len(block_hashes(GEMMA, "x" * 63, 64, 256)) == 0
    assert len(block_hashes(GEMMA, "x" * 200, 64, 256)) == 3
    assert len(block_hashes(GEMMA, "x" * 64 * 500, 64, 256)) == 256


def test_hashes_are_chained_so_equal_blocks_after_different_prefixes_differ():
    a = block_hashes(GEMMA, "A" * 64 + "same" * 16, 16, 10)
    b = block_hashes(GEMMA, "B" * 64 + "same" * 16, 16, 10)
    assert a[4:] != b[4:]
    assert block_hashes(GEMMA, PROMPT, 64, 256) == block_hashes(GEMMA, PROMPT, 64, 256)


def test_hashes_are_seeded_by_the_model():
    assert block_hashes(GEMMA, PROMPT, 64, 256)[0] != block_hashes(PHI3, PROMPT, 64, 256)[0]


def test_the_lru_evicts_the_oldest_prompts_first_and_the_tail_of_a_prompt_before_its_head():
    index = PrefixIndex(capacity_per_endpoint=4)
    index.add("pod", [1, 2, 3])
    index.add("pod", [10, 11])  # over capacity: the least recently used hash of [1, 2, 3] (3) goes
    assert index.leading_matches([1, 2, 3], "pod") == 2
    assert index.leading_matches([10, 11], "pod") == 2
    assert index.size("pod") == 4


def test_resending_a_prompt_refreshes_it_in_the_lru():
    index = PrefixIndex(capacity_per_endpoint=4)
    index.add("pod", [1, 2])
    index.add("pod", [3, 4])
    index.add("pod", [1, 2])  # refreshed: [3, 4] is now the oldest
    index.add("pod", [5])
    assert index.leading_matches([1, 2], "pod") == 2
    assert index.leading_matches([3, 4], "pod") == 1


# -- settled by the cached tokens the pod reports (epp.requestcontrol.cached_tokens) --------------------

BLOCK = 64


def _prompt_of(blocks: int, tag: str) -> str:
    return "".join(f"{tag}{i:03d}".ljust(BLOCK, ".") for i in range(blocks))


OLD, RECENT = (block_hashes(GEMMA, _prompt_of(4, tag), BLOCK, 256) for tag in ("old", "new"))


def _recent_sent_again() -> tuple[PrefixIndex, CachePrediction]:
    """A pod that was sent the old prompt, then the recent one, picked again for the recent one:
    what the index predicted (four blocks), the pick recorded as every pick is."""
    index = PrefixIndex(capacity_per_endpoint=1000)
    index.add("pod", OLD)
    index.add("pod", RECENT)
    index.add("other-pod", OLD)
    prediction = index.predict("pod", RECENT, BLOCK, 4 * BLOCK)
    assert prediction is not None
    assert prediction.blocks == 4
    index.add("pod", RECENT)
    return index, prediction


def test_a_predicted_hit_the_pod_answered_with_no_cached_tokens_drops_the_pods_stale_entries():
    index, prediction = _recent_sent_again()
    # The pod had restarted (its cache was empty): it found nothing of the 64-token prompt.
    dropped = prediction.settle(prompt_tokens=64, cached_tokens=0)
    # Everything the pod held from before the restart is gone from the index; the request's own
    # blocks, which the pod has just computed, stay; other pods are untouched.
    assert dropped == 4
    assert index.leading_matches(OLD, "pod") == 0
    assert index.leading_matches(RECENT, "pod") == 4
    assert index.leading_matches(OLD, "other-pod") == 4


def test_a_predicted_hit_the_pod_confirmed_keeps_every_entry():
    index, prediction = _recent_sent_again()
    # 256 characters in 64 tokens: the pod found 48 of them, three of the four blocks.
    assert prediction.settle(prompt_tokens=64, cached_tokens=48) is None
    assert index.leading_matches(OLD, "pod") == 4
    assert index.size("pod") == 8


def test_a_pod_that_found_only_the_start_of_a_prefix_evicted_what_is_as_old_as_the_rest():
    index = PrefixIndex(capacity_per_endpoint=1000)
    shared = _prompt_of(8, "sys")
    long_ago, prompt = _prompt_of(2, "gone"), shared + _prompt_of(2, "q1")
    hashes = block_hashes(GEMMA, prompt, BLOCK, 256)
    index.add("pod", block_hashes(GEMMA, long_ago, BLOCK, 256))
    index.add("pod", hashes)  # recorded after the old prompt
    index.add("pod", hashes[:4])  # the first half of the shared prefix used again since
    prediction = index.predict("pod", hashes, BLOCK, len(prompt))
    assert prediction is not None
    assert prediction.blocks == 10
    index.add("pod", hashes)
    # The pod found 2 blocks' worth (32 of 160 tokens): block 3 was gone, and with it everything
    # last recorded no later than it: the old prompt.
    assert prediction.settle(prompt_tokens=160, cached_tokens=32) == 2
    assert index.leading_matches(block_hashes(GEMMA, long_ago, BLOCK, 256), "pod") == 0
    assert index.leading_matches(hashes, "pod") == 10


def test_nothing_is_concluded_from_an_answer_without_prompt_tokens():
    index = PrefixIndex(capacity_per_endpoint=1000)
    hashes = block_hashes(GEMMA, _prompt_of(2, "a"), BLOCK, 256)
    index.add("pod", hashes)
    prediction = index.predict("pod", hashes, BLOCK, 2 * BLOCK)
    assert prediction is not None
    assert prediction.settle(prompt_tokens=0, cached_tokens=0) is None
    assert index.size("pod") == 2
    assert index.predict("pod", block_hashes(GEMMA, _prompt_of(2, "b"), BLOCK, 256), BLOCK, 128) is None
