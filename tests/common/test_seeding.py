from common.modeling.generation import plan_batches
from common.seeding import derive_seed


def test_derived_seeds_are_stable_distinct_and_in_range():
    assert derive_seed(42, 3) == derive_seed(42, 3)
    seeds = {derive_seed(42, t, b) for t in range(4) for b in range(50)}
    assert len(seeds) == 200  # neighbouring paths never collide here
    assert all(0 <= s < 2**31 - 1 for s in seeds)
    assert derive_seed(42, 1) != derive_seed(43, 1)


def test_plan_batches_longest_first_ties_by_tiebreak_and_covers_everything():
    lengths = [3, 9, 3, 5, 9]
    batches = plan_batches(lengths, ["e", "b", "a", "d", "a"], 2)
    assert batches == [[4, 1], [3, 2], [0]]
    assert sorted(i for b in batches for i in b) == list(range(5))
