"""A row's key covers everything that changes its result; samples do not depend on the batch.

Real zoo models throughout. The draft-weights tests copy zoo-xs to a folder and change
its weights on disk, as retraining would.
"""
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import explorer as ex
from explorer import tasks as T
from explorer.generate import example_seed, generate, samplers
from explorer.runs import config_hash
from explorer.speculative import speculative_generate
from explorer.store import Store
from explorer.sweep import plan, sweep
from explorer.techniques.sampling import Sampling
from explorer.techniques.speculative import Speculative, load_draft

MEASURE = {"wall_s", "wall_s_per_token", "created_at", "device", "batch_size", "repeats", "kv_fill_s",
           "kv_fill_share", "wall_s_target_alone", "speedup_measured", "cost_ratio_measured",
           "verify_cost_ratio_measured", "speedup_predicted", "speedup_predicted_from_counts",
           # the batched loop's work: a batch drafts as long as its longest row does
           "draft_calls", "draft_positions", "target_positions", "flops_per_token_analytic",
           # bytes moved: the decode batch shares each weight read
           "decode_batch", "bytes_moved_per_problem_analytic", "bytes_moved_per_token_analytic"}


def results(row):
    return {k: v for k, v in row.items() if k not in MEASURE}


@pytest.fixture
def draft_folder(tmp_path):
    folder = tmp_path / "draft"
    shutil.copytree(ex.zoo.path("zoo-xs"), folder)
    return folder


def perturb(folder, scale=0.3, seed=0):
    """Change the folder's weights in place, as retraining would."""
    file = folder / "model.safetensors"
    weights = load_file(file)
    g = torch.Generator().manual_seed(seed)
    weights = {k: v + scale * v.std() * torch.randn(v.shape, generator=g) if v.dim() == 2 else v
               for k, v in weights.items()}
    save_file(weights, file, metadata={"format": "pt"})


def test_the_key_changes_when_the_drafts_weights_change(zoo_models, draft_folder):
    tech = Speculative(draft=str(draft_folder), draft_len=3)
    before = config_hash(zoo_models["zoo-m"], "addition", tech, 8, 0)
    assert config_hash(zoo_models["zoo-m"], "addition", tech, 8, 0) == before  # stable
    perturb(draft_folder)
    assert config_hash(zoo_models["zoo-m"], "addition", tech, 8, 0) != before
    # the sweep keys it exactly as the run does
    job, = plan([str(draft_folder)], ["addition"], [ex.Baseline()], n=4, seed=0)
    assert job.config_hash == ex.run(str(draft_folder), "addition", n=4, seed=0, repeats=1)["config_hash"]


def test_the_in_process_draft_is_reloaded_when_its_weights_change(zoo_models, draft_folder):
    name = str(draft_folder)
    first = load_draft(name)
    assert load_draft(name) is first  # cached while the weights stay
    perturb(draft_folder)
    second = load_draft(name)
    assert second is not first and second.facts.revision != first.facts.revision


def test_a_resumed_sweep_reruns_a_speculative_row_after_the_draft_changed(tmp_path, draft_folder):
    store = Store(tmp_path / "store")
    kw = dict(store=store, n=12, seed=0, progress=False)
    tech = Speculative(draft=str(draft_folder), draft_len=3, temperature=1.0)
    first = sweep(["zoo-s"], ["addition"], [tech], **kw)
    perturb(draft_folder, scale=1.0)
    second = sweep(["zoo-s"], ["addition"], [tech], **kw)
    assert first["config_hash"].to_list() != second["config_hash"].to_list()
    assert len(store) == 2  # the stale row stays in the store but is not this sweep's row
    # the new row was measured on the new draft: same result as a fresh process would compute
    fresh = ex.run("zoo-s", "addition", tech, n=12, seed=0, repeats=1)
    assert second.row(0, named=True)["acceptance_rate"] == fresh["acceptance_rate"]
    assert second.row(0, named=True)["config_hash"] == fresh["config_hash"]


def test_sampled_generation_does_not_depend_on_the_batch(mid_model):
    prompts = [e.prompt for e in T.get("addition").examples(12, seed=1)]
    seeds = [example_seed(7, i) for i in range(len(prompts))]
    whole = generate(mid_model.hf, mid_model.tokenizer, prompts, max_new_tokens=7, temperature=3.0,
                     generator=samplers(seeds))
    halves = [generate(mid_model.hf, mid_model.tokenizer, prompts[i:i + 5], max_new_tokens=7, temperature=3.0,
                       generator=samplers(seeds[i:i + 5])).tokens for i in range(0, 12, 5)]
    assert whole.tokens == [t for h in halves for t in h]
    other = generate(mid_model.hf, mid_model.tokenizer, prompts, max_new_tokens=7, temperature=3.0,
                     generator=samplers(8, len(prompts)))
    assert other.tokens != whole.tokens  # the seed matters


def test_speculative_sampling_does_not_depend_on_the_batch(zoo_models):
    target, draft = zoo_models["zoo-m"], zoo_models["zoo-xs"]
    prompts = [e.prompt for t in ("addition", "sort") for e in T.get(t).examples(5, seed=2)]
    seeds = [example_seed(3, i) for i in range(len(prompts))]

    def spec(ps, ss):
        enc = target.tokenizer(ps, return_tensors="pt", padding=True)
        return speculative_generate(target, draft, enc, draft_len=4, temperature=1.0, max_new_tokens=11,
                                    generator=samplers(ss)).tokens

    whole = spec(prompts, seeds)
    assert whole == [t for i in range(0, len(prompts), 3) for t in spec(prompts[i:i + 3], seeds[i:i + 3])]


@pytest.mark.parametrize("technique", [
    ex.EarlyExit("max_prob", 0.8, temperature=1.0),
    Sampling(n=4, temperature=1.0),
    ex.compose(ex.EarlyExit("max_prob", 0.9, temperature=1.0), Sampling(n=2)),
], ids=["early_exit", "sampling", "early_exit+sampling"])
def test_a_sampled_row_is_the_same_at_any_batch_size(zoo_models, technique):
    model = zoo_models["zoo-s"]
    small = ex.run(model, "addition", technique, n=20, seed=4, repeats=1, batch_size=3)
    big = ex.run(model, "addition", technique, n=20, seed=4, repeats=1, batch_size=64)
    assert small["config_hash"] == big["config_hash"]
    assert (small["batch_size"], big["batch_size"]) == (3, 64)
    assert results(small) == results(big)


def test_a_speculative_row_is_keyed_by_its_batch_size(zoo_models):
    """Speculative decoding picks its draft lengths (or plain decoding) from costs measured at the
    batch size, so acceptance and calls depend on it: one row per batch size, never one reused."""
    tech = Speculative(draft="zoo-xs", draft_len=4)
    model = zoo_models["zoo-m"]
    keys = {config_hash(model, "addition", tech, 8, 0, b) for b in (1, 8, 64)}
    assert len(keys) == 3
    assert config_hash(model, "addition", ex.Baseline(), 8, 0, 1) == config_hash(model, "addition", ex.Baseline(), 8, 0, 64)
    row = ex.run(model, "addition", tech, n=8, seed=0, repeats=1, batch_size=8)
    assert row["config_hash"] == config_hash(model, T.get("addition").for_model(model), tech, 8, 0, 8)
    job, = plan(["zoo-m"], ["addition"], [tech], n=8, seed=0, batch_size=8)
    assert job.config_hash == row["config_hash"]


def test_a_row_records_how_it_was_measured_and_by_which_engine(tiny_model):
    row = ex.run(tiny_model, "addition", n=4, seed=0, repeats=2, batch_size=3)
    assert (row["repeats"], row["batch_size"]) == (2, 3)
    assert row["engine_version"] == ex.runs.ENGINE_VERSION and row["task_format"]
    assert row["model_revision"] == tiny_model.facts.revision


def test_the_key_covers_the_task_format(tiny_model, monkeypatch):
    base = config_hash(tiny_model, T.get("addition"), ex.Baseline(), 8, 0)
    reformatted = T.Task("addition", "generate", "same task, another format", (1,), 7)
    object.__setattr__(reformatted, "task_format", "plain")
    assert config_hash(tiny_model, reformatted, ex.Baseline(), 8, 0) != base


def test_reusing_a_row_measured_otherwise_is_reported_and_remeasure_reruns_it(tmp_path):
    store = Store(tmp_path)
    kw = dict(store=store, n=6, seed=0, progress=False)
    first = sweep(["zoo-xs"], ["addition"], [ex.Baseline()], batch_size=2, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = sweep(["zoo-xs"], ["addition"], [ex.Baseline()], batch_size=6, **kw)
    said = [str(w.message) for w in caught if "measured with" in str(w.message)]
    assert said and "batch_size=2, repeats=1" in said[0] and "batch_size=6" in said[0]
    assert again["created_at"].to_list() == first["created_at"].to_list()  # reused, and said so
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same measurement: nothing to report
        sweep(["zoo-xs"], ["addition"], [ex.Baseline()], batch_size=2, **kw)
    redone = sweep(["zoo-xs"], ["addition"], [ex.Baseline()], batch_size=6, remeasure=True, **kw)
    assert redone["batch_size"].to_list() == [6] and len(store) == 1
