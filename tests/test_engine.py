import subprocess
import sys


def test_engine_imports_without_jupyter():
    out = subprocess.run(
        [sys.executable, "-c",
         "import sys, explorer, explorer.runs, explorer.cli; print(sorted(m for m in sys.modules "
         "if m.split('.')[0] in {'ipywidgets','IPython','anywidget','altair','traitlets'}))"],
        capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_cli_prints_a_row():
    out = subprocess.run([sys.executable, "-m", "explorer.cli", "run", "--model", "zoo-xs", "--task",
                          "subtraction", "-n", "20"], capture_output=True, text=True, check=True).stdout
    lines = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert lines["model"].strip() == "zoo-xs" and lines["n_examples"].strip() == "20"
    assert 0 <= float(lines["accuracy"]) <= 1


def test_the_cli_names_a_bad_model_and_exits_2():
    p = subprocess.run([sys.executable, "-m", "explorer.cli", "run", "--model", "nobody/none", "-n", "5"],
                       capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert p.returncode == 2
    assert "'nobody/none'" in p.stderr and "Traceback" not in p.stderr


def test_the_cli_refuses_bad_n():
    p = subprocess.run([sys.executable, "-m", "explorer.cli", "run", "--model", "zoo-xs", "-n", "0"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "n=0" in p.stderr


def test_zoo_list_prints_the_family():
    out = subprocess.run([sys.executable, "-m", "explorer.cli", "zoo", "list"],
                         capture_output=True, text=True, check=True).stdout
    for name in ("zoo-xs", "zoo-s", "zoo-m", "zoo-l"):
        assert name in out
