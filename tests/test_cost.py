"""Analytic memory traffic: bytes moved per token and per problem, on every row."""
import pytest

import explorer as ex
from explorer.cost import bytes_moved_per_token, flops_per_token, kv_bytes_per_position, matmul_params


@pytest.fixture(scope="module")
def small():
    return ex.load("zoo-s")


def test_bytes_per_token_is_weights_over_batch_plus_the_kv_cache_read(small):
    c = small.hf.config  # 2 layers, width 96, 3 heads of 32, float32, untied head over a 100-token vocabulary
    weights = (2 * (96 * 96 * 4 + 3 * 96 * 256) + 96 * 100) * 4
    assert matmul_params(c) * 4 == weights
    assert kv_bytes_per_position(c) == 2 * 2 * 3 * 32 * 4
    assert bytes_moved_per_token(c, 10) == weights + 10 * 1536
    assert bytes_moved_per_token(c, 10, batch=8) == weights / 8 + 10 * 1536


def test_a_quantized_variant_moves_fewer_weight_bytes(small):
    c, facts = small.hf.config, small.facts
    full = bytes_moved_per_token(c, 0, weight_bytes=facts.weight_bytes, params=facts.params)
    four_bit = bytes_moved_per_token(c, 0, weight_bytes=facts.weight_bytes / 8, params=facts.params)
    assert four_bit == pytest.approx(full / 8)


def test_the_kv_cache_weighs_more_on_a_smaller_model_than_its_flops_say():
    # Kinetics' argument: KV per position grows as layers x width, FLOPs as layers x width^2.
    xs, big = (ex.load(n).hf.config for n in ("zoo-xs", "zoo-l"))
    share = {n: kv_bytes_per_position(c) / flops_per_token(c, 0) for n, c in (("xs", xs), ("l", big))}
    assert share["xs"] > 2 * share["l"]


@pytest.mark.parametrize("bad", [{"batch": 0}, {"batch": True}, {"context": -1}, {"context": "16"}])
def test_bad_batch_or_context_is_named(small, bad):
    kw = {"context": 16, **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        bytes_moved_per_token(small.hf.config, kw.pop("context"), **kw)


def test_every_row_carries_bytes_moved_at_its_own_batch(small):
    greedy = ex.run(small, "addition", n=20, repeats=1)
    sampled = ex.run(small, "addition", ex.Sampling(n=4), n=20, repeats=1)
    quant = ex.run(small, "addition", ex.Quantize(bits=4), n=20, repeats=1)
    text = ex.run(small, "shakespeare", n=500, repeats=1)
    assert greedy["decode_batch"] == 20 and sampled["decode_batch"] == 80
    for r in (greedy, sampled, quant):
        assert r["bytes_moved_per_problem_analytic"] == pytest.approx(
            r["bytes_moved_per_token_analytic"] * r["tokens_generated"] / r["n_examples"])
    assert quant["bytes_moved_per_token_analytic"] < greedy["bytes_moved_per_token_analytic"]
    # Four samples per problem share each weight read: fewer bytes per token, more per problem.
    assert sampled["bytes_moved_per_token_analytic"] < greedy["bytes_moved_per_token_analytic"]
    assert sampled["bytes_moved_per_problem_analytic"] > greedy["bytes_moved_per_problem_analytic"]
    assert text["bytes_moved_per_token_analytic"] > 0 and "bytes_moved_per_problem_analytic" not in text
