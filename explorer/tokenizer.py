"""The zoo's shared character-level tokenizer, built with Hugging Face `tokenizers`.

One token per character (printable ASCII and newline) plus four specials, saved
as tokenizer.json so `AutoTokenizer.from_pretrained` loads it like any Hub
tokenizer.
"""
from __future__ import annotations

import string

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARS = [c for c in string.printable if c in "\n" or 32 <= ord(c) < 127]


def vocab() -> dict[str, int]:
    return {tok: i for i, tok in enumerate(SPECIALS + CHARS)}


def build():
    """A `PreTrainedTokenizerFast` over characters; padding on the left for generation."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    v = vocab()
    tok = Tokenizer(models.WordLevel(vocab=v, unk_token="<unk>"))
    # Every character is its own pre-token: [\s\S] also matches the newline.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", v["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=256,
    )
