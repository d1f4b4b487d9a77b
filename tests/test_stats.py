import pytest

from explorer.stats import bootstrap_mean, wilson


@pytest.mark.parametrize("k,n", [(0, 50), (50, 50)])
def test_wilson_never_claims_certainty_at_the_edges(k, n):
    lo, hi = wilson(k, n)
    assert hi - lo > 0.05
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_matches_the_textbook_value():
    lo, hi = wilson(20, 50)  # 0.4 of 50: Wilson 95% is about (0.276, 0.538)
    assert lo == pytest.approx(0.2761, abs=1e-3) and hi == pytest.approx(0.5382, abs=1e-3)


def test_bootstrap_covers_the_mean_and_is_seeded():
    vals = [1.0, 2.0, 3.0, 2.5, 1.5, 2.2]
    lo, hi = bootstrap_mean(vals, seed=1)
    assert lo < sum(vals) / len(vals) < hi
    assert bootstrap_mean(vals, seed=1) == (lo, hi)


def test_problems_needed_matches_the_textbook_values():
    from explorer.stats import problems_needed

    # 0.5 vs 0.6 and 0.5 vs 0.7 at alpha 0.05 two-sided, power 0.8: 388 and 93 per group (Fleiss, no correction)
    assert problems_needed(0.1, 0.5) == 388 and problems_needed(0.2, 0.5) == 93
    assert problems_needed(-0.05, 0.75) == problems_needed(0.05, 0.70)  # the same pair, named either way
    assert problems_needed(0.1, 0.5, power=0.9) > 388 > problems_needed(0.1, 0.5, alpha=0.1)
    assert problems_needed(0.02, 0.5) > problems_needed(0.05, 0.5) > problems_needed(0.1, 0.5)


def test_problems_needed_gives_the_promised_power_in_simulation():
    import numpy as np
    from scipy.stats import norm

    from explorer.stats import problems_needed

    n, p1, p2 = problems_needed(0.15, 0.6), 0.6, 0.75
    rng = np.random.default_rng(0)
    a, b = rng.binomial(n, p1, 20_000) / n, rng.binomial(n, p2, 20_000) / n
    pooled = (a + b) / 2
    z = (b - a) / np.sqrt(2 * pooled * (1 - pooled) / n)
    assert abs((np.abs(z) > norm.ppf(0.975)).mean() - 0.8) < 0.02


@pytest.mark.parametrize("kw,named", [({"delta": 0, "p": 0.5}, "delta=0"), ({"delta": 0.6, "p": 0.5}, "delta=0.6"),
                                      ({"delta": 0.1, "p": 1.0}, "p=1.0"), ({"delta": 0.1, "p": "0.5"}, "p='0.5'"),
                                      ({"delta": 0.1, "p": 0.5, "power": 1}, "power=1"),
                                      ({"delta": 0.1, "p": 0.5, "alpha": 0}, "alpha=0")])
def test_problems_needed_names_a_bad_value(kw, named):
    from explorer.stats import problems_needed

    with pytest.raises(ValueError, match=named):
        problems_needed(**kw)
