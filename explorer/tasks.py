"""Tasks: plug-ins that generate seeded problems, render them in a format, and verify replies.

A task registers by decorator with its generator, the formats it offers and,
per format, the verifier that reads a reply:

    @task("addition", "a+b ...", difficulties=(1, 2, 3, 4, 5),
          formats={"zoo": Format(zoo_prompt, zoo_answer, "exact", 7),
                   "natural": Format(question, str_answer, "number", 16, chat=True)})
    def addition(rng, d) -> Problem: ...

Two formats ship with the built-in tasks:
- ``zoo``: what the embedded family was trained on. Arithmetic goes least
  significant digit first, zero-padded (``32100+54000=`` for 123+45), because a
  small transformer then computes each answer digit from aligned inputs and the
  carry it just wrote (shared/ZOO-NOTES.md). Verified by exact match.
- ``natural``: the ordinary written question (``What is 123+45? Answer with the
  number only.``) for pretrained models. It goes through the model's chat
  template when it has one and behind a few-shot prefix when it has none, and
  the reply is read by parsing (its last number; its digits for sort).

`get("addition")` leaves the format open; `run` binds it to the model
(`task.for_model(model)`: zoo models get ``zoo``, any other model ``natural``),
and the row records it as ``task_format``. `task.with_format("natural")` pins it.
A user task can also be a JSONL file of ``{"prompt", "answer"}`` lines with a
named verifier: `from_jsonl(path, verifier="number")`.

Same seed, same problems on any machine and in every format: generators use
`random.Random(seed)` only (Python's Mersenne Twister is specified).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from explorer.registry import Registry

WIDTH = 5  # operands up to 5 digits
ZOO, NATURAL = "zoo", "natural"
FEW_SHOT = 3  # solved examples before the question, for a model without a chat template


@dataclass(frozen=True)
class Example:
    prompt: str  # model-facing prompt (chat template or few-shot prefix included)
    answer: str  # reference answer in the format's own form (without end-of-sequence)
    display: str  # what a learner sees, e.g. "123+45"
    difficulty: int
    choices: tuple[str, ...] = ()  # for the "choice" verifier


@dataclass(frozen=True)
class Problem:
    """A format-neutral problem: what a generator returns; a format renders it."""

    display: str
    difficulty: int
    values: tuple = ()  # the operands (or the string to sort)
    result: Any = None  # the answer as a value
    choices: tuple[str, ...] = ()


# ---------------------------------------------------------------- verifiers

@dataclass(frozen=True)
class Verifier:
    """Reads a reply into a canonical answer (`parse`) and judges it against the reference (`check`)."""

    name: str
    parse: Callable[[str, Example], str | None]
    check: Callable[[str | None, Example], bool] = lambda got, e: got is not None and got == e.answer


verifiers: Registry[Verifier] = Registry("verifier")

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_DIGITS = re.compile(r"\d(?:[\s,]*\d)*")


def last_number(reply: str, example: Example | None = None) -> str | None:
    """The last number in a reply, thousands commas dropped ("1,234" -> "1234"; "is 7." -> "7")."""
    found = _NUMBER.findall(reply)
    if not found:
        return None
    text = found[-1].replace(",", "")
    return text[:-2] if text.endswith(".0") else text


def last_digits(reply: str, example: Example | None = None) -> str | None:
    """The last run of digits, separators between them dropped ("1, 3, 4" -> "134")."""
    found = _DIGITS.findall(reply)
    return re.sub(r"\D", "", found[-1]) if found else None


def first_choice(reply: str, example: Example | None) -> str | None:
    """The choice named first in the reply (whole word, any case)."""
    if example is None or not example.choices:
        return reply.strip()
    hits = [(m.start(), c) for c in example.choices
            for m in [re.search(rf"(?<!\w){re.escape(c)}(?!\w)", reply, re.I)] if m]
    return min(hits)[1] if hits else None


def _same_number(got: str | None, e: Example) -> bool:
    try:
        return got is not None and float(got) == float(e.answer)
    except ValueError:
        return False


for _v in (
    Verifier("exact", lambda reply, e: reply.strip()),
    Verifier("number", last_number, _same_number),
    Verifier("digits", last_digits),
    Verifier("choice", first_choice, lambda got, e: got is not None and got.lower() == e.answer.lower()),
):
    verifiers.register(_v.name)(_v)


def as_verifier(v: str | Verifier | Callable[[str, Example], bool]) -> Verifier:
    """A verifier by name, as is, or from a function `(reply, example) -> bool`."""
    if isinstance(v, Verifier):
        return v
    if isinstance(v, str):
        return verifiers.get(v)
    if callable(v):
        name = getattr(v, "__name__", "custom")
        return Verifier(name, lambda reply, e: reply.strip(), lambda got, e, fn=v: bool(fn(got or "", e)))
    raise ValueError(f"verifier={v!r}; give a name ({', '.join(verifiers.names())}), a Verifier, "
                     "or a function (reply, example) -> bool")


# ---------------------------------------------------------------- formats and tasks

@dataclass(frozen=True)
class Format:
    """How a problem is put to a model and how its reply is read.

    `chat=True` marks the ordinary written form: it goes through the model's chat
    template (or, without one, behind a few-shot prefix of solved problems).
    """

    prompt: Callable[[Problem], str]
    answer: Callable[[Problem], str]
    verifier: str | Verifier | Callable = "exact"
    max_new_tokens: int = 16
    chat: bool = False

    def __post_init__(self):
        object.__setattr__(self, "verifier", as_verifier(self.verifier))
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"Format.max_new_tokens={self.max_new_tokens!r}; must be a positive integer")


@dataclass(frozen=True)
class Task:
    """A verifiable generative task in one or more formats, or a likelihood task on held-out text.

    `format` None means "the model's": `for_model` binds it before a run.
    """

    name: str
    kind: str  # "generate" or "likelihood"
    description: str
    difficulties: tuple[int, ...] = ()
    metric: str = "accuracy"
    generator: Callable[[random.Random, int], Problem] | None = field(default=None, repr=False)
    formats: Mapping[str, Format] = field(default_factory=dict, repr=False, hash=False)
    format: str | None = None
    wrap: Callable[[str], str] | None = field(default=None, repr=False, compare=False)
    first_line: bool = True  # read the reply up to its first newline (zoo format, few-shot prompts)
    _examples: Callable[[int, int, int | None], list[Problem]] | None = field(default=None, repr=False)
    # A task read from a file: its content's sha256 prefix, in the row's key (an edited file is a new task).
    source_fingerprint: str = field(default="", repr=False)

    def __post_init__(self):
        if self.kind not in ("generate", "likelihood"):
            raise ValueError(f"Task.kind={self.kind!r}; valid: 'generate', 'likelihood'")
        if self.format is not None and self.format not in self.formats:
            raise ValueError(f"format={self.format!r} for task {self.name!r}; it offers: {', '.join(self.formats)}")

    # -- formats
    @property
    def fmt(self) -> Format:
        if not self.formats:
            raise ValueError(f"task {self.name!r} is a likelihood task; it has no formats")
        return self.formats[self.format or next(iter(self.formats))]

    @property
    def format_name(self) -> str | None:
        return (self.format or next(iter(self.formats))) if self.formats else None

    @property
    def max_new_tokens(self) -> int:
        return self.fmt.max_new_tokens if self.formats else 0

    @property
    def verifier(self) -> Verifier:
        return self.fmt.verifier

    def with_format(self, name: str) -> "Task":
        """This task pinned to one of its formats ("zoo", "natural", ...)."""
        if name not in self.formats:
            raise ValueError(f"format={name!r} for task {self.name!r}; it offers: {', '.join(self.formats) or 'none'}")
        return dataclasses.replace(self, format=name, wrap=None, first_line=not self.formats[name].chat)

    def for_model(self, model) -> "Task":
        """Bound to `model`: its format (unless pinned) and, for the written form, its prompt wrapper."""
        if self.kind != "generate":
            return self
        fmt = self.format or pick_format(self, model_format(model))
        bound = self.with_format(fmt)
        if not bound.fmt.chat:
            return bound
        tokenizer = model.tokenizer
        if getattr(tokenizer, "chat_template", None):
            return dataclasses.replace(bound, wrap=chat_wrapper(tokenizer), first_line=False)
        return dataclasses.replace(bound, wrap=few_shot_wrapper(bound), first_line=True)

    # -- problems
    def problems(self, n: int, seed: int = 0, difficulty: int | None = None) -> list[Problem]:
        if self.kind != "generate":
            raise ValueError(f"task {self.name!r} is a likelihood task; it has no examples, use text()")
        n = check_n(n)
        if difficulty is not None and difficulty not in self.difficulties:
            raise ValueError(
                f"difficulty={difficulty!r} for task {self.name!r}; valid: {list(self.difficulties)}"
            )
        if self._examples is not None:
            return self._examples(n, seed, difficulty)
        rng = random.Random(f"{self.name}:{seed}")
        levels = [difficulty] if difficulty is not None else list(self.difficulties)
        return [self.generator(rng, levels[i % len(levels)]) for i in range(n)]

    def render(self, p: Problem) -> Example:
        f = self.fmt
        prompt = f.prompt(p)
        return Example(self.wrap(prompt) if self.wrap else prompt, f.answer(p), p.display, p.difficulty, p.choices)

    def make(self, rng: random.Random, difficulty: int) -> Example:
        """One example from `rng` (the zoo's training batches draw this way)."""
        return self.render(self.generator(rng, difficulty))

    def examples(self, n: int, seed: int = 0, difficulty: int | None = None) -> list[Example]:
        """`n` examples in this task's format, difficulties cycled evenly unless one is given."""
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:  # 1.5 would seed a stream too
            raise ValueError(f"seed={seed!r}; give a non-negative integer such as 0")
        return [self.render(p) for p in self.problems(n, seed, difficulty)]

    # -- replies
    def reply(self, output: str) -> str:
        return parse_completion(output) if self.first_line else output.strip()

    def parse(self, output: str, example: Example | None = None) -> str | None:
        """The answer a reply gives, as the verifier reads it (what a majority vote counts)."""
        return self.verifier.parse(self.reply(output), example)

    def verify(self, example: Example, output: str) -> bool:
        v = self.verifier
        return v.check(v.parse(self.reply(output), example), example)

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


# ---------------------------------------------------------------- binding to a model

def model_format(model) -> str:
    """The format a model reads: "zoo" for the embedded family's character tokenizer, else "natural"."""
    from explorer import tokenizer as zoo_tok

    tokenizer = getattr(model, "tokenizer", model)
    vocab = zoo_tok.vocab()
    if len(tokenizer) == len(vocab) and tokenizer.get_vocab() == vocab:
        return ZOO
    return NATURAL


def pick_format(task: Task, wanted: str) -> str:
    if wanted in task.formats:
        return wanted
    return next(iter(task.formats))  # a task offering one form (a JSONL file) is asked in it


def chat_wrapper(tokenizer) -> Callable[[str], str]:
    def wrap(question: str) -> str:
        return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    return wrap


def few_shot_wrapper(task: Task) -> Callable[[str], str]:
    """Solved problems of the same task (a seed no evaluation uses), then the question."""
    f = task.fmt
    try:
        shots = task.problems(FEW_SHOT, seed=-1, difficulty=task.difficulties[0] if task.difficulties else None)
    except ValueError:  # a task file with fewer problems than shots
        shots = []
    prefix = "".join(f"Q: {f.prompt(p)}\nA: {f.answer(p)}\n\n" for p in shots)

    def wrap(question: str) -> str:
        return f"{prefix}Q: {question}\nA:"
    return wrap


# ---------------------------------------------------------------- registry

tasks: Registry[Task] = Registry("task", Task)


def register(t: Task) -> Task:
    """Register a task object under its name (the decorator `task` does this for a generator)."""
    tasks.register(t.name)(t)
    return t


def task(name: str, description: str, *, difficulties: Sequence[int] = (1,),
         formats: Mapping[str, Format]) -> Callable[[Callable[[random.Random, int], Problem]], Task]:
    """Decorator: register a generator `(rng, difficulty) -> Problem` as a task with its formats."""
    if not formats:
        raise ValueError(f"task {name!r}: give at least one format, e.g. {{'natural': Format(...)}}")

    def deco(generator):
        return register(Task(name, "generate", description, tuple(difficulties), generator=generator,
                             formats=dict(formats)))
    return deco


def get(name: str) -> Task:
    return tasks.get(name)


def names() -> list[str]:
    return tasks.names()


def generative() -> list[str]:
    """Every registered task that decodes (the lab's and the CLI's task list)."""
    return [n for n in tasks.names() if tasks.get(n).kind == "generate"]


def unregister(name: str) -> None:
    """Remove a user task (tests and notebooks that register one of their own clean up with this)."""
    tasks._items.pop(name, None)


# ---------------------------------------------------------------- the built-in tasks

def _digits(rng: random.Random, d: int) -> int:
    return rng.randint(0, 9) if d == 1 else rng.randint(10 ** (d - 1), 10**d - 1)


def _rev(x: int, width: int) -> str:
    return str(x).zfill(width)[::-1]


def _operands(rng: random.Random, d: int) -> tuple[int, int]:
    # One operand has exactly d digits, the other 1..d, in random order.
    a, b = _digits(rng, d), _digits(rng, rng.randint(1, d))
    return (a, b) if rng.random() < 0.5 else (b, a)


def _arithmetic(sign: str, max_new_tokens: int, pad_b: bool = True) -> dict[str, Format]:
    def zoo_prompt(p):
        a, b = p.values
        # The zoo learned multiplication's one-digit factor unpadded ("32100*4="), as it was trained.
        return f"{_rev(a, WIDTH)}{sign}{_rev(b, WIDTH) if pad_b else b}="

    return {
        ZOO: Format(zoo_prompt, lambda p: _rev(p.result, max_new_tokens - 1), "exact", max_new_tokens),
        NATURAL: Format(lambda p: f"What is {p.display}? Answer with the number only.", lambda p: str(p.result),
                        "number", 16, chat=True),
    }


@task("addition", "a+b, operands of 1 to 5 digits (difficulty = digits)", difficulties=(1, 2, 3, 4, 5),
      formats=_arithmetic("+", WIDTH + 2))
def addition(rng: random.Random, d: int) -> Problem:
    a, b = _operands(rng, d)
    return Problem(f"{a}+{b}", d, (a, b), a + b)


@task("subtraction", "a-b with a >= b, 1 to 5 digits (difficulty = digits)", difficulties=(1, 2, 3, 4, 5),
      formats=_arithmetic("-", WIDTH + 1))
def subtraction(rng: random.Random, d: int) -> Problem:
    a, b = sorted(_operands(rng, d), reverse=True)
    return Problem(f"{a}-{b}", d, (a, b), a - b)


@task("multiplication", "a*b, a of 1 to 5 digits, b one digit (difficulty = digits of a)",
      difficulties=(1, 2, 3, 4, 5), formats=_arithmetic("*", WIDTH + 2, pad_b=False))
def multiplication(rng: random.Random, d: int) -> Problem:
    a, b = _digits(rng, d), rng.randint(0, 9)
    return Problem(f"{a}*{b}", d, (a, b), a * b)


@task("sort", "sort a string of 2*d digits (difficulty d = 1..5)", difficulties=(1, 2, 3, 4, 5), formats={
    ZOO: Format(lambda p: f"sort {p.values[0]}:", lambda p: p.result, "exact", 2 * 5 + 1),
    NATURAL: Format(lambda p: f"Sort the digits of {p.values[0]} from smallest to largest. "
                              "Answer with the digits only.", lambda p: p.result, "digits", 32, chat=True),
})
def sort(rng: random.Random, d: int) -> Problem:
    s = "".join(rng.choice("0123456789") for _ in range(2 * d))
    return Problem(f"sort {s}", d, (s,), "".join(sorted(s)))


register(Task("shakespeare", "likelihood",
              "bits per character on a held-out Shakespeare passage (64-char windows)", metric="bits_per_char"))

GENERATIVE = ("addition", "subtraction", "multiplication", "sort")  # the built-ins (the zoo's training mix)


def decode_number(model_text: str) -> int:
    """Read a least-significant-digit-first answer back as a number (for display)."""
    return int(model_text[::-1])


# ---------------------------------------------------------------- user tasks from a file

def from_jsonl(path: str | Path, *, name: str | None = None, verifier: str | Verifier | Callable = "exact",
               max_new_tokens: int = 32, description: str | None = None, register_it: bool = True) -> Task:
    """A task from a JSONL file of {"prompt", "answer"} lines (optional "difficulty", "choices").

    The prompt is the written question: a chat model gets it through its chat template.
    `n` examples are drawn without replacement, seeded, so `n` may not exceed the file's lines.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {str(path)!r} does not exist")
    items = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{i}: not JSON ({err.msg})") from None
        if not isinstance(rec, dict) or not {"prompt", "answer"} <= rec.keys():
            raise ValueError(f"{path}:{i}: each line needs \"prompt\" and \"answer\"; got {line[:80]!r}")
        items.append(Problem(str(rec["prompt"]), int(rec.get("difficulty", 1)), (str(rec["prompt"]),),
                             str(rec["answer"]), tuple(map(str, rec.get("choices", ())))))
    if not items:
        raise ValueError(f"task file {str(path)!r} has no problems")

    def draw(n: int, seed: int, difficulty: int | None) -> list[Problem]:
        pool = [p for p in items if difficulty is None or p.difficulty == difficulty]
        if n > len(pool):
            raise ValueError(f"n={n} but task {name!r} has {len(pool)} problems in {path}; pass n <= {len(pool)}")
        return random.Random(f"{name}:{seed}").sample(pool, n)

    name = name or path.stem
    fmt = Format(lambda p: p.values[0], lambda p: p.result, verifier, max_new_tokens, chat=True)
    t = Task(name, "generate", description or f"{len(items)} problems from {path.name}",
             tuple(sorted({p.difficulty for p in items})), formats={NATURAL: fmt}, _examples=draw,
             source_fingerprint=hashlib.sha256(path.read_bytes()).hexdigest()[:16])
    return register(t) if register_it else t


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
