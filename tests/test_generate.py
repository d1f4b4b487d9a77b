import pytest
import torch

from explorer import tasks as T
from explorer.generate import generate


def test_batched_left_padded_decoding_equals_one_at_a_time(mid_model):
    exs = T.get("sort").examples(6, seed=1) + T.get("addition").examples(6, seed=1)
    prompts = [e.prompt for e in exs]  # different lengths: exercises left padding
    batched = generate(mid_model.hf, mid_model.tokenizer, prompts, max_new_tokens=12)
    single = [generate(mid_model.hf, mid_model.tokenizer, [p], max_new_tokens=12) for p in prompts]
    assert batched.tokens == [s.tokens[0] for s in single]
    for b, s in zip(batched.logprobs, single):
        assert b == pytest.approx(s.logprobs[0], abs=1e-4)


def test_greedy_equals_transformers_generate(mid_model):
    tok = mid_model.tokenizer
    for e in T.get("multiplication").examples(5, seed=2):
        ours = generate(mid_model.hf, tok, [e.prompt], max_new_tokens=8)
        ids = tok(e.prompt, return_tensors="pt")
        ref = mid_model.hf.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        ref_tokens = ref[0, ids["input_ids"].shape[1]:].tolist()
        eos = tok.eos_token_id
        ref_tokens = ref_tokens[: ref_tokens.index(eos)] if eos in ref_tokens else ref_tokens
        assert ours.tokens[0] == ref_tokens


def test_token_counts_include_eos_and_stop_there(mid_model):
    e = T.get("addition").examples(1, seed=5)[0]
    g = generate(mid_model.hf, mid_model.tokenizer, [e.prompt], max_new_tokens=20)
    # 6 answer digits + end-of-sequence, if the model answers in format.
    assert g.tokens_generated == len(g.tokens[0]) + 1


def test_sampling_is_seeded(mid_model):
    p = [e.prompt for e in T.get("addition").examples(8, seed=0)]
    a = generate(mid_model.hf, mid_model.tokenizer, p, max_new_tokens=7, temperature=1.0,
                 generator=torch.Generator().manual_seed(3))
    b = generate(mid_model.hf, mid_model.tokenizer, p, max_new_tokens=7, temperature=1.0,
                 generator=torch.Generator().manual_seed(3))
    assert a.tokens == b.tokens


def test_a_prompt_longer_than_the_context_is_refused(tiny_model):
    with pytest.raises(ValueError, match="longer than the model's context of"):
        generate(tiny_model.hf, tiny_model.tokenizer, ["9" * 300], max_new_tokens=4)


def test_negative_temperature_is_refused(tiny_model):
    with pytest.raises(ValueError, match="temperature=-1"):
        generate(tiny_model.hf, tiny_model.tokenizer, ["1"], max_new_tokens=2, temperature=-1)
