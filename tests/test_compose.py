import dataclasses
from typing import ClassVar

import pytest

import explorer as ex
from explorer.compose import Composed, compose, roles
from explorer.runs import accuracy_columns, config_hash
from explorer.techniques import AGGREGATES, CHANGES_WEIGHTS, DECODES, Technique, techniques


# Small techniques of each role, so the rules are checked apart from any real technique.
@dataclasses.dataclass(frozen=True)
class Tag(Technique):
    """A preparer: marks the model it prepares."""

    name: ClassVar[str] = "tag"
    roles: ClassVar = frozenset({CHANGES_WEIGHTS})
    label: str = "a"

    def prepare(self, model):
        return dataclasses.replace(model, tags={**model.tags, "tag": self.label})


@dataclasses.dataclass(frozen=True)
class Wrong(Technique):
    """A decoder that answers every prompt with 'x' (so its use shows as accuracy 0)."""

    name: ClassVar[str] = "wrong"
    roles: ClassVar = frozenset({DECODES})
    temperature: float = 0.0

    def generate(self, model, prompts, *, max_new_tokens, seed):
        g = super().generate(model, prompts, max_new_tokens=max_new_tokens, seed=seed)
        return dataclasses.replace(g, texts=["x" for _ in prompts])


@dataclasses.dataclass(frozen=True)
class AnyOf(Technique):
    """An aggregator: draws k answers per problem, through the configuration's decoder if given."""

    name: ClassVar[str] = "any_of"
    roles: ClassVar = frozenset({AGGREGATES})
    k: int = 2
    temperature: float = 1.0

    def evaluate(self, model, task, examples, *, seed, repeats, batch_size, decoder=None):
        gens = [(decoder or self).generate(model, [e.prompt for e in examples], max_new_tokens=task.max_new_tokens, seed=seed + i)
                for i in range(self.k)]
        row = accuracy_columns(examples, [any(task.verify(e, g.texts[j]) for g in gens) for j, e in enumerate(examples)])
        return row | {"tags_seen": str(model.tags.get("tag"))}


@pytest.fixture(scope="module")
def tiny():
    return ex.load("zoo-xs")


def test_roles_are_declared_and_checked_against_the_hooks_a_technique_overrides():
    assert roles(ex.Baseline()) == set() and roles(Tag()) == {"changes_weights"}
    assert roles(Wrong()) == {"decodes"} and roles(AnyOf()) == {"aggregates_samples"}
    assert roles(ex.Speculative()) == {"decodes", "evaluates"} and roles(ex.Sampling()) == {"aggregates_samples"}

    @dataclasses.dataclass(frozen=True)
    class Silent(Technique):  # decodes, but says nothing about it
        name: ClassVar[str] = "silent"

        def generate(self, model, prompts, *, max_new_tokens, seed):
            return super().generate(model, prompts, max_new_tokens=max_new_tokens, seed=seed)

    with pytest.raises(ValueError, match="overrides generate, so declare the role 'decodes'"):
        compose(Silent(), Tag())


def test_order_is_canonical_so_one_configuration_has_one_key():
    a, b = compose(AnyOf(), Tag()), compose(Tag(), AnyOf())
    assert a == b and a.name == "tag+any_of"
    key = ("zoo-xs", "rev")
    assert config_hash(key, "sort", a, 8, 0) == config_hash(key, "sort", b, 8, 0)
    assert config_hash(key, "sort", a, 8, 0) != config_hash(key, "sort", compose(Tag("b"), AnyOf()), 8, 0)


def test_knobs_are_merged_and_a_shared_knob_is_prefixed_by_its_technique():
    knobs = compose(Tag("q"), Wrong(temperature=0.0), AnyOf(k=3)).knobs()
    assert knobs == {"label": "q", "wrong_temperature": 0.0, "k": 3, "any_of_temperature": 1.0}


def test_baselines_drop_out_and_one_technique_is_itself():
    assert compose(ex.Baseline(), Tag()) == Tag()
    assert compose(ex.Baseline()) == ex.Baseline()
    nested = compose(compose(Tag(), Wrong()), AnyOf())
    assert isinstance(nested, Composed) and [p.name for p in nested.parts] == ["tag", "wrong", "any_of"]


@pytest.mark.parametrize("parts, why", [
    ((Tag("a"), Tag("b")), "tag appears twice"),
    ((Wrong(), dataclasses.replace(Wrong(), temperature=1.0), Tag()), "wrong appears twice"),
    ((AnyOf(), ex.Sampling(n=2)), "any_of and sampling each runs its own evaluation"),
    ((ex.Speculative(), ex.EarlyExit()), "speculative and early_exit each decodes tokens"),
    ((ex.Sampling(n=2), Wrong()), "sampling draws at temperature 1.0 but wrong decodes at temperature 0.0"),
    ((ex.Sampling(n=2), ex.EarlyExit(threshold=0.9)), r"early_exit decodes at temperature 0.*EarlyExit\(\.\.\., temperature=1.0\)"),
    ((ex.Sampling(n=2, top_p=0.9), ex.EarlyExit(threshold=0.9, temperature=1.0)), "top_p=0.9 truncates"),
])
def test_combinations_without_meaning_are_refused_with_the_reason(parts, why):
    with pytest.raises(ValueError, match=why):
        compose(*parts)


def test_two_decoders_are_refused():
    @dataclasses.dataclass(frozen=True)
    class Other(Wrong):
        name: ClassVar[str] = "other"

    with pytest.raises(ValueError, match="wrong and other each decodes tokens"):
        compose(Wrong(), Other())


def test_prepare_chains_and_the_decoder_decodes_for_the_evaluator(tiny):
    alone = ex.run(tiny, "sort", [Tag("z"), AnyOf(k=2)], n=16, repeats=1)
    assert alone["technique"] == "tag+any_of" and alone["tags_seen"] == "z" and alone["knob_label"] == "z"
    assert alone["accuracy"] > 0
    routed = ex.run(tiny, "sort", [Tag("z"), Wrong(), AnyOf(k=2)], n=16, repeats=1)
    assert routed["accuracy"] == 0 and routed["tags_seen"] == "z"


def test_a_decoder_alone_composes_with_a_preparer_through_the_one_evaluation_loop(tiny):
    row = ex.run(tiny, "sort", [Wrong(), Tag()], n=8, repeats=1)
    assert row["technique"] == "tag+wrong" and row["accuracy"] == 0 and row["tokens_generated"] > 0


@pytest.mark.skipif("quantize" not in techniques, reason="Quantize is not in this install")
def test_a_quantized_model_sampled_is_sampling_on_the_quantized_model(tiny):
    quantize, sampling = techniques.get("quantize")(bits=4), ex.Sampling(n=2)
    row = ex.run(tiny, "sort", [sampling, quantize], n=8, repeats=1)
    by_hand = ex.run(quantize.prepare(tiny), "sort", sampling, n=8, repeats=1)
    assert row["technique"] == "quantize+sampling" and row["knob_bits"] == 4 and row["knob_n"] == 2
    assert row["accuracy"] == by_hand["accuracy"] and row["samples"] == by_hand["samples"]
    assert row["weight_bytes"] == by_hand["weight_bytes"] < tiny.facts.weight_bytes


@pytest.mark.skipif(not {"quantize", "speculative"} <= set(techniques), reason="Quantize or Speculative not here")
def test_a_quantized_target_with_a_draft_counts_both_models_bytes():
    quantize, speculative = techniques.get("quantize")(bits=8), techniques.get("speculative")(draft="zoo-xs", draft_len=2)
    target = ex.load("zoo-s")
    row = ex.run(target, "addition", [speculative, quantize], n=8, repeats=1, batch_size=1)  # a fixed draft length
    assert row["technique"] == "quantize+speculative" and row["knob_bits"] == 8 and row["knob_draft_len"] == 2
    assert 0 <= row["acceptance_rate"] <= 1 and row["outputs_match_target_alone"]
    assert row["weight_bytes"] == quantize.prepare(target).facts.weight_bytes + ex.load("zoo-xs").facts.weight_bytes


def test_majority_vote_over_early_exit_samples_draws_through_the_exiting_model(zoo_models):
    model = zoo_models["zoo-m"]
    parts = [ex.EarlyExit(threshold=0.9, temperature=1.0), ex.Sampling(n=4)]
    row = ex.run(model, "multiplication", parts, n=16, repeats=1)
    again = ex.run(model, "multiplication", list(reversed(parts)), n=16, repeats=1)
    full = ex.run(model, "multiplication", ex.Sampling(n=4), n=16, repeats=1)
    assert row["technique"] == "early_exit+sampling" and row["knob_threshold"] == 0.9 and row["knob_n"] == 4
    assert row["samples"] == again["samples"] and row["config_hash"] == again["config_hash"]  # seeded, canonical
    assert row["samples_drawn"] == 64 and len(row["exit_layers"]) == 64  # every sample exited somewhere
    assert 1 <= row["exit_layer_mean"] < model.hf.config.num_hidden_layers
    # Layers skipped are FLOPs saved, and the per-k costs read from them.
    assert row["flops_per_token_analytic"] < full["flops_per_token_analytic"]
    assert row["flops_per_problem_at_4_analytic"] < full["flops_per_problem_at_4_analytic"]
    assert 0 <= row["majority_at_4"] <= row["pass_at_4"] <= 1
