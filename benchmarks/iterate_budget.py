"""Iterative RLHF at an equal label budget on the lab: one round with every label up front vs three
rounds, each labelling the current policy's samples (`rlhfkit iterate`, InstructGPT / Bai et al. 2022).

    .venv/bin/python benchmarks/iterate_budget.py                     # the FINDINGS.md run
    .venv/bin/python benchmarks/iterate_budget.py --seeds 0           # one seed
    .venv/bin/python benchmarks/iterate_budget.py --quick             # smoke run

Both arms: the same SFT policy and label budget (ranked prompts, K = 4, simulated annotator seeded
by the seed), the same prompts overall (round r labels the r-th slice), every RM trained for the
same number of steps from the SFT backbone on all labels so far, and the same number of PPO
episodes in total (the three-round arm runs a third of them per round, from the previous round's
policy, KL to the SFT model). Measured: held-out gold and KL of the final policy (iterate's own
evaluation), and each arm's last RM's agreement with gold on pairs of the FINAL policy's own
samples on held-out prompts, next to its agreement on SFT samples: the distribution shift that
iterating is meant to fix. The first RM's agreement on SFT samples is checked against --min-agreement.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import goldlab as g  # noqa: E402

from rlhfkit.config import load_config  # noqa: E402
from rlhfkit.train.run_dir import RunDir, read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def check_equal_budget(args) -> None:
    """Both arms spend exactly --budget labels and --ppo-steps PPO steps: iterate collects
    label_budget // rounds a round, and each round runs ppo_steps // rounds, so both must divide."""
    if args.budget % args.rounds or args.ppo_steps % args.rounds:
        raise SystemExit(f"--budget {args.budget} and --ppo-steps {args.ppo_steps} must be multiples of --rounds "
                         f"{args.rounds}, or the {args.rounds}-round arm gets fewer labels or episodes than one round")


def arm_config(args, sft: str, held: Path, seed: int, rounds: int):
    """The `rlhfkit iterate` config of one arm (rounds = 1 or --rounds); everything else equal."""
    from rlhfkit.pipeline.iterate import IterateConfig

    return load_config(IterateConfig, None, [
        f"policy.name_or_path={sft}", f"rounds={rounds}", f"label_budget={args.budget}", "compare.k=4",
        f"compare.seed={seed}", f"compare.sampling.max_new_tokens={g.NEW_TOKENS}",
        f"compare.annotator.options={{temperature: {args.temperature}, flip_rate: {args.flip_rate}, seed: {seed}}}",
        f"reward.data.eval={held}", "reward.data.gold=lab", f"reward.train.max_steps={args.rm_steps}", f"reward.train.seed={seed}",
        "reward.log.progress=false", "reward.log.save_every=0", "reward.log.eval_every=0",
        f"reward.normalize.max_new_tokens={g.NEW_TOKENS}",
        f"ppo.train.max_steps={args.ppo_steps // rounds}", f"ppo.train.batch_size={args.batch}",
        f"ppo.train.micro_batch_size={args.batch}", f"ppo.train.lr={args.lr}", f"ppo.train.seed={seed}",
        f"ppo.ppo.kl_coef={args.beta}", f"ppo.rollout.max_new_tokens={g.NEW_TOKENS}", "ppo.eval.text=null",
        "ppo.log.progress=false", "ppo.log.save_every=0", f"eval.examples={args.eval_prompts}",
    ])


def run_arm(args, sft: str, held: Path, seed: int, rounds: int) -> dict:
    from rlhfkit.pipeline.iterate import run

    out = Path(args.workdir) / "iterate" / f"b{args.budget}-r{rounds}-s{seed}-rm{args.rm_steps}-ppo{args.ppo_steps}x{args.batch}"
    cfg = arm_config(args, sft, held, seed, rounds)
    resume = (out / "metrics.jsonl").exists()
    if resume:  # a folder run with other settings (lr, beta, ...) is refused (iterate's check), never measured again
        RunDir(out).check_resume(cfg)
    done = out / f"arm-p{args.rm_eval_prompts}.json"  # the measured arm: reused, so seeds can run in parallel processes
    if done.exists():
        return json.loads(done.read_text())
    t = time.time()
    run(cfg, out, resume=resume)  # a finished or interrupted arm continues
    last = read_metrics(out / "metrics.jsonl", "iterate")[-1]
    final_rm = str(out / f"round-{rounds}" / "rm" / "final")
    first_rm = str(out / "round-1" / "rm" / "final")
    res = {
        "rounds": rounds, "seed": seed, "seconds": round(time.time() - t),
        "gold": last["gold/mean"], "kl": last["eval/kl"], "length": last["eval/response_length"],
        "first_rm_on_sft": g.rm_on_policy(first_rm, sft, args.rm_eval_prompts),
        "final_rm_on_sft": g.rm_on_policy(final_rm, sft, args.rm_eval_prompts),
        "final_rm_on_final": g.rm_on_policy(final_rm, str(out / "final"), args.rm_eval_prompts),
        "per_round": [{k: r.get(k) for k in ("step", "gold/mean", "eval/kl", "rm/gold_agreement", "round/comparisons")}
                      for r in read_metrics(out / "metrics.jsonl", "iterate")],
    }
    done.write_text(json.dumps(res, indent=1))
    print(json.dumps(res), flush=True)
    return res


def plot(args, res: dict, base: dict, path: Path) -> None:
    """Left: held-out gold against KL of each arm's policy after every round (the 3-round arm's path,
    one line per seed). Right: the last RM's agreement with gold on SFT samples and on its own final
    policy's samples, per arm and seed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    colors = {1: "#dc2626", args.rounds: "#2563eb"}
    seeds = sorted({r["seed"] for r in res.values()})
    fig = Figure(figsize=(10.4, 4.0), layout="constrained")
    ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for R in (1, args.rounds):
        for i, s in enumerate(seeds):
            arm = res.get(f"{s}/{R}")
            if not arm:
                continue
            pts = [(0.0, base["gold/mean"])] + [(r["eval/kl"], r["gold/mean"]) for r in arm["per_round"] if r.get("gold/mean") is not None]
            xs, ys = zip(*pts, strict=True)
            label = f"{R} round{'s' if R > 1 else ''}" if i == 0 else None
            ax.plot(xs, ys, color=colors[R], marker="o", markersize=3.5, linewidth=1.0, alpha=0.85, label=label)
            for k, key in enumerate(("final_rm_on_sft", "final_rm_on_final")):
                bx.scatter([k + (0.12 if R > 1 else -0.12)], [arm[key]], color=colors[R], s=18, label=label if k == 0 else None)
    ax.set_xlabel("KL of the policy to the SFT model (nats), after each round", fontsize=8)
    ax.set_ylabel("held-out gold (lab judge)", fontsize=8)
    bx.set_xticks([0, 1], ["SFT samples", "final policy's own samples"], fontsize=8)
    bx.set_ylabel("last RM's agreement with gold", fontsize=8)
    for a, title in ((ax, "gold against KL, one line per seed"), (bx, "the distribution shift iterating targets")):
        a.set_title(title, fontsize=10, loc="left")
        a.grid(True, color="#e5e7eb", linewidth=0.6)
        a.tick_params(labelsize=7)
        a.legend(fontsize=7, frameon=False)
    fig.savefig(path, dpi=110)


def section(args, res: dict, base: dict, argv: list[str], seconds: float) -> str:
    seeds = sorted({r["seed"] for r in res.values()})
    by = {R: [res[f"{s}/{R}"] for s in seeds if f"{s}/{R}" in res] for R in (1, args.rounds)}
    lines = [
        f"## 3. Iterative RLHF at an equal label budget ({args.budget} ranked prompts)", "",
        f"    python benchmarks/iterate_budget.py {' '.join(argv)}".rstrip(), "",
        f"`rlhfkit iterate` with rounds = 1 and rounds = {args.rounds}: {args.budget} ranked prompts in total (K = 4, "
        f"simulated annotator T = {args.temperature:g}, flip rate {args.flip_rate:g}), every RM {args.rm_steps} steps "
        f"from the SFT backbone on all labels so far (lr 2e-3, 16 prompts a step), PPO {args.ppo_steps} steps of "
        f"{args.batch} episodes in total (lr {args.lr:g}, β = {args.beta:g}, KL to the SFT policy; {args.ppo_steps // args.rounds} "
        f"steps a round for {args.rounds} rounds). Gold and KL: iterate's held-out evaluation of the final policy "
        f"({args.eval_prompts} lab eval prompts, one sample each, seed 4321). RM agreement with gold: every pair of "
        f"4 samples on each of {args.rm_eval_prompts} held-out prompts that gold does not tie, sampled from the SFT "
        f"policy or from the arm's final policy. Seeds {', '.join(map(str, seeds))} (annotator, sampling, RM and PPO "
        "seeds); 95% t-intervals.", "",
        "![held-out gold against KL after each round; RM agreement on SFT and final-policy samples](findings_iterate.png)", "",
        "| arm | held-out gold | held-out KL | first RM on SFT samples | last RM on SFT samples | last RM on the final policy's samples |",
        "|---|---|---|---|---|---|",
        f"| SFT policy (start) | {base['gold/mean']:.3f} | 0 | | | |",
    ]
    for R, arms in by.items():
        if arms:
            lines.append(f"| {R} round{'s' if R > 1 else ''} | {g.fmt_ci([a['gold'] for a in arms])} | "
                         f"{g.fmt_ci([a['kl'] for a in arms], 2)} | {g.fmt_ci([a['first_rm_on_sft'] for a in arms])} | "
                         f"{g.fmt_ci([a['final_rm_on_sft'] for a in arms])} | {g.fmt_ci([a['final_rm_on_final'] for a in arms])} |")
    paired = [res[f"{s}/{args.rounds}"]["gold"] - res[f"{s}/1"]["gold"] for s in seeds
              if f"{s}/1" in res and f"{s}/{args.rounds}" in res]
    shift = [res[f"{s}/{args.rounds}"]["final_rm_on_final"] - res[f"{s}/1"]["final_rm_on_final"] for s in seeds
             if f"{s}/1" in res and f"{s}/{args.rounds}" in res]
    multi = by[args.rounds]
    if multi:
        steps = ", ".join(f"round {k + 1}: {g.fmt_ci([a['per_round'][k]['gold/mean'] for a in multi])} at KL "
                          f"{g.fmt_ci([a['per_round'][k]['eval/kl'] for a in multi], 2)}" for k in range(args.rounds))
        lines += ["", f"The {args.rounds}-round arm's held-out gold after each round: {steps}."]
    if paired:
        lines += ["", f"Paired by seed, {args.rounds} rounds − 1 round: held-out gold {g.fmt_ci(paired)} "
                  f"(per seed {', '.join(f'{x:+.3f}' for x in paired)}); the last RM's agreement on its own final "
                  f"policy's samples {g.fmt_ci(shift)}."]
    lines += ["", f"Wall time of this run: {seconds / 60:.0f} min (finished arms in the workdir are reused)."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/findings")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=900, help="ranked prompts over all rounds")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rm-steps", type=int, default=200, help="optimizer steps of every RM")
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--flip-rate", type=float, default=0.0)
    p.add_argument("--ppo-steps", type=int, default=45, help="PPO steps over all rounds")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--eval-prompts", type=int, default=128)
    p.add_argument("--rm-eval-prompts", type=int, default=96)
    p.add_argument("--min-agreement", type=float, default=0.70, help="the first RM must reach this on SFT samples")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--doc", default=str(ROOT / "docs" / "FINDINGS.md"), help="'' = do not write the section")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.budget, args.rm_steps, args.ppo_steps, args.eval_prompts = [0], 54, 6, 3, 16
        args.rm_eval_prompts, args.min_agreement, args.doc, args.workdir = 8, 0.0, "", args.workdir + "-quick"
    check_equal_budget(args)
    return args


def main(argv: list[str] | None = None) -> dict:
    raw = argv if argv is not None else sys.argv[1:]
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from rlhfkit.lab import ensure_lab

    ensure_lab()
    t0 = time.time()
    work = Path(args.workdir)
    sft = g.sft(work)
    held = g.held(work, sft)
    base_file = work / f"iterate-sft-heldout-{args.eval_prompts}.json"  # the SFT policy: where every arm starts
    if not base_file.exists():
        base_file.write_text(json.dumps(g.heldout(sft, sft, args.eval_prompts)))
    base = json.loads(base_file.read_text())
    res: dict = {}
    for seed in args.seeds:
        for rounds in (args.rounds, 1):
            res[f"{seed}/{rounds}"] = arm = run_arm(args, sft, held, seed, rounds)
            (work / "iterate_budget.json").write_text(json.dumps(res, indent=1))
            if rounds == args.rounds and arm["first_rm_on_sft"] < args.min_agreement:
                print(f"the first RM of the {rounds}-round arm agrees with gold on {arm['first_rm_on_sft']:.3f} of SFT-sample "
                      f"pairs, under --min-agreement {args.min_agreement}: raise --budget or --rm-steps", flush=True)
    text = section(args, res, base, raw, time.time() - t0)
    if args.doc:
        plot(args, res, base, Path(args.doc).parent / "findings_iterate.png")
        g.write_section(Path(args.doc), "iterate-budget", text)
    print(text)
    return res


if __name__ == "__main__":
    main()
