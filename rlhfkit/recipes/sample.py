"""`rlhfkit sample` and `rlhfkit eval`: sampling and held-out evaluation of any causal LM.

Both are one-process jobs (one seed for the whole sampling run); under `accelerate launch` the
main process does the work and writes, the others wait for it (and `evaluate` returns its metrics
on every process)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rlhfkit.config import ModelConfig
from rlhfkit.data import read_records, write_jsonl
from rlhfkit.data.tokenize import encode_prompt
from rlhfkit.evaluate import evaluate_policy, text_features
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
    records = read_records(args.prompts, "prompt")
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
    model, tokenizer = _load(args)
    prompts = [r.prompt for r in read_records(args.prompts, "prompt")][: args.limit or None]
    text_feats = text_features(tokenizer, args.text, limit=args.limit) if args.text else None
    metrics, rows = evaluate_policy(model, tokenizer, prompts, _params(args), text_feats, gold=args.gold == "lab", seed=args.seed)
    print(json.dumps(metrics, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "metrics": metrics, "samples": rows}, indent=2))
    return metrics
