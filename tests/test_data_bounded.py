"""Bounded tokenisation: long texts are cut to CHARS_PER_TOKEN * max_length characters before
tokenising, which keeps memory small for multi-MB records and leaves the kept tokens of
normal text exactly as tokenising the whole text would."""

import random
import tracemalloc

import pytest
from conftest import build_word_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from rlhfkit.data import (
    Comparison,
    Demonstration,
    PromptRecord,
    char_budget,
    encode_demonstration,
    encode_prompt,
    encode_prompt_responses,
    encode_response,
    encode_response_after,
    encode_text,
)
from rlhfkit.evaluate import text_features
from rlhfkit.models.reward import encode_scored
from rlhfkit.recipes.dpo import encode_pair

# Word-level: turns marked by vocabulary words. Byte-level BPE: turns end at a newline, so the
# generation prompt's last token is the same alone as before the answer (prefix-consistent).
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}i {% else %}it {% endif %}{{ m['content'] }} . "
    "{% endfor %}{% if add_generation_prompt %}it {% endif %}"
)
TEMPLATE_NL = (
    "{% for m in messages %}{{ m['role'] }}:\n{{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:\n{% endif %}"
)

LEXICON = (
    "the of and to in is was that for on with as by at from it this an be are or his her they which "
    "movie film story plot acting music ending cast director scene character audience review "
    "great good bad dull funny long short beautiful terrible surprising quiet loud slow "
    "loved liked hated watched thought wondered remembered 1999 2024 42 3.5 % $ ( ) - : ; ' \""
).split()


def normal_text(n_chars: int, seed: int) -> str:
    """Prose-like text: capitalised sentences of lexicon words, punctuation, digits, newlines."""
    rng = random.Random(seed)
    parts, size = [], 0
    while size < n_chars:
        words = [rng.choice(LEXICON) for _ in range(rng.randint(4, 18))]
        sentence = " ".join(words).capitalize() + rng.choice([".", "!", "?", ",", ";"])
        sentence += "\n\n" if rng.random() < 0.1 else " "
        parts.append(sentence)
        size += len(sentence)
    return "".join(parts)


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE (GPT-2 style, merges learnt on the same kind of text) that adds BOS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([normal_text(2000, s) for s in range(50)], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    fast.chat_template = TEMPLATE_NL
    return fast


@pytest.fixture
def words(tmp_path):
    tok = build_word_tokenizer(tmp_path / "tok", bos=True)
    tok.chat_template = TEMPLATE
    return tok


@pytest.mark.parametrize("max_length", [16, 64, 200])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cut_keeps_exactly_the_tokens_of_the_whole_text(bpe, max_length, seed):
    """Texts of 3 budgets: the bounded ids equal those of tokenising everything, then keeping
    the prompt's end (after BOS) or the response's start. On this text the BPE averages well
    under 8 characters a token, so the budget holds over 8x max_length tokens: the token at the
    cut is never among the kept ones."""
    text = normal_text(3 * char_budget(max_length), seed)
    assert len(text) > char_budget(max_length)
    whole = encode_prompt(bpe, text)
    assert len(whole) > 8 * max_length  # what makes the cut safe on this text
    assert encode_prompt(bpe, text, max_length=max_length) == [1] + whole[-(max_length - 1):]
    assert encode_response_after(bpe, "the", text, max_length=max_length) == encode_response(bpe, text)[:max_length]
    assert encode_text(bpe, text, max_length) == bpe(text)["input_ids"][:max_length]
    conversation = PromptRecord.from_json({"messages": [{"role": "user", "content": text}]})
    assert encode_prompt(bpe, conversation, max_length=max_length) == [1] + encode_prompt(bpe, conversation)[-(max_length - 1):]
    ours = encode_response_after(bpe, conversation, text, max_length=max_length)
    assert ours == encode_response_after(bpe, conversation, text)[:max_length]


def test_normal_length_records_tokenise_as_before(bpe):
    """Texts within the budget are never cut: a demonstration is its whole prompt + response,
    the truncation rule applied to the unbounded ids (the code path before the bound)."""
    for seed in range(20):
        prompt, response = normal_text(300, seed), normal_text(200, seed + 100)
        whole_p, whole_r = encode_prompt(bpe, prompt), encode_response(bpe, response)
        out = encode_demonstration(bpe, Demonstration(prompt, response), 128, min_prompt_tokens=8)
        keep = min(len(whole_p), max(8, 128 - len(whole_r)), 127)
        expected_p = whole_p if len(whole_p) + len(whole_r) <= 128 else [1] + whole_p[len(whole_p) - keep + 1:]
        assert out["input_ids"] == expected_p + whole_r[: 128 - len(expected_p)]
        assert out["truncated"] == (len(whole_p) + len(whole_r) > 128)


def test_text_features_are_bounded_too(words):
    text = "the movie was great . " * 10_000  # 220 000 characters, 50 000 tokens
    (feat,) = text_features(words, [{"text": text}], max_length=32)
    assert feat["input_ids"] == words(text)["input_ids"][:32] == feat["labels"]


def test_multi_megabyte_record_tokenises_in_small_memory(words):
    """A 5.5 MB prompt and response. Unbounded, tokenising one would build an input_ids list of
    ~1.25 M entries (10 MB of pointers alone, plus attention_mask and Jinja copies). Bounded at
    max_length=128: at most 64 * 128 = 8192 characters (~2000 tokens, ~16 KB lists) per text
    are tokenised, so 1 MB of Python allocations at peak is a wide margin either way."""
    text = "the movie was great and i loved it . " * 150_000  # 5.5 MB
    messages = [{"role": "user", "content": text}]
    demo = Demonstration(text, text)
    chat_demo = Demonstration.from_messages(messages + [{"role": "assistant", "content": text}])
    comparison = Comparison.from_json({"messages": messages, "chosen": text, "rejected": "bad"})
    tracemalloc.start()
    try:
        encode_demonstration(words, demo, 128)
        encode_demonstration(words, chat_demo, 128)
        encode_pair(words, comparison, text, "bad", 128)
        encode_scored(words, comparison, text, 128)
        encode_text(words, text, 128)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"peak {peak / 1e6:.1f} MB"


def test_cut_record_is_marked_truncated_and_a_cut_response_has_no_eos(words):
    """One 300 000-character 'word' is one unknown token: the text is cut, yet fits in tokens.
    It must still count as truncated, and the response must not claim to end (no EOS)."""
    blob = "x" * 300_000
    prompt, (response,), truncated = encode_prompt_responses(words, "the movie", (blob,), 64)
    assert response == [words.unk_token_id] and truncated is True
    assert encode_text(words, blob, 64) == [words.bos_token_id, words.unk_token_id]


def test_long_conversation_keeps_its_last_turns(words):
    """Turns are dropped from the front only before a user turn at least the budget from the
    end; the kept ids equal the end of the whole conversation's rendering."""
    turn = "the movie was great . " * 200  # 4400 characters
    messages = []
    for _ in range(20):
        messages += [{"role": "user", "content": turn}, {"role": "assistant", "content": turn}]
    messages.append({"role": "user", "content": "the end"})
    record = PromptRecord.from_json({"messages": messages})
    assert 20 * 2 * len(turn) > 2 * char_budget(64)
    bounded = encode_prompt(words, record, max_length=64)
    whole = encode_prompt(words, record)
    assert bounded == [words.bos_token_id] + whole[-63:]
