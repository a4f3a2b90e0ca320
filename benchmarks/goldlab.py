"""The lab set-up the findings benchmarks share (docs/FINDINGS.md): an SFT policy, comparisons
ranked by simulated annotators, reward models and ensembles, online RL against them, best-of-n
from one set of samples, and the held-out measurements, every one measured with the gold judge.

Each step is cached in the work folder (a finished run is reused), so a benchmark that stops can
be run again and only does what is missing. Everything runs in this process with one torch thread.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from rlhfkit.config import ModelConfig, load_config
from rlhfkit.train.run_dir import read_metrics

NEW_TOKENS = 32  # response length of every sample (RL rollouts, best-of-n, evaluation, comparisons)
EVAL_PROMPTS = "lab:prompts_eval"


def sft(work: Path) -> str:
    """The lab SFT model on the recipe's defaults (benchmarks/ppo_lab.py's starting policy)."""
    from rlhfkit.recipes.sft import SFTConfig, run

    out = work / "sft"
    if not (out / "final" / "run_complete.json").exists():
        run(load_config(SFTConfig, None, ["log.progress=false", "log.save_every=0"]), out)
    return str(out / "final")


def collect(path: Path, policy: str, prompts: str, limit: int, k: int, seed: int, temperature: float,
            flip_rate: float, offset: int = 0) -> Path:
    """K samples of `policy` on prompts [offset, offset + limit) of `prompts`, ranked by the
    simulated annotator (Plackett–Luce on gold at `temperature`, one adjacent swap with `flip_rate`)."""
    from rlhfkit.data import read_records, write_jsonl
    from rlhfkit.jobs.compare import CompareConfig, run

    src = prompts
    if offset:
        src = str(path.with_suffix(".prompts.jsonl"))
        write_jsonl(src, [{"prompt": r.prompt} for r in read_records(prompts, "prompt")[offset : offset + limit]])
    cfg = load_config(CompareConfig, None, [
        f"policy.name_or_path={policy}", f"prompts={src}", f"limit={limit}", f"k={k}", f"seed={seed}",
        f"sampling.max_new_tokens={NEW_TOKENS}", "batch_size=64", "annotator.name=simulated",
        f"annotator.options={{temperature: {temperature}, flip_rate: {flip_rate}, seed: {seed}}}",
    ])
    return run(cfg, path, resume=True)


def held(work: Path, policy: str) -> Path:
    """The held-out comparisons every RM is measured on: K = 4 samples of the SFT policy on the first
    150 lab eval prompts (the annotator's labels give eval/accuracy; gold agreement uses gold itself)."""
    return collect(work / "data" / "held.jsonl", policy, EVAL_PROMPTS, 150, 4, 1000, 0.1, 0.0)


def rm_name(budget: int, seed: int, members: int, flip_rate: float, steps: int) -> str:
    return f"b{budget}-f{flip_rate:g}-st{steps}-s{seed}-m{members}"


def rl_name(rm: str, agg: str, beta: float, lr: float, steps: int, batch: int, group: int) -> str:
    """The folder name of a GRPO run: what it optimised and how."""
    return f"grpo-{rm}-{agg}-beta{beta:g}-lr{lr:g}-x{steps}x{batch}g{group}"


def member(ensemble: str, i: int) -> str:
    """Member i of an ensemble's final/ folder: a complete single-RM folder (with its normalisation)."""
    return str(Path(ensemble) / f"member-{i}")


def train_rm(out: Path, data: Path, held: Path, policy: str, members: int = 1, seed: int = 0,
             limit: int = 0, steps: int = 0) -> str:
    """A Bradley–Terry RM (or an ensemble of `members`, seeds seed..seed+M−1: head init and data
    order differ) from the policy's backbone on the recipe's tuned lab defaults (lr 2e-3, 16 prompts
    a step, 3 epochs, or `steps`), normalised on the policy's own samples; gold agreement on `held`."""
    from rlhfkit.recipes.reward import RewardConfig, run

    if not (out / "final" / "run_complete.json").exists() and not (out / "final" / "ensemble.json").exists():
        run(load_config(RewardConfig, None, [
            f"model.name_or_path={policy}", f"data.train={data}", f"data.eval={held}", f"data.limit={limit}",
            "data.gold=lab", f"train.seed={seed}", f"train.max_steps={steps}", f"ensemble.members={members}",
            "log.save_every=0", "log.eval_every=0", "log.progress=false", f"normalize.policy={policy}",
            f"normalize.max_new_tokens={NEW_TOKENS}",
        ]), out, resume=True)
    return str(out / "final")


def rm_eval(rm: str) -> dict:
    """Held-out numbers of an RM folder (reward_eval.json beside final/): one RM's, or per
    aggregation for an ensemble."""
    return json.loads((Path(rm).parent / "reward_eval.json").read_text())


def online(out: Path, policy: str, reward: str, *, aggregation: str = "mean", beta: float = 0.0, steps: int = 60,
           seed: int = 0, lr: float = 3e-4, batch: int = 64, group: int = 8) -> list[dict]:
    """GRPO from `policy` against `reward` with KL coefficient `beta`; returns the per-step rows
    (reward/mean is the proxy, gold/mean the lab judge on the same rollouts, kl/mean the sequence
    KL to the starting policy)."""
    from rlhfkit.recipes.grpo import GRPOConfig, run

    if not (out / "final" / "run_complete.json").exists():
        run(load_config(GRPOConfig, None, [
            f"model.name_or_path={policy}", f"reward.source={reward}", f"reward.aggregation={aggregation}",
            f"train.max_steps={steps}", f"train.batch_size={batch}", f"train.micro_batch_size={min(batch, 32)}",
            f"train.lr={lr}", f"train.seed={seed}", f"rollout.max_new_tokens={NEW_TOKENS}", "eval.text=null",
            "eval.gold=lab", "log.progress=false", "log.save_every=0", f"algo.kl_coef={beta}",
            f"rollout.group_size={group}",
        ]), out, resume=True)
    return read_metrics(out / "metrics.jsonl", "grpo")


def heldout(policy: str, start: str, examples: int = 128, seed: int = 4321) -> dict:
    """Gold, sequence KL to `start`, length and EOS rate of one sample per held-out prompt."""
    from rlhfkit.evaluate import heldout_metrics
    from rlhfkit.recipes.online import RolloutConfig

    m = heldout_metrics(policy, ModelConfig(name_or_path=start), EVAL_PROMPTS, examples,
                        RolloutConfig(max_new_tokens=NEW_TOKENS), seed)
    return {k: round(v, 4) for k, v in m.items()}


def rm_on_policy(rm: str, policy: str, prompts: int = 96, k: int = 4, seed: int = 4321) -> float:
    """An RM's agreement with gold on `policy`'s own samples: k samples on each of the first `prompts`
    held-out prompts, every pair within a prompt that gold does not tie; an RM tie counts half."""
    from rlhfkit.data import encode_prompt, read_records
    from rlhfkit.lab import gold_score
    from rlhfkit.models.loading import load_policy, load_tokenizer
    from rlhfkit.models.reward import load_reward_model
    from rlhfkit.rollout import SamplingParams, generate

    cfg = ModelConfig(name_or_path=policy)
    model, tok = load_policy(cfg), load_tokenizer(cfg)
    records = read_records(EVAL_PROMPTS, "prompt")[:prompts]
    out = generate(model, tok, [encode_prompt(tok, r) for r in records for _ in range(k)],
                   SamplingParams(max_new_tokens=NEW_TOKENS), batch_size=128, generator_seed=seed)
    texts = [s.text for s in out]
    flat = [r for r in records for _ in range(k)]
    gold = torch.tensor(gold_score([r.prompt + t for r, t in zip(flat, texts, strict=True)])).view(-1, k)
    with torch.no_grad():
        rew = load_reward_model(rm).score(flat, texts).rewards.view(-1, k)
    agree = []
    for i in range(len(records)):
        for a in range(k):
            for b in range(a + 1, k):
                gd, rd = gold[i, a] - gold[i, b], rew[i, a] - rew[i, b]
                if gd != 0:
                    agree.append(0.5 if rd == 0 else float((gd > 0) == (rd > 0)))
    return sum(agree) / max(len(agree), 1)


def smooth(rows: list[dict], key: str, window: int) -> list[float]:
    """Trailing moving average of a per-step metric (each step's rollouts are one small batch)."""
    vals = [r[key] for r in rows]
    return [sum(vals[max(0, i - window + 1) : i + 1]) / len(vals[max(0, i - window + 1) : i + 1]) for i in range(len(vals))]


# ----------------------------------------------------------------------------- best-of-n


def samples(path: Path, policy: str, prompts: int, n: int, seed: int = 0) -> list[dict]:
    """n samples of `policy` for each of the first `prompts` held-out prompts, with their gold,
    cached as JSONL rows {prompt, responses, gold}."""
    from rlhfkit.data import encode_prompt, read_jsonl, read_records, write_jsonl
    from rlhfkit.lab import gold_score
    from rlhfkit.models.loading import load_policy, load_tokenizer
    from rlhfkit.rollout import SamplingParams, generate

    if path.exists():
        return read_jsonl(path)
    cfg = ModelConfig(name_or_path=policy)
    model, tok = load_policy(cfg), load_tokenizer(cfg)
    rows = []
    for rec in read_records(EVAL_PROMPTS, "prompt")[:prompts]:
        out = generate(model, tok, [encode_prompt(tok, rec)] * n, SamplingParams(max_new_tokens=NEW_TOKENS),
                       batch_size=256, generator_seed=seed * 1_000_003 + len(rows))
        texts = [s.text for s in out]
        rows.append({"prompt": rec.prompt, "responses": texts, "gold": gold_score([rec.prompt + t for t in texts])})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, rows)
    return rows


def member_scores(path: Path, rows: list[dict], rm: str) -> torch.Tensor:
    """Every member's normalised score of every sample (M, P, n) (M = 1 for a single RM), cached as
    JSON; an ensemble's aggregations are computed from these (`aggregate`)."""
    if path.exists():
        return torch.tensor(json.loads(path.read_text()))
    from rlhfkit.models.reward import load_reward_model

    model = load_reward_model(rm)
    with torch.no_grad():
        out = model.score([r["prompt"] for r in rows for _ in r["responses"]], [x for r in rows for x in r["responses"]])
    members = out.members.float().view(-1, len(rows), len(rows[0]["responses"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(members.tolist()))
    return members


def aggregate(members: torch.Tensor, how: str, uwo_lambda: float = 1.0) -> torch.Tensor:
    """(M, P, n) member scores -> (P, n) rewards: `single` = member 0, else the ensemble rule the
    RL runs use (models.ensemble.aggregate_members: mean, min, uwo)."""
    from rlhfkit.models.ensemble import aggregate_members

    if how == "single":
        return members[0]
    return aggregate_members(members.flatten(1), how, uwo_lambda).view(members.shape[1:])


def bon_curve(rewards: torch.Tensor, gold: torch.Tensor, ns: list[int]) -> list[dict]:
    """Gold of best-of-n under `rewards` for each n (every sample used once: N // n groups per
    prompt), with the analytic KL, its square root d, and the gold rise over n = 1."""
    from rlhfkit.jobs.best_of_n import best_in_groups, best_of_n_kl

    base = gold.mean().item()
    out = []
    for n in ns:
        per_prompt = best_in_groups(rewards, n, gold)  # (P,)
        kl = best_of_n_kl(n)
        out.append({"n": n, "kl": kl, "d": math.sqrt(kl), "gold": per_prompt.mean().item(),
                    "gold_se": (per_prompt.std() / math.sqrt(len(per_prompt))).item(), "gold_gain": per_prompt.mean().item() - base,
                    "proxy": best_in_groups(rewards, n).mean().item()})
    return out


def bon_kl_plugin(rewards: torch.Tensor, n: int) -> float:
    """KL(best-of-n || pi) measured from samples: the exact KL of picking the best of n draws from
    each prompt's empirical distribution of its N samples (responses with equal reward are one
    outcome level; ties are broken at random), averaged over prompts.

    A level l with empirical mass p_l and mass F_l strictly below it is chosen by best-of-n with
    probability q_l = (F_l + p_l)^n − F_l^n, so KL = Σ_l q_l log(q_l / p_l). With N distinct values this
    is the no-ties value at N, which tends to log n − (n−1)/n as N grows and stays below log N.
    """
    total = 0.0
    for row in rewards:
        vals, counts = torch.unique(row.double(), return_counts=True)  # ascending levels
        p = counts.double() / row.numel()
        below = torch.cumsum(p, 0) - p
        q = (below + p) ** n - below**n
        keep = q > 0
        total += (q[keep] * (q[keep] / p[keep]).log()).sum().item()
    return total / rewards.shape[0]


# ----------------------------------------------------------------------------- statistics


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval over seeds (0 for one value)."""
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, 0.0
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, t975(n - 1) * sd / math.sqrt(n)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom: the table's values to df = 10,
    beyond it the Cornish–Fisher expansion around z = 1.95996 to the df⁻³ term (within 0.001 of
    printed tables from df = 10, closer as df grows)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
    if df in table:
        return table[df]
    z = 1.959964
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def fmt_ci(values: list[float], digits: int = 3) -> str:
    m, h = mean_ci(values)
    return f"{m:.{digits}f} ± {h:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def write_section(doc: Path, name: str, text: str) -> None:
    """Replace (or append) the section between `<!-- name -->` and `<!-- /name -->` in docs/FINDINGS.md,
    so each benchmark rewrites only its own part."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    body = f"{start}\n{text.rstrip()}\n{end}"
    old = doc.read_text() if doc.exists() else "# Findings on the lab\n"
    if start in old and end in old:
        new = old[: old.index(start)] + body + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip() + "\n\n" + body + "\n"
    doc.write_text(new)
