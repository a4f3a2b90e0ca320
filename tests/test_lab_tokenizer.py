"""The lab tokenizer: lossless, one token per grammar word, and prompt/response
tokenisation that matches tokenising the whole text (training tokenises them apart)."""

from __future__ import annotations

import pytest

from rlhfkit.lab import corpus, grammar
from rlhfkit.lab.tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def tokenizer():
    texts = [d["text"] for d in corpus.documents("review", 500, seed=0)]
    return train_tokenizer(texts)


def test_special_tokens(tokenizer):
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    assert tokenizer.bos_token is None
    ids = tokenizer("the acting was great .")["input_ids"]
    assert tokenizer.eos_token_id not in ids and tokenizer.pad_token_id not in ids


def test_vocab_size_and_whole_words(tokenizer):
    assert 1000 <= len(tokenizer) <= 2000
    split = [w for w in grammar.vocabulary() if len(tokenizer(" " + w)["input_ids"]) != 1]
    assert split == []


@pytest.mark.parametrize(
    "text",
    [
        "this movie was really wonderful . i loved every minute of it !",
        "Machine learning is AMAZING! It's the BEST thing ever!",
        "great great great  !!!!\n\ttabs and ünïcödé 🎬",
        " leading space",
    ],
)
def test_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_prompt_response_split_is_consistent(tokenizer):
    for demo in corpus.documents("demonstration", 500, seed=1):
        prompt, response = demo["prompt"], demo["response"]
        apart = tokenizer(prompt)["input_ids"] + tokenizer(response)["input_ids"]
        assert apart == tokenizer(prompt + response)["input_ids"], (prompt, response)


def test_save_and_load_with_auto_tokenizer(tokenizer, tmp_path):
    save_tokenizer(tokenizer, tmp_path)
    loaded = load_tokenizer(tmp_path)
    text = "the plot of this movie was dull . wow !"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.eos_token_id == tokenizer.eos_token_id
    assert loaded.pad_token_id == tokenizer.pad_token_id
    assert loaded.model_max_length == 128
    assert loaded.decode(loaded(text)["input_ids"]) == text  # no " ." clean-up on load


def test_training_is_deterministic(tokenizer):
    texts = [d["text"] for d in corpus.documents("review", 500, seed=0)]
    again = train_tokenizer(texts)
    assert again.get_vocab() == tokenizer.get_vocab()
