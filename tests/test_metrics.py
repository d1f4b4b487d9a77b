import math

from explorer import metrics as M


def test_direction_of_quality_and_cost_columns():
    assert M.higher_is_better("accuracy")
    assert not M.higher_is_better("bits_per_char")
    assert not M.higher_is_better("heldout_bits_per_char")
    assert not M.higher_is_better("weight_bytes")
    # a column the table lacks is guessed from its name
    assert not M.higher_is_better("perplexity")
    assert not M.higher_is_better("bytes_moved_per_token_analytic")
    assert M.metric("bytes_moved_per_token_analytic").analytic


def test_axis_titles_name_quantity_and_unit():
    assert M.axis_title("weight_bytes") == "weights (MB)"
    assert M.axis_title("flops_per_problem_analytic") == "FLOPs per problem (analytic)"
    assert M.axis_title("wall_s_per_token") == "time per token (ms)"


def test_values_are_rounded_for_people():
    assert M.fmt("accuracy", 0.8359375) == "0.836"
    assert M.fmt("weight_bytes", 14_320_000) == "14.3 MB"
    assert M.fmt("wall_s_per_token", 0.0151) == "15.1 ms"
    assert M.fmt("flops_per_token_analytic", 2_540_000) == "2.54M"
    assert M.fmt("weight_bytes", math.inf) == "no limit"
    assert M.fmt("accuracy", None) == "n/a"
    assert M.fmt("accuracy", 1.0) == "1"
    assert M.fmt("tokens_generated", 1234) == "1,234"


def test_interval_bounds_share_their_metric():
    assert M.metric("accuracy_lo").higher_is_better
    assert M.metric("bits_per_char_hi").label.startswith("bits per character")


def test_every_lab_axis_is_a_cost():
    assert all(M.metric(c).kind == "cost" for c in M.COST_AXES)
