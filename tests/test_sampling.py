import itertools
from collections import Counter
from fractions import Fraction
from math import comb

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import explorer as ex
from explorer import aggregate as agg
from explorer.techniques import techniques
from explorer.techniques.sampling import Sampling, Samples, curves, model_logprobs

TIMING = {"wall_s", "wall_s_per_token", "created_at", "device"}


@pytest.fixture(scope="module")
def row(tiny_model):
    return ex.run(tiny_model, "addition", Sampling(n=8, temperature=1.0), n=24, seed=5, repeats=1)


def brute_force(answers, correct, score, k):
    """pass, majority and best-of-k averaged over every k-subset, by enumeration."""
    n, totals = len(answers), [Fraction(0)] * 3
    subsets = list(itertools.combinations(range(n), k))
    for s in subsets:
        votes = Counter(answers[i] for i in s)
        top = max(votes.values())
        tied = [a for a, v in votes.items() if v == top]
        right = [a for a in tied if correct[answers.index(a)]]
        best = min(s, key=lambda i: (-score[i], i))  # highest score, then earliest draw
        totals = [totals[0] + any(correct[i] for i in s), totals[1] + Fraction(len(right), len(tied)),
                  totals[2] + bool(correct[best])]
    return [float(t / len(subsets)) for t in totals]


problems = st.integers(1, 7).flatmap(lambda n: st.tuples(
    st.lists(st.sampled_from("abcd"), min_size=n, max_size=n), st.sampled_from("abcde"),
    st.lists(st.integers(0, 2), min_size=n, max_size=n)))


# -- the estimators, against exact combinatorics ---------------------------------------

def test_pass_at_k_equals_one_minus_the_ratio_of_binomials():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(comb(n - c, k), comb(n, k))
                assert agg.pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)
    assert agg.pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)
    assert agg.pass_at_k(200, 1, 100) == pytest.approx(0.5)
    assert np.allclose(agg.pass_at_k(10, [0, 5, 10], 3), [0.0, 1 - comb(5, 3) / comb(10, 3), 1.0])


@settings(max_examples=150, deadline=None)
@given(problems)
def test_every_aggregator_equals_enumerating_all_subsets(problem):
    answers, truth, score = problem
    correct = np.array([a == truth for a in answers])
    n = len(answers)
    got = np.stack([agg.pass_curve(correct[None])[0],
                    agg.majority_curve([answers], correct[None])[0],
                    agg.best_of_curve(correct[None], np.array(score, float)[None])[0]], 1)
    want = [brute_force(answers, correct, score, k) for k in range(1, n + 1)]
    assert np.allclose(got, want, atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=6, max_size=6), min_size=1, max_size=5))
def test_pass_at_k_never_falls_as_k_grows_and_pass_at_1_is_the_sample_mean(flags):
    correct = np.array(flags)
    curve = agg.pass_curve(correct)
    assert np.all(np.diff(curve, axis=1) >= -1e-12)
    assert np.allclose(curve[:, 0], correct.mean(1))
    assert np.allclose(curve[:, -1], correct.any(1))


def test_a_majority_tie_splits_the_vote_evenly():
    # One right answer tied with one wrong: half a point; tied with two wrong: a third.
    assert agg.majority_curve([["7", "3"]], np.array([[True, False]]), [2])[0, 0] == pytest.approx(1 / 2)
    three = agg.majority_curve([["7", "3", "5"]], np.array([[True, False, False]]), [3])[0, 0]
    assert three == pytest.approx(1 / 3)
    # Two answers with 32 votes each out of 64: by symmetry every k is a coin flip.
    even = agg.majority_curve([["7"] * 32 + ["3"] * 32], np.array([[True] * 32 + [False] * 32]))
    assert np.allclose(even, 0.5)
    # A clear plurality wins outright, even with less than half the votes.
    assert agg.majority_curve([["7", "7", "3", "5"]], np.array([[1, 1, 0, 0]], bool), [4])[0, 0] == 1.0


def test_best_of_k_breaks_equal_scores_by_draw_order():
    correct, score = np.array([[False, True]]), np.zeros((1, 2))
    assert agg.best_of_curve(correct, score, [2])[0, 0] == 0.0
    assert agg.best_of_curve(correct[:, ::-1], score, [2])[0, 0] == 1.0


def test_majority_refuses_an_answer_judged_both_ways():
    with pytest.raises(ValueError, match="both correct and wrong"):
        agg.majority_curve([["7", "7"]], np.array([[True, False]]))


# -- the simulated verifier ------------------------------------------------------------

@pytest.mark.parametrize("fpr,fnr", [(0.1, 0.2), (0.3, 0.05)])
def test_the_simulated_verifier_errs_at_the_configured_rates(fpr, fnr):
    correct = np.random.default_rng(0).random((400, 250)) < 0.4
    accepted = agg.simulate_verifier(correct, fpr, fnr, seed=11)
    for observed, rate, count in ((accepted[~correct].mean(), fpr, (~correct).sum()),
                                  (1 - accepted[correct].mean(), fnr, correct.sum())):
        assert abs(observed - rate) < 4 * np.sqrt(rate * (1 - rate) / count)
    assert np.array_equal(accepted, agg.simulate_verifier(correct, fpr, fnr, seed=11))
    assert not np.array_equal(accepted, agg.simulate_verifier(correct, fpr, fnr, seed=12))


def test_a_perfect_verifier_reaches_pass_at_k_and_a_blind_one_falls_back_to_log_probability(row):
    s = Samples.of(row)
    perfect = curves(s, fpr=0.0, fnr=0.0)
    assert np.allclose(perfect["best_verifier_at_k"], perfect["pass_at_k"])
    blind = curves(s, fpr=1.0, fnr=0.0)  # accepts everything: ranking is by log-probability alone
    assert np.allclose(blind["best_verifier_at_k"], blind["best_logprob_at_k"])


@pytest.mark.parametrize("kw", [{"fpr": -0.1, "fnr": 0.1}, {"fpr": 0.1, "fnr": 1.5}])
def test_verifier_rates_outside_zero_one_are_refused(kw):
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        agg.simulate_verifier(np.ones((1, 2), bool), seed=0, **kw)


# -- a run on the zoo --------------------------------------------------------------------

def test_the_row_keeps_every_sample_and_the_k_grid(row):
    s = Samples.of(row)
    assert s.correct.shape == (24, 8) and row["samples_drawn"] == 192
    assert row["pass_at_1"] == pytest.approx(row["sample_accuracy"]) == pytest.approx(s.correct.mean())
    for k in (1, 2, 4, 8):
        for col in ("pass", "majority", "best_logprob", "best_verifier"):
            assert 0 <= row[f"{col}_at_{k}"] <= 1
        assert row[f"tokens_generated_at_{k}"] == pytest.approx(row["tokens_generated"] * k / 8)
    assert row["pass_at_1"] <= row["pass_at_2"] <= row["pass_at_4"] <= row["pass_at_8"]
    assert row["accuracy"] == row["majority_at_8"]  # the default headline: majority at k = n
    assert row["accuracy_lo"] <= row["accuracy"] <= row["accuracy_hi"]
    assert row["tokens_generated"] == s.tokens.sum() and row["wall_s"] > 0
    assert row["flops_per_problem_at_8_analytic"] == pytest.approx(8 * row["flops_per_problem_at_1_analytic"])


def test_the_k_slider_answers_from_stored_samples_without_generating(row, tmp_path, monkeypatch):
    import explorer.generate

    def no_generation(*a, **k):
        raise AssertionError("curves() must not generate")

    monkeypatch.setattr(explorer.generate, "generate", no_generation)
    # Through parquet and back, as the store would keep it.
    pl.DataFrame([row]).write_parquet(tmp_path / "r.parquet")
    stored = pl.read_parquet(tmp_path / "r.parquet").row(0, named=True)
    c = curves(stored)
    assert c["k"].to_list() == list(range(1, 9))
    for k in (1, 2, 4, 8):
        for col in ("pass", "majority", "best_logprob", "best_verifier"):
            assert c[f"{col}_at_k"][k - 1] == pytest.approx(row[f"{col}_at_{k}"], abs=1e-12)
        assert c["flops_per_problem_analytic"][k - 1] == pytest.approx(row[f"flops_per_problem_at_{k}_analytic"])
    assert curves(Samples.of(row).frame(), [3])["pass_at_k"][0] == pytest.approx(c["pass_at_k"][2])
    assert ex.Sampling.curves is curves


def test_each_group_of_problems_is_one_batched_generate_call(tiny_model, monkeypatch):
    import explorer.generate

    real, batches = explorer.generate.generate, []

    def counting(model, tokenizer, prompts, **kw):
        batches.append(list(prompts))
        return real(model, tokenizer, prompts, **kw)

    monkeypatch.setattr(explorer.generate, "generate", counting)
    r = ex.run(tiny_model, "addition", Sampling(n=100), n=5, seed=1, repeats=1)
    assert [len(b) for b in batches] == [200, 200, 100]  # two problems x 100 samples per call
    assert batches[0][:100] == [batches[0][0]] * 100 and batches[0][100] != batches[0][0]
    assert r["generate_calls"] == 3 and r["problems_per_call"] == 2


def test_run_batch_size_does_not_change_the_samples(row, tiny_model):
    again = ex.run(tiny_model, "addition", Sampling(n=8, temperature=1.0), n=24, seed=5, repeats=1,
                   batch_size=3)
    assert again["samples"] == row["samples"]


def test_same_seed_same_samples(row, tiny_model):
    again = ex.run(tiny_model, "addition", Sampling(n=8, temperature=1.0), n=24, seed=5, repeats=1)
    assert {k: v for k, v in again.items() if k not in TIMING} == {k: v for k, v in row.items() if k not in TIMING}
    other = ex.run(tiny_model, "addition", Sampling(n=8, temperature=1.0), n=24, seed=6, repeats=1)
    assert other["samples"] != row["samples"]


def test_greedy_samples_are_all_the_baseline_answer(tiny_model):
    base = ex.run(tiny_model, "multiplication", n=16, seed=2, repeats=1)
    greedy = ex.run(tiny_model, "multiplication", Sampling(n=3, temperature=0), n=16, seed=2, repeats=1)
    assert greedy["sample_accuracy"] == greedy["pass_at_3"] == greedy["majority_at_3"] == base["accuracy"]


def test_log_probabilities_are_the_model_s_own_at_any_temperature(tiny_model):
    from explorer.generate import generate

    prompts = [e.prompt for e in ex.tasks.get("addition").examples(6, seed=0)]
    g = generate(tiny_model.hf, tiny_model.tokenizer, prompts, max_new_tokens=7, temperature=1.0,
                 generator=__import__("torch").Generator().manual_seed(0))
    assert model_logprobs(tiny_model, prompts, g.tokens, 7) == pytest.approx(g.logprobs, abs=1e-4)


def test_the_headline_is_the_chosen_aggregator_at_the_chosen_k(tiny_model):
    r = ex.run(tiny_model, "addition", Sampling(n=6, aggregator="pass", k=3, temperature=0.8, top_p=0.9),
               n=12, seed=0, repeats=1)
    assert r["accuracy"] == r["pass_at_3"] and r["knob_k"] == 3 and r["knob_top_p"] == 0.9
    assert "pass_at_6" in r and "pass_at_4" in r


def test_sampling_is_registered_and_exported():
    assert techniques.get("sampling") is Sampling is ex.Sampling
    assert ex.pass_at_k is agg.pass_at_k
    assert Sampling(n=8) == Sampling(n=8, k=8)


# -- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("kw,field", [
    ({"n": 0}, "n=0"), ({"n": -3}, "n=-3"), ({"n": 2.5}, "n=2.5"), ({"n": True}, "n=True"),
    ({"temperature": -0.5}, "temperature=-0.5"), ({"top_p": 0}, "top_p=0"), ({"top_p": 1.2}, "top_p=1.2"),
    ({"n": 4, "k": 5}, "k=5"), ({"k": 0}, "k=0"), ({"aggregator": "mean"}, "aggregator='mean'"),
    ({"verifier_fpr": 2}, "verifier_fpr=2"), ({"verifier_fnr": -1}, "verifier_fnr=-1"),
])
def test_bad_knobs_are_refused_naming_field_value_and_range(kw, field):
    with pytest.raises(ValueError, match=f"Sampling.{field}; valid"):
        Sampling(**kw)


def test_k_beyond_the_samples_drawn_is_refused(row):
    with pytest.raises(ValueError, match=r"k=9; valid k are integers 1..n=8"):
        curves(row, [1, 9])
    with pytest.raises(ValueError, match=r"k=0"):
        agg.pass_at_k(5, 2, 0)
    with pytest.raises(ValueError, match=r"k=6"):
        agg.pass_at_k(5, 2, 6)
    with pytest.raises(ValueError, match="no 'samples' column"):
        curves({"accuracy": 0.5})
    with pytest.raises(ValueError, match="no 'samples' column"):
        curves({"accuracy": 0.5, "samples": None})  # a baseline row in a mixed store frame


@pytest.mark.slow
def test_coverage_rises_with_k_while_majority_flattens_on_zoo_m(mid_model):
    r = ex.run(mid_model, "multiplication", Sampling(n=32, temperature=1.0), n=40, seed=9, repeats=1,
               batch_size=256)
    c = curves(r)
    p, m = c["pass_at_k"].to_numpy(), c["majority_at_k"].to_numpy()
    # Each doubling of k keeps adding coverage; majority vote gains far less past k = 8.
    gains = [p[2 * k - 1] - p[k - 1] for k in (1, 2, 4, 8, 16)]
    assert all(g > 0 for g in gains)
    assert p[-1] - p[7] > (m[-1] - m[7]) + 0.02


def test_reading_a_row_at_k_uses_its_stored_samples_only(row, tiny_model):
    from explorer.store import to_frame
    from explorer.techniques.sampling import read_at_k

    base = ex.run(tiny_model, "addition", ex.Baseline(), n=24, seed=5, repeats=1)
    df = pl.concat([to_frame(row), to_frame(base)], how="diagonal_relaxed")
    at_n = read_at_k(df, 8)
    assert at_n["accuracy"].to_list() == df["accuracy"].to_list()  # at n: the row as stored
    at_1 = read_at_k(df, 1).row(0, named=True)
    assert at_1["accuracy"] == pytest.approx(row["sample_accuracy"])  # majority of one is one sample
    assert at_1["tokens_generated"] == pytest.approx(row["tokens_generated"] / 8)
    assert at_1["knob_k"] == 1 and at_1["accuracy_lo"] <= at_1["accuracy"] <= at_1["accuracy_hi"]
    assert read_at_k(df, 64).row(0, named=True)["knob_k"] == 8  # k past n reads all n
    composed = ex.run(tiny_model, "addition", [ex.Quantize(bits=8), Sampling(n=4)], n=8, seed=5, repeats=1)
    assert read_at_k(to_frame(composed), 1).row(0, named=True)["knob_k"] == 1  # a composed row's samples too
    assert read_at_k(df, 1).row(1, named=True) == df.row(1, named=True)  # not a sampling row: untouched
    with pytest.raises(ValueError, match="k=0"):
        read_at_k(df, 0)
