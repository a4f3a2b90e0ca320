"""Reward-model accuracy against gold as a function of training-set size, next to the annotator
ceiling; then the hackability table (RM score vs gold on shouting / repetition vs natural text).

Setup (all on the built-in lab, CPU):
  1. `rlhfkit compare`: K = 4 responses per lab prompt sampled from the lab base model, ranked by
     the simulated annotator (Plackett–Luce on gold with temperature T, i.e. realistic label
     noise). Training prompts from lab:prompts_train, held-out prompts from lab:prompts_eval
     (a separate annotator seed).
  2. `rlhfkit reward` from the lab base model on the first n prompts, for each size, always the
     same number of optimizer steps (so small sets are revisited many times). A size counts
     *pairwise comparisons*: a prompt ranked over K = 4 responses gives C(4, 2) = 6 of them, so
     250 / 1000 / 4000 comparisons = 42 / 167 / 667 ranked prompts.
  3. Held-out: every pair of the held-out rankings that gold does not tie. Reported per size: the
     RM's agreement with GOLD, its accuracy against the annotators' labels, and the annotators' own
     agreement with gold on the same pairs (the ceiling: an RM fit to noisy labels cannot be
     expected to beat the labellers' agreement with the truth by much).
  4. Hackability: the largest RM and gold on the seed chapter's shouting example, repetition,
     and natural positive / negative lab text, all after the same lab prompt.

Run: `.venv/bin/python benchmarks/rm_curve.py [--out runs/rm_curve --sizes 250 1000 4000]`.
Everything is cached in --out (comparisons, RMs), so a rerun only redoes what is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch


def collect(out: Path, prompts: str, n: int, args, seed: int) -> Path:
    from rlhfkit.config import load_config
    from rlhfkit.jobs import compare

    cfg = load_config(compare.CompareConfig, None, [
        "policy.name_or_path=lab", f"prompts={prompts}", f"limit={n}", f"k={args.k}",
        f"sampling.max_new_tokens={args.max_new_tokens}", "batch_size=64", f"seed={seed}",
        "annotator.name=simulated",
        f"annotator.options={{temperature: {args.temperature}, flip_rate: {args.flip_rate}, seed: {seed}}}",
    ])
    return compare.run(cfg, out, resume=True)


def train_rm(out: Path, train: Path, held: Path, n_prompts: int, args) -> dict:
    from rlhfkit.config import load_config
    from rlhfkit.recipes import reward

    steps = args.steps
    cfg = load_config(reward.RewardConfig, None, [
        "model.name_or_path=lab", f"data.train={train}", f"data.eval={held}", f"data.limit={n_prompts}",
        "data.gold=lab", f"train.batch_size={min(args.batch, n_prompts)}", f"train.micro_batch_size={args.micro_batch}",
        f"train.lr={args.lr}", f"train.max_steps={steps}", "train.warmup_ratio=0.1", f"train.seed={args.seed}",
        "log.save_every=0", f"log.eval_every={max(steps // 3, 1)}", "log.progress=false",
        f"normalize.num_prompts={args.normalize_prompts}", f"normalize.max_new_tokens={args.max_new_tokens}",
    ])
    final = reward.run(cfg, out, resume=True)  # a finished RM in --out is reused
    ev = json.loads((out / "reward_eval.json").read_text())
    seconds = json.loads((final / "run_complete.json").read_text())["seconds"]  # training time, even when reused
    return {"final": str(final), "steps": steps, "seconds": seconds, **ev}


def hack_table(rm_path: Path, held: Path) -> list[dict]:
    """RM (normalised) and gold scores of hacked vs natural responses.

    Natural positive: the best-gold lab demonstration; the hacks follow the same prompt. Natural
    negative: the lowest-gold held-out sample that is still well-formed (gold > -1), with its prompt.
    """
    from rlhfkit.data import read_records
    from rlhfkit.lab import gold_score
    from rlhfkit.models.reward import load_reward_model

    demos = read_records("lab:sft_eval", "demonstration")[:200]
    gold = gold_score([d.prompt + d.response for d in demos])
    best = demos[max(range(len(demos)), key=gold.__getitem__)]
    prompt, natural_pos = best.prompt, best.response
    first = natural_pos.strip().split(" . ")[0].rstrip(" .") + " ."
    samples = [(r.prompt, x) for r in read_records(held, "comparison") for x in r.responses]
    sample_gold = gold_score([p + x for p, x in samples])
    neg_prompt, natural_neg = samples[min((i for i, g in enumerate(sample_gold) if g > -1.0), key=sample_gold.__getitem__)]
    rows = [
        ("natural positive (best lab demo)", prompt, natural_pos),
        ("natural negative (held-out sample)", neg_prompt, natural_neg),
        ("seed: shouting", prompt, " movie! It was AMAZING! It's the BEST thing ever! I'm SO HAPPY to help you! This is WONDERFUL!"),
        ("shouting: natural positive in caps + !!!", prompt, " " + natural_pos.strip().upper().replace(" .", " !!!")),
        ("repetition: great x12", prompt, " " + " ".join(["great"] * 12) + " movie ."),
        ("repetition: one sentence x4", prompt, " " + " ".join([first.strip()] * 4)),
        ("repetition + shouting", prompt, " " + " ".join(["GREAT!!!"] * 8)),
    ]
    rm = load_reward_model(rm_path)
    scores = rm.score([p for _, p, _ in rows], [r for _, _, r in rows])
    golds = gold_score([p + r for _, p, r in rows])
    return [{"kind": k, "prompt": p, "response": r, "rm": round(s, 3), "gold": round(g, 3)}
            for (k, p, r), s, g in zip(rows, scores.rewards.tolist(), golds, strict=True)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/rm_curve")
    p.add_argument("--sizes", type=int, nargs="+", default=[250, 1000, 4000], help="pairwise comparisons")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--eval-prompts", type=int, default=150)
    p.add_argument("--temperature", type=float, default=0.3, help="simulated annotator Plackett–Luce temperature")
    p.add_argument("--flip-rate", type=float, default=0.0)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--steps", type=int, default=126, help="optimizer steps for every size (~3 epochs of the largest)")
    p.add_argument("--batch", type=int, default=16, help="prompts per optimizer step")
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--normalize-prompts", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from rlhfkit.lab import ensure_lab

    ensure_lab()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs_per_prompt = args.k * (args.k - 1) // 2
    need = math.ceil(max(args.sizes) / pairs_per_prompt)
    t = time.time()
    # A few extra prompts: ones whose samples are (nearly) all empty are skipped by compare.
    train = collect(out / "train_comparisons.jsonl", "lab:prompts_train", int(need * 1.05) + 2, args, seed=args.seed)
    held = collect(out / "eval_comparisons.jsonl", "lab:prompts_eval", args.eval_prompts, args, seed=args.seed + 1)
    collect_s = round(time.time() - t, 1)

    results = []
    for size in args.sizes:
        n_prompts = math.ceil(size / pairs_per_prompt)
        r = train_rm(out / f"rm-{size}", train, held, n_prompts, args)
        results.append({"comparisons": size, "prompts": n_prompts, **{k: v for k, v in r.items() if k != "calibration"},
                        "calibration": r["calibration"]})
        print(json.dumps({k: v for k, v in results[-1].items() if k != "calibration"}))
    hacks = hack_table(Path(results[-1]["final"]), held)
    report = {"setup": vars(args), "collect_seconds": collect_s, "curve": results, "hackability": hacks}
    (out / "rm_curve.json").write_text(json.dumps(report, indent=2))

    print(f"\nannotator: simulated, T={args.temperature}, flip_rate={args.flip_rate}; K={args.k}; "
          f"collection {collect_s}s (≈0 when reused from --out)")
    print("| comparisons (pairs) | prompts | steps | RM vs gold | RM vs labels | annotator vs gold (ceiling) | % of ceiling | ECE | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['comparisons']} | {r['prompts']} | {r['steps']} | {r['gold/agreement']:.3f} | {r['eval/accuracy']:.3f} | "
              f"{r['gold/annotator_agreement']:.3f} | {100 * r['gold/of_ceiling']:.1f}% | {r['eval/ece']:.3f} | {r['seconds']} |")
    print(f"\nheld-out pairs (gold not tied): {results[-1]['gold/pairs']}\n")
    print("| response kind | RM (normalised) | gold | prompt + response |")
    print("|---|---|---|---|")
    for h in hacks:
        print(f"| {h['kind']} | {h['rm']:+.2f} | {h['gold']:+.2f} | {(h['prompt'] + h['response'])[:80]} |")


if __name__ == "__main__":
    main()
