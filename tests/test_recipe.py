import pytest

import explorer as ex
from explorer.zoo import recipe, train_family


def test_batches_depend_only_on_seed_and_step():
    spec = ex.zoo.Spec("t", layers=1, width=32, heads=2, steps=10)
    text = "abcdefghij" * 50
    a, b = recipe.batch(5, spec, text), recipe.batch(5, spec, text)
    assert a[0].equal(b[0]) and a[1].equal(b[1])
    assert not recipe.batch(6, spec, text)[0].equal(a[0])
    text_step = recipe.TEXT_EVERY - 1
    ids, labels = recipe.batch(text_step, spec, text)
    assert ids.shape[1] == recipe.TEXT_LEN + 1 and (labels != -100).sum() == spec.batch * recipe.TEXT_LEN


def test_layer_losses_cover_every_layer():
    spec = ex.zoo.Spec("t", layers=3, width=32, heads=2, steps=10)
    m = recipe.build_model(spec)
    ids, labels = recipe.batch(0, spec, "x" * 200)
    assert len(recipe.layer_losses(m, ids, labels)) == 3


def test_schedule_warms_up_then_decays_to_a_tenth():
    spec = ex.zoo.Spec("t", layers=1, width=32, heads=2, steps=1000, warmup=100, lr=1e-3)
    assert recipe.lr_at(0, spec) == pytest.approx(1e-5)
    assert recipe.lr_at(99, spec) == pytest.approx(1e-3)
    assert recipe.lr_at(999, spec) == pytest.approx(1e-4, rel=1e-2)


def test_the_plan_puts_the_largest_model_alone():
    groups = train_family.plan(ex.zoo.names(), jobs=2)
    assert groups[0] == ["zoo-l"] and sorted(groups[1]) == ["zoo-m", "zoo-s", "zoo-xs"]


@pytest.mark.slow
def test_training_smoke_loss_falls_and_resumes(tmp_path):
    spec = ex.zoo.Spec("smoke", layers=2, width=48, heads=2, steps=80, warmup=10, lr=3e-3)
    facts = recipe.train(spec, tmp_path / "out", work_dir=tmp_path / "work", steps=40, log=lambda *_: None)
    first = facts["loss_history"][0][1]
    facts = recipe.train(spec, tmp_path / "out", work_dir=tmp_path / "work", steps=80, log=lambda *_: None)
    assert facts["steps"] == 80 and facts["loss_history"][0][1] == first  # history kept across the resume
    assert facts["loss_history"][-1][1] < 0.6 * first
    m = ex.load(str(tmp_path / "out"))
    assert m.facts.layers == 2


@pytest.mark.slow
def test_zoo_train_cli_writes_a_loadable_model_with_its_card(tmp_path):
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "explorer.cli", "zoo", "train", "zoo-xs", "--steps", "30",
                    "--out", str(tmp_path), "--jobs", "1"], check=True, capture_output=True)
    folder = tmp_path / "zoo-xs"
    card = (folder / "README.md").read_text()
    assert "| training steps x batch | 30 x 32 |" in card and "Mixed (mean over tasks)" in card
    for f in ("config.json", "model.safetensors", "tokenizer.json", "eval.json"):
        assert (folder / f).exists(), f
    assert ex.load(str(folder)).facts.layers == 1


def test_a_checkpoint_is_safetensors_and_json_and_round_trips(tmp_path):
    import torch

    spec = ex.zoo.Spec("t", layers=1, width=32, heads=2, steps=10)
    model = recipe.build_model(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids, labels = recipe.batch(0, spec, "x" * 200)
    recipe.layer_losses(model, ids, labels)[-1].backward()
    opt.step()
    recipe.save_checkpoint(tmp_path, model, opt, {"step": 1, "seconds": 0.5, "tokens": 7, "history": [(0, 1.0)]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "checkpoint.safetensors"]
    fresh = recipe.build_model(spec)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    meta = recipe.load_checkpoint(tmp_path, fresh, fresh_opt, log=lambda *_: None)
    assert meta["step"] == 1 and meta["tokens"] == 7
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert a.equal(b)
    sa, sb = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(sa[i]["exp_avg"].equal(sb[i]["exp_avg"]) for i in sa)


def test_a_planted_pickle_checkpoint_never_runs(tmp_path):
    import pickle

    import torch

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "checkpoint.pt").write_bytes(pickle.dumps(Payload()))
    said = []
    spec = ex.zoo.Spec("t", layers=1, width=32, heads=2, steps=10)
    model = recipe.build_model(spec)
    assert recipe.load_checkpoint(tmp_path, model, torch.optim.AdamW(model.parameters()), log=said.append) is None
    assert not marker.exists() and "never loaded" in said[0]


def test_no_pickle_loading_anywhere_in_the_project():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for file in [*root.glob("explorer/**/*.py"), *root.glob("widgets/**/*.py"), *root.glob("benchmarks/**/*.py"),
                 *root.glob("scripts/**/*.py")]:
        text = file.read_text()
        for bad in ("weights_only=False", "pickle.load", "import pickle", "torch.load(", "joblib.load"):
            if bad in text and not ("torch.load(" == bad and "weights_only=True" in text):
                offenders.append(f"{file.relative_to(root)}: {bad}")
    assert not offenders, offenders
