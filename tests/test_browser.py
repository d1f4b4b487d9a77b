"""The lab in a real JupyterLab, in a real browser: render, move a slider, see the chart change."""
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests import jupyter_harness as jh

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

LAB_CELL = """\
import os
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
torch.set_num_threads(1)
from widgets import Lab
lab = Lab(models=["zoo-xs", "zoo-s"], technique="quantize", bits=8, n=16, samples=4)
lab"""


def notebook(path: Path, cells: list[str]) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def wait_for(page, fn, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.5)
    jh.shot(page, "timeout-" + what.replace(" ", "-"))
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class LabPage:
    """The lab as a user sees it: its chart, status line and card, and its controls."""

    def __init__(self, page):
        self.page = page

    def svg(self) -> str:
        return self.page.locator(".tx-lab .vega-embed svg").inner_html()

    def status(self) -> str:
        return self.page.locator(".tx-lab .tx-status").inner_text()

    def card(self) -> str:
        return self.page.locator(".tx-lab .tx-card").inner_text()

    def slider(self, label: str):
        return self.page.locator(f".tx-lab .widget-hslider:has(label:text-is('{label}'))").first

    def readout(self, label: str) -> str:
        return self.slider(label).locator(".widget-readout").inner_text()

    def budget_readout(self) -> str:
        return self.page.locator(".tx-lab .tx-budget-readout").inner_text()

    def drag(self, label: str, fraction: float) -> None:
        """Drag the slider's handle with the mouse to `fraction` of its track."""
        slider = self.slider(label)
        handle = slider.locator(".noUi-handle").first.bounding_box()
        track = slider.locator(".noUi-target").first.bounding_box()
        x, y = handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2
        mouse = self.page.mouse
        mouse.move(x, y)
        mouse.down()
        mouse.move(track["x"] + fraction * track["width"], y, steps=12)
        mouse.up()

    def technique(self, name: str) -> None:
        self.page.locator(f".tx-lab .widget-toggle-buttons button:text-is('{name}')").click()

    def step(self, what: str, act, *, points: int | None = None, status: str = "", timeout_s: float = 150):
        """Do `act`, then wait until the chart changed (and shows `points`) and the status says `status`."""
        before = self.svg()
        act()
        wait_for(self.page, lambda: self.svg() != before and (points is None or jh.symbol_count(self.page) == points)
                 and status in self.status() and "running" not in self.status(), timeout_s, what)
        jh.shot(self.page, "lab-" + what.replace(" ", "-"))


def test_every_slider_redraws_the_lab_and_a_click_selects_a_point(tmp_path):
    """Each slider of the lab moved as a user would (bits by keyboard, the rest dragged with
    the mouse), then a point clicked: after every step the chart, the status line and the
    best-under-budget card must say what happened."""
    root = tmp_path / "root"
    root.mkdir()
    notebook(root / "lab.ipynb", [LAB_CELL])
    with jh.jupyter_lab(root, tmp_path) as url, jh.browser() as page:
        page.goto(f"{url}/lab/tree/lab.ipynb?reset", timeout=120_000)
        jh.restart_and_run_all(page)
        lab = LabPage(page)
        # Baselines and 8-bit variants of both models: four points.
        wait_for(page, lambda: jh.symbol_count(page) == 4 and "new runs" in lab.status(), 120,
                 "four points on the frontier chart")
        jh.wait_idle(page)
        assert "best with no budget limit" in lab.card() and "accuracy" in lab.card()
        assert "no limit" in lab.budget_readout()
        jh.shot(page, "lab-start")

        def bits_left():
            handle = lab.slider("bits").locator(".noUi-handle").first
            handle.focus()
            page.keyboard.press("ArrowLeft")  # 8 -> 6 bits

        lab.step("bits 6", bits_left, points=6, status="2 new runs")
        assert lab.readout("bits") == "6"

        lab.step("early exit", lambda: lab.technique("early exit"), points=8, status="2 new runs")
        lab.step("threshold", lambda: lab.drag("threshold", 0.5), points=10, status="2 new runs")
        assert lab.readout("threshold") != "0.90"

        # zoo-xs cannot draft for itself: one run, and the status line says why the other was skipped.
        lab.step("speculative", lambda: lab.technique("speculative"), points=11, status="skipped zoo-xs")
        lab.step("draft length", lambda: lab.drag("draft length", 0.9), points=12, status="1 new run stored")
        assert lab.readout("draft length") not in ("", "4")

        lab.step("sampling", lambda: lab.technique("sampling"), points=14, status="2 new runs")
        lab.step("samples", lambda: lab.drag("samples", 0.0), points=16, status="2 new runs")
        assert lab.readout("samples") == "2"
        # k only reads stored samples: the sampling points move, nothing new is run.
        lab.step("k", lambda: lab.drag("k", 0.0), points=16, status="no new run")
        assert lab.readout("k") == "1"
        card = lab.card()

        lab.step("budget", lambda: lab.drag("budget", 0.55), status="runs fit, no new run")
        fit = lab.status()
        assert " of 16 runs fit" in fit and lab.card() != card
        # Sampling selected moved the cost axis to the one it declares (FLOPs per problem).
        shown = re.search(r"(?:best within|budget of) ([0-9.,]+[kMGT]?)", lab.card())
        readout = re.search(r"≤ ([0-9.,]+[kMGT]?) (.+)", lab.budget_readout())
        assert shown and readout and shown[1] == readout[1], (lab.card(), lab.budget_readout())
        assert "FLOPs per problem" in readout[2]  # the axis sampling declares, chosen with it

        # A page reload re-renders the chart from its last spec (drawn before the budget moved); the
        # lab puts the state's budget back, so the budget rule is drawn again.
        # Saved first, as a teacher's notebook would be: the saved output names the lab's widgets,
        # which the reloaded page fetches from the still-running kernel.
        page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
        page.keyboard.press("Control+s")
        wait_for(page, lambda: page.locator(".jp-mod-dirty").count() == 0, 30, "the notebook to be saved")
        page.reload(timeout=120_000)
        from explorer import palette

        rule = f".tx-lab .vega-embed svg [stroke='{palette.BUDGET}']"
        wait_for(page, lambda: page.locator(rule).count() > 0, 120,
                 "the budget rule after a page reload")
        assert lab.status() == fit
        jh.shot(page, "lab-reloaded")

        # Click the points until one takes (a point under the budget rule or the frontier line
        # passes the click on to them); the status line then names the chosen run.
        for point in page.locator(".tx-lab .vega-embed g.mark-symbol.role-mark path").all():
            point.click(force=True)
            try:
                wait_for(page, lambda: "from the chart" in lab.status(), 5, "the click to select a run")
                break
            except AssertionError:
                continue
        status = lab.status()
        assert status.startswith("selected "), status
        active = page.locator(".tx-lab .widget-toggle-buttons button.mod-active").first.inner_text()
        assert active in status  # the technique control shows the clicked run's technique
        jh.shot(page, "lab-clicked")


GRAMMAR_CELLS = [LAB_CELL, """\
import altair as alt
from explorer.frontier import chart
lab.runner.wait(600)  # Run All reaches this cell while the lab's first runs are still going
alt.JupyterChart.enable_offline()  # no CDN here
alt.JupyterChart(chart(lab.store.frame().filter(lab.store.frame()["n_examples"] == 16), cost="weight_bytes"))"""]
PALETTE = {"zoo-xs": "#0072B2", "zoo-s": "#E69F00"}  # explorer.palette.model_color, spelled out: the test must not share the code


def symbol_fills(page, chart) -> dict[str, set[str]]:
    """Model -> the fill colours of its points in one chart (Vega writes each mark's fields in aria-label)."""
    out: dict[str, set[str]] = {}
    for path in chart.locator("g.mark-symbol path").all():
        label, fill = path.get_attribute("aria-label") or "", path.get_attribute("fill")
        m = re.search(r"model: ([\w-]+)", label)
        if m and fill:
            out.setdefault(m[1], set()).add(fill.upper())
    return out


BUDGET_CELL = """\
import explorer as ex
from widgets.budget_explorer import BudgetExplorer
rows = ex.sweep(["zoo-xs", "zoo-s"], "sort", [ex.Baseline(), ex.Sampling(n=4)], n=16, progress=False)
BudgetExplorer(rows, task="sort", reference="zoo-s")"""
VIEWPORT = {"width": 1400, "height": 900}
NARROW = {"width": 1024, "height": 900}


def fits(box, what, viewport=VIEWPORT) -> None:
    """`box` (a bounding box in CSS px) lies wholly inside the viewport (1400x900 unless given)."""
    assert box is not None, f"{what}: not rendered"
    assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"], (what, box)
    assert box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"], (what, box)


def chart_and_legends_fit(page, embed, what: str, viewport=VIEWPORT) -> list[dict]:
    """Scroll the chart into view as a reader would; then it and each of its legends (Vega's
    role-legend groups: every entry, title and symbol) lie inside the viewport. Returns the boxes."""
    embed.scroll_into_view_if_needed()
    time.sleep(1)
    boxes = [embed.bounding_box()]
    fits(boxes[0], f"{what} chart", viewport)
    legends = embed.locator("svg g.role-legend")
    assert legends.count() >= 2, f"{what}: {legends.count()} legends (model colour and technique shape expected)"
    for i in range(legends.count()):
        boxes.append(legends.nth(i).bounding_box())
        fits(boxes[-1], f"{what} legend {i}", viewport)
    print(f"{what}: chart and legend boxes at {viewport['width']}x{viewport['height']} "
          f"{[{k: round(v) for k, v in b.items()} for b in boxes]}")
    return boxes


def below(upper, lower) -> bool:
    """`upper`'s box ends where `lower`'s begins or above it (one stacked over the other, not side by side)."""
    return upper["y"] + upper["height"] <= lower["y"] + 1


def test_a_teachers_path_budget_stays_colours_agree_and_the_chart_fits_beside_the_sidebar(tmp_path):
    """At 1400x900 with JupyterLab's file browser open: the lab's chart and its legends lie inside the
    window, and so do the budget explorer's; neither chart moves when its card's text changes; a budget
    the user set survives a model removed and re-added and a task change; a model has one colour in the
    lab's chart, the CLI's chart and the budget explorer's."""
    root = tmp_path / "root"
    root.mkdir()
    notebook(root / "teach.ipynb", [*GRAMMAR_CELLS, BUDGET_CELL])
    with jh.jupyter_lab(root, tmp_path) as url, jh.browser() as page:
        page.set_viewport_size(VIEWPORT)
        page.goto(f"{url}/lab/tree/teach.ipynb?reset", timeout=120_000)
        jh.restart_and_run_all(page)
        lab = LabPage(page)
        wait_for(page, lambda: jh.symbol_count(page) == 4 and "new runs" in lab.status(), 180, "four points")
        jh.wait_idle(page)
        # The file browser is open beside the notebook, as a teacher has it.
        if not page.locator("#filebrowser").is_visible():
            page.keyboard.press("Control+Shift+F")
        wait_for(page, lambda: page.locator("#filebrowser").is_visible(), 30, "the file browser")
        chart_and_legends_fit(page, page.locator(".tx-lab .vega-embed").first, "lab, file browser open")
        jh.shot(page, "teach-sidebar-open")
        # Narrower (a 1024 px projector, the file browser still open): the controls go above the chart,
        # which stays whole, legends included.
        page.set_viewport_size(NARROW)
        chart_and_legends_fit(page, page.locator(".tx-lab .vega-embed").first, "lab, narrow", NARROW)
        controls = page.locator(".tx-lab .tx-controls").first.bounding_box()
        assert below(controls, page.locator(".tx-lab .vega-embed").first.bounding_box()), controls
        jh.shot(page, "teach-narrow")
        page.set_viewport_size(VIEWPORT)

        # One colour per model, in the lab's chart, the CLI's and the budget explorer's.
        charts = page.locator(".vega-embed")
        page.locator(".jp-Cell").last.scroll_into_view_if_needed()
        errors = page.locator(".jp-Cell [data-mime-type='application/vnd.jupyter.stderr']")
        wait_for(page, lambda: charts.count() >= 3 or errors.count() > 0, 240, "the CLI chart and the budget explorer")
        assert errors.count() == 0, errors.first.inner_text()[-2000:]
        fills = [symbol_fills(page, charts.nth(i)) for i in range(3)]
        for model, colour in PALETTE.items():
            assert all(f.get(model) == {colour} for f in fills), fills

        # The budget explorer beside the file browser: chart and legends inside the window, and the chart
        # stays put when a budget move changes the card's text.
        app = page.locator(".tx-budget-app").first
        embed = app.locator(".vega-embed").first
        before = chart_and_legends_fit(page, embed, "budget explorer, file browser open")[0]
        card = app.locator(".budget-card").first.inner_text()
        app.locator(".widget-hslider:has(label:text-is('budget')) .noUi-handle").first.focus()
        for _ in range(12):
            page.keyboard.press("ArrowLeft")
        wait_for(page, lambda: app.locator(".budget-card").first.inner_text() != card, 60, "the budget card to change")
        time.sleep(1)
        after = embed.bounding_box()
        assert abs(after["x"] - before["x"]) < 1 and abs(after["y"] - before["y"]) < 1, (before, after)
        jh.shot(page, "teach-budget-explorer")
        # A clicked point is highlighted (a larger point with the dark ring, as in the lab).
        ring = embed.locator("g.mark-symbol.role-mark path[stroke='#000000']")
        assert ring.count() == 0
        for point in embed.locator("g.mark-symbol.role-mark path").all():
            point.click(force=True)
            try:
                wait_for(page, lambda: ring.count() == 1, 5, "the clicked point's ring")
                break
            except AssertionError:
                continue
        assert ring.count() == 1
        page.set_viewport_size(NARROW)  # narrow: the card goes below the chart, the chart stays whole
        chart_and_legends_fit(page, embed, "budget explorer, narrow", NARROW)
        assert below(embed.bounding_box(), app.locator(".budget-card").first.bounding_box())
        assert below(app.locator(".widget-hslider").first.bounding_box(), embed.bounding_box())
        page.set_viewport_size(VIEWPORT)

        # The user sets a budget; it stays through a model removed and re-added and a task change.
        lab_chart = page.locator(".tx-lab .vega-embed").first
        lab_chart.scroll_into_view_if_needed()
        box, card = lab_chart.bounding_box(), lab.card()
        handle = lab.slider("budget").locator(".noUi-handle").first
        handle.focus()
        for _ in range(30):
            page.keyboard.press("ArrowLeft")
        wait_for(page, lambda: "≤" in lab.budget_readout(), 30, "a budget")
        time.sleep(1)
        budget = lab.budget_readout()
        moved = lab_chart.bounding_box()  # the card's text changed; the chart did not move
        assert lab.card() != card and abs(moved["x"] - box["x"]) < 1 and abs(moved["y"] - box["y"]) < 1, (box, moved)
        models = page.locator(".tx-lab .widget-select-multiple:has(label:text-is('models')) select").first
        def offsets():  # where the chart and the status line sit inside the lab (the page may scroll)
            root = page.locator(".tx-lab").first.bounding_box()
            parts = [lab_chart.bounding_box(), page.locator(".tx-lab .tx-status").first.bounding_box()]
            return [(round(b["x"] - root["x"]), round(b["y"] - root["y"])) for b in parts]

        before = offsets()
        models.select_option(["zoo-s"])
        wait_for(page, lambda: jh.symbol_count(page) == 2, 120, "one model")
        assert offsets() == before  # a refresh with another card, legend and status: nothing moved
        models.select_option(["zoo-xs", "zoo-s"])
        wait_for(page, lambda: jh.symbol_count(page) == 4, 120, "two models again")
        assert lab.budget_readout() == budget and offsets() == before, (before, offsets())
        page.locator(".tx-lab .widget-dropdown:has(label:text-is('task')) select").first.select_option("sort")
        wait_for(page, lambda: "new runs" in lab.status() or "all in the store" in lab.status(), 180, "sort's runs")
        jh.wait_idle(page)
        time.sleep(2)
        assert lab.budget_readout() == budget, (budget, lab.budget_readout())
        jh.shot(page, "teach-after-task-change")


def test_no_notebook_is_marked_unsaved_when_it_opens(tmp_path):
    """Every notebook of the workshop (lessons and app pages), opened in JupyterLab as a learner opens it:
    once its kernel is up and idle, the tab carries no unsaved mark (JupyterLab writes the kernel's
    metadata into a notebook that lacks it, and a learner closing it is then asked to save)."""
    root = tmp_path / "root"
    shutil.copytree(ROOT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.ipynb"))
    assert len(names) >= 14, names
    dirty = []
    with jh.jupyter_lab(root, tmp_path) as url, jh.browser() as page:
        page.set_viewport_size(VIEWPORT)
        for name in names:
            page.goto(f"{url}/lab/tree/{name}?reset", timeout=120_000)
            page.wait_for_selector(".jp-Notebook", timeout=120_000)
            jh.wait_idle(page)
            time.sleep(2)
            if page.locator(".jp-mod-dirty").count():
                dirty.append(name)
                jh.shot(page, "dirty-" + name.replace("/", "-"))
    assert dirty == [], dirty


APPS = {  # app page -> its title, the widget's root, the card, a control, code that must not show
    "explorer": ("The Trade-off Explorer", ".tx-lab", ".tx-card", ".widget-dropdown", "Lab(ex.Store()"),
    "budget": ("What does a compute budget buy?", ".tx-budget-app", ".budget-card", ".widget-hslider",
               "BudgetExplorer(rows"),
}


@pytest.mark.parametrize("app", list(APPS))
def test_voila_first_screen_is_the_explorer(tmp_path, app):
    """The app pages: a title, one sentence, the controls, the card and the chart with its legends on the
    first screen (1400x900, nothing scrolled); no code, no progress bar once idle, no stderr, no editing
    prompt. The store starts empty: the page makes its runs itself, quietly."""
    title, root, card, control, code = APPS[app]
    argv = [sys.executable, "-m", "voila", f"notebooks/app/{app}.ipynb", "--no-browser", "--Voila.ip=127.0.0.1"]
    with jh.server(argv, ROOT, tmp_path, "/voila/static/voila.js") as url, jh.browser() as page:
        page.set_viewport_size(VIEWPORT)
        page.goto(url + "/", timeout=600_000)
        page.wait_for_selector(f"{root} .vega-embed svg", timeout=600_000)
        if app == "explorer":
            wait_for(page, lambda: "new runs" in page.locator(".tx-lab .tx-status").inner_text()
                     or "all in the store" in page.locator(".tx-lab .tx-status").inner_text(), 300, "the app's runs")
        time.sleep(1)
        jh.shot(page, f"voila-{app}-first-screen")
        text = page.inner_text("body")
        assert title in text and "double-click" not in text.lower(), text[:500]
        assert "import torch" not in text and code not in text  # no code shown
        assert all(not e.is_visible() for e in page.locator(".jp-InputArea-editor, .cm-editor").all())
        assert page.evaluate("window.scrollY") == 0
        embed = page.locator(f"{root} .vega-embed").first
        boxes = [embed.bounding_box(), *(g.bounding_box() for g in embed.locator("svg g.role-legend").all())]
        assert len(boxes) >= 3, boxes  # the chart, the model legend, the technique legend
        for sel in (f"{root} {card}", f"{root} {control}"):
            boxes.append(page.locator(sel).first.bounding_box())
        for what, box in zip(["chart", "legend", "legend", "card", "control"], boxes[:1] + boxes[1:3] + boxes[-2:]):
            fits(box, f"{app} {what}")
        print(f"voila {app}: chart, legends, card, control at 1400x900 "
              f"{[{k: round(v) for k, v in b.items()} for b in boxes]}")
        assert all(not p.is_visible() for p in page.locator(".widget-progress, .progress").all())
        stderr = page.locator("[data-mime-type='application/vnd.jupyter.stderr']")
        assert stderr.count() == 0, stderr.first.inner_text()[-2000:]
