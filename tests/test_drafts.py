"""The draft interface of the one speculative loop: model drafts and the model-free prompt lookup."""
import pytest
import torch

import explorer as ex
from explorer import tasks as T
from explorer.generate import encode, generate
from explorer.speculative import Draft, ModelDraft, PromptLookup, speculative_generate

from tests.test_speculative import DEPTH, N, PROMPT, TEMPERATURE, exact_probs, fit_pvalue, prefixes


@pytest.fixture(scope="module")
def target(zoo_models):
    return zoo_models["zoo-s"]


def repetitive_prompts() -> list[str]:
    """Text whose continuation often repeats what came before: where prompt lookup pays."""
    text = T.get("shakespeare").text()
    return [text[i : i + 40] + text[i : i + 25] for i in (0, 300, 1200, 5000)] + ["abcabcabcab", "12341234123"]


def test_lookup_proposes_what_followed_the_latest_earlier_match():
    d = PromptLookup(max_ngram=3)
    assert d.lookup([1, 2, 3, 9, 1, 2], 3) == [3, 9, 1]  # [9, 1, 2] never recurs; [1, 2] does
    assert d.lookup([5, 1, 2, 7, 1, 2, 8, 1, 2], 2) == [8, 1]  # the latest occurrence wins
    assert d.lookup([1, 2, 3, 4], 3) == []  # nothing recurs: no proposal
    assert PromptLookup(max_ngram=2, min_ngram=2).lookup([4, 1, 5, 1], 2) == []  # a lone token is too short
    with pytest.raises(ValueError, match="min_ngram"):
        PromptLookup(max_ngram=1, min_ngram=2)


@pytest.mark.parametrize("draft_len", [1, 4, 8])
def test_greedy_prompt_lookup_output_is_the_target_alone(target, draft_len):
    prompts = repetitive_prompts() + [e.prompt for e in T.get("sort").examples(6, 3)]
    alone = generate(target.hf, target.tokenizer, prompts, max_new_tokens=24)
    spec = speculative_generate(target, PromptLookup(), encode(target.tokenizer, prompts, 200),
                                draft_len=draft_len, temperature=0.0, max_new_tokens=24)
    assert spec.tokens == alone.tokens
    assert spec.logprobs == pytest.approx(alone.logprobs, abs=1e-3)
    s = spec.stats
    assert s.draft_calls == 0 and s.draft_positions == 0  # no forward pass
    assert 0 < s.accepted < s.drafted  # it proposed, the target kept some and refused some
    assert s.tokens == s.accepted + s.target_calls - s.eos_accepted
    one = [speculative_generate(target, PromptLookup(), target.tokenizer(p)["input_ids"], draft_len=draft_len,
                                temperature=0.0, max_new_tokens=24).tokens[0] for p in prompts[:3]]
    assert one == alone.tokens[:3]


def test_prompt_lookup_saves_target_calls_on_repetitive_text(target):
    prompts = repetitive_prompts()
    enc = encode(target.tokenizer, prompts, 200)
    spec = speculative_generate(target, PromptLookup(), enc, draft_len=6, temperature=0.0, max_new_tokens=24)
    assert spec.stats.tokens_per_target_call > 1.2  # each call yields more than the one token plain decoding does


def test_sampled_prompt_lookup_follows_the_targets_exact_probabilities(target):
    # "To be" then tokens: a lookup proposes after any repeated character, so rounds both accept
    # (with probability p(x): the draft is certain) and reject (then draw from p without x).
    exact = exact_probs(target)
    ids = target.tokenizer([PROMPT] * N, return_tensors="pt")
    spec = speculative_generate(target, PromptLookup(min_ngram=1), ids, draft_len=2, temperature=TEMPERATURE,
                                max_new_tokens=DEPTH + 1, generator=torch.Generator().manual_seed(7))
    s = spec.stats
    assert s.judged > s.accepted > 0
    assert fit_pvalue(prefixes(spec.tokens, target.tokenizer.eos_token_id), exact) > 1e-3


def test_speculative_takes_prompt_lookup_by_name(target):
    row = ex.run(target, "sort", ex.Speculative(draft="prompt_lookup", draft_len=4), n=8, batch_size=4)
    assert row["draft_kind"] == "prompt_lookup" and row["knob_draft"] == "prompt_lookup"
    assert row["outputs_match_target_alone"] is True
    assert row["draft_calls"] == 0 and row["cost_ratio_measured"] == 0.0
    assert row["weight_bytes"] == target.facts.weight_bytes  # no second model


def test_a_model_draft_and_a_draft_of_ones_own_pass_through_the_same_loop(target, tiny_model):
    class EveryTokenIsOne(Draft):
        """A draft of our own: always proposes token id 1 (rarely right), behind the same loop."""

        def start(self, ids, mask):
            self.rows = ids.shape[0]

        def propose(self, cap, temperature, adaptive, eos, generator, stats):
            g = int(cap.max())
            return torch.ones(self.rows, g, dtype=torch.long), [], cap.clone()

        def update(self, proposals, n, nxt):
            pass

        def select(self, rows):
            self.rows = rows.numel()

    prompts = [e.prompt for e in T.get("addition").examples(5, 2)]
    enc = encode(target.tokenizer, prompts, 200)
    alone = generate(target.hf, target.tokenizer, prompts, max_new_tokens=10)
    for draft in (EveryTokenIsOne(), ModelDraft(tiny_model), tiny_model):
        spec = speculative_generate(target, draft, enc, draft_len=3, temperature=0.0, max_new_tokens=10)
        assert spec.tokens == alone.tokens


# --- batch size > 1: the draft length per batch size, plain decoding where nothing pays -------------

def test_a_plan_picks_plain_decoding_when_verification_is_compute_bound():
    from explorer.speculative import LengthPlan

    bound = LengthPlan(0.1, (1.0, 2.0, 3.0, 4.0, 5.0))  # verifying g + 1 tokens costs g + 1 calls
    assert [bound.best(a) for a in (0.0, 0.5, 0.9, 1.0)] == [0, 0, 0, 0]
    cheap = LengthPlan(0.1, (1.0, 1.05, 1.1, 1.15, 1.2))  # batch 1 on a CPU: a few tokens cost about one
    assert cheap.best(0.0) == 0 and cheap.best(0.5) >= 1 and cheap.best(0.9) == 4
    assert LengthPlan(0.1, (1.0, 1.05)).best(0.2) == 0  # 1.04x promised: inside the margin, plain
    assert cheap.best(0.9) >= cheap.best(0.6) >= cheap.best(0.3)  # surer drafts, longer rounds


def test_a_batch_the_plan_decodes_plainly_gives_the_targets_output_and_says_so(target, monkeypatch):
    from explorer import speculative as S
    from explorer.techniques import speculative as TS

    monkeypatch.setattr(TS, "plan_lengths", lambda *a, **k: S.LengthPlan(0.2, (1.0, 2.0, 3.0, 4.0)))
    monkeypatch.setattr(TS, "_PLANS", __import__("weakref").WeakKeyDictionary())
    technique = ex.Speculative(draft="zoo-xs", draft_len=3)
    prompts = [e.prompt for e in T.get("addition").examples(6, 5)]
    alone = generate(target.hf, target.tokenizer, prompts, max_new_tokens=8)
    out = technique.generate(target, prompts, max_new_tokens=8, seed=0)
    assert out.tokens == alone.tokens and out.tokens_generated == alone.tokens_generated
    cols = technique.columns(target, [out])
    assert cols["spec_mode"] == "plain" and cols["drafted"] == 0 and cols["draft_calls"] == 0
    assert cols["spec_plan"].startswith("plain at acceptance") and "2.00/3.00/4.00" in cols["spec_plan"]
    assert out.decode_path == alone.decode_path  # the target alone's own path, not a copy of it
    one = technique.generate(target, prompts[:1], max_new_tokens=8, seed=0)  # batch 1: fixed length, no plan
    assert technique.columns(target, [one])["spec_mode"] == "speculative"
    assert technique.columns(target, [one])["spec_plan"] is None


def test_a_plan_that_changes_its_mind_mid_call_keeps_the_targets_output(target, tiny_model, monkeypatch):
    from explorer import speculative as S

    # Speculating pays here only while acceptance stays above about 0.87. The plan starts from an
    # optimistic prior (0.95); zoo-xs drafting for zoo-s is accepted about 0.76 of the time, so once
    # the call has seen some rounds it decodes plainly: rounds of both kinds run in one call.
    monkeypatch.setattr(S, "PRIOR_ALPHA", 0.95)
    plan = S.LengthPlan(0.4, (1.0, 1.3, 1.6, 1.9))
    assert plan.best(0.95) > 0 and plan.best(0.76) == 0
    prompts = [e.prompt for e in T.get("sort").examples(8, 1)] + repetitive_prompts()[:4]
    alone = generate(target.hf, target.tokenizer, prompts, max_new_tokens=16)
    spec = speculative_generate(target, tiny_model, encode(target.tokenizer, prompts, 200), draft_len=3,
                                temperature=0.0, max_new_tokens=16, plan=plan)
    assert spec.tokens == alone.tokens
    s = spec.stats
    assert s.columns()["spec_mode"] == "mixed" and 0 < s.plain_steps < s.steps and s.drafted > 0
    assert s.tokens == s.accepted + s.target_calls - s.eos_accepted


def test_a_trial_speculates_only_when_nearly_every_pass_was_faster_and_the_median_clears_the_margin():
    from explorer.speculative import TRIAL_MARGIN, ModeTrial

    clear = ModeTrial(plain=(1.0, 1.0, 1.0), speculative=(0.8, 0.85, 0.9))  # 1.25, 1.18, 1.11
    assert clear.pays() and clear.gain == pytest.approx(1.0 / 0.85)
    assert not ModeTrial((1.0, 1.0, 1.0), (0.8, 0.8, 1.01)).pays()  # one pass in three slower: not clear
    seven = (0.8,) * 6  # six passes 1.25x faster; the seventh decides
    assert ModeTrial((1.0,) * 7, seven + (1.01,)).pays()  # one slower pass in seven is noise
    assert not ModeTrial((1.0,) * 7, seven[:5] + (1.01, 1.01)).pays()  # two are not
    edge = ModeTrial((1.0, 1.0, 1.0), (0.99, 0.98, 0.99))  # faster every time, by less than the margin
    assert TRIAL_MARGIN > 1.02 and not edge.pays() and edge.pays(margin=1.01)
    assert not ModeTrial((), ()).pays()
    assert "trial 1.18x over plain (3 passes 1.11-1.25" in clear.describe()


def test_trial_modes_times_both_sides_in_alternating_order_after_a_warm_up():
    from explorer.speculative import trial_modes

    now, calls = [0.0], []

    def side(name, seconds):
        def run():
            calls.append(name)
            now[0] += seconds
        return run

    trial = trial_modes(side("plain", 2.0), side("spec", 1.0), passes=4, clock=lambda: now[0])
    assert trial.plain == (2.0,) * 4 and trial.speculative == (1.0,) * 4 and trial.ratios == [2.0] * 4
    assert calls[:2] == ["spec", "plain"] and calls[2:4] == ["plain", "spec"] and len(calls) == 10
    same = side("plain", 1.0)  # identical code on both sides: ratio 1, so no speculation
    assert not trial_modes(same, same, passes=3, clock=lambda: now[0]).pays()


def test_a_plan_whose_trial_did_not_pay_decodes_plainly_and_the_row_says_why(target, monkeypatch):
    from explorer import speculative as S
    from explorer.techniques import speculative as TS

    cheap = S.LengthPlan(0.1, (1.0, 1.05, 1.1, 1.15))  # the cost model alone would speculate
    assert cheap.best(S.PRIOR_ALPHA) > 0 and cheap.speculates()
    tried = []
    monkeypatch.setattr(TS, "plan_lengths", lambda *a, **k: cheap)
    monkeypatch.setattr(TS, "_PLANS", __import__("weakref").WeakKeyDictionary())
    prompts = [e.prompt for e in T.get("addition").examples(6, 5)]
    alone = generate(target.hf, target.tokenizer, prompts, max_new_tokens=8)
    technique = ex.Speculative(draft="zoo-xs", draft_len=3)
    for seconds, mode in (((1.0, 1.01, 0.99), "plain"), ((1.3, 1.25, 1.2), "speculative")):
        def trial(plain, spec, **_):
            (p,), (s,) = plain(), spec()  # the trial decodes this batch (the only one given) both ways
            tried.append((p.tokens, s.tokens))
            return S.ModeTrial((1.0, 1.0, 1.0), tuple(1.0 / r for r in seconds))
        monkeypatch.setattr(TS, "trial_modes", trial)
        TS._PLANS.clear()
        out = technique.generate(target, prompts, max_new_tokens=8, seed=0)
        assert out.tokens == alone.tokens and tried[-1] == (alone.tokens, alone.tokens)
        cols = technique.columns(target, [out])
        assert cols["spec_mode"] == mode and cols["spec_trial_gain"] == pytest.approx(sorted(seconds)[1])
        assert "trial" in cols["spec_plan"] and cols["spec_plan"].startswith(
            "plain at" if mode == "plain" else "draft_len")
        assert (cols["draft_calls"] == 0) == (mode == "plain")
        # The plan starts from the draft's acceptance on this batch at the fixed draft_len, not a prior.
        fixed = technique.speculate(target, prompts, max_new_tokens=8, seed=0, plan=None)
        assert out.plan.alpha == fixed.stats.acceptance_rate and 0 < fixed.stats.acceptance_rate < 1
        assert f"at acceptance {fixed.stats.acceptance_rate:.2f} (measured on the batch)" in cols["spec_plan"]
    technique.generate(target, prompts, max_new_tokens=8, seed=0)
    assert len(tried) == 2  # one trial per batch size and target, kept for the process


def test_a_plan_measures_its_trial_on_every_given_batch_of_its_size(target, monkeypatch):
    from explorer import speculative as S
    from explorer.techniques import speculative as TS

    monkeypatch.setattr(TS, "plan_lengths", lambda *a, **k: S.LengthPlan(0.1, (1.0, 1.05, 1.1, 1.15)))
    monkeypatch.setattr(TS, "_PLANS", __import__("weakref").WeakKeyDictionary())
    seen = []

    def trial(plain, spec, **_):
        seen.append([len(g.tokens) for g in plain()])
        return S.ModeTrial((1.0,), (1.0,))

    monkeypatch.setattr(TS, "trial_modes", trial)
    prompts = [e.prompt for e in T.get("addition").examples(11, 5)]
    batches = [prompts[i : i + 4] for i in range(0, 11, 4)]  # 4, 4 and a last batch of 3
    technique = ex.Speculative(draft="zoo-xs", draft_len=3)
    technique.measure_plan(target, batches, 8)
    assert seen == [[4, 4]]  # the two batches of the plan's size; the batch of 3 gets its own plan
    plan = technique.length_plan(target, batches[0], 8)
    assert not plan.speculates() and plan.trial.gain == 1.0
    spec = [technique.speculate(target, c, max_new_tokens=8, seed=0, plan=None).stats for c in batches[:2]]
    assert plan.alpha == S.SpecStats.total(spec).acceptance_rate


def test_a_batched_round_verifies_through_the_fused_layers_projections(target, tiny_model, monkeypatch):
    """Verifying batch x (g + 1) positions is the call whose cost decides whether speculating pays:
    it must run the fused layers' projections (oneDNN's kernel from 3 rows up), as plain decoding does."""
    from explorer import layerwise as L

    rows_seen = []
    call = L.Projection.__call__

    def counted(self, x):
        rows_seen.append(x.numel() // x.shape[-1])
        return call(self, x)

    monkeypatch.setattr(L.Projection, "__call__", counted)
    prompts = [e.prompt for e in T.get("addition").examples(6, 2)]
    enc = encode(target.tokenizer, prompts, 200)
    spec = speculative_generate(target, tiny_model, enc, draft_len=3, temperature=0.0, max_new_tokens=8)
    assert spec.decode_path == "fused"
    assert 6 * 4 in rows_seen  # a round of 6 rows verifying 3 proposals and the token before them
    assert 6 in rows_seen  # the draft's one-token calls, batched
