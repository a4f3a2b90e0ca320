"""Record types: validation on construction, parsing, pairs() and round trips."""

import pickle

import pytest

from rlhfkit.data import Comparison, DataError, Demonstration, Message, PromptRecord, TextRecord


def test_pairs_of_a_three_way_ranking():
    """Ranking [2, 0, 1] means 2 > 0 > 1, so the implied preferences are 2>0, 2>1, 0>1."""
    c = Comparison("p", ("a", "b", "c"), (2, 0, 1))
    assert c.pairs() == [(2, 0), (2, 1), (0, 1)]


def test_pairs_count_is_k_choose_2():
    c = Comparison("p", tuple("abcde"), (4, 3, 2, 1, 0))
    assert len(c.pairs()) == 10
    assert all(c.ranking.index(w) < c.ranking.index(lo) for w, lo in c.pairs())


def test_pairwise_chosen_rejected_reads_as_k2():
    c = Comparison.from_json({"prompt": "p", "chosen": "good", "rejected": "bad"})
    assert c.responses == ("good", "bad")
    assert c.ranking == (0, 1)
    assert c.pairs() == [(0, 1)]


def test_lists_are_normalised_to_tuples_and_records_are_hashable():
    c = Comparison("p", ["a", "b"], [1, 0], scores=[0, 2])
    assert c.responses == ("a", "b") and c.ranking == (1, 0) and c.scores == (0.0, 2.0)
    hash(c)


def test_comparison_round_trip_keeps_optional_fields():
    c = Comparison(
        "p",
        ("a", "b"),
        (1, 0),
        soft_label=0.8,
        scores=(0.1, 0.9),
        annotator="judge-1",
        messages=[{"role": "user", "content": "p"}],
    )
    assert Comparison.from_json(c.to_json()) == c


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"ranking": (0, 0)}, "ranking", "[0, 0] is not a permutation of 0..1"),
        ({"ranking": (0, 1, 2)}, "ranking", "[0, 1, 2] is not a permutation of 0..1"),
        ({"ranking": (True, 0)}, "ranking", "expected response indices (integers)"),
        ({"responses": ("a",), "ranking": (0,)}, "responses", "has 1 response(s)"),
        ({"responses": "ab"}, "responses", "expected a list, got string"),
        ({"responses": ("a", 3)}, "responses[1]", "expected a string, got number 3"),
        ({"responses": ("a", " \n")}, "responses[1]", "is empty (or only whitespace)"),
        ({"prompt": 7}, "prompt", "expected a string, got number 7"),
        ({"soft_label": 1.5}, "soft_label", "1.5 is not a probability in [0, 1]"),
        ({"soft_label": "high"}, "soft_label", "expected a number, got string"),
        ({"scores": (1.0,)}, "scores", "has 1 entries for 2 responses"),
        ({"annotator": 3}, "annotator", "expected a string, got number"),
    ],
)
def test_comparison_validation_names_the_field(kwargs, field, message):
    args = {"prompt": "p", "responses": ("a", "b"), "ranking": (0, 1)} | kwargs
    with pytest.raises(DataError) as e:
        Comparison(**args)
    assert e.value.field == field
    assert message in e.value.message


def test_soft_label_only_for_two_responses():
    with pytest.raises(DataError, match="only defined for 2 responses, this comparison has 3"):
        Comparison("p", ("a", "b", "c"), (0, 1, 2), soft_label=0.7)


@pytest.mark.parametrize(
    ("messages", "field", "message"),
    [
        ([{"role": "bot", "content": "hi"}], "messages[0].role", "'bot' is not one of"),
        ([{"role": "user", "content": 5}], "messages[0].content", "expected a string"),
        ([{"role": "user"}], "messages[0].content", "missing"),
        (["hi"], "messages[0]", "expected an object with 'role' and 'content'"),
        ([], "messages", "empty conversation"),
        ("hi", "messages", "expected a list"),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            "messages",
            "must end with a user (or system) turn",
        ),
    ],
)
def test_prompt_messages_validation(messages, field, message):
    with pytest.raises(DataError) as e:
        PromptRecord.from_json({"messages": messages})
    assert e.value.field == field
    assert message in e.value.message


def test_empty_text_rejected():
    with pytest.raises(DataError, match="field 'text': is empty"):
        TextRecord("   ")


def test_conversational_demonstration_splits_prompt_and_response():
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    d = Demonstration.from_json({"messages": msgs})
    assert d.response == "hello"
    assert d.prompt == "system: be brief\n\nuser: hi"
    assert d.prompt_messages == (Message("system", "be brief"), Message("user", "hi"))
    assert Demonstration.from_json(d.to_json()) == d


def test_demonstration_conversation_must_end_with_assistant():
    with pytest.raises(DataError) as e:
        Demonstration.from_json({"messages": [{"role": "user", "content": "hi"}]})
    assert e.value.field == "messages" and "must end with the assistant" in e.value.message


def test_single_user_turn_prompt_reads_like_plain_prompt():
    p = PromptRecord.from_json({"messages": [{"role": "user", "content": "hi there"}]})
    assert p.prompt == "hi there"


def test_error_located_and_picklable():
    e = DataError("bad", field="ranking").at("f.jsonl", line=3)
    assert str(e) == "f.jsonl:3: field 'ranking': bad"
    again = pickle.loads(pickle.dumps(e))
    assert str(again) == str(e) and again.line == 3
    assert str(DataError("x", field="a").at("<Dataset>", row=0)) == "<Dataset>:row 0: field 'a': x"
