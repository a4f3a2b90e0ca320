"""The lab's verifiable task (rlhfkit/lab/verifiable.py) under GRPO: success rate before and after,
and reward hacking on the gameable rule.

    .venv/bin/python benchmarks/verifiable_lab.py                       # both experiments
    .venv/bin/python benchmarks/verifiable_lab.py --exp rule --seeds 0 1 2 --steps 40
    .venv/bin/python benchmarks/verifiable_lab.py --exp hack --hack-steps 40

rule  GRPO with reward rlhfkit.lab.verifiable:reward (1 where the rule holds, else 0) on
      lab:verifiable_train, from --model (default: the lab base model). Held-out: one sample per
      prompt of lab:verifiable_eval (256 prompts, seed 4321, the same for every model): success rate
      with its 95% Wilson interval, before and after, the gain with its 95% normal interval
      (independent binomials), success by target sentiment, lab gold, KL to the start, length.
hack  GRPO with reward rlhfkit.lab.verifiable:mentions (target-sentiment words, no grammar check),
      the lab gold judge logged on every step's rollouts and the run's hacking alarms on (the
      recipes' default monitor, action warn): the rule's reward and gold over training, the alarms
      that fired (alarms.jsonl), and the held-out rule/mentions/gold before and after.

One torch thread. Writes WORKDIR/verifiable_lab.json and prints markdown for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

RULE, MENTIONS = "rlhfkit.lab.verifiable:reward", "rlhfkit.lab.verifiable:mentions"
Z = 1.96  # two-sided 95%


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k / n."""
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return centre - half, centre + half


def diff_interval(p1: float, p0: float, n: int) -> tuple[float, float]:
    """95% normal interval of p1 - p0 for two independent binomial samples of n each."""
    se = math.sqrt(p1 * (1 - p1) / n + p0 * (1 - p0) / n)
    return p1 - p0 - Z * se, p1 - p0 + Z * se


def measure(policy: str, start: str, args) -> dict:
    """One sample per held-out prompt (fixed seed), scored by the rule, `mentions` and lab gold."""
    import torch

    from rlhfkit.config import ModelConfig
    from rlhfkit.data import read_records
    from rlhfkit.evaluate import evaluate_policy
    from rlhfkit.lab import verifiable
    from rlhfkit.models.loading import load_policy, load_tokenizer, resolve_model_path
    from rlhfkit.rewards import build_reward
    from rlhfkit.rollout import SamplingParams

    ref_cfg = ModelConfig(name_or_path=start)
    records = read_records("lab:verifiable_eval", "prompt")[: args.examples]
    tok = load_tokenizer(ref_cfg)
    model, ref = load_policy(ref_cfg, path=resolve_model_path(policy)), load_policy(ref_cfg)
    m, rows = evaluate_policy(model, tok, records, SamplingParams(max_new_tokens=args.new_tokens), judge=RULE,
                              seed=4321, ref=ref)
    responses = [r["response"] for r in rows]
    target = [r.columns["sentiment"] for r in records]
    ok = [r["gold"] > 0.5 for r in rows]  # the rule's 0/1 reward
    gold = build_reward("lab:gold")(records, responses).rewards
    mentions = verifiable.mentions([r.prompt for r in records], responses, target)
    n, k = len(ok), sum(ok)
    by = {s: sum(o for o, t in zip(ok, target, strict=True) if t == s) / max(target.count(s), 1)
          for s in ("positive", "negative")}
    return {"n": n, "success": k / n, "wilson95": wilson(k, n), "success_positive": by["positive"],
            "success_negative": by["negative"], "gold": float(torch.as_tensor(gold).mean()),
            "mentions": sum(mentions) / n, "kl": m["kl/mean"], "length": m["response/length"]}


def train(args, name: str, reward: str, seed: int, steps: int) -> tuple[str, float]:
    from rlhfkit.config import load_config
    from rlhfkit.recipes.grpo import GRPOConfig, run

    out = Path(args.workdir) / name
    t0 = time.time()
    if not (out / "final" / "run_complete.json").exists():
        cfg = load_config(GRPOConfig, None, [
            f"model.name_or_path={args.model}", f"reward.source={reward}", "data.prompts=lab:verifiable_train",
            f"train.seed={seed}", f"train.max_steps={steps}", f"train.lr={args.lr}", "train.batch_size=64",
            "train.micro_batch_size=32", f"rollout.max_new_tokens={args.new_tokens}", f"algo.kl_coef={args.beta}",
            "eval.text=null", "eval.gold=lab", "log.progress=false", "log.save_every=0"])
        run(cfg, out)
    return str(out / "final"), round(time.time() - t0, 1)


def exp_rule(args, before: dict) -> dict:
    runs = []
    for seed in args.seeds:
        final, seconds = train(args, f"rule_s{seed}", RULE, seed, args.steps)
        after = measure(final, args.model, args)
        runs.append({"seed": seed, "train_seconds": seconds, "after": after,
                     "gain95": diff_interval(after["success"], before["success"], after["n"])})
        print(json.dumps(runs[-1]), flush=True)
    return {"runs": runs}


def exp_hack(args, before: dict) -> dict:
    from rlhfkit.monitor.alarms import read_alarms
    from rlhfkit.train.run_dir import read_metrics

    final, seconds = train(args, "hack", MENTIONS, args.seeds[0], args.hack_steps)
    out = Path(final).parent
    rows = read_metrics(out / "metrics.jsonl", "grpo")
    curve = [{"step": r["step"], "mentions": round(r["reward/mean"], 3), "gold": round(r["gold/mean"], 3),
              "length": round(r["response/length"], 2)} for r in rows]
    alarms = [a.to_json() for a in read_alarms(out / "alarms.jsonl")]
    res = {"train_seconds": seconds, "curve": curve, "alarms": alarms, "after": measure(final, args.model, args)}
    print(json.dumps(res), flush=True)
    return res


def markdown(res: dict) -> str:
    def ci(lo_hi) -> str:
        return f"[{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]"

    b = res["before"]
    lines = ["| model | success (95% Wilson) | gain (95%) | positive / negative targets | gold | KL to start | length |",
             "|---|---|---|---|---|---|---|",
             f"| start | {b['success']:.3f} {ci(b['wilson95'])} | | {b['success_positive']:.3f} / "
             f"{b['success_negative']:.3f} | {b['gold']:.3f} | 0 | {b['length']:.1f} |"]
    for r in res.get("rule", {}).get("runs", []):
        a = r["after"]
        lines.append(f"| GRPO rule, seed {r['seed']} | {a['success']:.3f} {ci(a['wilson95'])} | "
                     f"{a['success'] - b['success']:+.3f} {ci(r['gain95'])} | {a['success_positive']:.3f} / "
                     f"{a['success_negative']:.3f} | {a['gold']:.3f} | {a['kl']:.2f} | {a['length']:.1f} |")
    if "hack" in res:
        h = res["hack"]
        a, c = h["after"], h["curve"]
        lines.append(f"| GRPO `mentions`, seed {res['settings']['seeds'][0]} | {a['success']:.3f} {ci(a['wilson95'])} | "
                     f"{a['success'] - b['success']:+.3f} | {a['success_positive']:.3f} / {a['success_negative']:.3f} | "
                     f"{a['gold']:.3f} | {a['kl']:.2f} | {a['length']:.1f} |")
        lines += ["", f"`mentions` run, training rollouts (mentions / gold), steps 1, {len(c) // 2}, {len(c)}: "
                  + ", ".join(f"{c[i]['mentions']:.2f} / {c[i]['gold']:.3f}" for i in (0, len(c) // 2 - 1, -1))
                  + f"; held-out mentions {b['mentions']:.2f} -> {a['mentions']:.2f}."]
        lines += [f"alarm `{al['name']}` at step {al['step']}: {al['message']}" for al in h["alarms"]] or ["no alarm fired"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", nargs="*", default=["rule", "hack"], choices=["rule", "hack"])
    p.add_argument("--workdir", default="runs/verifiable_lab")
    p.add_argument("--model", default="lab", help="the start policy (and the KL reference)")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=40, help="GRPO steps on the rule")
    p.add_argument("--hack-steps", type=int, default=40, help="GRPO steps on `mentions`")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beta", type=float, default=0.0, help="algo.kl_coef")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--examples", type=int, default=256, help="held-out prompts (lab:verifiable_eval has 256)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    from rlhfkit.lab import ensure_lab

    ensure_lab()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    res = {"settings": vars(args), "before": measure(args.model, args.model, args)}
    print(json.dumps({"before": res["before"]}), flush=True)
    for name, exp in (("rule", exp_rule), ("hack", exp_hack)):
        if name in args.exp:
            res[name] = exp(args, res["before"])
            (work / "verifiable_lab.json").write_text(json.dumps(res, indent=2))
    print(markdown(res))


if __name__ == "__main__":
    main()
