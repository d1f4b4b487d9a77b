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
