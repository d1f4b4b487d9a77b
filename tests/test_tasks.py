import pytest

from explorer import tasks as T


@pytest.mark.parametrize("name", T.GENERATIVE)
def test_same_seed_same_examples_other_seed_others(name):
    task = T.get(name)
    assert task.examples(30, seed=7) == task.examples(30, seed=7)
    assert task.examples(30, seed=7) != task.examples(30, seed=8)


def test_examples_are_pinned_across_machines():
    # Python's Mersenne Twister is specified; these strings must never change.
    ex = T.get("addition").examples(3, seed=0)
    assert [e.display for e in ex] == [x.display for x in T.get("addition").examples(3, seed=0)]
    assert T.get("addition").examples(1, seed=1)[0].prompt == "30000+20000="


@pytest.mark.parametrize("name,op", [("addition", lambda a, b: a + b), ("subtraction", lambda a, b: a - b),
                                     ("multiplication", lambda a, b: a * b)])
def test_arithmetic_answers_are_right(name, op):
    sign = {"addition": "+", "subtraction": "-", "multiplication": "*"}[name]
    for e in T.get(name).examples(200, seed=1):
        a, b = map(int, e.display.split(sign))
        assert T.decode_number(e.answer) == op(a, b)
        assert op(a, b) >= 0
        assert max(len(str(a)), len(str(b))) == e.difficulty


def test_sort_answers_are_sorted_inputs():
    for e in T.get("sort").examples(50, seed=2):
        digits = e.display.split()[1]
        assert e.answer == "".join(sorted(digits)) and len(digits) == 2 * e.difficulty


@pytest.mark.parametrize("name", T.GENERATIVE)
def test_verifier_accepts_right_and_rejects_wrong(name):
    task = T.get(name)
    for e in task.examples(20, seed=4):
        assert task.verify(e, e.answer)
        assert task.verify(e, e.answer + "\ntrailing text")
        wrong = e.answer[:-1] + str((int(e.answer[-1]) + 1) % 10)
        assert not task.verify(e, wrong)
        assert not task.verify(e, e.answer + "0")
        assert not task.verify(e, "")


def test_difficulties_cycle_evenly():
    ex = T.get("subtraction").examples(50, seed=0)
    assert [sum(e.difficulty == d for e in ex) for d in range(1, 6)] == [10] * 5
    assert {e.difficulty for e in T.get("sort").examples(10, seed=0, difficulty=3)} == {3}


@pytest.mark.parametrize("bad", [0, -3, 2.5, "ten", True, None])
def test_bad_n_is_refused_with_the_value(bad):
    with pytest.raises(ValueError, match=f"n={bad!r}"):
        T.get("addition").examples(bad)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown task 'additon'; did you mean 'addition'.*known: addition, subtraction"):
        T.get("additon")


def test_bad_difficulty_names_the_valid_levels():
    with pytest.raises(ValueError, match=r"difficulty=9 .*valid: \[1, 2, 3, 4, 5\]"):
        T.get("addition").examples(3, difficulty=9)


def test_likelihood_task_has_the_held_out_text_and_no_examples():
    task = T.get("shakespeare")
    assert task.kind == "likelihood" and len(task.text()) >= 5000
    with pytest.raises(ValueError, match="likelihood task"):
        task.examples(3)


def test_mixed_set_takes_tasks_in_equal_shares():
    mixed = T.mixed(40, seed=0)
    assert [sum(t.name == name for t, _ in mixed) for name in T.GENERATIVE] == [10] * 4


# -- tasks as plug-ins: formats, verifiers, user tasks ------------------------------------

def test_the_same_seed_gives_the_same_problems_in_both_formats():
    task = T.get("addition")
    zoo, natural = task.with_format("zoo").examples(20, seed=3), task.with_format("natural").examples(20, seed=3)
    assert [e.display for e in zoo] == [e.display for e in natural]
    a, b = map(int, natural[0].display.split("+"))
    assert natural[0].prompt == f"What is {a}+{b}? Answer with the number only." and natural[0].answer == str(a + b)
    assert T.get("addition").examples(1, seed=1)[0].prompt == "30000+20000="  # unbound: the zoo's form


@pytest.mark.parametrize("reply,ok", [("12", True), ("The answer is 12.", True), ("3 + 9 = 12", True),
                                      ("12\n", True), ("1,2", True), ("13", False), ("", False),
                                      ("12 or 13", False), ("twelve", False)])
def test_number_verifier_reads_the_last_number(reply, ok):
    task = T.get("addition").with_format("natural")
    e = T.Example("q", "12", "3+9", 1)
    assert task.verify(e, reply) is ok


def test_sort_in_words_is_read_as_its_digits():
    task = T.get("sort").with_format("natural")
    e = task.examples(1, seed=0, difficulty=2)[0]
    assert task.verify(e, e.answer) and task.verify(e, "Sorted: " + ", ".join(e.answer))
    assert not task.verify(e, e.answer[::-1] if e.answer != e.answer[::-1] else e.answer + "9")


def test_zoo_models_get_the_zoo_format_and_others_the_written_one(tiny_model):
    assert T.get("addition").for_model(tiny_model).format == "zoo"
    assert T.get("addition").for_model(tiny_model).examples(1, seed=1)[0].prompt == "30000+20000="

    class Chat:  # a tokenizer with a chat template, as a pretrained model has
        chat_template = "x"

        def __len__(self):
            return 49152

        def apply_chat_template(self, msgs, tokenize, add_generation_prompt):
            return f"<user>{msgs[0]['content']}</user><assistant>"

    class Plain(Chat):
        chat_template = None

    chat = T.get("addition").for_model(type("M", (), {"tokenizer": Chat()})())
    e = chat.examples(1, seed=1)[0]
    assert chat.format == "natural" and e.prompt.startswith("<user>What is ") and e.prompt.endswith("<assistant>")
    assert chat.verify(e, f"Sure.\nThe sum is {e.answer}")  # a chat reply is read whole
    plain = T.get("addition").for_model(type("M", (), {"tokenizer": Plain()})())
    p = plain.examples(1, seed=1)[0].prompt
    assert p.count("Q: What is ") == T.FEW_SHOT + 1 and p.endswith("Answer with the number only.\nA:")
    assert plain.verify(plain.examples(1, seed=1)[0], f" {e.answer}\n\nQ: What is 1+1?\nA: 2")  # first line only


def test_a_task_registers_by_decorator_with_its_verifier():
    @T.task("parity", "is n even?", difficulties=(1, 2), formats={
        "natural": T.Format(lambda p: f"Is {p.values[0]} even? Answer yes or no.", lambda p: p.result,
                            "choice", 4, chat=True)})
    def parity(rng, d):
        n = rng.randint(0, 10 ** d)
        return T.Problem(str(n), d, (n,), "yes" if n % 2 == 0 else "no", ("yes", "no"))

    try:
        task = T.get("parity")
        assert "parity" in T.generative() and task.format_name == "natural"
        e = task.examples(4, seed=0)[0]
        assert task.verify(e, f"{e.answer.capitalize()}, it is.")
        assert not task.verify(e, "maybe")
        with pytest.raises(ValueError, match="already registered"):
            T.register(task.with_format("natural"))  # another task under a taken name
    finally:
        T.unregister("parity")
    assert "parity" not in T.names()


def test_a_function_verifier_judges_the_reply():
    v = T.as_verifier(lambda reply, e: reply.lower().startswith(e.answer))
    e = T.Example("q", "paris", "capital", 1)
    assert v.check(v.parse(" Paris.", e), e) and not v.check(v.parse("Lyon", e), e)
    with pytest.raises(KeyError, match="unknown verifier 'nmber'.*known: exact, number"):
        T.as_verifier("nmber")


def test_a_jsonl_file_is_a_task(tmp_path):
    f = tmp_path / "capitals.jsonl"
    f.write_text('{"prompt": "Capital of France?", "answer": "Paris"}\n'
                 '{"prompt": "Capital of Italy?", "answer": "Rome", "difficulty": 2}\n\n'
                 '{"prompt": "Capital of Spain?", "answer": "Madrid"}\n')
    task = T.from_jsonl(f, verifier=lambda reply, e: e.answer.lower() in reply.lower(), register_it=False)
    exs = task.examples(3, seed=0)
    assert sorted(e.answer for e in exs) == ["Madrid", "Paris", "Rome"] and task.difficulties == (1, 2)
    assert exs == task.examples(3, seed=0) and task.name == "capitals"
    e = next(e for e in exs if e.answer == "Rome")
    assert task.verify(e, "It is Rome.") and not task.verify(e, "Milan")
    with pytest.raises(ValueError, match="n=4 but task 'capitals' has 3 problems"):
        task.examples(4)
    (tmp_path / "bad.jsonl").write_text('{"question": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: each line needs \"prompt\" and \"answer\""):
        T.from_jsonl(tmp_path / "bad.jsonl")


def test_a_format_a_task_does_not_offer_is_refused():
    with pytest.raises(ValueError, match="format='latex' for task 'addition'; it offers: zoo, natural"):
        T.get("addition").with_format("latex")


def test_multiplication_keeps_the_zoo_format_it_was_trained_on():
    # The zoo learned "a reversed and padded to 5 digits, times one unpadded digit" ("40000*4=" for 4*4);
    # padding the digit too ("40000*40000=") took zoo-l from 0.58 to 0.00 on this task.
    import re

    from explorer import tasks as T

    for e in T.get("multiplication").examples(50, seed=7):
        assert re.fullmatch(r"\d{5}\*\d=", e.prompt), e.prompt
