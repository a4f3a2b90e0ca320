"""Held-out evaluation shared by recipes and `rlhfkit eval`: NLL / perplexity of labelled tokens."""

from __future__ import annotations

import math

import torch

from rlhfkit.data.tokenize import collate_demonstrations
from rlhfkit.losses.sft import sft_loss


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


def evaluate_policy(
    model,
    tokenizer,
    prompts: list[str],
    params=None,
    text_features: list[dict] | None = None,
    gold: bool = False,
    seed: int = 0,
    batch_size: int = 64,
    ref=None,
) -> tuple[dict[str, float], list[dict]]:
    """Sample one response per prompt and report response length, EOS rate, gold (lab), given
    held-out text perplexity, and given a reference model the sequence KL of the samples from it.
    Returns (metrics, samples)."""
    from rlhfkit.data.tokenize import encode_prompt
    from rlhfkit.rollout import SamplingParams, generate

    params = params or SamplingParams()
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]
    samples = generate(model, tokenizer, prompt_ids, params, batch_size=batch_size, generator_seed=seed)
    rows = [{"prompt": p, "response": s.text, "finished": s.finished, "length": len(s.response_ids)}
            for p, s in zip(prompts, samples, strict=True)]
    n = max(len(rows), 1)
    metrics = {
        "response/length": sum(r["length"] for r in rows) / n,
        "response/eos_rate": sum(r["finished"] for r in rows) / n,
    }
    if gold:
        from rlhfkit.lab import gold_score

        scores = gold_score([r["prompt"] + r["response"] for r in rows])
        for r, g in zip(rows, scores, strict=True):
            r["gold"] = g
        metrics["gold/mean"] = sum(scores) / n
    if text_features:
        metrics["eval/perplexity"] = perplexity(model, text_features, tokenizer.pad_token_id)["perplexity"]
    if ref is not None:
        metrics["kl/mean"] = sequence_kl(model, ref, prompt_ids, [s.response_ids for s in samples], batch_size)
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
                    seed: int = 4321, gold: bool = True) -> dict[str, float]:
    """Samples of a policy on held-out prompts: gold (lab), sequence KL to `ref` (k1 on the
    sampled ids), length and EOS rate; fixed prompts and seed, so models compare directly.

    `ref`: the reference's `ModelConfig` (its tokenizer is used); `rollout`: PPO's rollout settings
    (`recipes.ppo.PPORolloutConfig`: max_new_tokens, temperature, stop, max_prompt_length,
    generate_batch_size), so a policy is judged on what it was trained to produce."""
    from rlhfkit.data import encode_prompt, read_records
    from rlhfkit.models.loading import load_policy, load_tokenizer, resolve_model_path
    from rlhfkit.rollout import SamplingParams, generate

    records = read_records(prompts, "prompt")[:examples]
    tok = load_tokenizer(ref)
    policy, ref_model = load_policy(ref, path=resolve_model_path(policy_path)), load_policy(ref)
    params = SamplingParams(max_new_tokens=rollout.max_new_tokens, temperature=rollout.temperature, stop=rollout.stop)
    pids = [encode_prompt(tok, rec, max_length=rollout.max_prompt_length) for rec in records]
    samples = generate(policy, tok, pids, params, rollout.generate_batch_size, generator_seed=seed)
    n = len(samples)
    out = {
        "eval/kl": sequence_kl(policy, ref_model, pids, [s.response_ids for s in samples]),
        "eval/response_length": sum(len(s.response_ids) for s in samples) / n,
        "eval/eos_rate": sum(s.finished for s in samples) / n,
    }
    if gold:
        from rlhfkit.lab import gold_score

        out["gold/mean"] = sum(gold_score([rec.prompt + s.text for rec, s in zip(records, samples, strict=True)])) / n
    return out
