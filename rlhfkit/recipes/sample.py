"""`rlhfkit sample` and `rlhfkit eval`: sampling and held-out evaluation of any causal LM.

Both are one-process jobs (one seed for the whole sampling run); under `accelerate launch` the
main process does the work and writes, the others wait for it (and `evaluate` returns its metrics
on every process)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rlhfkit.config import ConfigError, ModelConfig
from rlhfkit.data import read_records, write_jsonl
from rlhfkit.data.tokenize import encode_prompt
from rlhfkit.evaluate import evaluate_policy, held_out, prompts_to_sample, text_features
from rlhfkit.models.loading import load_policy, load_tokenizer
from rlhfkit.rollout import SamplingParams, generate
from rlhfkit.train.processes import on_main_process


def _load(args: argparse.Namespace):
    mcfg = ModelConfig(name_or_path=args.model, trust_remote_code=args.trust_remote_code)
    return load_policy(mcfg), load_tokenizer(mcfg)


def _params(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)


def sample(args: argparse.Namespace) -> Path:
    on_main_process(_sample, args)
    return Path(args.out)


def _sample(args: argparse.Namespace) -> None:
    records = read_records(prompts_to_sample("sample", args.model, args.prompts), "prompt")
    if args.limit:
        records = records[: args.limit]
    model, tokenizer = _load(args)
    ids = [encode_prompt(tokenizer, r) for r in records for _ in range(args.k)]
    samples = generate(model, tokenizer, ids, _params(args), generator_seed=args.seed)
    rows = []
    for i, r in enumerate(records):
        mine = samples[i * args.k : (i + 1) * args.k]
        rows.append({"prompt": r.prompt, "responses": [s.text for s in mine], "finished": [s.finished for s in mine]})
    write_jsonl(args.out, rows)
    print(f"wrote {len(rows)} prompts x {args.k} samples to {args.out}")


def evaluate(args: argparse.Namespace) -> dict:
    return on_main_process(_evaluate, args)


def _evaluate(args: argparse.Namespace) -> dict:
    heldout = held_out("eval", args.model, [args.prompts, args.text], judge=args.gold, prompts=args.prompts, text=args.text,
                       keys={"judge": "--gold", "prompts": "--prompts", "text": "--text"})
    if not (heldout.prompts or heldout.text):
        raise ConfigError("nothing to evaluate: name --prompts and/or --text (auto = the lab's, for the lab's models only)")
    model, tokenizer = _load(args)
    prompts = read_records(heldout.prompts.spec, "prompt")[: args.limit or None] if heldout.prompts else []
    text_feats = text_features(tokenizer, heldout.text.spec, limit=args.limit) if heldout.text else None
    metrics, rows = evaluate_policy(model, tokenizer, prompts, _params(args), text_feats, gold=heldout.judge is not None,
                                    seed=args.seed)
    print(json.dumps(metrics, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "metrics": metrics, "measured_on": heldout.provenance(),
                                              "samples": rows}, indent=2))
    return metrics
