"""Best-of-n (rejection sampling): sample n responses per prompt, keep the one a reward likes best.

    for each prompt x:  y_1..y_n ~ pi(. | x);  keep y* = argmax_i R(x, y_i)

Two uses: a baseline *policy* at evaluation time (no training; its KL from pi is known
analytically, `best_of_n_kl`), and a way to make SFT data (the kept responses are written as
{prompt, response, reward} demonstrations, as in rejection-sampling fine-tuning, e.g. Llama 2
§3.2.2). R is any `rlhfkit.rewards` source: an RM folder, an ensemble, `lab:gold`, `module:fn`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from rlhfkit.data import encode_prompt, read_records, write_jsonl
from rlhfkit.rewards import build_reward
from rlhfkit.rollout import SamplingParams, generate


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || pi) = log n - (n - 1)/n nats (Stiennon et al. 2020, appendix G.3).

    Exact when the n rewards never tie; Beirami et al. 2024 show it is an upper bound in general.
    n = 1 gives 0 (the policy itself); n = 4: 0.636; 16: 1.835; 64: 3.175.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_in_groups(rewards: torch.Tensor, n: int, values: torch.Tensor | None = None) -> torch.Tensor:
    """Best-of-n from N >= n samples per prompt, using every sample once.

    rewards (P, N) choose; values (P, N) are reported (default: the rewards). The N samples are
    split into N // n disjoint groups of n; the value of each group's highest-reward sample is
    averaged per prompt -> (P,). An unbiased estimate of best-of-n with N // n times less variance
    than a single group, so one set of 64 samples gives best-of-1, 4, 16 and 64 together.
    """
    p, total = rewards.shape
    if not 1 <= n <= total:
        raise ValueError(f"best-of-{n} needs at least {n} samples per prompt, got {total}")
    values = rewards if values is None else values
    groups = total // n
    r = rewards[:, : groups * n].reshape(p, groups, n)
    v = values[:, : groups * n].reshape(p, groups, n)
    best = r.argmax(-1, keepdim=True)  # (P, G, 1)
    return v.gather(-1, best).squeeze(-1).mean(-1)


def best_of_n(policy, tokenizer, records, n: int, reward, params: SamplingParams, seed: int = 0,
              batch_size: int = 64, gold: bool = False) -> list[dict]:
    """One row per prompt record: the highest-reward of n samples, with every sample's reward.

    rows: {prompt, response, reward, finished, rewards: [n floats]} (+ gold, golds with `gold`).
    """
    ids = [encode_prompt(tokenizer, r) for r in records for _ in range(n)]
    samples = generate(policy, tokenizer, ids, params, batch_size=batch_size, generator_seed=seed)
    prompts = [r.prompt for r in records for _ in range(n)]
    out = reward(prompts, [s.text for s in samples], ids, [s.response_ids for s in samples])
    rewards = out.rewards.view(len(records), n)
    golds = None
    if gold:
        from rlhfkit.lab import gold_score

        golds = torch.tensor(gold_score([p + s.text for p, s in zip(prompts, samples, strict=True)])).view(len(records), n)
    rows = []
    for i, record in enumerate(records):
        k = int(rewards[i].argmax())
        s = samples[i * n + k]
        row = {"prompt": record.prompt, "response": s.text, "reward": float(rewards[i, k]), "finished": s.finished,
               "rewards": rewards[i].tolist()}
        if golds is not None:
            row.update(gold=float(golds[i, k]), golds=golds[i].tolist())
        rows.append(row)
    return rows


def summarize(rows: list[dict], n: int) -> dict[str, float]:
    """Means over prompts: reward and gold of the kept response and of a single sample
    (best-of-1 from the same samples), the analytic KL, and the share that emitted EOS."""
    count = max(len(rows), 1)
    m = {
        "n": n,
        "prompts": len(rows),
        "reward/mean": sum(r["reward"] for r in rows) / count,
        "reward/mean_single": sum(sum(r["rewards"]) / n for r in rows) / count,
        "kl/analytic": best_of_n_kl(n),
        "response/eos_rate": sum(r["finished"] for r in rows) / count,
    }
    if rows and "gold" in rows[0]:
        m["gold/mean"] = sum(r["gold"] for r in rows) / count
        m["gold/mean_single"] = sum(sum(r["golds"]) / n for r in rows) / count
    return m


def run(args) -> dict:
    """`rlhfkit best-of-n`: write the kept responses as demonstrations JSONL + a summary JSON."""
    from rlhfkit.config import ConfigError, ModelConfig
    from rlhfkit.evaluate import prompts_to_sample, resolve_reward
    from rlhfkit.models.loading import load_policy, load_tokenizer

    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    mcfg = ModelConfig(name_or_path=args.model, trust_remote_code=args.trust_remote_code)
    prompts = prompts_to_sample("best-of-n", args.model, args.prompts)
    source = resolve_reward(args.reward, "--reward", args.model, [prompts])
    records = read_records(prompts, "prompt")[: args.limit or None]
    reward = build_reward(source, aggregation=args.aggregation)
    policy, tokenizer = load_policy(mcfg), load_tokenizer(mcfg)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    gold = args.gold == "lab"
    rows = best_of_n(policy, tokenizer, records, args.n, reward, params, seed=args.seed, gold=gold)
    out = Path(args.out)
    write_jsonl(out, [{k: v for k, v in r.items() if k not in ("rewards", "golds")} for r in rows])
    summary = {"model": args.model, "reward": source, "prompts": prompts, **summarize(rows, args.n)}
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary
