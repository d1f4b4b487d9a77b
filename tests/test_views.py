"""The detail views teach: a long example by default, the configuration named, a colour key, cells a
room can see."""
from __future__ import annotations

import re
from pathlib import Path

from widgets.tokens import ExitMapView, SpecStreamView

HERE = Path(__file__).resolve().parent.parent / "widgets"


def test_the_exit_map_shows_the_longest_example_and_names_its_configuration():
    row = {"model": "zoo-l", "task": "addition", "n_examples": 3, "model_layers": 8, "knob_criterion": "max_prob",
           "knob_threshold": 0.95, "exit_layers": [[1, 1], [3, 2, 2, 4, 1, 1, 1], [2, 2, 1]],
           "exit_tokens": [["8", "<eos>"], list("861000") + ["<eos>"], ["4", "1", "<eos>"]]}
    view = ExitMapView.from_row(row)
    assert view.exit_layers == [3, 2, 2, 4, 1, 1, 1] and view.tokens[0] == "8"
    assert "zoo-l" in view.title and "0.95" in view.title and "problem 2 of 3" in view.title
    assert ExitMapView.from_row(row, example=0).exit_layers == [1, 1]


def test_cells_are_at_least_20_px_and_every_view_draws_a_colour_key():
    css = (HERE / "views.css").read_text()
    cell = re.search(r"\.tx-grid td \{[^}]*width: (\d+)px; height: (\d+)px", css)
    assert cell and int(cell[1]) >= 20 and int(cell[2]) >= 20
    for js in ("exit_map.js", "spec_stream.js"):
        assert "tx-key" in (HERE / js).read_text(), js


def test_the_token_stream_names_the_draft_and_its_length():
    row = {"model": "zoo-l", "task": "addition", "knob_draft": "zoo-xs", "knob_draft_len": 4,
           "spec_trace": [{"accepted": ["8", "6"], "rejected": ["1"], "bonus": "2"}]}
    view = SpecStreamView.from_row(row)
    assert "zoo-xs" in view.title and "draft length 4" in view.title and view.calls[0]["bonus"] == "2"
