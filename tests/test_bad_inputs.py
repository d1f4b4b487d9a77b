"""Bad inputs, across the API and the CLI: each gets a clear message, and nothing reaches the store.

Every case asserts that the message names the bad value (or the bad name) and says what is
valid; a CLI case also exits 2 with `explorer: error: ...` and no traceback. After every case
the results store (EXPLORER_STORE, holding one real row) and the working folder are exactly as
before: no row written, no folder created. CLI cases run `explorer.cli.main` in this process
(fast); a few run as real subprocesses, as a user would.
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import explorer as ex
from explorer.cli import main as cli
from explorer.generate import generate
from explorer.speculative import speculative_generate
from explorer.store import Store
from explorer.sweep import from_spec, grid, load_spec, sweep
from explorer.techniques.sampling import Sampling, read_at_k

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("store")
    Store(folder).add(ex.run(tiny_model, "addition", n=4, seed=0, repeats=1))
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Sweep files with one mistake each, and other things a user may point at."""
    d = tmp_path_factory.mktemp("files")
    content = {
        "syntax.yaml": "models: [zoo-xs\ntasks: addition\n",
        "syntax.toml": "models = [\n",
        "list.yaml": "- zoo-xs\n- zoo-s\n",
        "unknown_key.yaml": "models: [zoo-xs]\ntasks: [addition]\nmodel: zoo-s\n",
        "unknown_model.yaml": "models: [nosuch-org/nosuch-model]\ntasks: [addition]\n",
        "missing_folder.yaml": "models: [./no/such/folder]\ntasks: [addition]\n",
        "unknown_task.yaml": "models: [zoo-xs]\ntasks: [additon]\n",
        "negative_n.yaml": "models: [zoo-xs]\ntasks: [addition]\nn: -5\n",
        "huge_n.yaml": "models: [zoo-xs]\ntasks: [addition]\nn: 1000000000\n",
        "float_seed.yaml": "models: [zoo-xs]\ntasks: [addition]\nseed: 1.5\n",
        "bool_seed.yaml": "models: [zoo-xs]\ntasks: [addition]\nseed: true\n",
        "negative_seed.toml": "models = ['zoo-xs']\ntasks = ['addition']\nseed = -2\n",
        "zero_repeats.yaml": "models: [zoo-xs]\ntasks: [addition]\nrepeats: 0\n",
        "batch_text.yaml": "models: [zoo-xs]\ntasks: [addition]\nbatch_size: lots\n",
        "techniques_table.yaml": "models: [zoo-xs]\ntasks: [addition]\ntechniques: {name: quantize}\n",
        "unknown_technique.yaml": "models: [zoo-xs]\ntasks: [addition]\ntechniques: [{name: quantise}]\n",
        "bad_knob.yaml": "models: [zoo-xs]\ntasks: [addition]\ntechniques: [{name: sampling, n: [0]}]\n",
        "unknown_knob.yaml": "models: [zoo-xs]\ntasks: [addition]\ntechniques: [{name: quantize, bitz: [4]}]\n",
        "inf_temperature.yaml": "models: [zoo-xs]\ntasks: [addition]\n"
                                "techniques: [{name: sampling, temperature: .inf}]\n",
        "models_number.yaml": "models: 5\ntasks: [addition]\n",
        "all_refused.yaml": "models: [zoo-xs]\ntasks: [addition]\nn: 4\n"
                            "techniques: [{name: speculative, draft: zoo-m}]\n",
        "ok.yaml": "models: [zoo-xs]\ntasks: [addition]\nn: 2\n",
        "sweep.json": "{}",
        "a_file": "not a folder",
    }
    for name, text in content.items():
        (d / name).write_text(text)
    (d / "folder.csv").mkdir()
    return d


def snapshot(*folders: Path) -> dict:
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            out[str(p)] = (p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else "dir"
    return out


@pytest.fixture
def guarded(store_dir, tmp_path, monkeypatch):
    """EXPLORER_STORE is the one-row store; cwd is an empty folder; both must be unchanged after."""
    monkeypatch.setenv("EXPLORER_STORE", str(store_dir))
    monkeypatch.chdir(tmp_path)
    before = snapshot(store_dir, tmp_path)
    yield store_dir
    assert snapshot(store_dir, tmp_path) == before, "a bad input wrote to the store or the working folder"


def stored_rows(store_dir) -> int:
    return len(Store(store_dir, create=False))


# -- the API ---------------------------------------------------------------------------------

TINY = "tiny"  # placeholder: the loaded zoo-xs model

API = [
    # id, call (model -> result), fragments the message must hold (the value, and what is valid)
    ("n=0", lambda m: ex.run(m, "addition", n=0), ["n=0", "1 to 100,000"]),
    ("n=-1", lambda m: ex.run(m, "addition", n=-1), ["n=-1", "1 to 100,000"]),
    ("n=1.5", lambda m: ex.run(m, "addition", n=1.5), ["n=1.5", "integer"]),
    ("n=str", lambda m: ex.run(m, "addition", n="10"), ["n='10'", "integer"]),
    ("n=True", lambda m: ex.run(m, "addition", n=True), ["n=True", "integer"]),
    ("n=1e9", lambda m: ex.run(m, "addition", n=10**9), ["n=1000000000", "100,000"]),
    ("n>passage", lambda m: ex.run(m, "shakespeare", n=7000), ["n=7000", "n <= 6000"]),
    ("seed=1.5", lambda m: ex.run(m, "addition", n=4, seed=1.5), ["seed=1.5", "non-negative integer"]),
    ("seed=-1", lambda m: ex.run(m, "addition", n=4, seed=-1), ["seed=-1", "non-negative integer"]),
    ("seed=True", lambda m: ex.run(m, "addition", n=4, seed=True), ["seed=True", "non-negative integer"]),
    ("seed=str", lambda m: ex.run(m, "addition", n=4, seed="0"), ["seed='0'", "non-negative integer"]),
    ("seed=nan", lambda m: ex.run(m, "addition", n=4, seed=math.nan), ["seed=nan", "non-negative integer"]),
    ("repeats=0", lambda m: ex.run(m, "addition", n=4, repeats=0), ["repeats=0", "positive integer"]),
    ("repeats=1.0", lambda m: ex.run(m, "addition", n=4, repeats=1.0), ["repeats=1.0", "positive integer"]),
    ("batch_size=0", lambda m: ex.run(m, "addition", n=4, batch_size=0), ["batch_size=0", "positive integer"]),
    ("batch_size=2.5", lambda m: ex.run(m, "addition", n=4, batch_size=2.5), ["batch_size=2.5", "positive"]),
    ("repeats=1000", lambda m: ex.run(m, "addition", n=4, repeats=1000), ["repeats=1000", "at most 100"]),
    ("batch_size=1e6", lambda m: ex.run(m, "addition", n=4, batch_size=10**6), ["batch_size=1000000", "at most 4,096"]),
    ("sweep no cluster there", lambda m: sweep("zoo-xs", "addition", n=2, executor="ray", address="127.0.0.1:1",
                                               progress=False), ["address='127.0.0.1:1'", "ray start --head"]),
    ("unknown task", lambda m: ex.run(m, "additon", n=4), ["additon", "addition"]),
    ("task=5", lambda m: ex.run(m, 5, n=4), ["task=5", "addition"]),
    ("technique str", lambda m: ex.run(m, "addition", "quantize", n=4), ["technique='quantize'", "Baseline()"]),
    ("model=5", lambda m: ex.run(5, "addition", n=4), ["5", "zoo name"]),
    ("missing folder", lambda m: ex.run("./no/such/model", "addition", n=4), ["./no/such/model", "zoo name"]),
    ("offline hub id", lambda m: ex.load("nosuch-org/nosuch-model"), ["nosuch-org/nosuch-model", "zoo model"]),
    ("dtype=int8", lambda m: ex.load("zoo-xs", dtype="int8"), ["dtype='int8'", "'float32'"]),
    ("folder without config", lambda m: ex.load(str(ROOT / "tests")), ["no config.json", "model.safetensors"]),
    ("decoding on likelihood", lambda m: ex.run(m, "shakespeare", ex.EarlyExit("max_prob", 0.9), n=100),
     ["early_exit", "Use a generative task"]),
    ("draft not smaller", lambda m: ex.run(m, "addition", ex.Speculative(draft="zoo-m"), n=2),
     ["1,272,480 parameters", "smaller than the target"]),
    ("Sampling n=0", lambda m: Sampling(n=0), ["Sampling.n=0", "valid"]),
    ("Sampling temperature=inf", lambda m: Sampling(temperature=math.inf), ["temperature=inf", "finite"]),
    ("Sampling temperature=nan", lambda m: Sampling(temperature=math.nan), ["temperature=nan", "finite"]),
    ("Sampling temperature=-1", lambda m: Sampling(temperature=-1.0), ["temperature=-1.0", ">= 0"]),
    ("Sampling top_p=0", lambda m: Sampling(top_p=0), ["top_p=0", "(0, 1]"]),
    ("Sampling aggregator", lambda m: Sampling(aggregator="mode"), ["aggregator='mode'", "majority"]),
    ("Sampling k>n", lambda m: Sampling(n=4, k=5), ["k=5", "1..n=4"]),
    ("Sampling fpr=2", lambda m: Sampling(verifier_fpr=2), ["verifier_fpr=2", "[0, 1]"]),
    ("EarlyExit temperature=inf", lambda m: ex.EarlyExit("max_prob", 0.9, temperature=math.inf),
     ["temperature=inf", ">= 0"]),
    ("EarlyExit criterion", lambda m: ex.EarlyExit("nope", 0.5), ["criterion='nope'", "max_prob"]),
    ("EarlyExit threshold nan", lambda m: ex.EarlyExit("max_prob", math.nan), ["threshold=nan", "finite"]),
    ("Speculative draft_len=0", lambda m: ex.Speculative(draft_len=0), ["draft_len=0", "1..32"]),
    ("Speculative temperature=inf", lambda m: ex.Speculative(temperature=math.inf), ["temperature=inf", "finite"]),
    ("Speculative adaptive=1.5", lambda m: ex.Speculative(adaptive=1.5), ["adaptive=1.5", "between 0 and 1"]),
    ("Speculative draft=''", lambda m: ex.Speculative(draft=""), ["draft=''", "zoo name"]),
    ("Quantize bits=1", lambda m: ex.Quantize(bits=1), ["bits=1", "2..16"]),
    ("Quantize bits text", lambda m: ex.Quantize(bits="four"), ["bits='four'", "2..16"]),
    ("generate temperature=inf", lambda m: generate(m.hf, m.tokenizer, ["1"], max_new_tokens=2,
                                                     temperature=math.inf), ["temperature=inf", "finite"]),
    ("speculative temperature=nan", lambda m: speculative_generate(
        m, m, m.tokenizer(["1"], return_tensors="pt"), draft_len=2, temperature=math.nan, max_new_tokens=2),
     ["temperature=nan", "finite"]),
    ("difficulty=9", lambda m: ex.tasks.get("addition").examples(5, difficulty=9), ["difficulty=9", "[1, 2, 3, 4, 5]"]),
    ("compose twice", lambda m: ex.compose(Sampling(), Sampling(n=2)), ["sampling appears twice", "once"]),
    ("read_at_k k=0", lambda m: read_at_k(pl.DataFrame({"config_hash": ["a"]}), 0), ["k=0", "1 or more"]),
    ("grid unknown knob", lambda m: grid(Sampling, bitz=[4]), ["'bitz'", "its knobs: n, temperature"]),
    ("grid empty", lambda m: grid(Sampling, n=[]), ["Sampling.n=[]", "at least one value"]),
    ("sweep models=5", lambda m: sweep(5, "addition", progress=False), ["models=5", "model name"]),
    ("sweep unknown task", lambda m: sweep("zoo-xs", ["additon"], progress=False), ["additon", "addition"]),
    ("sweep seed=-3", lambda m: sweep("zoo-xs", "addition", seed=-3, progress=False),
     ["seed=-3", "non-negative integer"]),
    ("sweep seed=2.0", lambda m: sweep("zoo-xs", "addition", seed=2.0, progress=False),
     ["seed=2.0", "non-negative integer"]),
    ("sweep n=0", lambda m: sweep("zoo-xs", "addition", n=0, progress=False), ["n=0", "1 to 100,000"]),
    ("sweep repeats=0", lambda m: sweep("zoo-xs", "addition", repeats=0, progress=False), ["repeats=0", "positive"]),
    ("sweep executor", lambda m: sweep("zoo-xs", "addition", executor="dask", progress=False),
     ["executor='dask'", "'local', 'ray'"]),
    ("sweep technique str", lambda m: sweep("zoo-xs", "addition", ["quantize"], progress=False),
     ["'quantize' is not a technique", "explorer.grid"]),
    ("sweep remeasure", lambda m: sweep("zoo-xs", "addition", remeasure="yes", progress=False),
     ["remeasure='yes'", "True or False"]),
    ("sweep unknown model", lambda m: sweep("nosuch-org/nosuch-model", "addition", progress=False),
     ["nosuch-org/nosuch-model", "zoo model"]),
    ("sweep all refused", lambda m: sweep("zoo-xs", "addition", [ex.Speculative(draft="zoo-m")], n=2,
                                          progress=False), ["all 1 of 1", "smaller than the target"]),
    ("Store(5)", lambda m: Store(5), ["path=5", "folder path"]),
    ("Store('')", lambda m: Store(""), ["path=''", "folder path"]),
    ("Store(file)", lambda m: Store(__file__), ["is a file", "give a folder"]),
    ("Store(create=False)", lambda m: Store("no-such-store", create=False), ["no-such-store", "explorer sweep"]),
    ("store row without key", lambda m: Store(os.environ["EXPLORER_STORE"]).add({"accuracy": 1.0}),
     ["config_hash=None", "explorer.run adds one"]),
    ("store row with path key", lambda m: Store(os.environ["EXPLORER_STORE"]).add({"config_hash": "../x"}),
     ["config_hash='../x'", "explorer.run adds one"]),
    ("budget=-1", lambda m: ex.best_under_budget(Store().frame(), budget=-1), ["budget=-1", ">= 0"]),
    ("budget=nan", lambda m: ex.best_under_budget(Store().frame(), budget=math.nan), ["budget=nan", "not NaN"]),
    ("frontier keep", lambda m: ex.frontier(Store().frame(), keep="some"), ["keep='some'", "'frontier'"]),
    ("frontier quality", lambda m: ex.frontier(Store().frame(), quality="acc"), ["'acc'", "columns: "]),
    ("frontier maximize", lambda m: ex.frontier(Store().frame(), maximize="yes"), ["maximize='yes'", "True, False"]),
    ("spec extension", lambda m: load_spec(Path(os.environ["FILES"]) / "sweep.json"), ["sweep.json", ".toml"]),
    ("spec syntax", lambda m: load_spec(Path(os.environ["FILES"]) / "syntax.yaml"), ["syntax.yaml", "line 2"]),
    ("spec unknown key", lambda m: from_spec({"model": "zoo-s"}), ["'model'", "valid: models"]),
    ("spec techniques table", lambda m: from_spec({"techniques": {"name": "quantize"}}),
     ["techniques={'name': 'quantize'}", "a list of tables"]),
]


@pytest.mark.parametrize("call, fragments", [pytest.param(c, f, id=i) for i, c, f in API])
def test_a_bad_api_input_gets_a_clear_error_and_stores_nothing(call, fragments, tiny_model, guarded, files,
                                                               monkeypatch):
    monkeypatch.setenv("FILES", str(files))
    rows = stored_rows(guarded)
    with pytest.raises((ValueError, TypeError, KeyError, LookupError, FileNotFoundError, ConnectionError)) as caught:
        call(tiny_model)
    message = str(caught.value.args[0]) if caught.value.args else str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert stored_rows(guarded) == rows


# -- the CLI, in this process ----------------------------------------------------------------

CLI = [
    (["run", "-n", "0"], ["n=0", "1 to 100,000"]),
    (["run", "-n", "1000000000"], ["n=1000000000", "1 to 100,000"]),
    (["run", "-n", "abc"], ["n='abc'", "integer"]),
    (["run", "--seed", "-1"], ["seed=-1", "non-negative integer"]),
    (["run", "--seed", "1.5"], ["seed='1.5'", "non-negative integer"]),
    (["run", "--task", "additon"], ["'additon'", "addition"]),
    (["run", "--model", "./no/such/model", "-n", "2"], ["./no/such/model", "zoo name"]),
    (["run", "--model", "nosuch-org/nosuch-model", "-n", "2"], ["nosuch-org/nosuch-model", "zoo model"]),
    (["run", "--model", "zoo-xs", "--task", "shakespeare", "-n", "9000"], ["n=9000", "n <= 6000"]),
    (["run", "--technique", "quantise"], ["quantise", "quantize"]),
    (["run", "--technique", "quantize", "--knob", "bitz=4"], ["bitz", "knobs: "]),
    (["run", "--technique", "quantize", "--knob", "bits"], ["'bits'", "NAME=VALUE"]),
    (["run", "--technique", "sampling", "--knob", "temperature=Infinity"], ["temperature=inf", "finite"]),
    (["run", "--technique", "sampling", "--knob", "n=0"], ["Sampling.n=0", "valid"]),
    (["run", "--technique", "speculative", "--knob", "draft_len=99"], ["draft_len=99", "1..32"]),
    (["lab", "--port", "-5"], ["port=-5", "1 to 65,535"]),
    (["lab", "--port", "70000"], ["port=70000", "1 to 65,535"]),
    (["lab", "--port", "http"], ["port='http'", "integer"]),
    (["sweep", "{files}/syntax.yaml"], ["syntax.yaml", "not valid YAML at line 2"]),
    (["sweep", "{files}/syntax.toml"], ["syntax.toml", "not valid TOML"]),
    (["sweep", "{files}/nope.yaml"], ["nope.yaml", "does not exist"]),
    (["sweep", "{files}/sweep.json"], ["sweep.json", ".toml, .yaml, .yml"]),
    (["sweep", "{files}/list.yaml"], ["holds list", "table of"]),
    (["sweep", "{files}/unknown_key.yaml"], ["'model'", "valid: models"]),
    (["sweep", "{files}/unknown_model.yaml"], ["nosuch-org/nosuch-model", "zoo model"]),
    (["sweep", "{files}/missing_folder.yaml"], ["./no/such/folder", "zoo name"]),
    (["sweep", "{files}/unknown_task.yaml"], ["'additon'", "addition"]),
    (["sweep", "{files}/negative_n.yaml"], ["n=-5", "1 to 100,000"]),
    (["sweep", "{files}/huge_n.yaml"], ["n=1000000000", "1 to 100,000"]),
    (["sweep", "{files}/float_seed.yaml"], ["seed=1.5", "non-negative integer"]),
    (["sweep", "{files}/bool_seed.yaml"], ["seed=True", "non-negative integer"]),
    (["sweep", "{files}/negative_seed.toml"], ["seed=-2", "non-negative integer"]),
    (["sweep", "{files}/zero_repeats.yaml"], ["repeats=0", "positive integer"]),
    (["sweep", "{files}/batch_text.yaml"], ["batch_size='lots'", "positive integer"]),
    (["sweep", "{files}/techniques_table.yaml"], ["techniques={'name': 'quantize'}", "a list of tables"]),
    (["sweep", "{files}/unknown_technique.yaml"], ["'quantise'", "quantize"]),
    (["sweep", "{files}/bad_knob.yaml"], ["Sampling.n=0", "valid"]),
    (["sweep", "{files}/unknown_knob.yaml"], ["'bitz'", "its knobs"]),
    (["sweep", "{files}/inf_temperature.yaml"], ["temperature=inf", "finite"]),
    (["sweep", "{files}/models_number.yaml"], ["models=5", "model name"]),
    (["sweep", "{files}/all_refused.yaml"], ["all 1 of 1", "smaller than the target"]),
    (["sweep", "--executor", "dask"], ["'dask'", "'local', 'ray'"]),
    (["sweep", "{files}/ok.yaml", "--executor", "ray", "--address", "127.0.0.1:1", "--store", "new-store"],
     ["address='127.0.0.1:1'", "ray start --head"]),
    (["sweep", "{files}/ok.yaml", "--executor", "ray", "--address", "nonsense"], ["address='nonsense'", "host:port"]),
    (["sweep", "{files}/ok.yaml", "--address", "127.0.0.1:6379"], ["address='127.0.0.1:6379'", "executor='ray'"]),
    (["sweep", "--workers", "0"], ["workers=0", "1 to 1,024"]),
    (["sweep", "-n", "0"], ["n=0", "1 to 100,000"]),
    (["sweep", "--seed", "-4"], ["seed=-4", "non-negative integer"]),
    (["sweep", "--store", "{files}/a_file"], ["a_file", "is a file"]),
    (["frontier", "--store", "no-such-store"], ["no-such-store", "explorer sweep"]),
    (["frontier", "--quality", "acc"], ["'acc'", "columns: "]),
    (["frontier", "--cost", "flops"], ["'flops'", "columns: "]),
    (["frontier", "--by", "modle"], ["'modle'", "columns: "]),
    (["frontier", "--out", "chart.txt"], ["chart.txt", ".html, .png or .svg"]),
    (["frontier", "--out", "/no/such/folder/chart.html"], ["/no/such/folder", "does not exist"]),
    (["frontier", "--at", "k"], ["'k'", "NAME=VALUE"]),
    (["export", "rows.txt"], ["rows.txt", ".parquet or .csv"]),
    (["export", "rows.csv", "--store", "no-such-store"], ["no-such-store", "explorer sweep"]),
    (["export", "/no/such/folder/rows.csv"], ["/no/such/folder", "does not exist"]),
    (["export", "{files}/folder.csv"], ["is a folder", "give a file name"]),
    (["zoo", "train", "zoo-xxl", "--out", "zoo-out"], ["'zoo-xxl'", "known: zoo-xs"]),
    (["zoo", "train", "--jobs", "0"], ["jobs=0", "1 to 64"]),
    (["zoo", "train", "zoo-xs", "--text", "no-such-texts", "--out", "zoo-out"], ["'no-such-texts'", "folder of .txt"]),
    (["zoo", "train", "--steps", "-1"], ["steps=-1", "1 to 10,000,000"]),
    (["table", "-n", "0"], ["n=0", "1 to 100,000"]),
    (["tabel"], ["'tabel'", "choose from"]),
    (["run", "--bits", "4"], ["--bits", "explorer run --help"]),
]


@pytest.mark.parametrize("argv, fragments", CLI, ids=[" ".join(a) for a, _ in CLI])
def test_a_bad_cli_input_is_one_line_and_exit_2_and_stores_nothing(argv, fragments, guarded, files, capsys):
    rows = stored_rows(guarded)
    code = cli([a.format(files=files) for a in argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("explorer: error:")]
    assert code == 2, err
    assert "Traceback" not in err and len(errors) == 1, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert stored_rows(guarded) == rows
    assert not Path("zoo-out").exists() and not Path("new-store").exists()


def test_read_only_commands_make_no_folder(guarded, tmp_path):
    for argv in (["frontier", "--store", "typo"], ["export", "rows.csv", "--store", "typo"],
                 ["sweep", "--dry-run", "--store", "typo", "-n", "2"]):
        cli(argv)
        assert not (tmp_path / "typo").exists(), argv


def test_store_strings_reach_html_escaped(tmp_path, tiny_model):
    """A model or technique name from the store never becomes markup in the lab's card."""
    from widgets.lab import best_card
    from widgets.state import LabState

    row = ex.run(tiny_model, "addition", n=4, seed=0, repeats=1)
    row |= {"model": "<img src=x onerror=alert(1)>", "config_hash": "evil"}
    store = Store(tmp_path)
    store.add(row)
    card = best_card(LabState(models=[row["model"]], task="addition"), store)
    assert "<img" not in card and "&lt;img src=x onerror=alert(1)&gt;" in card


# -- the CLI as a user runs it -----------------------------------------------------------------

def run_cli(*argv, env=None, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "explorer.cli", *argv], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.mark.parametrize("argv, fragment", [
    (["run", "--model", "zoo-xs", "-n", "1000000000"], "n=1000000000"),
    (["lab", "--port", "-5"], "port=-5"),
    (["sweep", "{files}/syntax.yaml"], "line 2"),
], ids=["huge n", "negative port", "yaml syntax"])
def test_a_real_process_gets_one_line_and_exit_2(argv, fragment, files, store_dir, tmp_path):
    before = snapshot(store_dir)
    p = run_cli(*[a.format(files=files) for a in argv], env={"EXPLORER_STORE": str(store_dir)}, cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.startswith("explorer: error:") and fragment in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert snapshot(store_dir) == before and not list(tmp_path.iterdir())


@pytest.fixture
def read_only_store(tmp_path, store_dir):
    """A store folder no one can write: chmod for a user, a read-only mount for root (who ignores modes)."""
    import shutil

    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        shutil.copytree(store_dir, folder, dirs_exist_ok=True)
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("running as root without the right to mount: no folder here is read-only to this process")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_a_read_only_store_is_found_before_any_model_runs(read_only_store, files, tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text("models: [zoo-xs]\ntasks: [addition]\nn: 4\n")
    p = run_cli("sweep", str(spec), "--store", str(read_only_store), env={"EXPLORER_STORE": ""})
    assert p.returncode == 2 and "not writable" in p.stderr and str(read_only_store) in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and "Loading weights" not in p.stderr and "sweep (local)" not in p.stderr
    with pytest.raises(PermissionError, match="not writable"):  # the API says so too, before running
        sweep("zoo-xs", "addition", n=4, store=read_only_store, progress=False)


def test_the_lab_refuses_a_seed_that_is_not_a_non_negative_integer():
    from widgets.state import LabState

    state = LabState()
    for bad in (-3, True):
        state.seed = bad
        assert state.seed == 0 and f"seed={bad!r}" in state.status and "non-negative integer" in state.status
