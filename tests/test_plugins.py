"""A technique and a task written outside explorer/, in this file, run everywhere built-in ones
do: `ex.run`, `ex.sweep` (and sweep files), the lab's state and controls and its runner."""
import dataclasses

import pytest

import explorer as ex
from explorer.techniques import DECODES, Knob, Technique, technique, techniques


@dataclasses.dataclass(frozen=True)
class Truncate(Technique):
    """Budget forcing: stop every answer after `max_tokens` generated tokens."""

    max_tokens: int = 16

    def __post_init__(self):
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or not 1 <= self.max_tokens <= 64:
            raise ValueError(f"Truncate.max_tokens={self.max_tokens!r}; valid: an integer 1..64")

    def generate(self, model, prompts, *, max_new_tokens, seed):
        from explorer.generate import generate

        return generate(model.hf, model.tokenizer, prompts, max_new_tokens=min(max_new_tokens, self.max_tokens))

    def columns(self, model, generations):
        return {"truncated_at": self.max_tokens}


NAME = "truncate_test"
TASK = "sort_pairs_test"


def sorted_digits(reply: str, example) -> bool:
    """A verifier of our own: the reply's digits, spaces ignored, are the answer."""
    return reply.replace(" ", "").strip() == example.answer


@pytest.fixture()
def task():
    """Sort 2, 4 or 6 digits, in the zoo's own prompt form, checked by a function."""
    from explorer.tasks import Format, Problem, task as register_task, unregister

    def generate(rng, d):
        s = "".join(rng.choice("0123456789") for _ in range(2 * d))
        return Problem(f"sort {s}", d, (s,), "".join(sorted(s)))

    register_task(TASK, "sort 2*d digits, d = 1..3", difficulties=(1, 2, 3), formats={
        "zoo": Format(lambda p: f"sort {p.values[0]}:", lambda p: p.result, sorted_digits, 8)})(generate)
    yield TASK
    unregister(TASK)


@pytest.fixture()
def registered():
    technique(NAME, roles=[DECODES], axis="flops_per_token_analytic",
              knobs=[Knob("max_tokens", "max tokens", 16, range=(1, 64), step=1, unit="tokens")],
              sweep=[{"max_tokens": [2, 16]}])(Truncate)
    yield Truncate
    techniques.unregister(NAME)


def test_a_technique_and_a_task_defined_here_run_together(registered, task, tmp_path):
    row = ex.run("zoo-s", task, Truncate(max_tokens=8), n=16, repeats=1)
    assert row["task"] == TASK and row["technique"] == NAME and row["accuracy"] > 0  # the zoo can sort
    cut = ex.run("zoo-s", task, Truncate(max_tokens=1), n=16, repeats=1)
    assert cut["accuracy"] < row["accuracy"]
    rows = ex.sweep(["zoo-xs"], [task, "addition"], ex.grid(Truncate, max_tokens=[1, 8]), store=ex.Store(tmp_path / "s"),
                    n=8, progress=False)
    assert sorted(zip(rows["task"], rows["knob_max_tokens"])) == [("addition", 1), ("addition", 8), (TASK, 1), (TASK, 8)]


def test_a_technique_defined_here_runs_through_run_and_sweep(registered, tmp_path):
    short = ex.run("zoo-s", "addition", Truncate(max_tokens=2), n=16, repeats=1)
    full = ex.run("zoo-s", "addition", Truncate(max_tokens=16), n=16, repeats=1)
    assert short["technique"] == NAME and short["knob_max_tokens"] == 2 and short["truncated_at"] == 2
    assert short["tokens_generated"] <= 2 * 16 < full["tokens_generated"]
    assert short["accuracy"] < full["accuracy"]  # addition's answers need more than 2 tokens

    store = ex.Store(tmp_path / "s")
    rows = ex.sweep(["zoo-xs"], "addition", ex.grid(Truncate, max_tokens=[2, 16]), store=store, n=8, progress=False)
    assert sorted(rows["knob_max_tokens"].to_list()) == [2, 16] and set(rows["technique"]) == {NAME}
    # by name, as in a sweep file, and composed with a built-in technique
    from explorer.sweep import DEFAULT_SPEC, from_spec

    spec = from_spec({"techniques": [{"name": NAME, "max_tokens": [4]},
                                     {"compose": [{"name": "quantize", "bits": [8]}, {"name": NAME, "max_tokens": [4]}]}]})
    assert [t.name for t in spec["techniques"]] == [NAME, f"quantize+{NAME}"]
    assert not any(e.get("name") == NAME for e in DEFAULT_SPEC["techniques"])  # made before it registered


def test_a_technique_and_a_task_defined_here_are_in_the_lab(registered, task, tmp_path):
    from widgets.lab import Lab
    from widgets.state import LabState

    state = LabState(models=["zoo-xs"], technique=NAME, max_tokens=3, n=4, task=task)
    assert state.max_tokens == 3 and state.technique_config() == Truncate(max_tokens=3)
    assert state.cost_axis == "flops_per_token_analytic"  # the axis it declared
    state.max_tokens = 0
    assert state.max_tokens == 3 and "refused max_tokens=0: Truncate.max_tokens=0" in state.status

    lab = Lab(tmp_path / "s", state=state)
    lab.runner.wait(120)
    assert NAME in dict(lab.controls["technique"].options).values() and task in lab.controls["task"].options
    assert lab.controls["max_tokens"].description == "max tokens" and lab.controls["max_tokens"].max == 64
    assert lab.controls["max_tokens"] in lab.knobs.children  # its panel
    rows = lab.frontier.widget.spec["datasets"]["rows"]
    assert {r["technique"] for r in rows} == {"baseline", NAME}  # it ran from the lab
    lab.controls["max_tokens"].value = 5
    lab.runner.wait(120)
    assert any("max_tokens=5" in r["label"] for r in lab.frontier.widget.spec["datasets"]["rows"])
    lab.runner.close()


def test_the_registry_checks_what_registers_and_suggests_names():
    with pytest.raises(KeyError, match="did you mean 'quantize'"):
        techniques.get("quantise")

    class NotATechnique:
        pass

    with pytest.raises(TypeError, match="must derive from"):
        technique("nope")(NotATechnique)

    @dataclasses.dataclass
    class Loose(Technique):
        pass

    with pytest.raises(TypeError, match="frozen dataclass"):
        technique("loose")(Loose)

    @dataclasses.dataclass(frozen=True)
    class Decodes(Technique):
        def generate(self, model, prompts, *, max_new_tokens, seed):
            raise NotImplementedError

    with pytest.raises(ValueError, match="overrides generate, so declare the role 'decodes'"):
        technique("decodes_undeclared")(Decodes)

    @dataclasses.dataclass(frozen=True)
    class Fresh(Truncate):
        pass

    with pytest.raises(ValueError, match="knob 'width' is not a field of Fresh"):
        technique("bad_knob", roles=[DECODES], knobs=[Knob("width", "width", 1)])(Fresh)
    with pytest.raises(ValueError, match="name it lazily as 'module:Class'"):
        technique("bad_view", roles=[DECODES], view="widgets.tokens.ExitMapView")(Fresh)
    assert not {"nope", "loose", "decodes_undeclared", "bad_knob", "bad_view"} & set(techniques)


def test_every_builtin_technique_declares_roles_knobs_and_an_axis():
    from explorer.metrics import COST_AXES
    from explorer.techniques import declarations

    decls = {d.name: d for d in declarations()}
    assert {"quantize", "early_exit", "speculative", "self_speculative", "sampling"} <= set(decls)
    for d in decls.values():
        assert d.axis in COST_AXES, d
        for k in d.knobs:
            assert d.config(**{k.name: k.default}) is not None  # each default is valid for its config
        if d.view:
            assert d.detail_view().__name__ == d.view.split(":")[1]
    assert decls["sampling"].read_at is not None and [f.name for f in decls["sampling"].filters] == ["k", "aggregator"]


def test_the_widgets_name_no_technique():
    """widgets/ reads techniques from the registry: no technique name is spelled there."""
    import pathlib
    import re

    names = [n for n in techniques.names() if n != "baseline"] + ["prune"]
    pattern = re.compile("|".join(rf"[\"']{n}[\"']" for n in names))
    here = pathlib.Path(__file__).resolve().parent.parent / "widgets"
    offenders = [f"{p.name}: {m.group(0)}" for p in sorted(here.glob("*.py")) for m in pattern.finditer(p.read_text())]
    assert offenders == []
    assert not [p.name for p in here.glob("*.py") if "read_at_k" in p.read_text()]
