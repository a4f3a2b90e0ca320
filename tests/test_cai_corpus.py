"""The lab's CAI documents and assistant: documents follow the grammar and the constitution's
format, a revision is its draft with exactly the criticised sentences made positive, judge answers
follow sentiment, and the assistant training loop produces a loadable HF folder (tiny model, two
steps)."""

from __future__ import annotations

import json
import random

from conftest import build_tiny_model, build_word_tokenizer

from rlhfkit.feedback.constitution import load_constitution
from rlhfkit.lab import cai_corpus as c
from rlhfkit.lab import grammar


def test_critique_documents_follow_the_format_and_the_grammar():
    rng = random.Random(0)
    for _ in range(50):
        text = c.critique_document(rng)["text"]
        draft, rest = text.removeprefix(c.DRAFT + " ").split(c.CRITIQUE_REQUEST, 1)
        revision = text.split(c.REVISION + " ", 1)[1]
        assert grammar.well_formed_fraction(draft) == 1.0 and grammar.well_formed_fraction(revision) == 1.0
        assert revision.split(" ")[:2] == draft.split(" ")[:2]  # the revision starts from the same opening
        verdict = rest.split(c.CRITIQUE + " ", 1)[1].split(c.REVISION_REQUEST)[0]
        assert " " + verdict in c.format_tokens()


def test_a_revision_rewrites_exactly_what_its_critique_counts():
    """Sentences the principle objects to become positive (same template and film/aspect/person
    words where the template has a positive form); every other sentence is copied; so the
    revision breaks that principle nowhere, and a second round with it has nothing left to fix."""
    rng = random.Random(3)
    changed = 0
    for _ in range(300):
        review = c.draw_review(rng)
        for principle in c.PRINCIPLES:
            flagged = c.targets(review, principle)
            revised = c.revise(review, principle, rng)
            assert len(revised) == len(review) and grammar.well_formed_fraction(c.text(revised)) == 1.0
            for i, (old, new) in enumerate(zip(review, revised, strict=True)):
                if i in flagged:
                    assert new.sentiment == "pos"
                    assert new.template != old.template or all(
                        a == b for a, b, (slot, _) in zip(old.fillers, new.fillers, c._slots(old.template), strict=True)
                        if slot in c.lexicon.CLASSES)
                else:
                    assert new is old
            assert c.targets(revised, principle) == []
            changed += bool(flagged)
    assert changed > 100  # the property was exercised on many drafts with something to fix


def test_neutral_by_nature_sentences_are_not_lukewarm():
    lukewarm = c.PRINCIPLES[1]
    opening = next(t for t in grammar.TEMPLATES if t.sentiments == ("neu",) and t.opening)
    review = [c._render(opening, "neu", random.Random(0), set())]
    assert c.targets(review, lukewarm) == [] and c.critique_text(lukewarm, 0) == c.NONE


def test_counts_in_critiques_match_the_draft():
    rng = random.Random(1)
    review = c.draw_review(rng, positivity=0.0, neutral_share=0.0)  # every sentence negative
    unkind = c.PRINCIPLES[0]
    assert len(c.targets(review, unkind)) == len(review) >= 2
    assert c.critique_text(unkind, len(review)) == "several sentences are unkind ."
    assert c.critique_text(unkind, 1) == "one sentence is unkind ." and c.critique_text(unkind, 0) == c.NONE


def test_judge_answers_follow_the_sentiment_score():
    rng = random.Random(2)
    answers = []
    for _ in range(200):
        text = c.judge_document(rng)["text"]
        assert text.split(c.OPTION_A)[0] in c.JUDGE_PRINCIPLES
        answers.append(text[-1])
    assert set(answers) == {"A", "B"} and 0.35 < answers.count("A") / len(answers) < 0.65  # no position shortcut


def test_lab_constitution_matches_the_documents():
    k = load_constitution("lab")
    prompt, response = "this movie was", " great ."
    context = k.show(prompt, response) + k.critique_request(k.principles[0], prompt, response)
    assert context == f"{c.DRAFT} this movie was great .{c.CRITIQUE_REQUEST} {c.PRINCIPLES[0][1]}{c.CRITIQUE}"
    assert k.revision_request(k.principles[1], prompt, response).endswith(f"{c.REVISION} this movie was")
    judge = k.judge_prompt(k.judge.principles[0], prompt, " good .", " bad .")
    assert judge == f"{c.JUDGE_PRINCIPLES[0]}{c.OPTION_A} this movie was good .{c.OPTION_B} this movie was bad .{c.ANSWER}"
    assert len(set(c.format_tokens())) == len(c.format_tokens())


def test_train_assistant_writes_a_model_with_the_format_tokens(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = build_tiny_model(tmp_path / "base")
    out = c.train_assistant(base, tmp_path / "assistant", c.AssistantConfig(steps=2, batch_size=4, probe_documents=4))
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert tok.tokenize(c.CRITIQUE + " " + c.NONE) == [c.CRITIQUE, " " + c.NONE]
    cert = json.loads((out / "assistant.json").read_text())
    assert 0.0 <= cert["judge_accuracy_on_held_out_documents"] <= 1.0


def test_loss_weights_sum_to_one_per_document():
    ids = [5, 6, 7, 42, 9, 10, 11, 12]  # ... critique label (42), verdict 9, then 3 more tokens
    labels, weights = c._supervised(ids, "critique", 42, verdict_weight=0.5)
    assert labels == [-100] * 4 + [9, 10, 11, 12] and weights == [0, 0, 0, 0, 0.5, 0.5 / 3, 0.5 / 3, 0.5 / 3]
    assert c._supervised(ids, "judge", 42, 0.5) == ([-100] * 7 + [12], [0.0] * 7 + [1.0])


def test_documents_longer_than_the_model_are_drawn_again(tmp_path):
    tok = build_word_tokenizer(tmp_path)
    rng = random.Random(4)
    lengths = [len(c._document_ids(tok, "judge", rng, 60)) for _ in range(200)]
    assert max(lengths) <= 60
    assert max(len(tok(c.judge_document(random.Random(k))["text"])["input_ids"]) for k in range(200)) > 60  # drawn again
