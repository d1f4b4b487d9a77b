import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from explorer.store import Store


def row(key: str, **cols) -> dict:
    return {"config_hash": key, "model": "zoo-xs", "created_at": "2026-01-01T00:00:00+00:00", **cols}


def test_rows_come_back_as_one_frame_keyed_by_hash(tmp_path):
    store = Store(tmp_path)
    assert store.add(row("a1", accuracy=0.5, knob_bits=4)) == ["a1"]
    store.add([row("b2", bits_per_char=2.5), row("c3", accuracy=0.25, knob_k=8)])
    df = store.frame().sort("config_hash")
    assert df["config_hash"].to_list() == ["a1", "b2", "c3"]
    # Diagonal: each technique's own columns, null where a row does not have them.
    assert df["knob_bits"].to_list() == [4, None, None] and df["bits_per_char"].to_list() == [None, 2.5, None]
    assert store.has("b2") and "c3" in store and not store.has("zz") and len(store) == 3


def test_a_rerun_of_a_configuration_replaces_its_row(tmp_path):
    store = Store(tmp_path)
    store.add(row("a1", accuracy=0.5))
    store.add(row("a1", accuracy=0.75, created_at="2026-01-02T00:00:00+00:00"))
    assert store.frame()["accuracy"].to_list() == [0.75]


def test_the_path_is_always_shown(tmp_path):
    store = Store(tmp_path / "results")
    store.add(row("a1"))
    assert str(tmp_path / "results") in repr(store) and "1 rows" in repr(store)


def test_default_location_is_a_per_user_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("EXPLORER_STORE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert Store().path == (tmp_path / "cache" / "tradeoff-explorer" / "results").resolve()
    monkeypatch.setenv("EXPLORER_STORE", str(tmp_path / "shared"))
    assert Store().path == (tmp_path / "shared").resolve()


def test_a_truncated_file_is_skipped_with_a_warning_naming_it(tmp_path):
    store = Store(tmp_path)
    store.add([row("a1", accuracy=0.5), row("b2", accuracy=0.6)])
    good = (tmp_path / "a1.parquet").read_bytes()
    (tmp_path / "a1.parquet").write_bytes(good[: len(good) // 2])  # a crash by a tool that is not the store
    with pytest.warns(UserWarning, match="a1.parquet"):
        df = store.frame()
    assert df["config_hash"].to_list() == ["b2"]
    assert not store.has("a1")  # so a sweep computes it again


def test_foreign_files_are_skipped_with_a_warning_naming_each(tmp_path):
    store = Store(tmp_path)
    store.add(row("a1", accuracy=0.5))
    pl.DataFrame({"x": [1, 2]}).write_parquet(tmp_path / "someone_elses.parquet")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.warns(UserWarning) as caught:
        df = Store(tmp_path).frame()
    named = " ".join(str(w.message) for w in caught)
    assert "someone_elses.parquet" in named and "notes.txt" in named
    assert df["config_hash"].to_list() == ["a1"]


def test_a_write_leaves_no_temporary_file_and_a_dead_writers_temp_is_ignored(tmp_path):
    store = Store(tmp_path)
    store.add(row("a1", accuracy=0.5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a1.parquet"]
    # What a writer killed mid-write leaves: a hidden partial temp file, never a half row.
    (tmp_path / ".b2.123.deadbeef.tmp").write_bytes(b"PAR1 half a row")
    assert store.frame()["config_hash"].to_list() == ["a1"]


def test_a_row_without_a_config_hash_is_refused(tmp_path):
    with pytest.raises(ValueError, match="config_hash"):
        Store(tmp_path).add({"accuracy": 0.5})
    with pytest.raises(ValueError, match="config_hash"):
        Store(tmp_path).add({"config_hash": "../escape"})


def test_nested_sample_records_round_trip(tmp_path):
    import numpy as np

    samples = [{"difficulty": 1, "answer": ["12", "13"], "correct": [True, False], "logprob": [-1.0, -2.5]}]
    store = Store(tmp_path)
    store.add(row("s1", samples=samples, accuracy=np.float64(0.5), knob_n=np.int64(2)))
    back = store.frame().row(0, named=True)
    assert back["samples"] == samples and back["accuracy"] == 0.5 and back["knob_n"] == 2


def test_a_column_whose_type_differs_between_files_keeps_every_row(tmp_path):
    store = Store(tmp_path)
    store.add([row("a1", knob_draft=3), row("b2", knob_draft="zoo-xs")])
    assert sorted(store.frame()["knob_draft"].to_list()) == ["3", "zoo-xs"]


WRITER = textwrap.dedent("""
    import pathlib, sys, time
    from explorer.store import Store
    store, me, gate = Store(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
    (gate / f"ready-{me}").touch()
    while not (gate / "go").exists():  # both start writing at the same moment
        time.sleep(0.01)
    for i in range(150):
        store.add({"config_hash": f"{me}{i:04d}", "writer": me, "i": i, "created_at": "x"})
        store.add({"config_hash": f"shared{i:04d}", "writer": me, "i": i, "created_at": "x"})
""")


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    gate, root = tmp_path / "gate", tmp_path / "store"
    gate.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(root), me, str(gate)], env=env) for me in "pq"]
    deadline = time.monotonic() + 120
    while not all((gate / f"ready-{me}").exists() for me in "pq") and time.monotonic() < deadline:
        time.sleep(0.01)
    (gate / "go").touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    tmp_path = root
    df = Store(tmp_path).frame()
    keys = set(df["config_hash"].to_list())
    assert keys == {f"{me}{i:04d}" for me in ("p", "q", "shared") for i in range(150)}
    assert df.height == 450  # every shared key once, from whichever writer landed last
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_file_whose_result_column_has_another_type_is_skipped_with_a_warning_naming_it(tmp_path):
    store = Store(tmp_path)
    store.add([row("a1", accuracy=0.5), row("b2", accuracy=0.75), row("c3", accuracy="oops")])
    with pytest.warns(UserWarning, match=r"skipping .*c3\.parquet: column 'accuracy' is String where the other "
                                         r"rows have numbers"):
        df = store.frame()
    assert df.schema["accuracy"] == pl.Float64 and sorted(df["config_hash"]) == ["a1", "b2"]
    assert not store.has("c3")  # so a resumed sweep runs it again (said once: the frame is memoized)


def test_leftover_temp_files_of_dead_writers_are_removed_when_the_store_opens(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".b2.{int(dead.stdout)}.deadbeef.tmp"
    stale.write_bytes(b"")  # what a kill -9 between open and write leaves
    live = tmp_path / f".c3.{os.getpid()}.cafe.tmp"  # a writer in this very process: in flight, kept
    live.write_bytes(b"PAR1")
    store = Store(tmp_path)
    assert not stale.exists() and live.exists() and store.removed_tmp == [stale.name]
    live.unlink()


def test_an_old_temp_file_is_removed_even_if_its_pid_was_reused(tmp_path):
    old = tmp_path / f".d4.{os.getppid()}.beef.tmp"  # a live pid (our parent), but a day old
    old.write_bytes(b"")
    os.utime(old, (time.time() - 86400, time.time() - 86400))
    Store(tmp_path)
    assert not old.exists()
