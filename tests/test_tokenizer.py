from explorer import tasks as T
from explorer import tokenizer as tok
from explorer.zoo import recipe


def test_one_token_per_character_and_exact_round_trip():
    t = tok.build()
    text = "To be, or not to be:\n 12+3=15 {x}~"
    ids = t(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert t.decode(ids) == text


def test_bos_is_prepended_and_padding_is_on_the_left():
    t = tok.build()
    batch = t(["1", "123"], padding=True)["input_ids"]
    assert batch[0][:2] == [t.pad_token_id, t.pad_token_id]
    assert batch[0][2] == batch[1][0] == t.bos_token_id


def test_training_rows_encode_like_the_tokenizer():
    t = tok.build()
    ex = T.get("addition").examples(1, seed=3)[0]
    ids, labels = recipe.task_row(ex, tok.vocab())
    assert ids == t(ex.prompt + ex.answer)["input_ids"] + [t.eos_token_id]
    # Only the answer and end-of-sequence are scored.
    scored = [i for i in labels if i != -100]
    assert scored == t(ex.answer, add_special_tokens=False)["input_ids"] + [t.eos_token_id]


def test_unknown_characters_map_to_unk():
    t = tok.build()
    assert t("é", add_special_tokens=False)["input_ids"] == [t.unk_token_id]
