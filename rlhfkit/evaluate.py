"""Held-out evaluation shared by recipes and `rlhfkit eval`: what it is measured on, NLL /
perplexity of labelled tokens, samples scored for length, EOS rate, KL and (lab) gold.

What held-out numbers are measured on is decided in one place, `held_out`: the lab's gold judge,
eval prompts and text are used only when the model or the data come from the lab (`from_lab`), or
when the user names them; otherwise a run measures on its own held-out data (the caller's `own`
split) or not at all, with one printed line saying so. A model folder is the lab's when it lies in
the lab folder or rlhfkit trained it from a lab model: every training recipe writes `"lab": true/false`
(the starting model's lab-ness) into final/run_complete.json, so the mark follows a model from stage
to stage; folders without the mark (trained elsewhere, or by an older rlhfkit) count as not the lab's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rlhfkit.config import ConfigError
from rlhfkit.data.tokenize import collate_demonstrations
from rlhfkit.lab.names import is_lab_name
from rlhfkit.losses.sft import sft_loss
from rlhfkit.train.shard import gathered

# ----------------------------------------------------------------------------- what it is measured on

LAB_JUDGE, LAB_PROMPTS, LAB_TEXT = "lab:gold", "lab:prompts_eval", "lab:pretrain_eval"
# A held-out judge setting: "auto" (the lab's gold judge when the model or the data are the lab's),
# "lab" / true (always), "none" / false / null (off).
Judge = Literal["auto", "lab", "none"] | bool | None


def from_lab(spec: Any) -> bool:
    """Whether a model or data spec is the lab's: 'lab', 'lab:NAME', a path inside a built lab
    folder (one holding manifest.json, base/ and data/), or a model folder rlhfkit trained from a
    lab model (its run_complete.json says "lab": true). Never builds the lab."""
    if not isinstance(spec, (str, Path)) or not str(spec):
        return False
    if is_lab_name(str(spec)):
        return True
    path = Path(spec).expanduser()
    if not path.exists():
        return False  # a hub name
    for folder in (path.resolve(), *path.resolve().parents):
        if (folder / "manifest.json").is_file() and (folder / "base").is_dir() and (folder / "data").is_dir():
            return True
    mark = path / "run_complete.json"
    try:
        return mark.is_file() and json.loads(mark.read_text()).get("lab") is True
    except ValueError:
        return False


def lab_world(model: Any, data: Sequence[Any] = (), lab_data: bool = False) -> bool:
    """Lab defaults apply when the model or any data source is the lab's (`lab_data`: the caller
    knows its records are, e.g. comparisons labelled by the lab's simulated annotators)."""
    return lab_data or from_lab(model) or any(from_lab(d) for d in data)


@dataclass(frozen=True)
class Source:
    """A held-out source: `on` names it for summaries; `spec` is the record source to read, or None
    for the caller's own held-out data."""

    on: str
    spec: str | None


@dataclass(frozen=True)
class HeldOut:
    judge: str | None  # LAB_JUDGE or None (off)
    prompts: Source | None  # sampled for kl/mean, response/*, gold/mean; None = off
    text: Source | None  # eval/perplexity; None = off

    def provenance(self) -> dict[str, str]:
        """What each held-out number was measured on, for run_complete.json and summaries."""
        out = {"gold/judge": self.judge} if self.judge else {}
        if self.prompts:
            out["eval/prompts_on"] = self.prompts.on
        if self.text:
            out["eval/perplexity_on"] = self.text.on
        return out


def held_out(stage: str, model: Any, data: Sequence[Any] = (), *, judge: Judge = None, prompts: str | None = None,
             text: str | None = None, own_prompts: str | None = None, own_text: str | None = None,
             lab_data: bool = False, keys: dict[str, str] | None = None, quiet: bool = False) -> HeldOut:
    """Decide what a run's held-out numbers are measured on (the one place this is decided).

    judge / prompts / text are the config values: "auto" resolves here (lab world: the lab's
    gold judge, LAB_PROMPTS, LAB_TEXT; otherwise `own_prompts` / `own_text`, descriptions of the
    caller's own held-out data, or off); a record source is used as named; null is off. `keys`
    names the config keys in the printed lines (e.g. {"text": "sampling.text"})."""
    keys = {"judge": "gold", "prompts": "prompts", "text": "text", **(keys or {})}
    lab = lab_world(model, data, lab_data)
    why = f"the model ({model}) and the data are not the lab's"
    notes = []

    def pick(kind: str, value: str | None, lab_default: str, own: str | None) -> Source | None:
        if value != "auto":
            return Source(value, value) if value else None
        if lab:
            return Source(lab_default, lab_default)
        if own:
            return Source(own, None)
        notes.append(f"{kind} off: {why} and there is no held-out split of your own; set {keys[kind]} to measure it")
        return None

    if judge == "auto":
        judge_on = lab
        if not lab:
            notes.append(f"judge off (no gold/*): {why}; set {keys['judge']}=lab to use the lab's gold judge anyway")
    else:
        judge_on = judge is True or judge == "lab"
    plan = HeldOut(LAB_JUDGE if judge_on else None, pick("prompts", prompts, LAB_PROMPTS, own_prompts),
                   pick("text", text, LAB_TEXT, own_text))
    if not quiet:
        for note in notes:
            print(f"[{stage}] held-out {note}")
    return plan


def prompts_to_sample(stage: str, model: Any, prompts: str | None, key: str = "--prompts") -> str:
    """The prompt source of a job that exists to sample (sample, best-of-n), "auto" resolved as in
    `held_out`; an error when there is none."""
    plan = held_out(stage, model, prompts=prompts, quiet=True)
    if plan.prompts is None:
        raise ConfigError(f"{key}: name prompt records to sample (auto = {LAB_PROMPTS}, for the lab's models only)")
    return plan.prompts.spec


def resolve_reward(spec: str, key: str, model: Any, data: Sequence[Any] = ()) -> str:
    """A reward source setting: "auto" is the lab's gold judge in the lab world and an error
    elsewhere (a user's model needs a reward model, ensemble or function named); others as given."""
    if spec != "auto":
        return spec
    if lab_world(model, data):
        return LAB_JUDGE
    raise ConfigError(f"config key '{key}': name a reward model folder, an ensemble folder or module:function "
                      f"(auto = the lab's gold judge, only for lab models and data; name {LAB_JUDGE} to use it anyway)")


# ----------------------------------------------------------------------------- held-out metrics


def text_features(tokenizer, source, max_length: int = 256, limit: int | None = None) -> list[dict]:
    """Held-out text records as language-modelling features: every token (and a final EOS) scored."""
    from rlhfkit.data import encode_text, read_records

    feats = []
    for r in read_records(source, "text")[: limit or None]:
        ids = encode_text(tokenizer, r.text, max_length)  # a long text is cut before tokenising
        feats.append({"input_ids": ids, "labels": list(ids)})
    return feats


@torch.no_grad()
def perplexity(model, features: list[dict], pad_token_id: int, micro_batch_size: int = 16, accelerator=None) -> dict[str, float]:
    """Token-weighted NLL and perplexity over `features` (input_ids + labels), across processes."""
    was_training = model.training
    model.eval()
    rank = accelerator.process_index if accelerator else 0
    world = accelerator.num_processes if accelerator else 1
    device = accelerator.device if accelerator else next(model.parameters()).device
    mine = features[rank::world]
    nll = torch.zeros((), device=device, dtype=torch.float64)
    tokens = torch.zeros((), device=device, dtype=torch.float64)
    with gathered(model):  # sharded (train.sharding=fsdp): uneven shares forward on gathered weights
        for i in range(0, len(mine), micro_batch_size):
            batch = collate_demonstrations(mine[i : i + micro_batch_size], pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            _, m = sft_loss(logits, batch["labels"])
            nll += m["nll_sum"].double()
            tokens += m["tokens"].double()
    if accelerator is not None and world > 1:
        nll, tokens = accelerator.reduce(nll, "sum"), accelerator.reduce(tokens, "sum")
    model.train(was_training)
    mean = (nll / tokens.clamp(min=1)).item()
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "tokens": tokens.item()}


def as_judge(judge: Any):
    """A held-out judge as a reward source: None, a spec such as "lab:gold" (`held_out` gives that),
    True (the lab's gold judge; older callers' `gold=True`), or already a reward source."""
    if judge is None or judge is False:
        return None
    from rlhfkit.rewards import build_reward

    if judge is True:
        return build_reward(LAB_JUDGE)
    return build_reward(judge) if isinstance(judge, str) else judge


@torch.no_grad()
def evaluate_policy(
    model,
    tokenizer,
    prompts: list,
    params=None,
    text_features: list[dict] | None = None,
    judge: Any = None,
    seed: int = 0,
    batch_size: int = 64,
    ref=None,
    accelerator=None,
    max_prompt_length: int | None = None,
    gold: bool | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """The one held-out evaluation of a policy (DPO and the online recipes during training, iterate,
    best-of-n, `rlhfkit eval` and the pipeline's eval stage).

    Samples one response per prompt (a string or a prompt record) and reports response/length,
    response/eos_rate; with a `judge` (a reward source, or a spec such as "lab:gold") its mean
    score as gold/mean; with a reference model, kl/mean (the k1 sequence KL of the samples, the
    same estimator for every method); with held-out text, eval/perplexity. No prompts: perplexity
    only. With an accelerator and several processes the prompts are split rank::world (seed +
    rank) and the sums reduced; rows are this process's. Sampling never moves the caller's RNG.
    Returns (metrics, rows: {prompt, response, finished, length[, gold]}).
    """
    judge = as_judge(judge if gold is None else (judge or gold))
    with gathered(model, ref):  # sharded (train.sharding=fsdp): generation forwards on gathered weights
        return _evaluate_policy(model, tokenizer, prompts, params, text_features, judge, seed, batch_size, ref,
                                accelerator, max_prompt_length)


def _evaluate_policy(model, tokenizer, prompts, params, text_features, judge, seed, batch_size, ref, accelerator,
                     max_prompt_length) -> tuple[dict[str, float], list[dict]]:
    from rlhfkit.data.tokenize import encode_prompt
    from rlhfkit.rollout import SamplingParams, generate

    rank = accelerator.process_index if accelerator else 0
    world = accelerator.num_processes if accelerator else 1
    device = accelerator.device if accelerator else next(model.parameters()).device
    metrics: dict[str, float] = {}
    rows: list[dict] = []
    if prompts:
        mine = prompts[rank::world]
        sums = torch.zeros(5, dtype=torch.float64, device=device)  # kl, length, finished, gold, samples
        if mine:
            prompt_ids = [encode_prompt(tokenizer, p, max_length=max_prompt_length) for p in mine]
            with torch.random.fork_rng(devices=[]):  # sampling must not move a training run's RNG
                samples = generate(model, tokenizer, prompt_ids, params or SamplingParams(), batch_size=batch_size,
                                   generator_seed=seed + rank)
            rows = [{"prompt": p if isinstance(p, str) else p.prompt, "response": x.text, "finished": x.finished,
                     "length": len(x.response_ids)} for p, x in zip(mine, samples, strict=True)]
            sums[1] = sum(r["length"] for r in rows)
            sums[2] = sum(r["finished"] for r in rows)
            sums[4] = len(rows)
            if judge is not None:
                scores = judge(mine, [r["response"] for r in rows]).rewards.tolist()
                for r, g in zip(rows, scores, strict=True):
                    r["gold"] = g
                sums[3] = sum(scores)
            if ref is not None:
                sums[0] = len(rows) * sequence_kl(model, ref, prompt_ids, [x.response_ids for x in samples], batch_size)
        if world > 1:
            sums = accelerator.reduce(sums, "sum")
        n = sums[4].clamp(min=1)
        metrics["response/length"] = (sums[1] / n).item()
        metrics["response/eos_rate"] = (sums[2] / n).item()
        if judge is not None:
            metrics["gold/mean"] = (sums[3] / n).item()
        if ref is not None:
            metrics["kl/mean"] = (sums[0] / n).item()
    if text_features:
        metrics["eval/perplexity"] = perplexity(model, text_features, tokenizer.pad_token_id, 16, accelerator)["perplexity"]
    return metrics, rows


@torch.no_grad()
def sequence_kl(
    policy, ref, prompt_ids: list[list[int]], response_ids: list[list[int]], batch_size: int = 32
) -> float:
    """Sequence KL(policy || ref) in nats, estimated on responses sampled from the policy:
    the k1 estimator sum_t (log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)) over each response's
    tokens (its EOS included), averaged over the samples. Shared by DPO, PPO and best-of-n
    reports so every method's KL axis means the same thing."""
    from rlhfkit.losses.logprobs import token_logps

    device = next(policy.parameters()).device
    feats = [{"input_ids": p + r, "labels": [-100] * len(p) + r} for p, r in zip(prompt_ids, response_ids, strict=True)]
    modes = [(m, m.training) for m in (policy, ref)]
    for m, _ in modes:
        m.eval()
    total, n = 0.0, 0
    for i in range(0, len(feats), batch_size):
        batch = {k: v.to(device) for k, v in collate_demonstrations(feats[i : i + batch_size], 0).items()}
        labels = batch["labels"][:, 1:]
        diff = 0.0
        for sign, model in ((1.0, policy), (-1.0, ref)):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            diff = diff + sign * token_logps(logits, labels).sum(-1)  # (B,)
        total += float(diff.sum())
        n += len(diff)
    for m, was_training in modes:
        m.train(was_training)
    return total / max(n, 1)


def heldout_metrics(policy_path: str, ref, prompts: str, examples: int, rollout,
                    seed: int = 4321, gold: Any = True) -> dict[str, float]:
    """`evaluate_policy` of a policy folder against a reference model config on held-out prompts,
    judged on what it was trained to produce (`rollout`: the online recipes' rollout settings:
    max_new_tokens, temperature, stop, max_prompt_length, generate_batch_size); fixed prompts and
    seed, so models compare directly. Keys: eval/kl, eval/response_length, eval/eos_rate, gold/mean.
    `gold`: a judge (True = the lab's gold judge, a spec, or None/False for none)."""
    from rlhfkit.data import read_records
    from rlhfkit.models.loading import load_policy, load_tokenizer, resolve_model_path
    from rlhfkit.rollout import SamplingParams

    records = read_records(prompts, "prompt")[:examples]
    tok = load_tokenizer(ref)
    policy, ref_model = load_policy(ref, path=resolve_model_path(policy_path)), load_policy(ref)
    params = SamplingParams(max_new_tokens=rollout.max_new_tokens, temperature=rollout.temperature, stop=rollout.stop)
    m, _ = evaluate_policy(policy, tok, records, params, judge=gold, seed=seed, batch_size=rollout.generate_batch_size,
                           ref=ref_model, max_prompt_length=rollout.max_prompt_length)
    out = {"eval/kl": m["kl/mean"], "eval/response_length": m["response/length"], "eval/eos_rate": m["response/eos_rate"]}
    if "gold/mean" in m:
        out["gold/mean"] = m["gold/mean"]
    return out
