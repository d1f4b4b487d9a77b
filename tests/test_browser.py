"""The lab in a real JupyterLab, in a real browser: render, move a slider, see the chart change."""
import json
import time
from pathlib import Path

import pytest

from tests import jupyter_harness as jh

pytestmark = pytest.mark.slow

LAB_CELL = """\
import os
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
torch.set_num_threads(1)
from widgets import Lab
lab = Lab(models=["zoo-xs", "zoo-s"], technique="quantize", bits=8, n=16)
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


def test_the_lab_redraws_when_the_bit_width_slider_moves(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    notebook(root / "lab.ipynb", [LAB_CELL])
    with jh.jupyter_lab(root, tmp_path) as url, jh.browser() as page:
        page.goto(f"{url}/lab/tree/lab.ipynb?reset", timeout=120_000)
        jh.restart_and_run_all(page)
        # Baselines and 8-bit variants of both models: four points.
        wait_for(page, lambda: jh.symbol_count(page) == 4, 120, "four points on the frontier chart")
        jh.wait_idle(page)
        before = page.locator(".tx-lab .vega-embed svg").inner_html()
        jh.shot(page, "lab-before")
        handle = page.locator(".tx-lab .widget-hslider:has(label:text-is('bits')) .noUi-handle").first
        handle.focus()
        page.keyboard.press("ArrowLeft")  # 8 -> 6 bits
        wait_for(page, lambda: jh.symbol_count(page) == 6, 120, "the 6-bit runs to be drawn")
        after = page.locator(".tx-lab .vega-embed svg").inner_html()
        jh.shot(page, "lab-after")
        assert after != before
        wait_for(page, lambda: "2 new runs" in page.locator(".tx-lab .tx-status").inner_text(), 60,
                 "the status line to report the two new runs")
        assert page.locator(".tx-lab .widget-hslider:has(label:text-is('bits')) .widget-readout").inner_text() == "6"
