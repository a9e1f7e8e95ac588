"""Block hashing and the per-endpoint LRU index (``epp.scheduling.prefix_index``), used by both
prefix scorers."""

from epp.scheduling.prefix_index import PrefixIndex, block_hashes

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
