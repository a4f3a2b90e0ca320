"""KTO, DPO and ORPO on the lab, measured with the gold judge (docs/BENCHMARKS.md, "KTO and ORPO").

    SFT    lab base -> `sft` on lab:sft_train (lr 1e-3, as benchmarks/frontier.py), once
    per seed s (sampling, annotator and training seeds all s):
      thumbs  N prompts x 1 SFT sample, each thumbs up/down by the simulated annotator (N judgements)
      pairs   N prompts x 2 SFT samples, ranked by the simulated annotator (N judgements)
      KTO     SFT -> `kto` on the thumbs (lambda_D n_D / (lambda_U n_U) set to 1, the paper's advice)
      DPO     SFT -> `dpo` on the pairs (same beta, lr, batch, steps as KTO)
      ORPO    base -> `orpo` on the pairs: no SFT stage, no reference model
    every policy: one sample on each of the first E held-out prompts (lab:prompts_eval, seed 4321,
      temperature 1): gold/mean, and KL from the SFT model (sequence KL of the samples, nats) and
      from the base model (where ORPO starts)

Both annotators are the lab's simulated ones at their default noise (temperature 0.1 on gold, no
flips): pairs by Bradley-Terry over gold, thumbs by sigma((gold - threshold) / 0.1) with the
threshold at the SFT model's held-out mean gold (`--threshold sft`: "better than what the model
usually writes", so about half the thumbs are up; a fixed bar such as 0 gives ~90% up here). Peak memory: each training runs in its own process (`rlhfkit
--threads 1 VERB`), which reports its ru_maxrss at the end. Stages are cached in --out.

Run: `.venv/bin/python benchmarks/kto_lab.py --out runs/kto_lab [--seeds 0 1 2 --judgements 512]`.
The docs' lr sweep adds `--lr 2e-4` and `--lr 3e-4` runs (KTO and DPO) with their own --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = ("import json, resource, sys\nfrom rlhfkit.cli import main\nrc = main(sys.argv[1:])\n"
         "print(json.dumps({'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\nsys.exit(rc)")


def log(msg: str) -> None:
    print(f"[kto_lab {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train(verb: str, out: Path, sets: list[str]) -> float:
    """Run `rlhfkit VERB` in its own process (one thread) unless out/ is complete; its peak RSS in MB."""
    peak_file = out / "peak_rss.json"
    if not (out / "final" / "run_complete.json").exists() or not peak_file.exists():
        log(f"{verb} -> {out}")
        cmd = [sys.executable, "-c", CHILD, "--threads", "1", verb, "--out", str(out), "--overwrite",
               *[a for s in sets for a in ("--set", s)]]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHFKIT_PROGRESS": "0"}
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(f"{verb} failed:\n{res.stderr[-3000:]}")
        peak_file.write_text(res.stdout.strip().splitlines()[-1])
        print("\n".join(x for x in res.stdout.splitlines() if x.startswith(f"[{verb}]")), flush=True)
    return json.loads(peak_file.read_text())["peak_rss_mb"]


def collect(job: str, out: Path, sets: list[str]) -> Path:
    from rlhfkit.config import load_config
    from rlhfkit.jobs import compare, thumbs

    module = {"thumbs": thumbs, "compare": compare}[job]
    path = module.output_file(out)
    if not path.exists():
        log(f"{job} -> {path}")
        module.run(load_config(module.ThumbsConfig if job == "thumbs" else module.CompareConfig, None, sets), out)
    return path


def evaluate(policy: Path, refs: dict[str, Path], args) -> dict:
    """gold/mean (± s.e.) of one sample per held-out prompt, and KL from each model in `refs` (the
    same samples for every ref: same prompts and seed). Cached; a ref missing from the cache is added."""
    cache = policy.parent / "heldout.json"
    out = json.loads(cache.read_text()) if cache.exists() else {}
    refs = {name: ref for name, ref in refs.items() if f"kl_{name}" not in out}
    if not refs:
        return out
    from rlhfkit.config import ModelConfig
    from rlhfkit.data import read_records
    from rlhfkit.evaluate import evaluate_policy
    from rlhfkit.models.loading import load_policy, load_tokenizer
    from rlhfkit.rollout import SamplingParams

    prompts = read_records("lab:prompts_eval", "prompt")[: args.eval_prompts]
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0)
    model, tok = load_policy(ModelConfig(name_or_path=str(policy))), load_tokenizer(ModelConfig(name_or_path=str(policy)))
    for name, ref in refs.items():
        metrics, rows = evaluate_policy(model, tok, prompts, params, judge="lab:gold", seed=4321,
                                        ref=load_policy(ModelConfig(name_or_path=str(ref))))
        gold = [r["gold"] for r in rows]
        out.update({"gold": metrics["gold/mean"], "gold_se": statistics.stdev(gold) / math.sqrt(len(gold)),
                    f"kl_{name}": metrics["kl/mean"], "length": metrics["response/length"]})
    cache.write_text(json.dumps(out))
    return out


def run_seed(seed: int, sft: Path, threshold: float, args) -> dict:
    d = Path(args.out) / f"seed{seed}"
    n, new = args.judgements, f"sampling.max_new_tokens={args.max_new_tokens}"
    feedback = collect("thumbs", d / "thumbs", [f"policy.name_or_path={sft}", f"limit={n}", "k=1", new, f"seed={seed}",
                                                 f"annotator.options={{seed: {seed}, threshold: {threshold:.4f}}}"])
    pairs = collect("compare", d / "compare", [f"policy.name_or_path={sft}", f"limit={n}", "k=2", new,
                                                f"seed={seed}", f"annotator.options={{seed: {seed}}}"])
    from rlhfkit.data import read_records

    labels = [r.label for r in read_records(feedback, "feedback")]
    n_d, n_u = sum(labels), len(labels) - sum(labels)
    # lambda_D n_D / (lambda_U n_U) = 1 (rounded so that it is not below 1): the paper's advice
    weights = ([f"undesirable_weight={math.floor(1e4 * n_d / n_u) / 1e4}"] if n_d >= n_u
               else [f"desirable_weight={math.ceil(1e4 * n_u / n_d) / 1e4}"])
    common = ["train.batch_size=32", "train.micro_batch_size=32", "train.schedule=constant", "train.warmup_ratio=0.1",
              f"train.max_steps={args.steps}", f"train.seed={seed}", "log.eval_every=0", "log.save_every=0",
              "log.progress=false", "sampling.prompts=null", "sampling.text=null"]
    peaks = {
        "kto": train("kto", d / "kto", [f"model.name_or_path={sft}", f"data.train={feedback}", f"beta={args.beta}",
                                        f"train.lr={args.lr}", *weights, *common]),
        "dpo": train("dpo", d / "dpo", [f"model.name_or_path={sft}", f"data.train={pairs}", f"beta={args.beta}",
                                        f"train.lr={args.lr}", *common]),
        "orpo": train("orpo", d / "orpo", ["model.name_or_path=lab", f"data.train={pairs}",
                                           f"orpo_lambda={args.orpo_lambda}", f"train.lr={args.orpo_lr}", *common]),
    }
    base = _lab_base()
    result = {"seed": seed, "thumbs_up": n_d, "thumbs_down": n_u, "pairs": len(read_records(pairs, "comparison"))}
    for method in ("kto", "dpo", "orpo"):
        refs = {"sft": sft, "base": base}  # KL from base: how far each whole pipeline moved (ORPO skips SFT)
        result[method] = {**evaluate(d / method / "final", refs, args), "peak_rss_mb": round(peaks[method], 1)}
        log(f"seed {seed} {method}: {result[method]}")
    return result


def memory_at_scale(args) -> dict:
    """Peak RSS of 3 steps of 4 of DPO, KTO and ORPO on benchmarks/memory.py's GPT-2 of ~86M
    parameters (random weights, the lab tokenizer; its lab-demonstration pairs, KTO reading them as
    best = desirable, worst = undesirable), each in its own process: what a reference copy costs.
    Twice: without kl/mean sampling (DPO and KTO free the reference after caching its log-probs)
    and with it (`*_klmean`: 4 lab prompts, 8 new tokens; the reference stays loaded)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from memory import _prepare  # noqa: E402 - benchmarks/memory.py

    work = Path(args.out) / f"memory_{args.memory_model}"
    if not (work / "pairs.jsonl").exists():
        work.mkdir(parents=True, exist_ok=True)
        _prepare(work, args.memory_model, 16)
    sets = [f"model.name_or_path={work / args.memory_model}", f"data.train={work / 'pairs.jsonl'}", "train.batch_size=4",
            "train.micro_batch_size=4", "train.max_steps=3", "log.save_every=0", "log.eval_every=0",
            "log.progress=false", "sampling.prompts=null", "sampling.text=null"]
    klmean = ["sampling.prompts=lab:prompts_eval", "sampling.num_prompts=4", "sampling.max_new_tokens=8",
              "sampling.text=null"]
    return {verb + suffix: round(train(verb, work / (verb + suffix), [*sets, *extra]), 1)
            for suffix, extra in (("", []), ("_klmean", klmean)) for verb in ("dpo", "kto", "orpo")}


def _lab_base() -> Path:
    from rlhfkit.models.loading import resolve_model_path

    return Path(resolve_model_path("lab"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/kto_lab")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--judgements", type=int, default=512, help="simulated judgements per method: thumbs or pairs")
    p.add_argument("--steps", type=int, default=32, help="optimizer steps of 32 (2 epochs of 512)")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-4, help="KTO and DPO (benchmarks/frontier.py's DPO lr)")
    p.add_argument("--threshold", default="sft", help="thumbs-up bar on gold: a number, or sft = the SFT model's "
                                                      "held-out mean gold")
    p.add_argument("--orpo-lr", type=float, default=1e-3, help="ORPO (does SFT's job too: SFT's lr)")
    p.add_argument("--orpo-lambda", type=float, default=0.1)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--eval-prompts", type=int, default=128)
    p.add_argument("--memory-model", default=None, help="also measure peak RSS at this size (benchmarks/memory.py's "
                                                        "MODELS, e.g. gpt2-100m)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    from rlhfkit.lab import ensure_lab

    ensure_lab()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sft_peak = train("sft", out / "sft", ["model.name_or_path=lab", "train.lr=1e-3", "log.save_every=0",
                                          "log.progress=false"])
    sft = out / "sft" / "final"
    sft_eval = evaluate(sft, {"sft": sft, "base": _lab_base()}, args)
    threshold = sft_eval["gold"] if args.threshold == "sft" else float(args.threshold)
    results = {"args": vars(args), "threshold": threshold, "sft": {**sft_eval, "peak_rss_mb": round(sft_peak, 1)},
               "base": evaluate(_base_eval_dir(out), {"sft": sft}, args),
               "seeds": [run_seed(s, sft, threshold, args) for s in args.seeds]}
    summary = {}
    for method in ("kto", "dpo", "orpo"):
        rows = [r[method] for r in results["seeds"]]
        summary[method] = {k: [round(statistics.mean(r[k] for r in rows), 3), round(min(r[k] for r in rows), 3),
                               round(max(r[k] for r in rows), 3)] for k in rows[0]}
    # paired by seed (same SFT samples, annotator seed and held-out prompts): the per-seed gaps
    summary["gold_minus_dpo"] = {m: [round(r[m]["gold"] - r["dpo"]["gold"], 3) for r in results["seeds"]]
                                 for m in ("kto", "orpo")}
    results["summary"] = summary
    if args.memory_model:
        results[f"peak_rss_mb_{args.memory_model}"] = memory_at_scale(args)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results["summary"], indent=2))
    print(json.dumps({"sft": results["sft"], "base": results["base"]}, indent=2))


def _base_eval_dir(out: Path) -> Path:
    """The base model evaluated like a policy; its held-out cache lives in out/base/."""
    (out / "base").mkdir(exist_ok=True)
    link = out / "base" / "final"
    if not link.exists():
        link.symlink_to(_lab_base().resolve())
    return link


if __name__ == "__main__":
    main()
