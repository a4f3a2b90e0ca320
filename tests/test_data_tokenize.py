"""Tokenising: BOS/EOS rules, prompt masking, chat templates, truncation, padding (packing: test_packing_layout.py).

All expectations are worked by hand on a WordLevel tokenizer whose ids are listed in
VOCAB, split on whitespace; special tokens are recognised even when glued to a word.
"""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from rlhfkit.data import (
    IGNORE_INDEX,
    DataError,
    Demonstration,
    PromptRecord,
    attention_mask,
    collate_demonstrations,
    encode_demonstration,
    encode_prompt,
    encode_prompt_responses,
    encode_response,
    encode_response_after,
    pad_batch,
)

WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "hello", "world", "the", "cat", "sat", "on", "mat"]
WORDS += ["user", "assistant", "system", ":", "|"]
VOCAB = {w: i for i, w in enumerate(WORDS)}
PAD, BOS, EOS = 0, 1, 2
HELLO, WORLD, THE, CAT, SAT, ON, MAT = 4, 5, 6, 7, 8, 9, 10
USER, ASSISTANT, SYSTEM, COLON, BAR = 11, 12, 13, 14, 15

# Writes BOS itself and ends assistant turns with EOS (Llama-2/Mistral style).
TEMPLATE_WITH_BOS = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %} {{ eos_token }}{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)
# No BOS, turns end with '|' (ChatML style: its own end-of-turn marker, not EOS).
TEMPLATE_PLAIN = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} | {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)
# Renders the last message differently, so the prompt is not a prefix of the whole.
TEMPLATE_INCONSISTENT = (
    "{% for m in messages %}{% if loop.last %}| {% endif %}{{ m['role'] }} : {{ m['content'] }} "
    "{% endfor %}{% if add_generation_prompt %}assistant : {% endif %}"
)


def make_tokenizer(
    adds_bos: bool = False, chat_template: str | None = None, adds_eos: bool = False
):
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if adds_bos or adds_eos:
        single = ("<bos> " if adds_bos else "") + "$A" + (" <eos>" if adds_eos else "")
        tok.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=[("<bos>", BOS), ("<eos>", EOS)]
        )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    hf.chat_template = chat_template
    return hf


def chat(*turns):
    return [{"role": r, "content": c} for r, c in turns]


# ---- prompts -------------------------------------------------------------------------


def test_plain_prompt_follows_the_tokenizers_bos_rule():
    assert encode_prompt(make_tokenizer(), "the cat") == [THE, CAT]
    assert encode_prompt(make_tokenizer(adds_bos=True), "the cat") == [BOS, THE, CAT]
    assert encode_prompt(make_tokenizer(adds_bos=True), PromptRecord("the cat")) == [BOS, THE, CAT]


def test_prompt_text_starting_with_bos_gets_one_bos():
    assert encode_prompt(make_tokenizer(adds_bos=True), "<bos> the cat") == [BOS, THE, CAT]


def test_prompt_never_ends_with_eos_even_if_tokenizer_appends_it():
    """Llama with add_eos_token=True: "<bos> the cat <eos>" would tell the policy to stop."""
    tok = make_tokenizer(adds_bos=True, adds_eos=True)
    assert encode_prompt(tok, "the cat") == [BOS, THE, CAT]
    out = encode_demonstration(tok, Demonstration("the cat", "sat"), 64)
    assert out["input_ids"] == [BOS, THE, CAT, SAT, EOS]


def test_template_with_bos_is_not_given_a_second_one():
    """The template writes <bos>; the tokenizer would also add one: still one BOS."""
    tok = make_tokenizer(adds_bos=True, chat_template=TEMPLATE_WITH_BOS)
    ids = encode_prompt(tok, chat(("user", "hello")))
    # "<bos>user : hello assistant : "
    assert ids == [BOS, USER, COLON, HELLO, ASSISTANT, COLON]


def test_template_without_bos_gets_bos_when_tokenizer_adds_one():
    ids = encode_prompt(
        make_tokenizer(adds_bos=True, chat_template=TEMPLATE_PLAIN), chat(("user", "hello"))
    )
    assert ids == [BOS, USER, COLON, HELLO, BAR, ASSISTANT, COLON]
    ids = encode_prompt(make_tokenizer(chat_template=TEMPLATE_PLAIN), chat(("user", "hello")))
    assert ids == [USER, COLON, HELLO, BAR, ASSISTANT, COLON]


def test_conversational_prompt_record():
    tok = make_tokenizer(chat_template=TEMPLATE_PLAIN)
    record = PromptRecord.from_json({"messages": chat(("user", "hello"))})
    assert encode_prompt(tok, record) == [USER, COLON, HELLO, BAR, ASSISTANT, COLON]


def test_no_chat_template_names_the_config_key():
    """The fix is a config key users can set (tokenizer.chat_template is not one)."""
    with pytest.raises(DataError, match=r"no chat template.*set model\.chat_template.*plain"):
        encode_prompt(make_tokenizer(), chat(("user", "hello")))


# ---- responses -----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["sat on", "sat on<eos>", "sat on <eos>", "sat on <eos> <eos>\n"])
def test_exactly_one_eos(text):
    assert encode_response(make_tokenizer(adds_bos=True), text) == [SAT, ON, EOS]


def test_response_after_a_plain_prompt_is_its_tokens_and_one_eos():
    tok = make_tokenizer(adds_bos=True, chat_template=TEMPLATE_PLAIN)
    assert encode_response_after(tok, "the cat", "sat on <eos>") == [SAT, ON, EOS]
    assert encode_response_after(tok, PromptRecord("the cat"), "") == [EOS]


def test_response_after_a_conversation_is_the_templates_assistant_turn():
    """Full "user : hello | assistant : world | " minus the generation-prompt prefix
    "user : hello | assistant : " leaves "world |", then EOS (the template has its own marker).
    Raw content + EOS would be [WORLD, EOS], which generation after this template never gives."""
    tok = make_tokenizer(chat_template=TEMPLATE_PLAIN)
    prompt = PromptRecord.from_json({"messages": chat(("user", "hello"))})
    assert encode_response_after(tok, prompt, "world") == [WORLD, BAR, EOS]
    assert encode_response_after(tok, chat(("user", "hello")), "world <eos>") == [WORLD, BAR, EOS]
    assert encode_response_after(tok, prompt, "<eos>") == [EOS]  # stops at once, as generated


def test_comparison_responses_go_through_the_template_at_every_call_site():
    """SFT (encode_demonstration), DPO (encode_pair) and the reward model (encode_scored) give
    the same ids for the same conversation and response. TEMPLATE_WITH_BOS renders
    "<bos>user : hello assistant : " then "the cat <eos> " for the assistant turn."""
    from rlhfkit.data import Comparison
    from rlhfkit.models.reward import encode_scored
    from rlhfkit.recipes.dpo import encode_pair

    tok = make_tokenizer(chat_template=TEMPLATE_WITH_BOS)
    record = Comparison.from_json({"messages": chat(("user", "hello")), "chosen": "the cat", "rejected": "sat"})
    prompt = [BOS, USER, COLON, HELLO, ASSISTANT, COLON]
    pair = encode_pair(tok, record, "the cat", "sat", 64)
    assert pair == {"prompt": prompt, "chosen": [THE, CAT, EOS], "rejected": [SAT, EOS], "truncated": False}
    assert encode_scored(tok, record, "the cat", 64) == prompt + [THE, CAT, EOS]
    demo = Demonstration.from_messages(chat(("user", "hello"), ("assistant", "the cat")))
    assert encode_demonstration(tok, demo, 64)["input_ids"] == prompt + [THE, CAT, EOS]


def test_pair_shares_one_prompt_truncated_for_the_longer_response():
    """Prompt [BOS the cat sat on] (5); responses [hello EOS] (2) and [the mat hello world EOS]
    (5); max_length 8: keep max(min_prompt=2, 8 - 5) = 3 prompt tokens, BOS + [sat on], so the
    longer response fits whole and both share the same prompt ids."""
    tok = make_tokenizer(adds_bos=True)
    prompt, (a, b), truncated = encode_prompt_responses(
        tok, "the cat sat on", ("hello", "the mat hello world"), 8, min_prompt_tokens=2
    )
    assert prompt == [BOS, SAT, ON] and a == [HELLO, EOS] and b == [THE, MAT, HELLO, WORLD, EOS]
    assert truncated is True


def test_bounded_prompt_keeps_bos_and_its_end():
    tok = make_tokenizer(adds_bos=True)
    assert encode_prompt(tok, "the cat sat on the mat", max_length=3) == [BOS, THE, MAT]
    assert encode_prompt(tok, "the cat", max_length=3) == [BOS, THE, CAT]


# ---- demonstrations ------------------------------------------------------------------


def test_plain_demonstration_masks_the_prompt():
    """prompt "the cat" -> [BOS, THE, CAT]; response "sat on the mat" -> [SAT, ON, THE, MAT, EOS].

    input_ids is their concatenation; labels hide the 3 prompt positions.
    """
    out = encode_demonstration(
        make_tokenizer(adds_bos=True), Demonstration("the cat", "sat on the mat"), 64
    )
    assert out["input_ids"] == [BOS, THE, CAT, SAT, ON, THE, MAT, EOS]
    assert out["labels"] == [-100, -100, -100, SAT, ON, THE, MAT, EOS]
    assert out["truncated"] is False


def test_conversational_demonstration_masks_all_but_last_assistant_turn():
    """Full: "<bos>system : hello user : the cat assistant : sat on the mat <eos> "
    prefix (10 tokens): "<bos>system : hello user : the cat assistant : "."""
    tok = make_tokenizer(adds_bos=True, chat_template=TEMPLATE_WITH_BOS)
    demo = Demonstration.from_messages(
        chat(("system", "hello"), ("user", "the cat"), ("assistant", "sat on the mat"))
    )
    out = encode_demonstration(tok, demo, 64)
    prefix = [BOS, SYSTEM, COLON, HELLO, USER, COLON, THE, CAT, ASSISTANT, COLON]
    assert out["input_ids"] == prefix + [SAT, ON, THE, MAT, EOS]
    assert out["labels"] == [-100] * 10 + [SAT, ON, THE, MAT, EOS]
    assert out["input_ids"][:10] == encode_prompt(tok, demo)  # same as at generation time


def test_earlier_assistant_turns_are_masked_and_eos_not_doubled():
    tok = make_tokenizer(chat_template=TEMPLATE_WITH_BOS)
    demo = Demonstration.from_messages(
        chat(
            ("user", "hello"),
            ("assistant", "world"),
            ("user", "the cat"),
            ("assistant", "sat <eos>"),
        )
    )
    out = encode_demonstration(tok, demo, 64)
    assert out["input_ids"].count(EOS) == 2  # one per assistant turn
    assert [t for t in out["labels"] if t != IGNORE_INDEX] == [SAT, EOS]


def test_template_with_its_own_end_marker_gets_eos_appended():
    """ChatML-like: the turn ends with '|', not EOS, so EOS is appended to be learnt."""
    tok = make_tokenizer(chat_template=TEMPLATE_PLAIN)
    demo = Demonstration.from_messages(chat(("user", "hello"), ("assistant", "world")))
    out = encode_demonstration(tok, demo, 64)
    assert out["input_ids"] == [USER, COLON, HELLO, BAR, ASSISTANT, COLON, WORLD, BAR, EOS]
    assert out["labels"] == [-100] * 6 + [WORLD, BAR, EOS]


def test_prefix_inconsistent_template_is_an_error():
    tok = make_tokenizer(chat_template=TEMPLATE_INCONSISTENT)
    demo = Demonstration.from_messages(chat(("user", "hello"), ("assistant", "world")))
    with pytest.raises(DataError, match="not prefix-consistent.*differ at token 0"):
        encode_demonstration(tok, demo, 64)


def test_truncation_cuts_prompt_from_the_left_keeping_bos():
    """Prompt [BOS the cat sat on the mat] (7) + response [hello world EOS] (3) = 10 > 6.

    Keep max(min_prompt=2, 6 - 3) = 3 prompt tokens: BOS and the last two (the mat).
    """
    tok = make_tokenizer(adds_bos=True)
    out = encode_demonstration(
        tok, Demonstration("the cat sat on the mat", "hello world"), 6, min_prompt_tokens=2
    )
    assert out["input_ids"] == [BOS, THE, MAT, HELLO, WORLD, EOS]
    assert out["labels"] == [-100, -100, -100, HELLO, WORLD, EOS]
    assert out["truncated"] is True


def test_truncation_then_cuts_the_response_and_loses_eos():
    """max_length 4, min_prompt 3: prompt keeps [BOS the mat], response keeps [hello]."""
    tok = make_tokenizer(adds_bos=True)
    out = encode_demonstration(
        tok, Demonstration("the cat sat on the mat", "hello world"), 4, min_prompt_tokens=3
    )
    assert out["input_ids"] == [BOS, THE, MAT, HELLO]
    assert out["labels"] == [-100, -100, -100, HELLO]
    assert out["truncated"] is True


def test_exact_fit_is_not_truncated():
    out = encode_demonstration(make_tokenizer(), Demonstration("the cat", "sat"), 4)
    assert out["input_ids"] == [THE, CAT, SAT, EOS] and out["truncated"] is False


def test_truncation_always_keeps_a_response_token():
    out = encode_demonstration(
        make_tokenizer(), Demonstration("the cat sat on", "mat"), 2, min_prompt_tokens=8
    )
    assert out["input_ids"] == [ON, MAT] and out["labels"] == [-100, MAT]


# ---- padding, collating -----------------------------------------------------


def test_pad_batch_and_mask_both_sides():
    seqs = [[5, 6, 7], [8]]
    assert pad_batch(seqs, 0, "right").tolist() == [[5, 6, 7], [8, 0, 0]]
    assert pad_batch(seqs, 0, "left").tolist() == [[5, 6, 7], [0, 0, 8]]
    assert attention_mask(seqs, "right").tolist() == [[1, 1, 1], [1, 0, 0]]
    assert attention_mask(seqs, "left").tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pad_batch(seqs, 0, "left").dtype == torch.long
    with pytest.raises(ValueError, match="side must be"):
        pad_batch(seqs, 0, "middle")


def test_collate_when_pad_equals_eos():
    """pad id == EOS: the trailing real EOS keeps attention 1 and its label."""
    features = [
        {"input_ids": [THE, SAT, EOS], "labels": [-100, SAT, EOS], "truncated": False},
        {"input_ids": [CAT, EOS], "labels": [-100, EOS], "truncated": False},
    ]
    batch = collate_demonstrations(features, pad_token_id=EOS)
    assert batch["input_ids"].tolist() == [[THE, SAT, EOS], [CAT, EOS, EOS]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, SAT, EOS], [-100, EOS, -100]]


def test_collate_without_pad_token():
    with pytest.raises(DataError, match="no pad token"):
        collate_demonstrations([{"input_ids": [1], "labels": [1]}], pad_token_id=None)
