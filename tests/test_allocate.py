"""Test-time allocation: plans spend the budget they are given, and the better plan wins where it should."""
import itertools

import numpy as np
import pytest

from explorer import allocate as A
from explorer.techniques.sampling import Samples


def make(answers, correct_answer, difficulty):
    """Samples from answer strings per problem; an answer is correct when it equals the problem's truth."""
    correct = np.array([[a == t for a in row] for row, t in zip(answers, correct_answer)])
    shape = correct.shape
    return Samples([list(r) for r in answers], correct, np.zeros(shape), np.full(shape, 3), np.array(difficulty))


@pytest.fixture
def mixed():
    # 40 easy problems: every sample says "1" (right). 40 hard ones: 10 right "1", 7 "2", 6 "3" of 23, shuffled:
    # a plurality that more votes find.
    rng = np.random.default_rng(0)
    easy = [["1"] * 23 for _ in range(40)]
    hard = [list(rng.permutation(["1"] * 10 + ["2"] * 7 + ["3"] * 6)) for _ in range(40)]
    return make(easy + hard, ["1"] * 80, [1] * 40 + [2] * 40)


def test_spread_adds_exactly_the_budget_evenly_and_respects_the_cap():
    base = np.array([2, 2, 2, 2])
    ks = A.spread(5, base, cap=4, eligible=np.array([True, True, False, True]))
    assert ks.sum() == 13 and ks[2] == 2 and ks.max() <= 4 and ks.max() - ks[[0, 1, 3]].min() <= 1
    full = A.spread(7, base, cap=4, eligible=np.array([True, True, False, True]))
    assert full.tolist() == [4, 4, 2, 4]  # the eligible problems are full: the rest is not spent
    assert A.spread(100, base, cap=4, eligible=np.ones(4, bool)).tolist() == [4, 4, 4, 4]


def test_level_plan_is_the_best_plan_within_the_budget():
    curves = {1: np.array([0.9, 0.9, 0.95, 0.95]), 2: np.array([0.2, 0.25, 0.5, 0.55]), 3: np.array([0.0, 0.0, 0.01, 0.01])}
    counts = {1: 10, 2: 10, 3: 10}
    plan = A.level_plan(curves, counts, mean_k=2)
    value = lambda p: sum(curves[d][p[d] - 1] * counts[d] for d in curves)
    feasible = [dict(zip(curves, ks)) for ks in itertools.product(range(1, 5), repeat=3)
                if sum(k * 10 for k in ks) <= 60]
    assert value(plan) == pytest.approx(max(value(p) for p in feasible))
    assert plan == {1: 1, 2: 4, 3: 1}  # the hard-but-possible level gets the samples


def test_agreement_stops_where_the_first_samples_agree_and_spends_the_rest_elsewhere(mixed):
    order = np.tile(np.arange(23), (80, 1))
    ks = A.by_agreement(5, first=2)(mixed, order)
    split = np.array([len(set(row[:2])) > 1 for row in mixed.answers])
    assert (ks[~split] == 2).all() and ks.sum() == 5 * 80
    assert ks[split].min() >= ks[split].max() - 1 > 5


def test_majority_splits_ties_and_pass_needs_one_right(mixed):
    s = make([["1", "2", "2", "1"]], ["1"], [1])
    order = np.array([[0, 1, 2, 3]])
    assert A.score(s, np.array([2]), order)[0] == 0.5  # "1" and "2" tie at one vote each
    assert A.score(s, np.array([3]), order)[0] == 0.0  # "2" wins 2:1
    assert A.score(s, np.array([3]), order, "pass")[0] == 1.0


def test_adaptive_allocation_beats_uniform_where_difficulty_varies_and_uniform_ties_itself(mixed):
    same = A.compare(mixed, A.uniform(5), 5, orders=5)
    assert same["gain"] == 0 and same["gain_lo"] == same["gain_hi"] == 0
    for strategy in (A.by_agreement(5, first=2), A.by_difficulty(5)):
        won = A.compare(mixed, strategy, 5, orders=20)
        assert won["samples_per_problem"] <= 5 and won["gain_lo"] > 0


@pytest.mark.parametrize("make_bad,named", [(lambda: A.uniform(0), "mean_k=0"), (lambda: A.uniform(99), "mean_k=99"),
                                            (lambda: A.by_agreement(4, first=0), "first=0"),
                                            (lambda: A.by_agreement(2, first=3), "first=3")])
def test_bad_budgets_are_named(mixed, make_bad, named):
    with pytest.raises(ValueError, match=named):
        A.evaluate(mixed, make_bad(), orders=1)


def test_an_unknown_aggregator_is_named(mixed):
    with pytest.raises(ValueError, match="aggregator='vote'"):
        A.evaluate(mixed, A.uniform(2), aggregator="vote", orders=1)
