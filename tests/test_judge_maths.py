"""AI judge with a model whose answer-token logits are fixed by construction: soft labels,
clamping and order-averaging against hand-computed values; answer-token derivation; the judge
as a registry annotator feeding `compare` and a soft-label reward model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import write_jsonl

from rlhfkit.feedback.constitution import load_constitution
from rlhfkit.feedback.fit import fit_texts
from rlhfkit.feedback.judge import (
    AIJudge,
    answer_token_ids,
    clamp_probability,
    option_probability,
    order_average,
)

QUALITY = {"good": 1.0, "bad": -1.0, "meh": 0.0}
BIAS = 0.5  # the fixed model prefers whatever sits in slot A by +0.5 logits

CONSTITUTION = {
    "conversation": "{prompt} {response}",
    "critique": {"request": " critique : {request}", "stop": "\n"},
    "revision": {"request": " revision : {request}", "stop": "\n"},
    "principles": [{"critique": "find faults", "revision": "fix them"}],
    "judge": {
        "template": "{principle}\n(A) {response_a}\n(B) {response_b}\nanswer : (",
        "principles": ["which is kinder ?", "which is nicer ?", "which is better ?"],
    },
}


def word_tokenizer(extra: tuple[str, ...] = (), split_punctuation: bool = True):
    """Word-level tokenizer; by default punctuation splits from words ("(A" -> "(", "A")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", "(", ")", ":", "?", "A", "B", "answer", "which", "is", "kinder", "nicer",
             "better", "prompt", *QUALITY]
    words += [w for w in extra if w not in words]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace() if split_punctuation else pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def tiny_judge_model(folder, positions: int = 128):
    """A random 2-layer GPT-2 (`positions` long) whose tokenizer knows "A", "B" and the conftest words, saved."""
    from conftest import WORDS
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = word_tokenizer(extra=tuple(WORDS))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=2, n_embd=32, n_head=2, n_positions=positions,
                                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                       bos_token_id=None))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


class FixedLogitLM(torch.nn.Module):
    """Next-token logits fixed by construction: l_A = q(response in slot A) + BIAS, l_B = q(slot B).

    The first quality word in a row is slot A's response, the second slot B's; every other
    logit is -inf-ish, and rows are right-padded (the judge reads the last real position).
    """

    def __init__(self, tokenizer):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(n_positions=64)
        self.vocab = len(tokenizer)
        self.q = {tokenizer.convert_tokens_to_ids(w): v for w, v in QUALITY.items()}
        self.a, self.b = tokenizer.convert_tokens_to_ids("A"), tokenizer.convert_tokens_to_ids("B")

    def forward(self, input_ids, attention_mask):
        b, t = input_ids.shape
        logits = torch.full((b, t, self.vocab), -30.0)
        for row in range(b):
            slots = [self.q[i] for i in input_ids[row].tolist() if i in self.q]
            last = int(attention_mask[row].sum()) - 1
            logits[row, last, self.a] = slots[0] + BIAS
            logits[row, last, self.b] = slots[1]
        return SimpleNamespace(logits=logits)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.fixture
def judge_parts():
    tok = word_tokenizer()
    return FixedLogitLM(tok), tok, load_constitution(CONSTITUTION)


def test_pure_functions_by_hand():
    """σ(2 − 1) = 0.7310586; ½[0.8 + (1 − 0.3)] = 0.75; clamp 0.75 to [0.4, 0.6] = 0.6."""
    assert option_probability(torch.tensor([2.0]), torch.tensor([1.0])).item() == pytest.approx(0.7310586, abs=1e-7)
    assert order_average(torch.tensor([0.8]), torch.tensor([0.3])).item() == pytest.approx(0.75)
    p = torch.tensor([0.75, 0.2, 0.5])
    assert clamp_probability(p, (0.4, 0.6)).tolist() == pytest.approx([0.6, 0.4, 0.5])
    assert clamp_probability(p, None) is p


def test_soft_label_order_average_and_clamp_by_hand(judge_parts):
    """Responses (good, bad): q_good − q_bad = d = 2, position bias b = 0.5.

        P(A | good, bad) = σ(d + b) = σ(2.5)  = 0.9241418   (good shown as A)
        P(A | bad, good) = σ(−d + b) = σ(−1.5) = 0.1824255   (bad shown as A)
        p(good ≻ bad) = ½[0.9241418 + (1 − 0.1824255)] = 0.8708582
    One order only: 0.9241418. Clamped to [0.4, 0.6]: 0.6.
    """
    model, tok, c = judge_parts
    both = AIJudge(model, tok, c).judge_pairs([("prompt", "good", "bad")])[0]
    assert both.p_a_first == pytest.approx(0.9241418, abs=1e-6)
    assert both.p_a_swapped == pytest.approx(0.1824255, abs=1e-6)
    assert both.p == pytest.approx(0.8708582, abs=1e-6)
    assert both.p == pytest.approx(0.5 * (sigmoid(2.5) + 1 - sigmoid(-1.5)), abs=1e-7)
    one = AIJudge(model, tok, c, both_orders=False).judge_pairs([("prompt", "good", "bad")])[0]
    assert one.p == pytest.approx(0.9241418, abs=1e-6) and one.p_a_swapped is None
    clamped = AIJudge(model, tok, c, clamp=(0.4, 0.6)).judge_pairs([("prompt", "good", "bad")])[0]
    assert clamped.p == pytest.approx(0.6)
    # the reverse pair gives the complement: order averaging is symmetric
    rev = AIJudge(model, tok, c).judge_pairs([("prompt", "bad", "good")])[0]
    assert rev.p == pytest.approx(1 - 0.8708582, abs=1e-6)


def test_pure_position_bias_cancels(judge_parts):
    """Equal quality (meh vs meh is not a pair; use good vs good): P(A) = σ(0.5) in both orders,
    so p = ½[0.6224593 + (1 − 0.6224593)] = 0.5 exactly, while one order alone says 0.6224593."""
    model, tok, c = judge_parts
    assert AIJudge(model, tok, c).judge_pairs([("prompt", "good", "good")])[0].p == pytest.approx(0.5, abs=1e-7)
    assert AIJudge(model, tok, c, both_orders=False).judge_pairs([("prompt", "good", "good")])[0].p == pytest.approx(
        0.6224593, abs=1e-6)


def test_rank_k2_soft_label_is_the_winners_probability(judge_parts):
    """(bad, good): p(bad ≻ good) = 0.1291418, so the ranking is [1, 0] and soft_label is
    P(ranking[0] wins) = 0.8708582 (the Comparison record's meaning); scores = (p, 1 − p)."""
    model, tok, c = judge_parts
    j = AIJudge(model, tok, c).rank("prompt", ["bad", "good"])
    assert j.ranking == [1, 0]
    assert j.soft_label == pytest.approx(0.8708582, abs=1e-6)
    assert j.scores == pytest.approx([0.1291418, 0.8708582], abs=1e-6)


def test_rank_k3_by_expected_win_rate(judge_parts):
    """(good, bad, meh): p = ½[σ(d + b) + σ(d − b)] per pair with b = 0.5:
        good vs bad (d = 2):  ½[σ(2.5) + σ(1.5)]   = ½[0.9241418 + 0.8175745] = 0.8708582
        good vs meh (d = 1):  ½[σ(1.5) + σ(0.5)]   = ½[0.8175745 + 0.6224593] = 0.7200169
        bad vs meh (d = −1):  ½[σ(−0.5) + σ(−1.5)] = ½[0.3775407 + 0.1824255] = 0.2799831
    scores: good ½(0.8708582 + 0.7200169) = 0.7954376, bad ½(0.1291418 + 0.2799831) = 0.2045624,
    meh ½(0.2799831 + 0.7200169) = 0.5; ranking [0, 2, 1]; no soft label for K = 3."""
    model, tok, c = judge_parts
    j = AIJudge(model, tok, c).rank("prompt", ["good", "bad", "meh"])
    assert j.scores == pytest.approx([0.7954376, 0.2045624, 0.5], abs=1e-6)
    assert j.ranking == [0, 2, 1] and j.soft_label is None


def test_principles_sampled_per_comparison_reproducibly(judge_parts):
    model, tok, c = judge_parts
    items = [("prompt", "good", "bad")] * 12
    a = [v.principle for v in AIJudge(model, tok, c, seed=3).judge_pairs(items)]
    b = [v.principle for v in AIJudge(model, tok, c, seed=3).judge_pairs(items)]
    assert a == b and len(set(a)) > 1 and set(a) <= set(CONSTITUTION["judge"]["principles"])


def test_answer_tokens_when_the_letter_merges_with_the_bracket():
    """A tokenizer with "(A"/"(B" as single tokens: the answer is "(A" vs "(B", and the context
    stops before the bracket (the common prefix of the two encodings)."""
    tok = word_tokenizer(extra=("(A", "(B", "x"), split_punctuation=False)
    context, answers = answer_token_ids(tok, "x answer (")
    assert tok.convert_ids_to_tokens(answers) == ["(A", "(B"]
    assert tok.convert_ids_to_tokens(context) == ["x", "answer"]
    tok2 = word_tokenizer()
    context, answers = answer_token_ids(tok2, "answer : (")
    assert tok2.convert_ids_to_tokens(answers) == ["A", "B"]
    assert tok2.convert_ids_to_tokens(context) == ["answer", ":", "("]


def test_too_long_prompts_raise_or_are_skipped(judge_parts):
    model, tok, c = judge_parts
    model.config.n_positions = 8
    judge = AIJudge(model, tok, c)
    with pytest.raises(ValueError, match="positions"):
        judge.rank("prompt", ["good", "bad"])
    assert judge.rank_many([("prompt", ["good", "bad"])], skip_too_long=True) == [None]


def test_clamp_must_contain_one_half(judge_parts):
    model, tok, c = judge_parts
    with pytest.raises(ValueError, match="clamp"):
        AIJudge(model, tok, c, clamp=(0.6, 0.9))


def test_judge_annotator_feeds_compare_and_a_soft_label_reward_model(tmp_path):
    """A real (tiny, random) causal LM through the registry: `rlhfkit compare` with
    annotator=judge writes soft labels in (0.5, 1] for the winner, and the reward recipe trains on them."""
    import yaml

    from rlhfkit.cli import main
    from rlhfkit.config import load_config
    from rlhfkit.data import read_records
    from rlhfkit.recipes import reward

    model = tiny_judge_model(tmp_path / "model")
    principles = tmp_path / "principles.txt"
    principles.write_text("# one a line\nwhich is better ?\nwhich is kinder ?\n")
    constitution = tmp_path / "c.yaml"
    constitution.write_text(yaml.safe_dump(CONSTITUTION))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"the movie {w}"} for w in ["was", "is", "plot", "cast"]])
    out = tmp_path / "cmp.jsonl"
    rc = main(["compare", "--out", str(out), "--set", f"policy.name_or_path={model}", "--set", f"prompts={prompts}",
               "--set", "k=2", "--set", "sampling.max_new_tokens=5", "--set", "annotator.name=judge",
               "--set", f"annotator.options={{model: {model}, constitution: {constitution}, principles: {principles}, "
                        "clamp: [0.3, 0.7]}"])
    assert rc == 0
    records = read_records(str(out), "comparison")
    assert records and all(0.5 <= r.soft_label <= 0.7 for r in records)
    assert all(r.annotator.startswith("judge:") for r in records)
    cfg = load_config(reward.RewardConfig, None, [
        f"model.name_or_path={model}", f"data.train={out}", "data.eval=null", "train.batch_size=2",
        "train.micro_batch_size=2", "train.max_steps=1", "log.progress=false", "log.save_every=0",
        "normalize.source=none", "data.gold=none"])
    assert (reward.run(cfg, tmp_path / "rm") / "config.json").exists()


def test_judge_verb_labels_a_samples_file_and_resumes(tmp_path):
    """`rlhfkit judge`: {prompt, responses} records in, comparisons with soft labels and the
    per-order probabilities out; an interrupted file is completed without duplicates."""
    import json

    import yaml

    from rlhfkit.cli import main
    from rlhfkit.data import read_records

    model = tiny_judge_model(tmp_path / "model")
    constitution = tmp_path / "c.yaml"
    constitution.write_text(yaml.safe_dump(CONSTITUTION))
    samples = write_jsonl(tmp_path / "samples.jsonl", [
        {"prompt": f"prompt {i}", "responses": ["good", "bad"] if i % 2 else ["bad", "good", "meh"]} for i in range(6)])
    out = tmp_path / "labels.jsonl"
    args = ["judge", "--out", str(out), "--set", f"model.name_or_path={model}", "--set", f"samples={samples}",
            "--set", f"constitution={constitution}", "--set", "clamp=[0.2, 0.8]", "--set", "chunk=2"]
    assert main(args) == 0
    whole = out.read_text()
    records = read_records(str(out), "comparison")
    assert len(records) == 6 and all(r.annotator.startswith("judge:") for r in records)
    assert all(r.soft_label is not None and 0.5 <= r.soft_label <= 0.8 for r in records if len(r.responses) == 2)
    assert all(r.soft_label is None and len(r.scores) == 3 for r in records if len(r.responses) == 3)
    rows = [json.loads(x) for x in whole.splitlines()]
    assert [len(r["judge"]) for r in rows] == [3, 1, 3, 1, 3, 1]  # one verdict per response pair
    assert all(0.0 <= v["p_a_first"] <= 1.0 and 0.0 <= v["p_a_swapped"] <= 1.0 for r in rows for v in r["judge"])
    assert main(args) == 2  # refuses to overwrite
    out.write_text("".join(x + "\n" for x in whole.splitlines()[:4]))
    assert main([*args, "--resume"]) == 0
    assert len(read_records(str(out), "comparison")) == 6


# ---------------------------------------------------------------------- responses longer than the judge


def test_fit_texts_shortens_the_longest_first_to_the_largest_cap_that_fits():
    """Word tokens, prompt = "x x x" + a + b: with a = 40 words, b = 6 words and a 30-token budget,
    the fixed part is 3 tokens, so a and b get 27 together: one cap L, a cut to L = 21 words and
    b (6 <= 21) kept whole; L = 22 would need 3 + 22 + 6 = 31 > 30."""
    tok = word_tokenizer()
    a, b = " ".join(["good"] * 40), " ".join(["bad"] * 6)

    def length(texts):
        return len(tok("x x x " + " ".join(texts))["input_ids"])

    fitted = fit_texts(tok, [a, b], length, 30)
    assert fitted.texts == (" ".join(["good"] * 21), b) and fitted.truncated == 1
    assert length(fitted.texts) == 30
    assert fit_texts(tok, ["good", "bad"], length, 30).truncated == 0  # fits as it is: untouched
    assert fit_texts(tok, [a, b], length, 3) == fit_texts(tok, [a, b], length, 3)  # empty texts just fit
    assert fit_texts(tok, [a, b], length, 3).texts == ("", "")
    assert fit_texts(tok, [a, b], length, 2) is None  # the fixed part alone is too long


def test_long_responses_are_shortened_not_the_template_and_the_verdict_survives(judge_parts):
    """A response far longer than the judge's 64 positions: the judge shortens it (from its end,
    the same text in both orders), keeps the principle and the answer slot, and still reads the
    logits the fixed model puts there: the responses' first quality words decide (good vs bad),
    so p is the hand-computed 0.8708582 of test_soft_label_order_average_and_clamp_by_hand."""
    model, tok, c = judge_parts
    long_good = "good " + " ".join(["which"] * 200)  # ~200 tokens > 64 positions
    judge = AIJudge(model, tok, c)
    (v,) = judge.judge_pairs([("prompt", long_good, "bad")])
    assert v.truncated == 1 and v.p == pytest.approx(0.8708582, abs=1e-6)
    (w,) = judge.judge_pairs([("prompt", long_good, long_good.replace("good", "bad"))])
    assert w.truncated == 2 and w.p == pytest.approx(0.8708582, abs=1e-6)
    j, verdicts = judge.rank_many([("prompt", ["bad", long_good])])[0]
    assert j.ranking == [1, 0] and verdicts[0].truncated == 1


def test_long_responses_fit_a_real_64_position_model(tmp_path):
    """A real (tiny, random) GPT-2 with 64 positions and responses of 100 words each: every pair is
    judged (a 129-token prompt crashed the lab judge test before), the contexts the model reads
    are at most 64 tokens, and both orders show the same shortened responses."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_judge_model(tmp_path / "judge", positions=64)
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    seen = []
    original = model.forward

    def forward(input_ids, attention_mask, **kw):
        seen.append(int(attention_mask.sum(1).max()))
        return original(input_ids=input_ids, attention_mask=attention_mask, **kw)

    model.forward = forward
    a, b = " ".join(["the movie was great"] * 25), " ".join(["the plot was dull"] * 25)
    items = [("the movie", a, b), ("the film", b, a), ("the movie", "good", "bad")]
    verdicts = AIJudge(model, tok, load_constitution(CONSTITUTION)).judge_pairs(items)
    assert [v.truncated for v in verdicts] == [2, 2, 0]
    assert all(0.0 < v.p < 1.0 for v in verdicts)
    assert seen and max(seen) <= 64


def _judge_cli(tmp_path, samples, positions, constitution=None):
    import yaml

    from rlhfkit.cli import main

    model = tiny_judge_model(tmp_path / "model", positions=positions)
    if constitution is None:
        constitution = tmp_path / "c.yaml"
        constitution.write_text(yaml.safe_dump(CONSTITUTION))
    samples = write_jsonl(tmp_path / "samples.jsonl", samples)
    return main(["judge", "--out", str(tmp_path / "run"), "--set", f"model.name_or_path={model}",
                 "--set", f"samples={samples}", "--set", f"constitution={constitution}"])


def test_judge_verb_counts_shortened_responses_in_records_and_summary(tmp_path, capsys):
    import json

    long = " ".join(["the movie was great"] * 25)  # 100 words, more than the model's 64 positions
    rows = [{"prompt": "the movie", "responses": [long, "good"]}, {"prompt": "the film", "responses": ["bad", "good"]},
            {"prompt": "the plot", "responses": [long, long, "bad"]}]
    assert _judge_cli(tmp_path, rows, positions=64) == 0
    written = [json.loads(x) for x in (tmp_path / "run" / "comparisons.jsonl").read_text().splitlines()]
    assert [[v["truncated"] for v in r["judge"]] for r in written] == [[1], [0], [2, 1, 1]]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary == {"records": 3, "already_written": 0, "written": 3, "skipped": 0, "pairs_truncated": 4,
                       "responses_truncated": 5}
    assert "5 responses in 4 pairs shortened" in capsys.readouterr().out


def test_judge_verb_writing_nothing_is_a_one_line_error(tmp_path, capsys):
    """The default constitution's judge template is longer than a 32-position model even with empty
    responses: every record is skipped, and that is exit 2 with one line saying why, not
    "wrote 0 comparisons" with exit 0 and no file."""
    rc = _judge_cli(tmp_path, [{"prompt": "the movie", "responses": ["good", "bad"]}] * 3, positions=32,
                    constitution="default")
    (err,) = [x for x in capsys.readouterr().err.split("\n") if x.startswith("rlhfkit judge: error:")]
    assert rc == 2
    assert "no comparisons written: all 3 records to judge were skipped" in err
    assert "more than the judge model's 32 positions" in err
    assert not (tmp_path / "run" / "comparisons.jsonl").exists()
