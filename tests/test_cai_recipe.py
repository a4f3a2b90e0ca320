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
from rlhfkit.recipes import cai
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

    def __init__(self, tokenizer, unfinished_revision_round: int | None = None):
        self.tok, self.contexts, self.unfinished = tokenizer, [], unfinished_revision_round
        self.revisions = 0

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
                reply, finished = ("policy answer" if isinstance(model, Policy) else "rude answer"), True
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


def _run_chunk(monkeypatch, history: str, rounds: int = 2, unfinished: int | None = None):
    tok = CharTokenizer()
    script = Script(tok, unfinished)
    monkeypatch.setattr(cai, "generate", script)
    cfg = load_config(cai.CAIConfig, None, [f"history={history}", f"rounds={rounds}", "few_shot=1"])
    rows = cai.revise_chunk(NoModel(), tok, load_constitution(SMALL), cfg,
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


def test_unfinished_revision_is_recorded_but_not_accepted(monkeypatch):
    row, _ = _run_chunk(monkeypatch, "latest", unfinished=2)
    assert [r["accepted"] for r in row["rounds"]] == [True, False]
    assert row["final"] == "polite v1"  # the cut-off second revision does not replace the first


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
    assert all(len(r["rounds"]) == 2 and r["response"] == rows[i]["response"] for i, r in enumerate(rows))
    demos = read_records(str(out / "sl_cai.jsonl"), "demonstration")  # what `rlhfkit sft` reads
    assert 0 < len(demos) <= 4 and {d.prompt for d in demos} <= {r["prompt"] for r in rows}
    assert main(args) == 2  # refuses to overwrite without --resume
    # interrupted after 3 prompts (mid-chunk): resuming rebuilds exactly the same file
    (out / "steps.jsonl").write_text("".join(x + "\n" for x in whole.splitlines()[:3]))
    assert main([*args, "--resume"]) == 0
    assert (out / "steps.jsonl").read_text() == whole
