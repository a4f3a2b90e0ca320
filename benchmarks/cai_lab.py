"""Constitutional AI on the lab, end to end with a real (tiny) language model.

The lab assistant (the lab base model after a short continued pretraining on critique/revision
and multiple-choice documents, `lab/cai_corpus.py`) plays CAI's helpful model and feedback
model; the lab base model is the policy being improved. Measured:

1. revisions: gold of the policy's responses to held-out prompts (originals) vs the same
   responses after the assistant's first and second critique -> revision round (`rlhfkit cai`,
   lab constitution, a principle sampled per round);
2. AI judge: two policy samples per held-out prompt, labelled by the assistant as judge
   ((A)/(B) answer-token probabilities, both orders averaged) vs labelled by gold: agreement,
   also with one order only, and the soft labels' mean confidence;
3. SL-CAI: `rlhfkit cai` on training prompts -> SFT on (prompt, final revision) -> gold of the
   fine-tuned model's samples on held-out prompts vs the base model's; as a control, SFT on the
   unrevised originals of the same prompts (so the gain is the revisions', not SFT's);
4. RL-CAI's reward model: policy pairs labelled by the judge (`rlhfkit judge`, soft labels) ->
   `rlhfkit reward` -> agreement with gold on held-out pairs (the reward PPO would maximise).

Run: `.venv/bin/python benchmarks/cai_lab.py [--eval-prompts 256 --train-prompts 1024] [--json out.json]`.
Every number comes with its 95% interval (normal approximation, over prompts).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch


def mean_ci(values: list[float]) -> dict[str, float]:
    m = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": round(m, 4), "ci95": round(half, 4), "n": len(values)}


def gold(prompts: list[str], responses: list[str]) -> list[float]:
    from rlhfkit.lab.gold import gold_score

    return gold_score([p + r for p, r in zip(prompts, responses, strict=True)])


def read_prompts(source: str, n: int) -> list[str]:
    from rlhfkit.data import read_records

    return [r.prompt for r in read_records(source, "prompt")][:n]


def sample(model_dir: str, prompts: list[str], k: int, seed: int, max_new_tokens: int = 64) -> list[list[str]]:
    """k plain samples (temperature 1) per prompt from a model folder."""
    from rlhfkit.config import ModelConfig
    from rlhfkit.data import encode_prompt
    from rlhfkit.models.loading import load_policy, load_tokenizer
    from rlhfkit.rollout import SamplingParams, generate

    cfg = ModelConfig(name_or_path=model_dir)
    model, tok = load_policy(cfg), load_tokenizer(cfg)
    ids = [encode_prompt(tok, p) for p in prompts for _ in range(k)]
    out = generate(model, tok, ids, SamplingParams(max_new_tokens=max_new_tokens), batch_size=128, generator_seed=seed)
    return [[s.text for s in out[i * k : (i + 1) * k]] for i in range(len(prompts))]


def run_cai(assistant: str, policy: str, prompts_file: Path, out: Path, rounds: int, seed: int) -> list[dict]:
    from rlhfkit.config import load_config
    from rlhfkit.jobs import cai

    cfg = load_config(cai.CAIConfig, None, [
        f"model.name_or_path={assistant}", f"initial_model={policy}", f"prompts={prompts_file}", "constitution=lab", "history=latest",
        f"rounds={rounds}", "batch_size=128", f"seed={seed}", "sampling.revise_temperature=0.7"])
    cai.run(cfg, out)
    return [json.loads(x) for x in (out / cai.STEPS_FILE).read_text().splitlines()]


def revisions(assistant: str, policy: str, prompts: list[str], work: Path, seed: int) -> dict:
    from rlhfkit.data import write_jsonl

    rows = run_cai(assistant, policy, write_jsonl(work / "eval_prompts.jsonl", [{"prompt": p} for p in prompts]),
                   work / "cai_eval", rounds=2, seed=seed)
    stages = {"original": [r["response"] for r in rows]}
    for k in range(2):  # the response after round k+1: the revision if accepted, else the previous one
        prev = stages["original"] if k == 0 else stages["revision_1"]
        stages[f"revision_{k + 1}"] = [r["rounds"][k]["revision"] if r["rounds"][k].get("accepted") else p
                                       for r, p in zip(rows, prev, strict=True)]
    ps = [r["prompt"] for r in rows]
    result = {name: mean_ci(gold(ps, texts)) for name, texts in stages.items()}
    result["accepted_share"] = [round(sum(bool(r["rounds"][k].get("accepted")) for r in rows) / len(rows), 4) for k in range(2)]
    result["changed_share"] = [round(sum(a != b for a, b in zip(stages[x], stages[y], strict=True)) / len(rows), 4)
                               for x, y in (("original", "revision_1"), ("revision_1", "revision_2"))]
    result["critique_none_share"] = round(sum(r["rounds"][0].get("critique") == "none ." for r in rows) / len(rows), 4)
    result["critique_informative"] = critique_check(rows)
    result["example"] = rows[0]
    return result


def critique_check(rows: list[dict]) -> dict:
    """Does the first critique notice unkindness? Share of "unkind" critiques that name a flaw, for
    drafts with and without a negative sentence (VADER compound < -0.05 on the sentence)."""
    from rlhfkit.lab import grammar
    from rlhfkit.lab.gold import compound

    flagged = {True: [], False: []}
    for r in rows:
        first = r["rounds"][0]
        if first.get("principle") != "unkind":
            continue
        negative = any(compound(s) < -0.05 for s in grammar.split_sentences(r["prompt"] + r["response"]))
        flagged[negative].append(float(first["critique"] != "none ."))
    return {"flags_when_a_sentence_is_negative": mean_ci(flagged[True]) if len(flagged[True]) > 1 else None,
            "flags_when_none_is_negative": mean_ci(flagged[False]) if len(flagged[False]) > 1 else None}


def judge(assistant: str, policy: str, prompts: list[str], seed: int) -> dict:
    from rlhfkit.config import ModelConfig
    from rlhfkit.feedback.constitution import load_constitution
    from rlhfkit.feedback.judge import AIJudge
    from rlhfkit.models.loading import load_policy, load_tokenizer

    pairs = [(p, s) for p, s in zip(prompts, sample(policy, prompts, 2, seed), strict=True) if s[0] != s[1]]
    items = [(p, a, b) for p, (a, b) in pairs]
    g = [(ga, gb) for ga, gb in zip(gold([p for p, _, _ in items], [a for _, a, _ in items]),
                                    gold([p for p, _, _ in items], [b for _, _, b in items]), strict=True)]
    cfg = ModelConfig(name_or_path=assistant)
    model, tok = load_policy(cfg), load_tokenizer(cfg)
    out = {}
    for name, both in (("both_orders", True), ("one_order", False)):
        verdicts = AIJudge(model, tok, load_constitution("lab"), both_orders=both, seed=seed).judge_pairs(items, skip_too_long=True)
        kept = [(v, ga, gb) for v, (ga, gb) in zip(verdicts, g, strict=True) if v is not None and ga != gb]
        agree = [float((v.p > 0.5) == (ga > gb)) for v, ga, gb in kept]
        big = [float((v.p > 0.5) == (ga > gb)) for v, ga, gb in kept if abs(ga - gb) >= 0.5]
        out[name] = {"agreement": mean_ci(agree), "agreement_gold_gap_ge_0.5": mean_ci(big),
                     "mean_confidence": round(statistics.fmean(max(v.p, 1 - v.p) for v, _, _ in kept), 4),
                     "skipped_too_long": sum(v is None for v in verdicts)}
        if both:
            out[name]["mean_P(A)_first_order"] = round(statistics.fmean(v.p_a_first for v, _, _ in kept), 4)
    out["pairs"] = len(items)
    return out


def sft(model_dir: str, data: Path, out: Path, epochs: float, seed: int) -> Path:
    from rlhfkit.config import load_config
    from rlhfkit.recipes import sft as sft_recipe

    cfg = load_config(sft_recipe.SFTConfig, None, [
        f"model.name_or_path={model_dir}", f"data.train={data}", "data.eval=null", "train.batch_size=32",
        "train.micro_batch_size=32", "train.lr=1e-3", f"train.epochs={epochs}", "train.warmup_ratio=0.05",
        f"train.seed={seed}", "log.save_every=0", "log.eval_every=0", "log.progress=false"])
    return sft_recipe.run(cfg, out)


def sl_cai(assistant: str, model_dir: str, train_prompts: list[str], eval_prompts: list[str], work: Path, epochs: float,
           seed: int) -> dict:
    from rlhfkit.data import write_jsonl

    rows = run_cai(assistant, model_dir, write_jsonl(work / "train_prompts.jsonl", [{"prompt": p} for p in train_prompts]),
                   work / "cai_train", rounds=2, seed=seed)
    originals = write_jsonl(work / "originals.jsonl", [{"prompt": r["prompt"], "response": r["response"]} for r in rows
                                                       if r["response"].strip()])
    models = {"base": model_dir,
              "sft_on_sl_cai": str(sft(model_dir, work / "cai_train" / "sl_cai.jsonl", work / "sft_cai", epochs, seed)),
              "sft_on_originals (control)": str(sft(model_dir, originals, work / "sft_orig", epochs, seed))}
    result = {"train_demonstrations": len(rows),
              "train_gold": {"originals": mean_ci(gold([r["prompt"] for r in rows], [r["response"] for r in rows])),
                             "final_revisions": mean_ci(gold([r["prompt"] for r in rows], [r["final"] for r in rows]))}}
    for name, path in models.items():
        texts = sample(path, eval_prompts, 2, seed + 7)
        result[name] = mean_ci([statistics.fmean(gold([p, p], s)) for p, s in zip(eval_prompts, texts, strict=True)])
    return result


def rl_cai(assistant: str, model_dir: str, train_prompts: list[str], work: Path, seed: int) -> dict:
    """RL-CAI's first half: policy pairs labelled by the AI judge (`rlhfkit judge`, soft labels)
    train a reward model (`rlhfkit reward`, soft-label Bradley–Terry); its held-out pairwise
    agreement with gold is what PPO would then optimise against."""
    from rlhfkit.config import load_config
    from rlhfkit.data import write_jsonl
    from rlhfkit.jobs import judge as judge_recipe
    from rlhfkit.recipes import reward

    four = sample(model_dir, train_prompts, 4, seed + 11)  # two disjoint pairs per prompt
    samples = write_jsonl(work / "pairs.jsonl", [{"prompt": p, "responses": s[i : i + 2]}
                                                 for p, s in zip(train_prompts, four, strict=True) for i in (0, 2)])
    labels = judge_recipe.run(load_config(judge_recipe.JudgeConfig, None, [
        f"model.name_or_path={assistant}", f"samples={samples}", "constitution=lab", f"seed={seed}"]), work / "judge.jsonl")
    cfg = load_config(reward.RewardConfig, None, [
        f"model.name_or_path={model_dir}", f"data.train={labels}", "data.eval=null", "data.eval_fraction=0.2",
        "data.gold=lab", "normalize.source=none", f"train.seed={seed}", "log.save_every=0", "log.eval_every=0",
        "log.progress=false"])  # the recipe's optimisation defaults are tuned for the lab
    final = reward.run(cfg, work / "rm")
    done = json.loads((final / "run_complete.json").read_text())
    keys = ("eval_accuracy", "gold_agreement", "gold_annotator_agreement", "gold_pairs", "train_comparisons")
    return {k: round(done[k], 4) if isinstance(done.get(k), float) else done.get(k) for k in keys}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="lab", help="the policy to improve (default: the lab base model)")
    p.add_argument("--assistant", default="lab:assistant", help="CAI helper and judge (default: the lab assistant)")
    p.add_argument("--train-prompts", default="lab:prompts_train")
    p.add_argument("--eval-prompts", default="lab:prompts_eval")
    p.add_argument("--n-train", type=int, default=1024)
    p.add_argument("--n-eval", type=int, default=256)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from rlhfkit.models.loading import resolve_model_path

    model_dir = resolve_model_path(args.model)  # "lab" builds the lab on first use
    assistant = resolve_model_path(args.assistant)  # "lab:assistant" trains it on first use
    t0 = time.time()
    eval_prompts = read_prompts(args.eval_prompts, args.n_eval)
    train_prompts = read_prompts(args.train_prompts, args.n_train)
    results = {"policy": model_dir, "assistant": assistant, "seed": args.seed}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results["revisions"] = revisions(assistant, model_dir, eval_prompts, work, args.seed)
        print(json.dumps({k: v for k, v in results["revisions"].items() if k != "example"}, indent=1), flush=True)
        results["judge"] = judge(assistant, model_dir, eval_prompts, args.seed)
        print(json.dumps(results["judge"], indent=1), flush=True)
        results["sl_cai"] = sl_cai(assistant, model_dir, train_prompts, eval_prompts, work, args.epochs, args.seed)
        print(json.dumps(results["sl_cai"], indent=1), flush=True)
        results["rl_cai_reward_model"] = rl_cai(assistant, model_dir, train_prompts, work, args.seed)
        print(json.dumps(results["rl_cai_reward_model"], indent=1), flush=True)
    results["seconds"] = round(time.time() - t0, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    r, j, s = results["revisions"], results["judge"], results["sl_cai"]

    def f(x):
        return f"{x['mean']:+.3f} ± {x['ci95']:.3f}"

    print("\n| measurement | value |\n|---|---|")
    print(f"| gold of originals (n={r['original']['n']}) | {f(r['original'])} |")
    print(f"| gold after revision 1 | {f(r['revision_1'])} |")
    print(f"| gold after revision 2 | {f(r['revision_2'])} |")
    print(f"| AI judge agreement with gold, both orders ({j['pairs']} pairs) | {f(j['both_orders']['agreement'])} |")
    print(f"| AI judge agreement, one order | {f(j['one_order']['agreement'])} |")
    print(f"| gold of base model samples | {f(s['base'])} |")
    print(f"| gold after SFT on SL-CAI ({s['train_demonstrations']} demos) | {f(s['sft_on_sl_cai'])} |")
    print(f"| gold after SFT on unrevised originals (control) | {f(s['sft_on_originals (control)'])} |")
    rm = results["rl_cai_reward_model"]
    print(f"| RL-CAI: reward model trained on judge soft labels, held-out agreement with gold ({rm['gold_pairs']} pairs) "
          f"| {rm['gold_agreement']:.3f} (the judge labels themselves: {rm['gold_annotator_agreement']:.3f}) |")
    print(f"({results['seconds']} s)")


if __name__ == "__main__":
    main()
