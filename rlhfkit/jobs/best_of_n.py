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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from rlhfkit.config import ConfigError, ModelConfig, doc, section
from rlhfkit.data import encode_prompt, read_records, write_jsonl
from rlhfkit.evaluate import Judge, held_out, prompts_to_sample, resolve_reward
from rlhfkit.jobs.sample import SamplingConfig
from rlhfkit.models.loading import load_policy, load_tokenizer
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
              batch_size: int = 64, judge=None) -> list[dict]:
    """One row per prompt record: the highest-reward of n samples, with every sample's reward.

    rows: {prompt, response, reward, finished, rewards: [n floats]} (+ gold, golds: the held-out
    `judge`'s scores, a reward source such as lab:gold, when given).
    """
    ids = [encode_prompt(tokenizer, r) for r in records for _ in range(n)]
    samples = generate(policy, tokenizer, ids, params, batch_size=batch_size, generator_seed=seed)
    prompts = [r for r in records for _ in range(n)]
    texts = [s.text for s in samples]
    out = reward(prompts, texts, ids, [s.response_ids for s in samples])
    rewards = out.rewards.view(len(records), n)
    golds = judge(prompts, texts).rewards.view(len(records), n) if judge is not None else None
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


@dataclass(frozen=True)
class BestOfNConfig:
    model: ModelConfig = section(ModelConfig, "policy to sample")
    prompts: str = doc("auto", "prompt records (file, dataset folder, lab:NAME); auto = lab:prompts_eval for the lab's models, else name them")
    n: int = doc(4, "samples per prompt")
    reward: str = doc("auto", "reward: RM or ensemble folder, lab:gold, module:function or path/to/file.py:function (a function spec runs that Python code: name only code you trust); auto = lab:gold for the lab's models and prompts")
    aggregation: Literal["mean", "min", "uwo"] = doc("mean", "how ensemble members combine")
    limit: int = doc(0, "use only the first N prompts; 0 = all")
    gold: Judge = doc("none", "also report the lab's gold of the kept responses: lab, none, auto (for the lab's models and prompts)")
    sampling: SamplingConfig = section(SamplingConfig, "sampling")


def run(cfg: BestOfNConfig, out: str | Path, resume: bool = False) -> Path:
    """`rlhfkit best-of-n`: the kept responses as demonstrations JSONL (`out`) + a summary JSON beside it."""
    if cfg.n < 1:
        raise ConfigError(f"--n must be at least 1 (config key n), got {cfg.n}")
    name = cfg.model.name_or_path
    prompts = prompts_to_sample("best-of-n", name, cfg.prompts)
    source = resolve_reward(cfg.reward, "--reward", name, [prompts])
    heldout = held_out("best-of-n", name, [prompts], judge=cfg.gold, quiet=True)
    records = read_records(prompts, "prompt")[: cfg.limit or None]
    reward = build_reward(source, aggregation=cfg.aggregation)
    policy, tokenizer = load_policy(cfg.model), load_tokenizer(cfg.model)
    judge = build_reward(heldout.judge) if heldout.judge else None
    rows = best_of_n(policy, tokenizer, records, cfg.n, reward, cfg.sampling.params(), seed=cfg.sampling.seed, judge=judge)
    out = Path(out)
    write_jsonl(out, [{k: v for k, v in r.items() if k not in ("rewards", "golds")} for r in rows])
    summary = {"model": name, "reward": source, "prompts": prompts, **heldout.provenance(), **summarize(rows, cfg.n)}
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return out
