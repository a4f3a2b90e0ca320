"""Constitutional AI supervised stage: constitution loading and validation, the critique ->
revision loop with a scripted generator (exact contexts, history modes, acceptance rules), and
`rlhfkit cai` end to end on a tiny model (steps + SL-CAI demonstrations, resume, SFT reads it)."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import build_tiny_model, write_jsonl

from rlhfkit.config import load_config
from rlhfkit.data import read_records
from rlhfkit.feedback.constitution import (
    ConstitutionError,
    load_constitution,
    load_judge_principles,
)
from rlhfkit.jobs import cai
from rlhfkit.rollout import Sample

SMALL = {
    "name": "small",
    "conversation": "Q: {prompt}\nA: {response}",
    "critique": {"request": "\nCR: {request}\nC:", "stop": "\n", "max_new_tokens": 8},
    "revision": {"request": "\nRR: {request}\nR:", "stop": "\n", "max_new_tokens": 8},
    "separator": "\n--\n",
    "principles": [{"name": "p1", "critique": "find rudeness", "revision": "be polite"},
                   {"name": "p2", "critique": "find lies", "revision": "be honest"}],
    "few_shot": [{"prompt": "hi", "response": "go away", "critique_request": "find rudeness", "critique": "rude",
                  "revision_request": "be polite", "revision": "hello"}],
    "judge": {"template": "{principle} (A) {response_a} (B) {response_b} answer: (", "principles": ["which ?"]},
}


def test_default_constitution_loads_with_principles_few_shot_and_judge():
    c = load_constitution("default")
    assert len(c.principles) >= 5 and len(c.few_shot) >= 2 and len(c.judge.principles) >= 5
    block = c.examples_block()
    assert block.count("CritiqueRequest:") == len(c.few_shot) and block.endswith(c.separator)
    prompt = c.judge_prompt("Which is kinder?", "hello", "resp one", "resp two")
    assert prompt.endswith("The answer is: (") and "(A) resp one\n(B) resp two" in prompt and "Human: hello" in prompt
    assert load_judge_principles("default") == c.judge.principles


@pytest.mark.parametrize(
    "change, words",
    [
        ({"conversation": "Q: {question}"}, "unknown template field"),
        ({"critique": {"request": "CR: {request"}}, "braces"),
        ({"principles": []}, "'principles'"),
        ({"judge": {"template": "{principle}", "principles": []}}, "non-empty list"),
        ({"principles": [{"critique": "x"}]}, "missing 'revision'"),
    ],
)
def test_bad_constitutions_fail_on_load(change, words):
    with pytest.raises(ConstitutionError, match=words):
        load_constitution({**SMALL, **change})


def test_principles_txt_file(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# comment\nfirst principle\n\nsecond principle\n")
    assert load_judge_principles(str(path)) == ("first principle", "second principle")
    with pytest.raises(ConstitutionError, match="not found"):
        load_judge_principles(str(tmp_path / "missing.txt"))


class Script:
    """Stands in for `rollout.generate`: records each decoded context and answers by its ending."""

    def __init__(self, tokenizer, unfinished_revision_round: int | None = None, initial: str = "rude answer"):
        self.tok, self.contexts, self.unfinished = tokenizer, [], unfinished_revision_round
        self.revisions, self.initial = 0, initial

    def __call__(self, model, tokenizer, prompt_ids, params, batch_size=64, generator_seed=None):
        out = []
        for ids in prompt_ids:
            text = self.tok.decode(ids)
            self.contexts.append(text)
            if text.endswith("C:"):
                reply, finished = " too rude\n", True
            elif text.endswith("R:"):
                self.revisions += 1
                finished = self.revisions != self.unfinished
                reply = f" polite v{self.revisions}" + ("\n" if finished else "")
            else:
                reply, finished = ("policy answer" if isinstance(model, Policy) else self.initial), True
            out.append(Sample(ids, [], finished, reply))
        return out


class CharTokenizer:
    """Characters as ids: decode(encode(x)) == x, so the script sees contexts exactly."""

    eos_token_id, pad_token_id, bos_token_id, eos_token = 0, 0, None, None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(ch) for ch in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


class NoModel:
    config = type("C", (), {"n_positions": 4096})()


class Policy(NoModel):
    """A different model for the initial responses (`initial_model`)."""


class ShortModel:
    """A model of `n` positions, for contexts that do not fit."""

    def __init__(self, n: int):
        self.config = type("C", (), {"n_positions": n})()


def _run_chunk(monkeypatch, history: str, rounds: int = 2, unfinished: int | None = None, model=None,
               initial: str = "rude answer"):
    tok = CharTokenizer()
    script = Script(tok, unfinished, initial)
    monkeypatch.setattr(cai, "generate", script)
    cfg = load_config(cai.CAIConfig, None, [f"history={history}", f"rounds={rounds}", "few_shot=1"])
    rows = cai.revise_chunk(model or NoModel(), tok, load_constitution(SMALL), cfg,
                            read_records([{"prompt": "how are you"}], "prompt"), 0)
    return rows[0], script.contexts


def test_loop_latest_history_contexts_are_exact(monkeypatch):
    row, contexts = _run_chunk(monkeypatch, "latest")
    shot = "Q: hi\nA: go away\nCR: find rudeness\nC: rude\nRR: be polite\nR: hello\n--\n"
    p1 = [r["principle"] for r in row["rounds"]]
    req = {"p1": ("find rudeness", "be polite"), "p2": ("find lies", "be honest")}
    assert contexts[0] == "how are you"  # the initial response: the prompt as is
    assert contexts[1] == shot + f"Q: how are you\nA: rude answer\nCR: {req[p1[0]][0]}\nC:"
    assert contexts[2] == contexts[1] + f" too rude\nRR: {req[p1[0]][1]}\nR:"
    # round 2 starts again from the few-shot block and the *latest* revision
    assert contexts[3] == shot + f"Q: how are you\nA: polite v1\nCR: {req[p1[1]][0]}\nC:"
    assert row["response"] == "rude answer" and row["final"] == "polite v2" and row["revised"]
    assert [r["revision"] for r in row["rounds"]] == ["polite v1", "polite v2"]
    assert all(r["critique"] == "too rude" and r["accepted"] for r in row["rounds"])


def test_loop_full_history_keeps_the_transcript(monkeypatch):
    row, contexts = _run_chunk(monkeypatch, "full")
    assert contexts[3].startswith(contexts[2] + " polite v1\nCR: ")  # round 2 appends to round 1
    assert row["final"] == "polite v2"


@pytest.mark.parametrize("revise_no_flaw", [False, True])
def test_a_critique_that_finds_no_flaw_keeps_the_response(monkeypatch, revise_no_flaw):
    """critique.no_flaw: the script's critique (" too rude" -> "too rude") is declared a no-flaw answer,
    so no revision is asked for and the response stays as it was, unless revise_no_flaw is set."""
    tok = CharTokenizer()
    script = Script(tok)
    monkeypatch.setattr(cai, "generate", script)
    constitution = load_constitution({**SMALL, "critique": {**SMALL["critique"], "no_flaw": ["too rude"]}})
    cfg = load_config(cai.CAIConfig, None, ["history=full", "rounds=2", "few_shot=0", f"revise_no_flaw={revise_no_flaw}"])
    row = cai.revise_chunk(NoModel(), tok, constitution, cfg, read_records([{"prompt": "how are you"}], "prompt"), 0)[0]
    asked_to_revise = [c for c in script.contexts if c.endswith("R:")]
    if revise_no_flaw:
        assert len(asked_to_revise) == 2 and row["final"] == "polite v2" and row["revised"]
    else:
        assert asked_to_revise == [] and row["final"] == "rude answer" and not row["revised"]
        assert [r["no_flaw"] for r in row["rounds"]] == [True, True] and cai.summarise([row])["rounds_no_flaw"] == 2
        # the full transcript carries the critique into round 2's context
        assert script.contexts[-1].count("C: too rude") == 1 and script.contexts[-1].endswith("C:")


def test_no_flaw_answers_belong_to_the_critique_step():
    with pytest.raises(ConstitutionError, match="revision.no_flaw"):
        load_constitution({**SMALL, "revision": {**SMALL["revision"], "no_flaw": ["fine"]}})
    assert load_constitution("lab").critique.no_flaw == ("none .",)
    assert load_constitution("default").critique.no_flaw == ()  # the shipped constitution: revise every round


def test_unfinished_revision_is_recorded_but_not_accepted(monkeypatch):
    row, _ = _run_chunk(monkeypatch, "latest", unfinished=2)
    assert [r["accepted"] for r in row["rounds"]] == [True, False]
    assert row["final"] == "polite v1"  # the cut-off second revision does not replace the first


def test_a_long_response_is_shortened_so_the_round_happens(monkeypatch):
    """Characters are tokens here, and the model has 160 positions, so with max_new_tokens = 8 a
    context may hold 152. The 360-character response does not fit: the worked example goes first,
    then the response keeps its first L characters, the largest L that fits:
        critique context = "Q: how are you\nA: " (18) + L + "\nCR: <request>\nC:" (21, "find lies": 17)
    The requests, the principle and the prompt stay whole. Round 2 revises the short revision with
    the 69-character example back in: at most 69 + 27 + 21 + 9 + 17 = 143 characters, nothing cut."""
    long = "rude answer " * 30
    row, contexts = _run_chunk(monkeypatch, "latest", model=ShortModel(160), initial=long)
    critique, revision = {"p1": ("find rudeness", "be polite"), "p2": ("find lies", "be honest")}[row["rounds"][0]["principle"]]
    asks = f"\nCR: {critique}\nC:"
    assert contexts[1] == "Q: how are you\nA: " + long[: 152 - 18 - len(asks)] + asks
    # the revision context is fitted anew: the response is cut shorter, the 8-character critique stays whole
    tail = f"{asks} too rude\nRR: {revision}\nR:"
    assert contexts[2] == "Q: how are you\nA: " + long[: 152 - 18 - len(tail)] + tail
    assert len(contexts[1]) == len(contexts[2]) == 152
    assert row["rounds"][0]["truncated"] == {"critique": 2, "revision": 2}  # the example dropped, the response cut
    assert row["rounds"][0]["accepted"] and row["rounds"][1]["truncated"] == {"critique": 0, "revision": 0}
    assert contexts[3].startswith("Q: hi\nA: go away")  # the worked example is back for the short revision
    assert row["final"] == "polite v2" and row["response"] == long
    assert cai.summarise([row]) == {"prompts": 1, "rounds": 2, "rounds_truncated": 1, "contexts_truncated": 2,
                                    "rounds_skipped": 0, "revised": 1, "rounds_no_flaw": 0}


def test_a_round_whose_fixed_text_cannot_fit_is_skipped_and_counted(monkeypatch):
    """40 positions - 8 new tokens = 32 < the 39 characters of the conversation and the request alone."""
    row, contexts = _run_chunk(monkeypatch, "latest", model=ShortModel(40))
    assert contexts == ["how are you"]  # only the initial response was sampled
    assert row["rounds"] == [{"principle": row["rounds"][0]["principle"], "skipped": cai.SKIPPED}]
    assert row["final"] == "rude answer" and not row["revised"]
    assert cai.summarise([row])["rounds_skipped"] == 1


def endless_model(folder, positions: int):
    """A tiny GPT-2 (conftest word tokenizer) whose next token is uniform over the words, never a
    special token or punctuation, whatever the input: ln_f outputs the constant e_0 (weight 0,
    bias e_0), and the tied embeddings give logit 0 to every word and -100 to the rest. Its samples
    are exactly max_new_tokens words long, whatever the float rounding of the machine."""
    import torch
    from conftest import build_word_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_word_tokenizer(folder)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=16, n_head=2, n_positions=positions,
                                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        wte = model.transformer.wte.weight
        wte[:, 0] = 0.0
        for token, i in tok.get_vocab().items():
            if not token.isalpha():
                wte[i, 0] = -100.0
    model.save_pretrained(folder)
    return folder


def test_cai_cli_fits_long_responses_into_a_64_position_model(tmp_path, capsys):
    """Initial responses of exactly 56 words from a 64-position model: with the critique's 8 new
    tokens a context holds 56, and conversation + request are 9 tokens, so every first-round
    context is cut, and every round still happens; steps.jsonl, summary.json and the summary line
    count them."""
    from rlhfkit.cli import main

    model = endless_model(tmp_path / "model", 64)
    constitution = tmp_path / "small.yaml"
    constitution.write_text(yaml.safe_dump({**SMALL, "few_shot": []}))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"the movie {w}"} for w in ["was", "is", "plot", "cast"]])
    out = tmp_path / "cai"
    assert main(["cai", "--out", str(out), "--set", f"model.name_or_path={model}", "--set", f"prompts={prompts}",
                 "--set", f"constitution={constitution}", "--set", "sampling.max_new_tokens=56", "--set", "rounds=2"]) == 0
    rows = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    assert all(len(r["response"].split()) == 56 for r in rows)
    assert all(len(r["rounds"]) == 2 and "skipped" not in r["rounds"][1] for r in rows)
    assert all(r["rounds"][0]["truncated"]["critique"] == 1 and r["rounds"][0]["truncated"]["revision"] == 1
               for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 8 and summary["rounds_skipped"] == 0 and summary["rounds_truncated"] >= 4
    assert f"{summary['rounds_truncated']} of 8 rounds cut to fit" in capsys.readouterr().out


def test_initial_responses_can_come_from_another_model(monkeypatch):
    tok = CharTokenizer()
    script = Script(tok)
    monkeypatch.setattr(cai, "generate", script)
    cfg = load_config(cai.CAIConfig, None, ["history=latest", "rounds=1", "few_shot=0"])
    (row,) = cai.revise_chunk(NoModel(), tok, load_constitution(SMALL), cfg, read_records([{"prompt": "q"}], "prompt"), 0,
                              responder=(Policy(), tok))
    assert row["response"] == "policy answer" and script.contexts[1].startswith("Q: q\nA: policy answer\nCR: ")


def test_principles_are_sampled_per_prompt_and_round_reproducibly(monkeypatch):
    tok = CharTokenizer()
    monkeypatch.setattr(cai, "generate", Script(tok))
    cfg = load_config(cai.CAIConfig, None, ["rounds=3", "history=latest"])
    recs = read_records([{"prompt": f"q{i}"} for i in range(8)], "prompt")
    a = [[r["principle"] for r in row["rounds"]] for row in cai.revise_chunk(NoModel(), tok, load_constitution(SMALL), cfg, recs, 0)]
    b = [[r["principle"] for r in row["rounds"]] for row in cai.revise_chunk(NoModel(), tok, load_constitution(SMALL), cfg, recs, 0)]
    assert a == b and {p for row in a for p in row} == {"p1", "p2"}


def test_cai_cli_on_a_tiny_model_writes_steps_and_demonstrations_and_resumes(tmp_path):
    from rlhfkit.cli import main

    model = build_tiny_model(tmp_path / "model")
    constitution = tmp_path / "small.yaml"
    constitution.write_text(yaml.safe_dump({**SMALL, "critique": {**SMALL["critique"], "stop": "."},
                                            "revision": {**SMALL["revision"], "stop": "."}}))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"the movie {w}"} for w in ["was", "is", "plot", "cast"]])
    out = tmp_path / "cai"
    args = ["cai", "--out", str(out), "--set", f"model.name_or_path={model}", "--set", f"prompts={prompts}",
            "--set", f"constitution={constitution}", "--set", "batch_size=2", "--set", "sampling.max_new_tokens=6",
            "--set", "rounds=2"]
    assert main(args) == 0
    whole = (out / "steps.jsonl").read_text()
    rows = [json.loads(x) for x in whole.splitlines()]
    assert [r["prompt"] for r in rows] == [f"the movie {w}" for w in ["was", "is", "plot", "cast"]]
    assert all(len(r["rounds"]) == 2 for r in rows)
    demos = read_records(str(out / "sl_cai.jsonl"), "demonstration")  # what `rlhfkit sft` reads
    assert 0 < len(demos) <= 4 and {d.prompt for d in demos} <= {r["prompt"] for r in rows}
    assert main(args) == 2  # refuses to overwrite without --resume
    # interrupted after 3 prompts (mid-chunk): resuming rebuilds exactly the same file
    (out / "steps.jsonl").write_text("".join(x + "\n" for x in whole.splitlines()[:3]))
    assert main([*args, "--resume"]) == 0
    assert (out / "steps.jsonl").read_text() == whole
