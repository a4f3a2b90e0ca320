"""`rlhfkit <verb>`: parse arguments, resolve a config, call one recipe. No training logic here."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

# Training verbs: (module, config class, default run folder). Each module exposes `run(cfg, out, resume)`.
TRAIN_VERBS: dict[str, tuple[str, str, str]] = {
    "sft": ("rlhfkit.recipes.sft", "SFTConfig", "runs/sft"),
    "dpo": ("rlhfkit.recipes.dpo", "DPOConfig", "runs/dpo"),
    "compare": ("rlhfkit.recipes.compare", "CompareConfig", "runs/compare"),
    "reward": ("rlhfkit.recipes.reward", "RewardConfig", "runs/reward"),
    "ppo": ("rlhfkit.recipes.ppo", "PPOConfig", "runs/ppo"),
    "judge": ("rlhfkit.recipes.judge", "JudgeConfig", "runs/judge"),
    "cai": ("rlhfkit.recipes.cai", "CAIConfig", "runs/cai"),
    "iterate": ("rlhfkit.recipes.iterate", "IterateConfig", "runs/iterate"),
}
# Verbs whose --out is a run folder that ends with final/ (train.run_dir): they take --overwrite,
# and check_start guards a finished or unfinished run there. The data verbs (compare, judge, cai)
# guard their own output files.
RUN_FOLDER_VERBS = ("sft", "dpo", "reward", "ppo", "iterate")


def _add_train_args(p: argparse.ArgumentParser, default_out: str, run_folder: bool) -> None:
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.lr=1e-5 (repeatable)")
    p.add_argument("--out", default=default_out, help=f"run folder (default {default_out})")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    if not run_folder:
        p.add_argument("--resume", action="store_true", help="continue what --out already holds")
        return
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its newest checkpoint, with the same config (only "
                            "train.max_steps, train.epochs, train.micro_batch_size, model.gradient_checkpointing "
                            "and log.* may change); a finished run has nothing to do")
    start.add_argument("--overwrite", action="store_true",
                       help="replace the run in --out: its config, metrics, checkpoints, best/, final/, alarms, "
                            "plots and reports are removed first (after the new run's inputs are checked)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhfkit", description="Align causal LMs with human preferences.")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("RLHFKIT_THREADS", 0)) or None, metavar="N",
                        help="torch CPU threads (default $RLHFKIT_THREADS, else torch's choice). Small models on a "
                             "busy CPU run far faster with 1: threads that wait for each other spin")
    sub = parser.add_subparsers(dest="verb", required=True)

    lab = sub.add_parser("lab", help="the built-in lab: tiny base model, corpus, gold judge")
    lab_sub = lab.add_subparsers(dest="lab_verb", required=True)
    b = lab_sub.add_parser("build", help="build (or rebuild) the lab")
    b.add_argument("--out", help="lab folder (default: the user cache, or $RLHFKIT_LAB_DIR)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--size", choices=["full", "tiny"], default="full")
    b.add_argument("--force", action="store_true", help="rebuild even if a built lab is there")

    for verb, (_, _, default_out) in TRAIN_VERBS.items():
        _add_train_args(sub.add_parser(verb, help=f"train: {verb}"), default_out, verb in RUN_FOLDER_VERBS)
    if "reward" in TRAIN_VERBS:
        sub.choices["reward"].add_argument("--ensemble", type=int, metavar="N",
                                           help="train N reward models (seeds differ); = --set ensemble.members=N")

    sc = sub.add_parser("score", help="score (prompt, response) records with a reward model or ensemble")
    sc.add_argument("--rm", required=True, help="reward model folder (single or ensemble)")
    sc.add_argument("--data", required=True, help="records: {prompt, response} or comparisons (file, dataset folder, lab:NAME)")
    sc.add_argument("--out", required=True, help="output JSONL: each record plus its reward(s)")
    sc.add_argument("--aggregation", choices=["mean", "min", "uwo"], default="mean", help="ensemble aggregation")
    sc.add_argument("--uwo-lambda", type=float, default=1.0, help="uwo: mean - lambda * variance across members")
    sc.add_argument("--batch-size", type=int, default=64)
    sc.add_argument("--raw", action="store_true", help="report raw rewards (ignore the stored normalisation)")

    s = sub.add_parser("sample", help="write K samples per prompt from a model to JSONL")
    s.add_argument("--model", default="lab", help="HF name or folder (default: lab base model)")
    s.add_argument("--prompts", default="auto", help="prompt records (file, dataset folder, lab:NAME); auto = lab:prompts_eval for the lab's models, else name them")
    s.add_argument("--k", type=int, default=1, help="samples per prompt")
    s.add_argument("--limit", type=int, default=0, help="use only the first N prompts (0 = all)")
    _add_sampling_args(s)
    s.add_argument("--out", required=True, help="output JSONL: {prompt, responses, finished}")

    e = sub.add_parser("eval", help="perplexity, response length, EOS rate and (lab) gold of a model")
    e.add_argument("--model", default="lab")
    e.add_argument("--prompts", default="auto", help="prompt records to sample; auto = lab:prompts_eval for the lab's models, else name them; '' = none")
    e.add_argument("--text", default="auto", help="held-out text records for perplexity; auto = lab:pretrain_eval for the "
                                                  "lab's models, else name them; '' = none")
    e.add_argument("--limit", type=int, default=256)
    e.add_argument("--gold", choices=["auto", "lab", "none"], default="auto",
                   help="score samples with the lab gold judge; auto = for the lab's models and prompts")
    _add_sampling_args(e)
    e.add_argument("--out", help="also write metrics + samples as JSON here")

    bn = sub.add_parser("best-of-n", help="sample n responses per prompt, keep the best by a reward (baseline / rejection sampling)")
    bn.add_argument("--model", default="lab", help="policy to sample from (HF name or folder)")
    bn.add_argument("--prompts", default="auto", help="prompt records (file, dataset folder, lab:NAME); auto = lab:prompts_eval for the lab's models, else name them")
    bn.add_argument("--n", type=int, default=4, help="samples per prompt")
    bn.add_argument("--reward", default="auto",
                    help="reward: RM or ensemble folder, lab:gold, module:function or path/to/file.py:function "
                         "(a function spec runs that Python code: name only code you trust); auto = lab:gold for "
                         "the lab's models and prompts")
    bn.add_argument("--aggregation", choices=["mean", "min", "uwo"], default="mean", help="how ensemble members combine")
    bn.add_argument("--limit", type=int, default=0, help="use only the first N prompts (0 = all)")
    bn.add_argument("--gold", choices=["lab", "none"], default="none", help="also report the lab gold of the kept responses")
    _add_sampling_args(bn)
    bn.add_argument("--out", required=True, help="output JSONL of {prompt, response, reward} (SFT demonstrations)")

    rp = sub.add_parser("report", help="write the HTML report of a run or pipeline folder (plots, alarms, samples)")
    rp.add_argument("run_dir", help="run folder (one recipe's --out) or pipeline folder")
    rp.add_argument("--out", help="HTML file to write (default RUN_DIR/report.html)")

    from rlhfkit.recipes.label import add_parsers as add_label_parsers

    add_label_parsers(sub)  # `label` (human labelling page) and `agreement`

    pl = sub.add_parser("pipeline", help="run the whole pipeline from one YAML (sft -> compare -> reward -> ppo/dpo -> eval -> report)")
    pl.add_argument("config", nargs="?", help="pipeline YAML (default: the lab demo pipeline)")
    pl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a pipeline field, e.g. --set eval.num_prompts=64")
    pl.add_argument("--out", default="runs/pipeline", help="run folder; one sub-folder per stage")
    pl.add_argument("--fresh", action="store_true", help="do not resume interrupted stages (completed ones are still skipped)")
    pl.add_argument("--print-config", action="store_true", help="print the resolved pipeline config and exit")

    d = sub.add_parser("demo", help="the main job on the lab default")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--resume", action="store_true")
    return parser


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trust-remote-code", action="store_true")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["RLHFKIT_THREADS"] = str(args.threads)  # wins over a pipeline YAML's `threads:`
    from rlhfkit.errors import UserError

    try:
        return _dispatch(args)
    except UserError as e:
        print(f"rlhfkit {args.verb}: error: {e}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.verb in TRAIN_VERBS:
        return _train(args)
    if args.verb == "lab":
        from rlhfkit.lab import build_lab, default_lab_dir, is_built

        out = Path(args.out) if args.out else default_lab_dir()
        if not args.force and is_built(out, args.size):  # current key, size at least args.size
            print(f"lab already built at {out} (use --force to rebuild)")
            return 0
        build_lab(out, seed=args.seed, size=args.size, progress=True)
        return 0
    if args.verb == "sample":
        from rlhfkit.recipes.sample import sample

        sample(args)
        return 0
    if args.verb == "eval":
        from rlhfkit.recipes.sample import evaluate

        evaluate(args)
        return 0
    if args.verb == "score":
        from rlhfkit.recipes.score import score_file

        score_file(args.rm, args.data, args.out, args.aggregation, args.uwo_lambda, args.batch_size, args.raw)
        return 0
    if args.verb == "best-of-n":
        from rlhfkit.recipes.best_of_n import run as run_best_of_n

        run_best_of_n(args)
        return 0
    if args.verb == "report":
        from rlhfkit.monitor.report import write_report
        from rlhfkit.monitor.run_data import discover

        path = write_report(args.run_dir, args.out)
        for st in discover(Path(args.run_dir)):
            for a in st.alarms:
                print(f"[alarm] {st.label} step {a['step']}: {a['name']}: {a['message']}")
        print(f"report: {path}")
        return 0
    if args.verb in ("label", "agreement"):
        from rlhfkit.recipes import label

        return getattr(label, args.verb)(args)
    if args.verb in ("pipeline", "demo"):
        from rlhfkit.recipes.demo import run_pipeline

        return run_pipeline(args)
    raise AssertionError(args.verb)  # pragma: no cover


def _train(args: argparse.Namespace) -> int:
    from rlhfkit.config import load_config, to_yaml
    from rlhfkit.train.run_dir import check_start

    module_name, cls_name, _ = TRAIN_VERBS[args.verb]
    module = importlib.import_module(module_name)
    overrides = list(args.overrides)
    if getattr(args, "ensemble", None) is not None:  # `rlhfkit reward --ensemble N` shorthand
        overrides.append(f"ensemble.members={args.ensemble}")
    cfg = load_config(getattr(module, cls_name), args.config, overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    if args.verb in RUN_FOLDER_VERBS and check_start(args.out, cfg, args.resume, args.overwrite):
        print(f"{args.out} is already complete; nothing to do")
        print(json.dumps({"verb": args.verb, "final": str(Path(args.out) / "final")}))
        return 0
    # --overwrite runs fresh (resume=False): the recipe clears the old run once its inputs are checked.
    final = module.run(cfg, args.out, resume=args.resume)
    print(json.dumps({"verb": args.verb, "final": str(final)}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
