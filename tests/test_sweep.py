import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import ClassVar

import polars as pl
import pytest

import explorer as ex
from explorer.cli import main as cli
from explorer.store import Store
from explorer.sweep import DEFAULT_SPEC, from_spec, grid, load_spec, plan, sweep
from explorer.techniques.sampling import Sampling

ROOT = Path(__file__).resolve().parents[1]
# What differs between two runs of one configuration: the clock and the machine.
TIMING = {"wall_s", "wall_s_per_token", "created_at", "device", "kv_fill_s", "kv_fill_share"}


def comparable(df: pl.DataFrame) -> list[dict]:
    keep = [c for c in df.columns if c not in TIMING]
    return df.select(keep).sort("config_hash").to_dicts()


def test_grid_is_every_combination_with_single_values_held():
    g = grid(Sampling, n=[2, 4], temperature=(0.5, 1.0), aggregator="pass")
    assert sorted((t.n, t.temperature) for t in g) == [(2, 0.5), (2, 1.0), (4, 0.5), (4, 1.0)]
    assert {t.aggregator for t in g} == {"pass"}
    assert grid(ex.Baseline) == [ex.Baseline()]


def test_grid_names_an_unknown_knob_and_lists_the_real_ones():
    with pytest.raises(ValueError, match=r"Sampling has no knob 'bitz'; its knobs: n, temperature"):
        grid(Sampling, bitz=[4])


def test_grid_values_are_checked_by_the_technique_itself():
    with pytest.raises(ValueError, match=r"Sampling\.n=0"):
        grid(Sampling, n=[2, 0])
    with pytest.raises(ValueError, match="at least one value"):
        grid(Sampling, n=[])
    with pytest.raises(ValueError, match="technique class"):
        grid("sampling", n=[2])


def test_a_config_is_keyed_before_it_runs_exactly_as_the_run_keys_it():
    tiny_model = ex.load("zoo-xs")
    jobs = plan(["zoo-xs"], ["addition"], [ex.Baseline(), Sampling(n=2)], n=8, seed=5)
    assert len(jobs) == 2
    for job in jobs:
        row = ex.run(tiny_model, job.task, job.technique, n=8, seed=5, repeats=1)
        assert row["config_hash"] == job.config_hash


def test_one_folder_swept_by_path_then_by_name_keys_each_name_as_its_run_does(tmp_path):
    # The fingerprint cache is per folder; it once kept the first name asked for, so a sweep of
    # "zoo-xs" after one of its folder planned under the folder's name and refused every run.
    kw = dict(tasks=["addition"], techniques=[ex.Baseline()], store=tmp_path, n=4, progress=False)
    by_path = sweep(models=[str(ex.zoo.path("zoo-xs"))], **kw)
    by_name = sweep(models=["zoo-xs"], **kw)
    assert by_path["model"].to_list() == [str(ex.zoo.path("zoo-xs"))]
    assert by_name["model"].to_list() == ["zoo-xs"]


def test_a_likelihood_task_is_not_rerun_for_techniques_that_only_decode():
    jobs = plan(["zoo-xs"], ["shakespeare", "sort"], [ex.Baseline(), Sampling(n=2)], n=8)
    assert sorted((j.task, j.technique.name) for j in jobs) == [
        ("shakespeare", "baseline"), ("sort", "baseline"), ("sort", "sampling")]


def test_a_sweep_runs_only_the_rows_the_store_lacks(tmp_path):
    kw = dict(models=["zoo-xs"], tasks=["addition", "sort"], techniques=[ex.Baseline(), grid(Sampling, n=[2])],
              store=tmp_path, n=8, progress=False)
    first = sweep(**kw)
    assert first.height == 4 and set(first["task"]) == {"addition", "sort"}
    files = sorted(tmp_path.glob("*.parquet"))
    gone = files.pop(1)
    gone.unlink()
    before = {f: f.stat().st_mtime_ns for f in files}
    second = sweep(**kw)
    assert {f: f.stat().st_mtime_ns for f in files} == before  # nothing stored was run again
    assert gone.exists() and comparable(second) == comparable(first)


def test_bad_sweep_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="executor='dask'; valid: 'local', 'ray'"):
        sweep(["zoo-xs"], ["sort"], store=tmp_path, executor="dask", n=4)
    with pytest.raises(ValueError, match="at least one model"):
        sweep([], ["sort"], store=tmp_path, n=4)
    with pytest.raises(ValueError, match="n=0"):
        sweep(["zoo-xs"], ["sort"], store=tmp_path, n=0)
    with pytest.raises(ValueError, match="not a technique"):
        sweep(["zoo-xs"], ["sort"], [Sampling], store=tmp_path, n=4)


@dataclasses.dataclass(frozen=True)
class Refuses(ex.Technique):
    name: ClassVar[str] = "refuses"

    def prepare(self, model):
        raise ValueError(f"Refuses: not for {model.name}")


def test_a_refused_configuration_is_reported_and_the_rest_are_stored(tmp_path):
    with pytest.warns(UserWarning, match=r"(?s)1 of 3 configurations were refused.*zoo-xs Refuses\(\) on sort: "
                                         r"Refuses: not for zoo-xs"):
        rows = sweep(["zoo-xs"], ["sort"], [ex.Baseline(), Refuses(), Sampling(n=2)], store=tmp_path, n=8,
                     progress=False)
    assert sorted(rows["technique"]) == ["baseline", "sampling"] and len(Store(tmp_path)) == 2


KILLABLE = textwrap.dedent("""
    import sys
    import explorer as ex
    from explorer.techniques.sampling import Sampling
    ex.sweep(["zoo-xs", "zoo-s"], ["addition", "subtraction", "sort", "multiplication"],
             [ex.Baseline(), ex.grid(Sampling, n=[2, 3])], store=sys.argv[1], n=24, progress=False)
""")


def killed_sweep(store: Path, after_rows: int) -> int:
    """Start the sweep in a subprocess and SIGKILL it once `after_rows` rows have landed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(store)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while len(list(store.glob("*.parquet"))) < after_rows and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(list(store.glob("*.parquet")))


def test_a_sweep_killed_with_sigkill_resumes_with_exactly_the_missing_rows(tmp_path):
    wanted = {j.config_hash for j in plan(["zoo-xs", "zoo-s"], ["addition", "subtraction", "sort", "multiplication"],
                                          [ex.Baseline(), grid(Sampling, n=[2, 3])], n=24)}
    assert len(wanted) == 24
    store = Store(tmp_path)
    done = killed_sweep(tmp_path, after_rows=3)
    assert 3 <= done < 24, "the sweep should have been killed halfway"
    assert store.hashes() <= wanted and len(store) == done  # every file a whole row
    kept = {f.name: f.stat().st_mtime_ns for f in tmp_path.glob("*.parquet")}
    rows = sweep(["zoo-xs", "zoo-s"], ["addition", "subtraction", "sort", "multiplication"],
                 [ex.Baseline(), grid(Sampling, n=[2, 3])], store=store, n=24, progress=False)
    assert set(rows["config_hash"]) == wanted and rows.height == 24
    assert {n: (tmp_path / n).stat().st_mtime_ns for n in kept} == kept  # the survivors were not recomputed
    assert len(list(tmp_path.glob("*.parquet"))) == 24 and not list(tmp_path.glob(".*"))


def test_sweep_files_in_toml_and_yaml_describe_the_same_sweep(tmp_path):
    (tmp_path / "s.toml").write_text(textwrap.dedent("""
        models = ["zoo-xs"]
        tasks = ["sort"]
        n = 8
        [[techniques]]
        name = "sampling"
        n = [2, 4]
        [[techniques]]
        compose = [{name = "baseline"}, {name = "sampling", n = [3]}]
    """))
    (tmp_path / "s.yaml").write_text(textwrap.dedent("""
        models: [zoo-xs]
        tasks: [sort]
        n: 8
        techniques:
          - {name: sampling, n: [2, 4]}
          - compose: [{name: baseline}, {name: sampling, n: [3]}]
    """))
    a, b = (from_spec(load_spec(tmp_path / f)) for f in ("s.toml", "s.yaml"))
    assert a == b and a["techniques"] == [Sampling(n=2), Sampling(n=4), Sampling(n=3)]


def test_a_sweep_file_with_an_unknown_key_or_technique_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown key 'model'; valid: models"):
        from_spec({"model": ["zoo-xs"]})
    with pytest.raises(ValueError, match=r"unknown technique 'quantise'; did you mean 'quantize'\? known: baseline"):
        from_spec({"techniques": [{"name": "quantise"}]})
    (tmp_path / "s.json").write_text("{}")
    with pytest.raises(ValueError, match=r"\.toml, \.yaml"):
        load_spec(tmp_path / "s.json")


def test_the_default_sweep_covers_every_model_with_weights_and_every_task():
    kw = from_spec(DEFAULT_SPEC)
    assert "zoo-xs" in kw["models"] and set(kw["tasks"]) == set(ex.tasks.names())
    assert ex.Baseline() in kw["techniques"] and len(kw["techniques"]) > 1


def test_the_cli_sweeps_prints_the_frontier_and_exports(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('models = ["zoo-xs"]\ntasks = ["sort", "shakespeare"]\nn = 8\n'
                    '[[techniques]]\nname = "baseline"\n[[techniques]]\nname = "sampling"\nn = [2]\n')
    store = str(tmp_path / "store")
    assert cli(["sweep", str(spec), "--store", store, "--dry-run"]) == 0
    assert capsys.readouterr().out.count("missing") == 3
    assert cli(["sweep", str(spec), "--store", store]) == 0
    assert "3 rows of this sweep" in capsys.readouterr().out
    assert cli(["frontier", "--store", store, "--task", "sort", "--out", str(tmp_path / "f.html")]) == 0
    out = capsys.readouterr().out
    assert "frontier" in out and store in out and (tmp_path / "f.html").read_text().count("vega") > 0
    assert cli(["export", str(tmp_path / "all.csv"), "--store", store]) == 0
    assert pl.read_csv(tmp_path / "all.csv").height == 3
    assert cli(["export", str(tmp_path / "all.parquet"), "--store", store]) == 0
    assert pl.read_parquet(tmp_path / "all.parquet")["samples"].drop_nulls().len() == 1
    assert cli(["frontier", "--store", str(tmp_path / "empty")]) == 2
    assert "no results store at" in capsys.readouterr().err and not (tmp_path / "empty").exists()


@pytest.mark.slow
def test_ray_rows_equal_local_rows(tmp_path):
    """A real local Ray cluster (head and two worker processes on this machine) against the local executor."""
    kw = dict(models=["zoo-xs", "zoo-s"], tasks=["addition", "sort", "shakespeare"],
              techniques=[ex.Baseline(), grid(Sampling, n=[2])], n=16, progress=False)
    local = sweep(**kw, store=tmp_path / "local")
    remote = sweep(**kw, store=tmp_path / "ray", executor="ray", workers=2)
    assert remote.height == local.height == 10
    assert comparable(remote) == comparable(local)


@pytest.mark.slow
def test_ray_works_when_the_user_imported_ray_first(tmp_path):
    """Ray fixes its auth mode at first import; a notebook that imported ray itself must still sweep."""
    script = textwrap.dedent(f"""
        import ray
        import explorer as ex
        rows = ex.sweep(["zoo-xs"], "sort", ex.Baseline(), n=8, store={str(tmp_path)!r}, executor="ray",
                        workers=1, progress=False)
        print("ROWS", rows.height)
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"} | {"HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert "ROWS 1" in out.stdout, out.stderr[-2000:]


@pytest.fixture
def ray_head():
    """A Ray head started from the command line with two CPUs, as a user would start a cluster;
    `--block` ties its processes to this one, so terminating it takes the cluster down."""
    import socket
    import tempfile

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    # Ray's defaults, token auth included, as a user's `ray start` would have them.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_AUTH_MODE", None)
    # The cluster's token, as `ray start` and our driver both read it from ~/.ray (made once per machine).
    if not (Path.home() / ".ray" / "auth_token").exists():
        subprocess.run(["ray", "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    log = Path(temp) / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen(["ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                                 "--node-ip-address=127.0.0.1",
                                 "--include-dashboard=false", f"--temp-dir={temp}"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 150
    while "block forever" not in log.read_text() and head.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "block forever" in log.read_text(), log.read_text()[-2000:]
    yield f"127.0.0.1:{port}"
    head.terminate()
    head.wait(timeout=60)


@pytest.mark.slow
def test_ray_rows_from_an_existing_cluster_equal_local_rows(tmp_path, ray_head):
    kw = dict(models=["zoo-xs", "zoo-s"], tasks=["sort", "shakespeare"], techniques=[ex.Baseline(), Sampling(n=2)],
              n=16, progress=False)
    remote = sweep(**kw, store=tmp_path / "ray", executor="ray", address=ray_head)
    local = sweep(**kw, store=tmp_path / "local")
    assert remote.height == local.height == 6
    assert comparable(remote) == comparable(local)
