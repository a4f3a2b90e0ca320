"""The lab tokenizer: byte-level BPE trained on the lab corpus, saved in Hugging Face format.

Why byte-level BPE (GPT-2 style) rather than a word list: every string is encodable, so a
policy can drift *out* of the grammar ("AMAZING!!!") and the gold judge can see it; a
closed word vocabulary would make reward hacking unreachable.

Why the word list is added to the training text: with ~1,500 merges every grammar word
becomes one token with its leading space ("Ġwonderful"), so the tiny LM predicts one
token per word and a review of 30 words is ~30 tokens.

Prompt/response consistency: the pre-tokenizer splits before each space, so a prompt
("this movie") and a response starting with a space (" was great .") tokenise to the
same ids separately as together. Training tokenises them separately; tests check it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from rlhfkit.lab import grammar

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"  # distinct from EOS so masking pads never hides a real end of text
VOCAB_SIZE = 1500  # enough merges for every grammar word to be a single token
MODEL_MAX_LENGTH = 128
WORD_LIST_REPEATS = 50  # gives rare grammar words enough counts to earn a merge


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = VOCAB_SIZE, max_length: int = MODEL_MAX_LENGTH
) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on `texts` (plus the grammar's word list) and wrap it for HF.

    No BOS and no post-processor: `tokenizer(text)` returns exactly the text's tokens,
    and documents are terminated with EOS by the caller.
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    word_list = " " + " ".join(sorted(grammar.vocabulary()))
    bpe.train_from_iterator([*texts, *[word_list] * WORD_LIST_REPEATS], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=max_length,
        # HF's default clean-up glues " ." back to "." on decode, which would make decoded
        # samples fall out of the grammar; the lab's format keeps the space.
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: str | Path) -> None:
    """Save as tokenizer.json + tokenizer_config.json, loadable by `AutoTokenizer`.

    transformers 5 records its internal class name ("TokenizersBackend"), which 4.x
    cannot resolve; "PreTrainedTokenizerFast" names the same thing in both, so the lab
    loads under every transformers version the package supports.
    """
    tokenizer.save_pretrained(str(folder))
    config_path = Path(folder) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(str(folder))
