"""Model FLOP utilisation (MFU) of rlhfkit's training steps at realistic tokens per optimizer step,
and where each step's time goes.

    python benchmarks/mfu.py                                   # gpt2-100m and lab, 1 and 2 threads
    python benchmarks/mfu.py --models gpt2-100m --threads 1 --tokens 2048 --recipes sft
    python benchmarks/mfu.py --candidates-only                 # only the investigated fixes (1 thread)
    python benchmarks/mfu.py --candidates                      # both (make bench)

MFU = achieved model FLOP/s / the fp32 matmul rate (torch 1024x1024 @ 1024x1024) measured in the
same child process on the same thread count, right before and right after each configuration
(the machine may be shared: every number is a ratio taken within seconds). Both are given in wall
time and in CPU time (`time.process_time`: with one thread, time the process was descheduled by
other jobs does not count, so the CPU-time ratio is the steadier one; co-running jobs still slow
memory-bound ops through shared caches, so it reads a few points lower under load).

Model FLOPs of a training step = 6 * N * D per trained model (forward 2ND + backward 4ND), where
N = the weights of every linear layer (GPT-2's Conv1D blocks and the LM / score head; embeddings
and positional tables are lookups, biases and norms are neglected) and D = the real (non-padding)
input tokens; a no-grad pass (PPO's old-logp / reference / value passes) is 2 * N * D. Attention
score FLOPs (QK^T and AV, 6 * L * d * n^2 per causal sequence of n computed positions in training)
are *not* in the count; the `attn` column gives their share of 6ND at the lengths actually run.

What is reproduced of each recipe (everything else of rlhfkit's own is called, not copied):
- sft: lab demonstrations -> `encode_demonstration` -> `BatchPlan` -> per micro-batch sft.py's
  `pack_demonstrations` (packed rows of max_length 128, block-diagonal mask: sft.py's default
  `data.packing`) -> `packed_forward` -> `sft_loss`, as sft.py.
- reward: (demonstration, its words reversed) pairs -> `encode_scored` rows -> per micro-batch
  reward.py's `collate_comparisons` (packed rows of 128: reward.py's default `data.packing`) ->
  `sequence_rewards` -> `kwise_loss`.
- dpo: the same pairs -> `encode_prompt_responses` -> dpo.py's `pack_pairs` (capacity 128) and
  `sequence_logps` -> `preference_loss('sigmoid')` against a cached reference table (random values:
  only its shape matters for time; the recipe computes it once before training).
- ppo / grpo: the update phase over one minibatch of lab episodes (prompt, its demonstration cut
  to 32 response tokens) built with experience.py (`build_rollout`, `no_grad_passes`, `by_length`,
  `forward_window`, `response_logits`), advantages from `gae` / `advantages.grpo` on random scores,
  losses `policy_loss` + `value_loss` (ppo, policy + critic in one AdamW as ppo.py) or `policy_loss`
  + `kl_loss` (grpo, no critic; one on-policy update, so pi_old's log-probs come from the update's
  own forward, as online.py: no old-logp pass). The no-grad passes are timed as their own rows
  (`*-exp`: ppo old log-probs, reference, values; grpo reference only).
Every step: micro-batches of about 2048 real tokens, `accelerator.backward`, `clip_grad_norm_` per
model, `build_optimizer`'s AdamW (torch's fused kernel), the schedule,
`zero_grad(set_to_none=True)`, the recipe's `.item()` metrics, `TrainSession.log`; a checkpoint
(`TrainSession.save`) is timed once and amortised over `log.save_every` (100) steps. Rollout
generation and evaluation are not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from memory import MODELS  # the same "gpt2-100m" config as benchmarks/memory.py

from rlhfkit.config import LogConfig, TrainConfig

MICRO_TOKENS = 2048  # real tokens per micro-batch, every recipe
MAX_LENGTH = 128  # gpt2-100m has 128 positions; the lab model too
RESPONSE_TOKENS = 32  # PPO's rollout.max_new_tokens default
BUCKETS = ("data", "forward", "loss", "backward", "clip", "optimizer", "metrics", "log", "checkpoint")


# ----------------------------------------------------------------------------- timing


class Split:
    """Disjoint wall / CPU timers per bucket. Model forwards are clocked by hooks on the models, so
    inside the `fwd+loss` bucket the forward is split from the loss (`sequence_logps`, `sequence_rewards`
    and `token_values` call the model inside rlhfkit code we do not copy)."""

    def __init__(self):
        import torch

        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self._fwd = [0.0, 0.0]  # wall, cpu inside model forwards, running total
        self._t = None
        self.record = torch.autograd.profiler.record_function

    def watch(self, model) -> None:
        def pre(_m, _a):
            self._t = (time.perf_counter(), time.process_time())

        def post(_m, _a, _o):
            self._fwd[0] += time.perf_counter() - self._t[0]
            self._fwd[1] += time.process_time() - self._t[1]

        model.register_forward_pre_hook(pre)
        model.register_forward_hook(post)

    @contextmanager
    def __call__(self, name: str):
        w0, c0, f0 = time.perf_counter(), time.process_time(), list(self._fwd)
        with self.record(name):
            yield
        w, c = time.perf_counter() - w0, time.process_time() - c0
        if name == "fwd+loss":
            fw, fc = self._fwd[0] - f0[0], self._fwd[1] - f0[1]
            self.wall["forward"] += fw
            self.cpu["forward"] += fc
            self.wall["loss"] += w - fw
            self.cpu["loss"] += c - fc
        else:
            self.wall[name] += w
            self.cpu[name] += c


def matmul_rate(seconds: float = 1.5, n: int = 1024, dtype=None) -> tuple[float, float]:
    """(wall, cpu) GFLOP/s of n x n @ n x n, repeated for `seconds` of wall time."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    k, w0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - w0 < seconds:
        a @ b
        k += 1
    w, c = time.perf_counter() - w0, time.process_time() - c0
    return 2 * n**3 * k / w / 1e9, 2 * n**3 * k / c / 1e9


def linear_weights(model) -> tuple[int, int, int]:
    """(N, layers, width) where N counts the weights of every linear layer (Conv1D, nn.Linear, the
    tied LM head), not embeddings, biases or norms."""
    import torch
    from transformers.pytorch_utils import Conv1D

    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear | Conv1D))
    cfg = model.config
    return n, cfg.n_layer, cfg.n_embd


# ----------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class BenchConfig:
    """What TrainSession needs (train and log sections), written to the scratch run's config.yaml."""

    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=lambda: LogConfig(progress=False))


def model_folder(model: str, work: Path, vocab: int | None = None) -> str:
    """The lab base model, or a random GPT-2 of `MODELS[model]` with the lab tokenizer (as memory.py)."""
    from rlhfkit.lab import base_model_dir

    lab = base_model_dir()
    if MODELS[model] is None:
        return str(lab)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

    tok = AutoTokenizer.from_pretrained(lab)
    cfg = GPT2Config(vocab_size=vocab or len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                     bos_token_id=None, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **MODELS[model])
    torch.manual_seed(0)
    folder = work / f"{model}-{vocab or len(tok)}"
    if not folder.exists():
        AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
        tok.save_pretrained(folder)
    return str(folder)


def lab_pairs(tokenizer, n: int):
    """(record, chosen, rejected): a lab demonstration vs its words reversed (quality is irrelevant)."""
    from rlhfkit.data import read_records

    demos = read_records("lab:sft_train", "demonstration")[:n]
    return [(d, d.response, " " + " ".join(reversed(d.response.split()))) for d in demos]


# ----------------------------------------------------------------------------- recipes


class Recipe:
    """One recipe's step pieces: `units(ids)` -> micro-batch units and the global normaliser,
    `collate(unit)` -> tensors, `loss(batch, norm)` -> (loss, metric tensors), `count(batch)` ->
    (real tokens, computed positions), `finish(sums)` -> the step's floats (its .item() calls)."""

    trained: dict  # name -> model, what the optimizer updates (and a checkpoint saves)
    per_example: float  # mean real tokens per example (row, pair, episode)

    def units(self, ids, split):
        return [ids[i : i + self.micro] for i in range(0, len(ids), self.micro)], self.normalizer(ids)

    def finish(self, sums: dict) -> dict:
        return {k: v.item() for k, v in sums.items()}

    def micro_metrics(self, m: dict) -> dict:
        return m


class SFT(Recipe):
    def __init__(self, tok, policy, packing: bool = True, sort: bool = False):
        from rlhfkit.data import encode_demonstration

        feats = [encode_demonstration(tok, d, MAX_LENGTH) for d, _, _ in lab_pairs(tok, 2000)]
        self.real_of = [len(f["input_ids"]) for f in feats]
        self.capacity = MAX_LENGTH if packing else None
        self.feats, self.sort, self.pad, self.policy = feats, sort, tok.pad_token_id, policy
        self.trained = {"policy": policy}
        self.per_example = sum(self.real_of) / len(self.real_of)
        self.micro = max(1, round(MICRO_TOKENS / self.per_example))

    def normalizer(self, ids):
        from rlhfkit.losses.sft import count_target_tokens

        return count_target_tokens([self.feats[i]["labels"] for i in ids])

    def units(self, ids, split):
        if self.sort:  # length-bucketed micro-batches (sft.py's padded fallback)
            ids = sorted(ids, key=lambda i: self.real_of[i])
        return super().units(ids, split)

    def collate(self, unit):
        from rlhfkit.recipes.sft import pack_demonstrations

        b = pack_demonstrations([self.feats[i] for i in unit], self.pad, self.capacity)
        b["real"] = sum(self.real_of[i] for i in unit)
        return b

    def count(self, b):
        return b["real"], b["input_ids"].numel()

    def loss(self, b, norm):
        from rlhfkit.losses.sft import sft_loss
        from rlhfkit.models.packing import packed_forward

        out, x = packed_forward(self.policy, b)
        loss, _ = sft_loss(out.logits, x["labels"], normalizer=norm)
        return loss, {"loss": loss.detach()}


class Reward(Recipe):
    def __init__(self, tok, rm, packing: bool = True):
        from rlhfkit.models.reward import encode_scored

        self.feats = [{"rows": [encode_scored(tok, r, c, MAX_LENGTH), encode_scored(tok, r, x, MAX_LENGTH)],
                       "winners": [0], "losers": [1], "targets": [1.0], "margins": [0.0]} for r, c, x in lab_pairs(tok, 2000)]
        self.rm, self.pad, self.trained = rm, tok.pad_token_id, {"reward": rm}
        self.capacity = MAX_LENGTH if packing else None
        self.per_example = sum(len(a) + len(b) for a, b in (f["rows"] for f in self.feats)) / len(self.feats)
        self.micro = max(1, round(MICRO_TOKENS / self.per_example))

    def normalizer(self, ids):
        return len(ids)  # prompts in the global batch

    def collate(self, unit):
        from rlhfkit.recipes.reward import collate_comparisons

        return collate_comparisons([self.feats[i] for i in unit], self.pad, self.capacity)

    def count(self, b):
        return int((b["seq_index"] >= 0).sum()), b["input_ids"].numel()

    def loss(self, b, norm):
        from rlhfkit.losses.bradley_terry import kwise_loss
        from rlhfkit.models.packing import sequence_rewards

        rewards = sequence_rewards(self.rm, b)
        loss, m = kwise_loss(rewards, b["winners"], b["losers"], b["groups"], b["targets"], b["margins"], 0.0, norm)
        return loss, {"loss": loss.detach(), **{k: v.detach().float() for k, v in m.items()}}


class DPO(Recipe):
    def __init__(self, tok, policy):
        import torch

        from rlhfkit.data import encode_prompt_responses

        self.pairs = []
        for r, c, x in lab_pairs(tok, 2000):
            prompt, (ci, xi), _ = encode_prompt_responses(tok, r, (c, x), MAX_LENGTH)
            self.pairs.append({"prompt": prompt, "chosen": ci, "rejected": xi})
        self.ref_table = -torch.rand(len(self.pairs), 2) * 50  # cached reference log-probs (values irrelevant)
        self.policy, self.pad, self.trained = policy, tok.pad_token_id, {"policy": policy}
        self.per_example = sum(2 * len(p["prompt"]) + len(p["chosen"]) + len(p["rejected"]) for p in self.pairs) / len(self.pairs)
        self.micro = max(1, round(MICRO_TOKENS / self.per_example))

    def normalizer(self, ids):
        return len(ids)

    def collate(self, unit):
        from rlhfkit.recipes.dpo import pack_pairs

        b = pack_pairs([self.pairs[i] for i in unit], self.pad, MAX_LENGTH)
        b["ids"] = unit
        return b

    def count(self, b):
        return int((b["seq_index"] >= 0).sum()), b["input_ids"].numel()

    def loss(self, b, norm):
        from rlhfkit.losses.dpo import preference_loss
        from rlhfkit.models.packing import sequence_logps

        ref = self.ref_table[b["ids"]]
        logps, lengths = sequence_logps(self.policy, b)
        m = len(b["ids"])
        loss, metrics = preference_loss("sigmoid", logps[:m], logps[m:], ref[:, 0], ref[:, 1], beta=0.1,
                                        chosen_lengths=lengths[:m], rejected_lengths=lengths[m:], normalizer=norm)
        return loss, {"loss": loss.detach(), **metrics}

    def finish(self, sums):  # dpo.py: one .tolist() per step
        import torch

        return dict(zip(sums, torch.stack(list(sums.values())).tolist(), strict=True))


class Update(Recipe):
    """PPO (with critic) or GRPO-like (critic-free, k3 KL loss) update over one minibatch. GRPO's one
    on-policy update takes pi_old's log-probs and entropy from its own forward (online.py's
    `old_logps_from_update`): no old-logp pass."""

    def __init__(self, tok, policy, ref, critic, group: int = 4):
        from rlhfkit.data import encode_prompt, encode_response_after

        self.episodes = [(encode_prompt(tok, r, max_length=64), encode_response_after(tok, r, c, max_length=RESPONSE_TOKENS))
                         for r, c, _ in lab_pairs(tok, 2000)]
        self.policy, self.ref, self.critic, self.pad, self.group = policy, ref, critic, tok.pad_token_id, group
        self.trained = {"policy": policy} | ({"critic": critic} if critic is not None else {})
        self.per_example = sum(len(p) + len(r) - 1 for p, r in self.episodes) / len(self.episodes)  # window tokens
        self.micro = max(1, round(MICRO_TOKENS / self.per_example))

    def units(self, ids, split):
        import torch

        from rlhfkit.experience import build_rollout, by_length, no_grad_passes
        from rlhfkit.losses import advantages as est
        from rlhfkit.losses.ppo import gae, kl_per_token, token_rewards, whiten

        ids = ids[: len(ids) // self.group * self.group]  # whole groups (grpo)
        with split("data"):
            roll = build_rollout([self.episodes[i][0] for i in ids], [self.episodes[i][1] for i in ids], self.pad, "cpu")
        with split("experience"):
            p = no_grad_passes(roll, self.policy, self.ref, self.critic, self.micro, 1.0, nullcontext,
                               policy_pass=self.critic is not None)
            mask = roll.response_mask
            scores = torch.randn(roll.size, generator=torch.Generator().manual_seed(len(ids)))
            if self.critic is not None:
                kl = kl_per_token(p.old_logps, p.ref_logps, mask, "k1")
                adv, ret = gae(token_rewards(scores, kl, mask, 0.05), p.values, mask, 1.0, 0.95)
                adv = whiten(adv, mask)
            else:  # GRPO's KL is in the loss, not in the advantages
                adv, ret = est.grpo(scores, torch.zeros_like(mask), mask, group_size=self.group)
        self.roll, self.p, self.adv, self.ret = roll, p, adv, ret
        units = list(by_length(roll, torch.arange(roll.size)).split(self.micro))
        return units, mask.sum().item()  # ppo.py: acc.reduce(tokens).item()

    def collate(self, rows):
        from rlhfkit.experience import forward_window, response_labels

        inputs, r = forward_window(self.roll, rows)
        return {"inputs": inputs, "r": r, "rows": rows, "labels": response_labels(self.roll, rows, r)}

    def count(self, b):
        return int(b["inputs"]["attention_mask"].sum()), b["inputs"]["input_ids"].numel()

    def loss(self, b, norm):
        from rlhfkit.experience import response_logits
        from rlhfkit.losses.logprobs import entropy_from_logits, token_logps
        from rlhfkit.losses.ppo import kl_loss, policy_loss, value_loss
        from rlhfkit.models.value import token_values

        rows, r, p = b["rows"], b["r"], self.p
        m = self.roll.response_mask[rows, :r]
        logits = response_logits(self.policy, b["inputs"], r, 1.0)
        logps = token_logps(logits, b["labels"])
        if self.critic is None:  # on-policy: pi_old is this very forward (online.py's Experience.record_old)
            p.old_logps[rows, :r] = logps.detach()
            p.entropy[rows, :r] = entropy_from_logits(logits.detach())
        pg, pg_m = policy_loss(logps, p.old_logps[rows, :r], self.adv[rows, :r], m, 0.2, norm)
        if self.critic is not None:
            v = token_values(self.critic, **b["inputs"])[:, -r:]
            extra, x_m = value_loss(v, p.values[rows, :r], self.ret[rows, :r], m, 0.2, norm)
            loss = pg + 0.1 * extra
        else:
            extra, x_m = kl_loss(logps, p.ref_logps[rows, :r], m, 0.04, normalizer=norm)
            loss = pg + extra
        return loss, {"loss": loss.detach(), "pg": pg, "extra": extra, **pg_m, "x": next(iter(x_m.values()))}

    def micro_metrics(self, m: dict) -> dict:
        """ppo.py takes five .item()s per micro-batch and keeps the loss sum as a tensor."""
        for k in ("pg", "extra", "clipfrac", "approx_kl", "x"):
            m.pop(k).item()
        m.pop("ratio")
        return m


# ----------------------------------------------------------------------------- one configuration


def attention_share(b: dict, recipe: Recipe, layers: int, width: int, n_linear: int) -> float:
    """Causal attention-score FLOPs (6 L d n^2 per row of n computed positions) / 6 N D."""
    if "inputs" in b:
        ids = b["inputs"]["input_ids"]
    else:
        ids = b["input_ids"]
    rows, n = ids.shape
    real, _ = recipe.count(b)
    return layers * width * rows * n * n / (n_linear * real)


def run_config(s, recipe: Recipe, optimizer, scheduler, split: Split, steps: int, tokens: int, warm: bool, seed: int = 0) -> dict:
    """`steps` measured steps of ~`tokens` real tokens each; with `warm`, first one unmeasured step
    of one micro-batch (allocator, AdamW state, first-call costs)."""
    from rlhfkit.train.batches import BatchPlan

    per_step = max(1, round(tokens / recipe.per_example))
    n_examples = len(getattr(recipe, "feats", None) or getattr(recipe, "pairs", None) or recipe.episodes)
    plan = BatchPlan(n_examples, per_step, recipe.micro)
    models = list(recipe.trained.values())
    acc = s.accelerator
    out = {"real": 0, "computed": 0, "attn": []}

    def step(k: int, measure: bool) -> None:
        sp = split if measure else Split()
        with sp("data"):
            ids = plan.global_batch(k, seed)
        units, norm = recipe.units(ids, sp)
        sums: dict = {}
        for unit in units:
            with sp("data"):
                b = recipe.collate(unit)
            if measure:
                real, computed = recipe.count(b)
                out["real"] += real
                out["computed"] += computed
                out["attn"].append((attention_share(b, recipe, *out["shape"]), real))
            with sp("fwd+loss"):
                loss, m = recipe.loss(b, norm)
            with sp("backward"):
                acc.backward(loss)
            with sp("metrics"):
                for key, v in recipe.micro_metrics(m).items():
                    sums[key] = sums[key] + v if key in sums else v
        with sp("clip"):
            for model in models:
                acc.clip_grad_norm_(model.parameters(), 1.0)
        with sp("optimizer"):
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        with sp("metrics"):
            metrics = recipe.finish(sums)
        with sp("log"):
            s.log(k + 1, metrics)

    out["shape"] = (recipe.n_layer, recipe.width, recipe.n_linear)
    if warm:
        full, plan = plan, BatchPlan(n_examples, recipe.micro, recipe.micro)
        step(0, measure=False)
        plan = full
    mm0 = matmul_rate()
    load0 = os.getloadavg()[0]
    w0, c0 = time.perf_counter(), time.process_time()
    for k in range(1, steps + 1):
        step(k, measure=True)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    mm1 = matmul_rate()
    attn = sum(a * r for a, r in out["attn"]) / max(out["real"], 1)
    return {"steps": steps, "wall": wall, "cpu": cpu, "real": out["real"], "computed": out["computed"],
            "mm_wall": [mm0[0], mm1[0]], "mm_cpu": [mm0[1], mm1[1]], "load": [load0, os.getloadavg()[0]], "attn": attn}


def summarise(res: dict, n_flop: int) -> dict:
    flops = 6 * n_flop * res["real"]
    mm_w, mm_c = sum(res["mm_wall"]) / 2, sum(res["mm_cpu"]) / 2
    return {"tokens_per_step": res["real"] / res["steps"], "pad_share": 1 - res["real"] / res["computed"],
            "s_per_step": res["wall"] / res["steps"], "tokens_per_s": res["real"] / res["wall"],
            "model_gflops": flops / res["wall"] / 1e9, "matmul_gflops": mm_w, "mfu_wall": flops / res["wall"] / 1e9 / mm_w,
            "mfu_cpu": flops / res["cpu"] / 1e9 / mm_c}


# ----------------------------------------------------------------------------- child: the main table


def build(recipe: str, model_path: str, tok, split: Split):
    """(Recipe, optimizer, scheduler, n_flop) with rlhfkit's loaders, optimizer and schedule."""
    import torch

    from rlhfkit.config import ModelConfig, TrainConfig
    from rlhfkit.models.loading import disable_dropout, load_policy, load_reference
    from rlhfkit.train.optim import build_optimizer, build_scheduler

    mc, tc = ModelConfig(name_or_path=model_path), TrainConfig()
    if recipe == "reward":
        from rlhfkit.models.reward import build_reward_model

        main = build_reward_model(mc, tok.pad_token_id)
        r = Reward(tok, main)
    else:
        main = load_policy(mc)
        disable_dropout(main)
    if recipe == "sft":
        r = SFT(tok, main)
    elif recipe == "dpo":
        r = DPO(tok, main)
    elif recipe in ("ppo", "grpo"):
        from rlhfkit.models.value import load_value_model

        critic = load_value_model("policy", mc) if recipe == "ppo" else None
        ref = load_reference(mc, main)
        r = Update(tok, main, ref, critic)
        for m in (ref, critic):
            if m is not None:
                split.watch(m)
    if recipe == "ppo":  # one AdamW over policy and critic, as ppo.py
        groups = build_optimizer(main, tc).param_groups + build_optimizer(critic, tc).param_groups
        optimizer = torch.optim.AdamW(groups, lr=tc.lr, betas=tuple(tc.adam_betas), eps=tc.adam_eps, fused=True)
    else:
        optimizer = build_optimizer(main, tc)
    scheduler = build_scheduler(optimizer, tc, 1000)
    split.watch(main)
    for m in r.trained.values():
        m.train()
    r.n_linear, r.n_layer, r.width = linear_weights(main)
    n_flop = sum(linear_weights(m)[0] for m in r.trained.values())
    return r, optimizer, scheduler, n_flop


def child_main(model: str, work: Path, recipes: list[str], tokens: list[int], steps: int, budget: float) -> None:
    from transformers import AutoTokenizer

    from rlhfkit.train.session import TrainSession

    path = model_folder(model, work)
    tok = AutoTokenizer.from_pretrained(path)
    s = TrainSession(BenchConfig(), work / "run", stage="mfu")
    for name in recipes:
        split = Split()
        recipe, optimizer, scheduler, n_flop = build(name, path, tok, split)
        rate = None  # real tokens/s of the last configuration measured
        for t in tokens:
            n = max(1, min(4 * steps, round(steps * MICRO_TOKENS / t)))  # measured steps: fewer for the big ones
            if rate is not None and (est := n * t / rate) > budget:
                emit({"recipe": name, "tokens": t, "skipped": f"estimated {est:.0f} s > --budget {budget:.0f} s"})
                continue
            split.wall.clear()
            split.cpu.clear()
            res = run_config(s, recipe, optimizer, scheduler, split, n, t, warm=rate is None)
            row = {"recipe": name, "tokens": t, **res, **summarise(res, n_flop), "n_flop": n_flop,
                   "split": {k: v / res["wall"] for k, v in split.wall.items()},
                   "split_cpu": {k: v / res["cpu"] for k, v in split.cpu.items()}}
            if isinstance(recipe, Update):  # the no-grad passes of the same batches, as their own row
                exp = {"wall": split.wall["experience"], "cpu": split.cpu["experience"]}
                # no-grad passes: ppo old log-probs (policy), reference, values (critic); grpo reference only
                flops = 2 * (n_flop + recipe.n_linear if recipe.critic is not None else n_flop) * res["real"]
                row["experience"] = {"s_per_step": exp["wall"] / n,
                                     "mfu_wall": flops / exp["wall"] / 1e9 / (sum(res["mm_wall"]) / 2),
                                     "mfu_cpu": flops / exp["cpu"] / 1e9 / (sum(res["mm_cpu"]) / 2)}
                # the update step's own time excludes the experience passes
                upd_wall, upd_cpu = res["wall"] - exp["wall"], res["cpu"] - exp["cpu"]
                row.update(summarise({**res, "wall": upd_wall, "cpu": upd_cpu}, n_flop))
                row["split"] = {k: v / upd_wall for k, v in split.wall.items() if k != "experience"}
                row["split_cpu"] = {k: v / upd_cpu for k, v in split.cpu.items() if k != "experience"}
            rate = res["real"] / res["wall"]
            emit(row)
        with split("checkpoint"):  # amortised over log.save_every steps
            t0 = time.perf_counter()
            s.save(1, recipe.trained, optimizer, scheduler, tokenizer=tok)
            emit({"recipe": name, "checkpoint_s": time.perf_counter() - t0, "save_every": s.log_cfg.save_every})
        del recipe, optimizer, scheduler


def emit(row: dict) -> None:
    print("RESULT " + json.dumps(row), flush=True)


# ----------------------------------------------------------------------------- child: candidate fixes


def sft_micro_batch(model: str, work: Path, vocab: int | None = None):
    """(policy, SFT, batch, fwd_bwd, head_only) for one packed SFT micro-batch of `model`:
    fwd_bwd = the recipe's loss (logits at every position, `sft_loss`) and backward; head_only =
    the same NLL with the LM head applied to the label positions only."""
    import torch
    from transformers import AutoTokenizer

    from rlhfkit.config import ModelConfig
    from rlhfkit.models.loading import disable_dropout, load_policy

    path = model_folder(model, work, vocab=vocab)
    tok = AutoTokenizer.from_pretrained(path)
    policy = load_policy(ModelConfig(name_or_path=path))
    disable_dropout(policy)
    policy.train()
    sft = SFT(tok, policy)
    ids = list(range(sft.micro))
    batch, norm = sft.collate(ids), sft.normalizer(ids)

    def fwd_bwd():
        sft.loss(batch, norm)[0].backward()
        policy.zero_grad(set_to_none=True)

    def head_only():
        labels = batch["labels"][:, 1:]
        keep = labels >= 0
        hidden = policy.transformer(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = policy.lm_head(hidden[:, :-1][keep])  # (targets, V)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels[keep], reduction="sum") / norm
        loss.backward()
        policy.zero_grad(set_to_none=True)

    return tok, path, policy, sft, batch, norm, fwd_bwd, head_only


def timed(fn, reps: int = 2) -> tuple[float, float]:
    """Mean (wall, cpu) seconds of fn() over reps, after one warm-up call."""
    fn()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - w0) / reps, (time.process_time() - c0) / reps


OP_CLASSES = (  # (class, substrings of aten op names), first match wins
    ("gemm", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
    ("attention kernel", ("scaled_dot_product", "flash_attention")),
    ("layer norm", ("layer_norm",)),
    ("logits/loss", ("logsumexp", "gather", "log_softmax", "nll_loss", "index_add")),
    ("copies/layout", ("copy_", "aten::cat", "clone", "fill_", "zero_", "aten::empty", "contiguous")),
    ("elementwise", ("aten::mul", "aten::add", "aten::pow", "tanh", "gelu", "aten::div", "aten::sub", "aten::neg",
                     "aten::where", "aten::exp", "aten::sum", "aten::masked_fill", "threshold")),
)


def op_profile(fn, label: str) -> None:
    """Self time of every aten op in one call of `fn` (torch.profiler), grouped into `OP_CLASSES`,
    and the achieved GEMM rate inside the model (profiler FLOPs of mm/addmm/bmm / their time)."""
    from torch.profiler import ProfilerActivity, profile

    mm0 = matmul_rate()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        fn()
    mm1 = matmul_rate()
    time_us, flops = defaultdict(float), defaultdict(float)
    for e in prof.key_averages():
        cls = next((c for c, keys in OP_CLASSES if any(k in e.key for k in keys)), "other")
        time_us[cls] += e.self_cpu_time_total
        flops[cls] += e.flops or 0
    total = sum(time_us.values())
    emit({"candidate": "op profile", "label": label, "total_s": total / 1e6, "share": {k: v / total for k, v in time_us.items()},
          "gemm_gflops_wall": flops["gemm"] / (time_us["gemm"] / 1e6) / 1e9, "mm_wall": (mm0[0] + mm1[0]) / 2})


def candidates_main(model: str, work: Path) -> None:
    import torch
    from transformers.activations import ACT2FN

    from rlhfkit.config import ModelConfig
    from rlhfkit.models.loading import load_reference

    tok, path, policy, sft, batch, norm, fwd_bwd, head_only = sft_micro_batch(model, work)
    split = Split()
    n_flop = linear_weights(policy)[0]

    def ratio_row(name, fn, reps=2, **extra):
        """extra: `real` tokens (model FLOPs = mult * N * real; mult 6 = fwd+bwd, 2 = no-grad pass)."""
        mm0 = matmul_rate()
        w, c = timed(fn, reps)
        mm1 = matmul_rate()
        emit({"candidate": name, "wall": w, "cpu": c, "mm_wall": (mm0[0] + mm1[0]) / 2, "mm_cpu": (mm0[1] + mm1[1]) / 2,
              "load": os.getloadavg()[0], "n_flop": n_flop, **extra})

    # 1. matmul shapes: the model's GEMMs at a 2048-token micro-batch vs 1024^3; bf16 vs fp32
    d, t = policy.config.n_embd, MICRO_TOKENS
    v = policy.config.vocab_size
    shapes = {"1024^3": (1024, 1024, 1024), "c_attn fwd (T,d)x(d,3d)": (t, d, 3 * d), "attn c_proj (T,d)x(d,d)": (t, d, d),
              "c_fc fwd (T,d)x(d,4d)": (t, d, 4 * d), "mlp c_proj (T,4d)x(4d,d)": (t, 4 * d, d),
              "c_fc dW (d,T)x(T,4d)": (d, t, 4 * d), "lm_head (T,d)x(d,V)": (t, d, v), "attn QK^T per head (128,64)x(64,128)": (128, 64, 128)}
    for name, (m, k, n) in shapes.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        reps = max(1, int(2e10 / (2 * m * k * n)))
        w, c = timed(lambda a=a, b=b, reps=reps: [a @ b for _ in range(reps)], 1)
        emit({"candidate": "gemm", "shape": name, "gflops_wall": 2 * m * k * n * reps / w / 1e9, "gflops_cpu": 2 * m * k * n * reps / c / 1e9})
    emit({"candidate": "gemm", "shape": "1024^3 bf16", **dict(zip(("gflops_wall", "gflops_cpu"), matmul_rate(dtype=torch.bfloat16), strict=True))})

    # 2. AdamW on CPU: for-loop (torch's CPU default) vs foreach vs fused; clip_grad_norm_ foreach
    from rlhfkit.config import TrainConfig
    from rlhfkit.train.optim import build_optimizer

    for p in policy.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    groups = build_optimizer(policy, TrainConfig()).param_groups
    for impl in ("default", "foreach", "fused"):
        kw = {} if impl == "default" else {impl: True}
        opt = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups], lr=1e-5, **kw)
        ratio_row(f"adamw {impl}", opt.step, reps=3)
        del opt
    for fe in (None, True):
        ratio_row(f"clip_grad_norm_ foreach={fe}", lambda fe=fe: torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0, foreach=fe), reps=3)
    policy.zero_grad(set_to_none=True)

    # 3. GELU: GPT-2's gelu_new (several elementwise Python ops) vs gelu_pytorch_tanh (one fused kernel)
    acts = [blk.mlp.act for blk in policy.transformer.h]
    for name in ("gelu_new", "gelu_pytorch_tanh"):
        for blk in policy.transformer.h:
            blk.mlp.act = ACT2FN[name]
        ratio_row(f"sft micro-batch fwd+bwd, activation {name}", fwd_bwd, real=batch["real"])
        op_profile(fwd_bwd, f"sft micro-batch fwd+bwd, activation {name}")
    x = torch.randn(4096, 3072)
    emit({"candidate": "gelu max abs diff", "value": (ACT2FN["gelu_new"](x) - ACT2FN["gelu_pytorch_tanh"](x)).abs().max().item()})
    for blk, act in zip(policy.transformer.h, acts, strict=True):
        blk.mlp.act = act

    # 4. padding: unpacked BatchPlan order vs length-sorted micro-batches vs packed rows, one 4096-token step
    for label, rec in (("unpacked", SFT(tok, policy, packing=False)), ("unpacked, length-sorted", SFT(tok, policy, packing=False, sort=True)),
                       ("packed", sft)):
        from rlhfkit.train.batches import BatchPlan

        n = max(1, round(2 * MICRO_TOKENS / rec.per_example))
        ids = BatchPlan(len(rec.feats), n, rec.micro).global_batch(0, 0)
        units, nm = rec.units(ids, split)
        bs = [rec.collate(u) for u in units]
        real, computed = sum(rec.count(b)[0] for b in bs), sum(rec.count(b)[1] for b in bs)

        def step(rec=rec, bs=bs, nm=nm):
            for b in bs:
                rec.loss(b, nm)[0].backward()
            policy.zero_grad(set_to_none=True)

        ratio_row(f"sft 4k-token step fwd+bwd, {label}", step, reps=1, real=real, computed=computed)

    # 5. logits: full-vocabulary LM head + loss on every position vs on the label positions only
    ratio_row("sft micro-batch, logits on all positions (as sft.py)", fwd_bwd, real=batch["real"], targets=norm)
    ratio_row("sft micro-batch, logits on label positions only", head_only, real=batch["real"], targets=norm)

    # 6. redundant no-grad passes: DPO's reference per micro-batch (uncached) and PPO's old-logp pass
    ref = load_reference(ModelConfig(name_or_path=path), policy)
    dpo = DPO(tok, policy)
    db = dpo.collate(list(range(dpo.micro)))

    def dpo_step():
        dpo.loss(db, len(db["ids"]))[0].backward()
        policy.zero_grad(set_to_none=True)

    from rlhfkit.models.packing import sequence_logps

    ratio_row("dpo micro-batch fwd+bwd (reference cached, as dpo.py)", dpo_step, real=dpo.count(db)[0])
    ratio_row("dpo reference pass per micro-batch (uncached)", lambda: torch.no_grad()(sequence_logps)(ref, db), real=dpo.count(db)[0], mult=2)
    upd = Update(tok, policy, ref, None)
    units, _ = upd.units(list(range(upd.micro)), split)
    ub = upd.collate(units[0])

    from rlhfkit.experience import response_logits
    from rlhfkit.losses.logprobs import entropy_from_logits, token_logps

    def old_pass():
        with torch.no_grad():
            logits = response_logits(policy, ub["inputs"], ub["r"], 1.0)
            token_logps(logits, ub["labels"])
            entropy_from_logits(logits)

    def upd_step():
        upd.loss(ub, 1000.0)[0].backward()
        policy.zero_grad(set_to_none=True)

    ratio_row("grpo micro-batch update fwd+bwd", upd_step, real=upd.count(ub)[0])
    ratio_row("ppo/grpo old-logp no-grad pass per micro-batch", old_pass, real=upd.count(ub)[0], mult=2)

    # 7. host-side Python per micro-batch: collation alone
    ratio_row("sft collate (packed, one micro-batch)", lambda: sft.collate(list(range(sft.micro))), reps=5)
    ratio_row("dpo pack_pairs (one micro-batch)", lambda: dpo.collate(list(range(dpo.micro))), reps=5)
    ratio_row("ppo forward_window (one micro-batch)", lambda: upd.collate(units[0]), reps=5)
    ratio_row(".item() of a 0-d tensor", lambda: [torch.ones(()).item() for _ in range(1000)], reps=3, per=1000)


def candidates_vocab(model: str, work: Path) -> None:
    """The logits candidate at GPT-2's real vocabulary (50257): the LM head is then 38.6M weights."""
    _, _, policy, _, batch, norm, full, head_only = sft_micro_batch(model, work, 50257)
    for name, fn in (("V=50257: logits on all positions", full), ("V=50257: logits on label positions only", head_only)):
        mm0 = matmul_rate()
        w, c = timed(fn, 1)
        mm1 = matmul_rate()
        emit({"candidate": name, "wall": w, "cpu": c, "mm_wall": (mm0[0] + mm1[0]) / 2, "mm_cpu": (mm0[1] + mm1[1]) / 2,
              "real": batch["real"], "targets": norm, "n_flop": linear_weights(policy)[0], "load": os.getloadavg()[0]})


def candidates_alloc(model: str, work: Path) -> None:
    """One SFT micro-batch fwd+bwd under whatever allocator settings this process was started with."""
    _, _, policy, _, batch, _, fwd_bwd, _ = sft_micro_batch(model, work)
    mm0 = matmul_rate()
    w, c = timed(fwd_bwd, 1)
    mm1 = matmul_rate()
    emit({"candidate": "allocator", "env": os.environ.get("MFU_ALLOC", "glibc default"), "wall": w, "cpu": c,
          "mm_wall": (mm0[0] + mm1[0]) / 2, "mm_cpu": (mm0[1] + mm1[1]) / 2, "real": batch["real"],
          "n_flop": linear_weights(policy)[0], "load": os.getloadavg()[0]})


# ----------------------------------------------------------------------------- parent


ALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4294967296", "MALLOC_TOP_PAD_": "268435456"}


def spawn(args: list[str], threads: int, extra_env: dict | None = None) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "RLHFKIT_PROGRESS": "0",
           **(extra_env or {})}
    cmd = [sys.executable, __file__, "--child-threads", str(threads), *args]
    rows = []
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            if line.startswith("RESULT "):
                row = {"threads": threads, **json.loads(line[7:])}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if proc.returncode:
        sys.exit(f"child {args} failed with exit {proc.returncode}")
    return rows


def main_table(rows: list[dict]) -> str:
    out = ["| model | recipe | threads | tokens/step | pad % | s/step | tokens/s | model GFLOP/s (wall) | matmul GFLOP/s wall / CPU | "
           "MFU (wall) | MFU (CPU time) | attn % | load |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r['model']} | {r['recipe']} | {r['threads']} | {r['tokens']} | skipped: {r['skipped']} |||||||||")
            continue
        if "mfu_wall" not in r:
            continue
        out.append(f"| {r['model']} | {r['recipe']} | {r['threads']} | {r['tokens_per_step']:.0f} | {100 * r['pad_share']:.0f} | "
                   f"{r['s_per_step']:.2f} | {r['tokens_per_s']:.0f} | {r['model_gflops']:.1f} | {r['matmul_gflops']:.0f} / "
                   f"{sum(r['mm_cpu']) / 2:.0f} | {100 * r['mfu_wall']:.0f}% | {100 * r['mfu_cpu']:.0f}% | {100 * r['attn']:.1f} | "
                   f"{min(r['load']):.1f}–{max(r['load']):.1f} |")
        if "experience" in r:
            e = r["experience"]
            out.append(f"| {r['model']} | {r['recipe']}-exp (no-grad passes) | {r['threads']} | {r['tokens_per_step']:.0f} | | "
                       f"{e['s_per_step']:.2f} | | | | {100 * e['mfu_wall']:.0f}% | {100 * e['mfu_cpu']:.0f}% | | |")
    return "\n".join(out)


def split_table(rows: list[dict]) -> str:
    """Shares of the step's CPU time per bucket (wall time for rows without it): under a changing
    load, wall-time shares move with the load; CPU-time shares do not."""
    ckpt = {(r["model"], r["threads"], r["recipe"]): r["checkpoint_s"] / r["save_every"] for r in rows if "checkpoint_s" in r}
    out = ["| model | recipe | threads | tokens/step | " + " | ".join(BUCKETS) + " | other |", "|---|---|---|---|" + "---|" * (len(BUCKETS) + 1)]
    for r in rows:
        if "split" not in r:
            continue
        sp = dict(r.get("split_cpu") or r["split"])
        c = ckpt.get((r["model"], r["threads"], r["recipe"]))
        sp["checkpoint"] = c / r["s_per_step"] if c is not None else float("nan")
        other = 1 - sum(v for k, v in sp.items() if k in BUCKETS and k != "checkpoint")  # the save is outside the step
        cells = ["–" if sp.get(k, 0) != sp.get(k, 0) else f"{100 * sp.get(k, 0):.1f}" for k in BUCKETS]  # nan: no save timed
        out.append(f"| {r['model']} | {r['recipe']} | {r['threads']} | {r['tokens_per_step']:.0f} | " + " | ".join(cells)
                   + f" | {100 * other:.1f} |")
    return "\n".join(out)


def candidate_table(rows: list[dict]) -> str:
    out = ["| candidate | wall s | CPU s | real tokens | model GFLOP/s (CPU) | matmul GFLOP/s (CPU) | ratio | load |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "wall" not in r:
            continue
        n = r.get("n_flop")
        g = r.get("mult", 6) * n * r["real"] / r["cpu"] / 1e9 if n and r.get("real") else None
        extra = f" (computed {r['computed']})" if "computed" in r else ""
        rate, ratio = ("", "") if g is None else (f"{g:.1f}", f"{100 * g / r['mm_cpu']:.0f}%")
        env = " " + r["env"] if "env" in r else ""
        out.append(f"| {r['candidate']}{env} | {r['wall']:.3f} | {r['cpu']:.3f} | {r.get('real', '')}{extra} | {rate} | "
                   f"{r['mm_cpu']:.0f} | {ratio} | {r['load']:.1f} |")
    prof = [r for r in rows if r.get("candidate") == "op profile"]
    if prof:
        classes = [c for c, _ in OP_CLASSES] + ["other"]
        out += ["", "| op profile (self time, %) | " + " | ".join(classes) + " | GEMM GFLOP/s in model (wall) | matmul 1024^3 (wall) |",
                "|---|" + "---|" * (len(classes) + 2)]
        out += [f"| {r['label']} | " + " | ".join(f"{100 * r['share'].get(c, 0):.1f}" for c in classes)
                + f" | {r['gemm_gflops_wall']:.0f} | {r['mm_wall']:.0f} |" for r in prof]
    gemm = [r for r in rows if r.get("candidate") == "gemm"]
    if gemm:
        out += ["", "| GEMM shape | GFLOP/s (wall) | GFLOP/s (CPU) |", "|---|---|---|"]
        out += [f"| {r['shape']} | {r['gflops_wall']:.0f} | {r['gflops_cpu']:.0f} |" for r in gemm]
    out += [f"\n{r['candidate']}: {r['value']:.2e}" for r in rows if "value" in r]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="gpt2-100m,lab")
    ap.add_argument("--recipes", default="sft,reward,dpo,ppo,grpo")
    ap.add_argument("--tokens", default="128,2048,8192,32768", help="real tokens per optimizer step (128: the issue's "
                    "~100-token steps)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=2, help="measured steps at 2048 tokens/step; other sizes get "
                    "proportionally more or fewer (1 to 4x this); one unmeasured warm-up step of one micro-batch first")
    ap.add_argument("--budget", type=float, default=200, help="skip a configuration whose measured steps would take longer "
                    "than this many seconds (estimated from the recipe's previous configuration's tokens/s)")
    ap.add_argument("--candidates", action="store_true", help="also measure the candidate fixes (gpt2-100m, 1 thread)")
    ap.add_argument("--candidates-only", action="store_true")
    ap.add_argument("--json", help="also write every row here")
    ap.add_argument("--child-threads", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=2, metavar=("KIND", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.child_threads)
        kind, model = args.child
        with tempfile.TemporaryDirectory(prefix="mfu-") as tmp:  # model folders, the scratch run and its checkpoint
            if kind == "table":
                child_main(model, Path(tmp), args.recipes.split(","), [int(t) for t in args.tokens.split(",")], args.steps,
                           args.budget)
            else:
                {"candidates": candidates_main, "vocab": candidates_vocab, "alloc": candidates_alloc}[kind](model, Path(tmp))
        return
    rows: list[dict] = []
    common = ["--recipes", args.recipes, "--tokens", args.tokens, "--steps", str(args.steps), "--budget", str(args.budget)]
    if not args.candidates_only:
        for model in args.models.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                rows += [{"model": model, **r} for r in spawn([*common, "--child", "table", model], threads)]
    cand: list[dict] = []
    if args.candidates or args.candidates_only:
        cand += spawn(["--child", "candidates", "gpt2-100m"], 1)
        cand += spawn(["--child", "vocab", "gpt2-100m"], 1)
        for extra in (None, ALLOC_ENV, None, ALLOC_ENV):  # interleaved: the load changes by the minute
            env = {**extra, "MFU_ALLOC": " ".join(f"{k}={v}" for k, v in extra.items())} if extra else None
            cand += spawn(["--child", "alloc", "gpt2-100m"], 1, env)
    print(f"\nload average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    if rows:
        print(main_table(rows), "\n")
        print("Time split, % of the step's CPU time (checkpoint: one TrainSession.save / log.save_every, wall):\n")
        print(split_table(rows), "\n")
    if cand:
        print(candidate_table(cand))
    if args.json:
        Path(args.json).write_text(json.dumps({"table": rows, "candidates": cand}, indent=1))


if __name__ == "__main__":
    main()
