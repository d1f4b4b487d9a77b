"""Tasks: seeded example generators, exact verifiers, difficulty levels.

Each generative task has a model-facing format (what the zoo was trained on)
and a display format (what a learner sees). Arithmetic is shown as ``123+45``
but fed to the model least-significant digit first and zero-padded to a fixed
width (``32100+54000=``), because a small transformer then computes each
answer digit from aligned inputs and the carry just written; see
shared/ZOO-NOTES.md for what the plain format cost.

Same seed, same examples on any machine: generators use `random.Random(seed)`
only (Python's Mersenne Twister is specified and platform independent).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable, Sequence

from explorer.registry import Registry

WIDTH = 5  # operands up to 5 digits


@dataclass(frozen=True)
class Example:
    prompt: str  # model-facing prompt
    answer: str  # model-facing reference completion (without end-of-sequence)
    display: str  # what a learner sees, e.g. "123+45"
    difficulty: int


@dataclass(frozen=True)
class Task:
    """A verifiable generative task, or a likelihood task on held-out text."""

    name: str
    kind: str  # "generate" or "likelihood"
    description: str
    difficulties: tuple[int, ...] = ()
    max_new_tokens: int = 0
    metric: str = "accuracy"
    _make: Callable[[random.Random, int], Example] | None = field(default=None, repr=False)

    def examples(self, n: int, seed: int = 0, difficulty: int | None = None) -> list[Example]:
        """`n` examples, difficulties cycled evenly unless one is given."""
        if self.kind != "generate":
            raise ValueError(f"task {self.name!r} is a likelihood task; it has no examples, use text()")
        n = check_n(n)
        if difficulty is not None and difficulty not in self.difficulties:
            raise ValueError(
                f"difficulty={difficulty!r} for task {self.name!r}; valid: {list(self.difficulties)}"
            )
        rng = random.Random(f"{self.name}:{seed}")
        levels = [difficulty] if difficulty is not None else list(self.difficulties)
        return [self._make(rng, levels[i % len(levels)]) for i in range(n)]

    def verify(self, example: Example, output: str) -> bool:
        """Exact match of the completion, read up to the first newline or end token."""
        return parse_completion(output) == example.answer

    def text(self) -> str:
        if self.kind != "likelihood":
            raise ValueError(f"task {self.name!r} is generative; it has no held-out text")
        return heldout_text()


# The most examples one run may ask for: a million-example run would hold every prompt
# and answer in memory for hours on a laptop. Sweep several seeds for more.
MAX_N = 100_000


def check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise ValueError(f"n={n!r}; n must be an integer from 1 to {MAX_N:,} (the number of examples)")
    return n


def parse_completion(output: str) -> str:
    """The answer part of a completion: up to the first newline, stripped."""
    return output.split("\n")[0].strip()


def _digits(rng: random.Random, d: int) -> int:
    return rng.randint(0, 9) if d == 1 else rng.randint(10 ** (d - 1), 10**d - 1)


def _rev(x: int, width: int) -> str:
    return str(x).zfill(width)[::-1]


def _operands(rng: random.Random, d: int) -> tuple[int, int]:
    # One operand has exactly d digits, the other 1..d, in random order.
    a, b = _digits(rng, d), _digits(rng, rng.randint(1, d))
    return (a, b) if rng.random() < 0.5 else (b, a)


def _addition(rng: random.Random, d: int) -> Example:
    a, b = _operands(rng, d)
    return Example(f"{_rev(a, WIDTH)}+{_rev(b, WIDTH)}=", _rev(a + b, WIDTH + 1), f"{a}+{b}", d)


def _subtraction(rng: random.Random, d: int) -> Example:
    a, b = sorted(_operands(rng, d), reverse=True)
    return Example(f"{_rev(a, WIDTH)}-{_rev(b, WIDTH)}=", _rev(a - b, WIDTH), f"{a}-{b}", d)


def _multiplication(rng: random.Random, d: int) -> Example:
    a, b = _digits(rng, d), rng.randint(0, 9)
    return Example(f"{_rev(a, WIDTH)}*{b}=", _rev(a * b, WIDTH + 1), f"{a}*{b}", d)


def _sort(rng: random.Random, d: int) -> Example:
    s = "".join(rng.choice("0123456789") for _ in range(2 * d))
    return Example(f"sort {s}:", "".join(sorted(s)), f"sort {s}", d)


def decode_number(model_text: str) -> int:
    """Read a least-significant-digit-first answer back as a number (for display)."""
    return int(model_text[::-1])


tasks: Registry[Task] = Registry("task")
for _task in (
    Task("addition", "generate", "a+b, operands of 1 to 5 digits (difficulty = digits)",
         (1, 2, 3, 4, 5), WIDTH + 2, _make=_addition),
    Task("subtraction", "generate", "a-b with a >= b, 1 to 5 digits (difficulty = digits)",
         (1, 2, 3, 4, 5), WIDTH + 1, _make=_subtraction),
    Task("multiplication", "generate", "a*b, a of 1 to 5 digits, b one digit (difficulty = digits of a)",
         (1, 2, 3, 4, 5), WIDTH + 2, _make=_multiplication),
    Task("sort", "generate", "sort a string of 2*d digits (difficulty d = 1..5)",
         (1, 2, 3, 4, 5), 2 * 5 + 1, _make=_sort),
    Task("shakespeare", "likelihood", "bits per character on a held-out Shakespeare passage (64-char windows)",
         metric="bits_per_char"),
):
    tasks.register(_task.name)(_task)

GENERATIVE = ("addition", "subtraction", "multiplication", "sort")


def get(name: str) -> Task:
    return tasks.get(name)


def names() -> list[str]:
    return tasks.names()


def mixed(n: int, seed: int = 0) -> list[tuple[Task, Example]]:
    """The mixed evaluation set: tasks and difficulties in equal shares."""
    k = len(GENERATIVE)
    per = [get(t).examples(-(-check_n(n) // k), seed) for t in GENERATIVE]
    return [(get(GENERATIVE[i % k]), per[i % k][i // k]) for i in range(n)]


def heldout_text() -> str:
    """The held-out passage shipped in the package (never seen in training)."""
    return resources.files("explorer.zoo").joinpath("heldout.txt").read_text()


def verify_many(task: Task, examples: Sequence[Example], outputs: Sequence[str]) -> list[bool]:
    return [task.verify(e, o) for e, o in zip(examples, outputs)]
