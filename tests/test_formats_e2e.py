"""End to end, one test per input layout: a tiny model trained for 2 steps through the CLI
(`rlhfkit dpo|reward|sft`) on a file in that layout finishes and writes final/."""

import json
import random

import pytest
from conftest import WORDS, build_tiny_model
from datasets import Dataset

from rlhfkit.cli import main
from rlhfkit.data import write_jsonl

# Turn markers are vocabulary words of the tiny word-level tokenizer ("i" = user, "it" =
# assistant), so every token is known; a space-separated template is prefix-consistent.
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}i {% else %}it {% endif %}{{ m['content'] }} . "
    "{% endfor %}{% if add_generation_prompt %}it {% endif %}"
)
CONTENT = [w for w in WORDS if w not in ".!,"]


def phrase(rng, lo=1, hi=5):
    return " ".join(rng.choice(CONTENT) for _ in range(rng.randint(lo, hi)))


def user(c):
    return {"role": "user", "content": c}


def bot(c):
    return {"role": "assistant", "content": c}


def rows(form: str, n: int = 8, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p, a, b = phrase(rng), phrase(rng) + " great", phrase(rng) + " dull"
        out.append({
            "hh": {"chosen": f"\n\nHuman: {p}\n\nAssistant: {a}", "rejected": f"\n\nHuman: {p}\n\nAssistant: {b}"},
            "trl": {"prompt": [user(p)], "chosen": [bot(a)], "rejected": [bot(b)]},
            "implicit": {"chosen": [user(p), bot("fun"), user(p), bot(a)], "rejected": [user(p), bot("fun"), user(p), bot(b)]},
            "ultrafeedback": {"prompt": p, "chosen": [user(p), bot(a)], "rejected": [user(p), bot(b)],
                              "score_chosen": 8.0, "score_rejected": 2.0},
            "completion": {"prompt": [user(p)], "completion": [bot(a)]},
            "completion_text": {"prompt": p, "completion": a},
        }[form])
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


COMMON = ["train.max_steps=2", "train.batch_size=4", "train.micro_batch_size=2", "log.save_every=0",
          "log.eval_every=0", "log.progress=false"]
VERB_SETTINGS = {
    "dpo": ["data.eval=null", "sampling.prompts=null", "sampling.text=null", "data.max_length=48"],
    "reward": ["data.eval_fraction=0", "normalize.source=none", "data.gold=none", "data.max_length=48"],
    "sft": ["data.eval=null", "data.max_length=48"],
}


def train(verb: str, model, data, out, *extra: str) -> None:
    args = [f"model.name_or_path={model}", f"data.train={data}", *COMMON, *VERB_SETTINGS[verb], *extra]
    assert main([verb, "--out", str(out), *[x for a in args for x in ("--set", a)]]) == 0
    assert (out / "final" / "config.json").exists()
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().split("\n") if x.strip()] == [1, 2]


CHAT = f"model.chat_template={TEMPLATE}"


def test_dpo_on_anthropic_hh(tmp_path, model):
    train("dpo", model, write_jsonl(tmp_path / "hh.jsonl", rows("hh")), tmp_path / "run")


def test_dpo_on_trl_conversational_preference(tmp_path, model):
    train("dpo", model, write_jsonl(tmp_path / "trl.jsonl", rows("trl")), tmp_path / "run", CHAT)


def test_reward_on_trl_implicit_prompt_conversations(tmp_path, model):
    train("reward", model, write_jsonl(tmp_path / "implicit.jsonl", rows("implicit")), tmp_path / "run", CHAT)


def test_reward_on_ultrafeedback_binarized(tmp_path, model):
    train("reward", model, write_jsonl(tmp_path / "uf.jsonl", rows("ultrafeedback")), tmp_path / "run", CHAT)


def test_sft_on_trl_prompt_completion(tmp_path, model):
    train("sft", model, write_jsonl(tmp_path / "pc.jsonl", rows("completion")), tmp_path / "run", CHAT)


def test_sft_on_plain_prompt_completion(tmp_path, model):
    train("sft", model, write_jsonl(tmp_path / "pc.jsonl", rows("completion_text")), tmp_path / "run")


def test_dpo_on_a_saved_dataset_folder(tmp_path, model):
    Dataset.from_list(rows("trl")).save_to_disk(tmp_path / "saved")
    train("dpo", model, tmp_path / "saved", tmp_path / "run", CHAT)


def test_conversational_data_without_a_template_is_one_line_naming_the_key(tmp_path, model, capsys):
    data = write_jsonl(tmp_path / "trl.jsonl", rows("trl"))
    args = [f"model.name_or_path={model}", f"data.train={data}", *COMMON, *VERB_SETTINGS["dpo"]]
    assert main(["dpo", "--out", str(tmp_path / "run"), *[x for a in args for x in ("--set", a)]]) == 2
    err = capsys.readouterr().err.strip()
    assert "set model.chat_template" in err and "\n" not in err
