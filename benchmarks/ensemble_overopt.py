"""Reward-model ensembles against over-optimisation on the lab (after Coste et al. 2023).

    .venv/bin/python benchmarks/ensemble_overopt.py                    # the FINDINGS.md run
    .venv/bin/python benchmarks/ensemble_overopt.py --betas 0 --seeds 0   # one β, one seed
    .venv/bin/python benchmarks/ensemble_overopt.py --quick            # smoke run (minutes)

Per seed s: the SFT policy's K = 4 samples on `--budget` training prompts ranked by the simulated
annotator (seed s); from those same comparisons an ensemble of `--members` RMs (train seeds
s..s+M−1: head init and data order differ); its member 0 is the single RM. Then, at an equal number
of episodes, GRPO from the SFT policy against: the single RM, and the ensemble with mean, min and
uwo (mean − λ·var) aggregation, at each β in `--betas` (KL coefficient; 0 = none). Best-of-n for
n = 1..256 under each reward from one set of SFT samples (every sample used once per n).
Gold is the lab judge on the rollouts (the RL curves: trailing means over `--window` steps), on
the best-of-n picks, and on one sample per held-out prompt from each final policy. Writes its
section of docs/FINDINGS.md (table + docs/findings_ensemble.png) and summary JSON in the workdir.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import goldlab as g  # noqa: E402

from rlhfkit.monitor.findings import overoptimisation  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
AGGS = ["single", "mean", "min", "uwo"]


def ensemble(args, seed: int, sft: str, held: Path) -> str:
    data = g.collect(Path(args.workdir) / "data" / f"train-s{seed}-f{args.flip_rate:g}.jsonl", sft, "lab:prompts_train",
                     max(args.collect, args.budget), 4, seed, args.temperature, args.flip_rate)
    return g.train_rm(Path(args.workdir) / "rm" / g.rm_name(args.budget, seed, args.members, args.flip_rate, args.rm_steps),
                      data, held, sft, members=args.members, seed=seed, limit=args.budget, steps=args.rm_steps)


def rl_arm(args, sft: str, ens: str, seed: int, agg: str, beta: float) -> dict:
    """One GRPO run; its curve summary (`monitor.findings.overoptimisation`) and held-out numbers."""
    reward = g.member(ens, 0) if agg == "single" else ens
    rm_name = g.rm_name(args.budget, seed, 1 if agg == "single" else args.members, args.flip_rate, args.rm_steps)
    name = g.rl_name(rm_name, agg, beta, args.lr, args.steps, args.batch, args.group)
    out = Path(args.workdir) / "rl" / name
    t = time.time()
    rows = g.online(out, sft, reward, aggregation="mean" if agg == "single" else agg, beta=beta, steps=args.steps,
                    seed=seed, lr=args.lr, batch=args.batch, group=args.group)
    o = overoptimisation(rows, window=args.window)
    res = {"name": name, "seconds": round(time.time() - t), "heldout": g.heldout(str(out / "final"), sft, args.eval_prompts),
           "peak_gold": o.gold_peak, "peak_step": o.peak_step, "peak_kl": o.peak_kl, "end_gold": o.gold_end,
           "end_kl": o.kl_end, "start_gold": o.gold_start, "fall": o.fall, "fall_se": o.fall_se, "fell": o.fell,
           "proxy_peak": o.proxy_peak, "proxy_end": o.proxy_end,
           "path": [[round(math.sqrt(max(k, 0)), 4), round(x, 4)] for k, x in
                    zip(g.smooth(rows, "kl/mean", args.window), g.smooth(rows, "gold/mean", args.window), strict=True)]}
    if o.disagreement_start is not None:
        res.update(disagreement_start=o.disagreement_start, disagreement_peak=o.disagreement_peak,
                   disagreement_end=o.disagreement_end, disagreement_rise_step=o.disagreement_rise_step)
    print(json.dumps({k: v for k, v in res.items() if k != "path"}), flush=True)
    return res


def bon_arms(args, sft: str, ens: str, seed: int) -> dict[str, list[dict]]:
    rows = g.samples(Path(args.workdir) / "bon" / f"samples-p{args.bon_prompts}-n{args.bon_n}.jsonl", sft,
                     args.bon_prompts, args.bon_n)
    members = g.member_scores(Path(ens).parent / f"bon-scores-p{args.bon_prompts}-n{args.bon_n}.json", rows, ens)
    gold = torch.tensor([r["gold"] for r in rows])
    ns = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n <= args.bon_n]
    return {agg: g.bon_curve(g.aggregate(members, agg), gold, ns) for agg in AGGS}


# ----------------------------------------------------------------------------- the write-up


def plot(results: dict, betas: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    colors = {"single": "#dc2626", "mean": "#2563eb", "min": "#16a34a", "uwo": "#9333ea"}
    fig = Figure(figsize=(5.2 * len(betas), 4.0), layout="constrained")
    for j, beta in enumerate(betas):
        ax = fig.add_subplot(1, len(betas), j + 1)
        for agg in AGGS:
            for i, seed in enumerate(results["seeds"]):
                arm = results["rl"].get(f"{seed}/{agg}/{beta:g}")
                if arm:
                    xs, ys = zip(*arm["path"], strict=True)
                    ax.plot(xs, ys, color=colors[agg], linewidth=1.0, alpha=0.8, label=f"GRPO, {agg}" if i == 0 else None)
            curves = [results["bon"][str(s)][agg] for s in results["seeds"] if str(s) in results["bon"]]
            if curves:
                ds = [p["d"] for p in curves[0]]
                mean = [sum(c[k]["gold"] for c in curves) / len(curves) for k in range(len(ds))]
                ax.plot(ds, mean, color=colors[agg], linestyle="--", marker="o", markersize=2.5, linewidth=1.0,
                        label=f"best-of-n, {agg}" if j == 0 else None)
        ax.set_title(f"β = {beta:g}", fontsize=10, loc="left")
        ax.set_xlabel("d = √KL to the SFT policy (√nats)", fontsize=8)
        ax.set_ylabel("gold (lab judge)", fontsize=8)
        ax.grid(True, color="#e5e7eb", linewidth=0.6)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, frameon=False)
    fig.savefig(path, dpi=110)


def section(args, results: dict, seconds: float) -> str:
    seeds, betas = results["seeds"], results["betas"]
    cmd = "python benchmarks/ensemble_overopt.py " + " ".join(results["argv"])
    lines = [
        "## 1. Reward-model ensembles against over-optimisation (Coste et al. 2023)", "",
        f"    {cmd.strip()}", "",
        f"Per seed ({', '.join(map(str, seeds))}): {args.budget} lab training prompts, K = 4 SFT samples each, ranked by "
        f"the simulated annotator (Plackett–Luce on gold, T = {args.temperature:g}, flip rate {args.flip_rate:g}); from "
        f"the same comparisons an ensemble of {args.members} RMs (train seeds s..s+{args.members - 1}, {args.rm_steps} steps "
        "each at the recipe's lr 2e-3, 16 prompts a step); member 0 is the single RM. GRPO from the SFT policy "
        f"(lr {args.lr:g}, {args.batch} episodes a step, G = {args.group}, {args.steps} steps = "
        f"{args.steps * args.batch} episodes for every arm, {g.NEW_TOKENS} new tokens) against the single RM and the "
        "ensemble's mean, min and uwo (mean − 1·var of the normalised members). Gold: the lab judge on the rollouts "
        f"(trailing means of {args.window} steps) and on one sample per held-out prompt ({args.eval_prompts} lab eval "
        f"prompts, seed 4321) from each final policy. Intervals: 95% t-intervals over the {len(seeds)} seeds. "
        f"Best-of-n: {args.bon_n} SFT samples on each of {args.bon_prompts} held-out prompts, every sample used once "
        "per n; KL = log n − (n−1)/n.", "",
        "![gold against √KL for each reward](findings_ensemble.png)", "",
    ]
    rms = results["rm_eval"]
    lines += ["RM agreement with gold on held-out pairs of SFT samples (pairs gold does not tie):", "",
              "| reward | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for agg in ["member-0", "mean", "min", "uwo"]:
        cells = [f"{rms[str(s)][agg]['gold/agreement']:.3f}" for s in seeds if agg in rms.get(str(s), {})]
        lines.append(f"| {agg} | " + " | ".join(cells) + " |")
    ann = [rms[str(s)]["member-0"]["gold/annotator_agreement"] for s in seeds if "member-0" in rms.get(str(s), {})]
    lines += ["", f"(annotators vs gold on the same pairs: {g.fmt_ci(ann)})", ""]
    for beta in betas:
        ran = sorted({s for s in seeds if f"{s}/single/{beta:g}" in results["rl"]})
        lines += [f"**GRPO, β = {beta:g}**, seeds {', '.join(map(str, ran))} (gold of the rollouts: start, peak, end of "
                  "training; held-out gold and KL of the final policy)", "",
                  "| reward | gold start | gold peak | KL at peak | gold end | fall peak→end | runs that fell | KL end | held-out gold | held-out KL | proxy end |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for agg in AGGS:
            arms = [results["rl"][k] for s in seeds if (k := f"{s}/{agg}/{beta:g}") in results["rl"]]
            if not arms:
                continue
            def col(key: str, digits: int = 3, arms=arms) -> str:
                return g.fmt_ci([a[key] for a in arms], digits)

            fell = sum(a["fell"] for a in arms)
            lines.append(f"| {agg} | {col('start_gold')} | {col('peak_gold')} | {col('peak_kl', 2)} | "
                         f"{col('end_gold')} | {col('fall')} | {fell}/{len(arms)} | {col('end_kl', 2)} | "
                         f"{g.fmt_ci([a['heldout']['gold/mean'] for a in arms])} | {g.fmt_ci([a['heldout']['eval/kl'] for a in arms], 2)} | "
                         f"{col('proxy_end')} |")
        lines.append("")
        diffs = []
        for agg in ("mean", "min", "uwo"):
            d_end = [results["rl"][f"{s}/{agg}/{beta:g}"]["end_gold"] - results["rl"][f"{s}/single/{beta:g}"]["end_gold"]
                     for s in seeds if f"{s}/{agg}/{beta:g}" in results["rl"] and f"{s}/single/{beta:g}" in results["rl"]]
            d_held = [results["rl"][f"{s}/{agg}/{beta:g}"]["heldout"]["gold/mean"] - results["rl"][f"{s}/single/{beta:g}"]["heldout"]["gold/mean"]
                      for s in seeds if f"{s}/{agg}/{beta:g}" in results["rl"] and f"{s}/single/{beta:g}" in results["rl"]]
            if d_end:
                diffs.append(f"{agg} − single: end-of-training gold {g.fmt_ci(d_end)}, held-out gold {g.fmt_ci(d_held)}")
        if diffs:
            lines += ["Paired by seed: " + "; ".join(diffs) + ".", ""]
    lines += ["**Best-of-n** (gold of the pick; mean over seeds ± 95% interval):", "",
              "| n | KL | " + " | ".join(AGGS) + " |", "|---|---|" + "---|" * len(AGGS)]
    first = results["bon"][str(seeds[0])]["single"]
    for k, p in enumerate(first):
        cells = [g.fmt_ci([results["bon"][str(s)][agg][k]["gold"] for s in seeds if str(s) in results["bon"]]) for agg in AGGS]
        lines.append(f"| {p['n']} | {p['kl']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", f"Wall time of this run: {seconds / 60:.0f} min (one torch thread, shared 2-core CPU; finished runs "
              "in the workdir are reused)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/findings")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.02])
    p.add_argument("--beta-seeds", type=int, nargs="+", help="seeds of the runs at β > 0, a subset of --seeds (default: all)")
    p.add_argument("--aggs", nargs="+", default=AGGS, choices=AGGS)
    p.add_argument("--budget", type=int, default=400, help="ranked prompts (K = 4) the RMs learn from")
    p.add_argument("--collect", type=int, default=400, help="prompts ranked per seed (at least --budget)")
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--rm-steps", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.1, help="annotator Plackett–Luce temperature")
    p.add_argument("--flip-rate", type=float, default=0.0, help="annotator flip rate (Coste et al. used 25%% noise)")
    p.add_argument("--steps", type=int, default=70)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--window", type=int, default=8, help="steps in a trailing mean of the rollouts' gold and KL")
    p.add_argument("--eval-prompts", type=int, default=128)
    p.add_argument("--bon-prompts", type=int, default=64)
    p.add_argument("--bon-n", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--doc", default=str(ROOT / "docs" / "FINDINGS.md"), help="'' = do not write the section")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, no doc")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.betas, args.budget, args.collect, args.members, args.rm_steps = [0], [0.0], 40, 40, 2, 10
        args.steps, args.window, args.eval_prompts, args.bon_prompts, args.bon_n, args.doc = 6, 2, 16, 4, 16, ""
        args.workdir = args.workdir + "-quick"
    torch.set_num_threads(args.threads)
    from rlhfkit.lab import ensure_lab

    ensure_lab()
    t0 = time.time()
    work = Path(args.workdir)
    sft = g.sft(work)
    held = g.held(work, sft)
    results = {"argv": argv if argv is not None else sys.argv[1:], "seeds": args.seeds, "betas": args.betas,
               "rm_eval": {}, "rl": {}, "bon": {}}
    ensembles = {}
    for seed in args.seeds:
        ensembles[seed] = ens = ensemble(args, seed, sft, held)
        results["rm_eval"][str(seed)] = {k: {m: v[m] for m in ("gold/agreement", "gold/annotator_agreement", "eval/accuracy")}
                                         for k, v in g.rm_eval(ens).items()}
        results["bon"][str(seed)] = bon_arms(args, sft, ens, seed)
    for beta in args.betas:  # β = 0 first: the headline
        for seed in args.seeds if beta == 0 or args.beta_seeds is None else args.beta_seeds:
            for agg in args.aggs:
                results["rl"][f"{seed}/{agg}/{beta:g}"] = rl_arm(args, sft, ensembles[seed], seed, agg, beta)
                (work / "ensemble_overopt.json").write_text(json.dumps(results, indent=1))
    seconds = time.time() - t0
    if args.doc:
        doc = Path(args.doc)
        plot(results, args.betas, doc.parent / "findings_ensemble.png")
        g.write_section(doc, "ensemble-overopt", section(args, results, seconds))
    print(section(args, results, seconds))
    return results


if __name__ == "__main__":
    main()
