"""The over-optimisation law on the lab (Gao et al. 2022): gold against d = √KL for best-of-n and RL.

    .venv/bin/python benchmarks/overopt_law.py                        # the FINDINGS.md run
    .venv/bin/python benchmarks/overopt_law.py --budgets 100 400      # some budgets
    .venv/bin/python benchmarks/overopt_law.py --quick                # smoke run

For each label budget B (ranked prompts, K = 4 SFT samples each, simulated annotator, seed 0): a
single RM (member 0 of benchmarks/ensemble_overopt.py's ensemble when that exists: the same data,
seed and steps), then
  best-of-n   n = 1..256 from one set of SFT samples (every sample used once per n); gold gain over
              n = 1 against d = √(log n − (n−1)/n), fitted as d(α − βd);
  RL          GRPO at β = 0 (the ensemble benchmark's settings); the rollouts' gold gain over the
              first window against the smoothed √KL, fitted as d(α − β log d).
α, β by least squares without intercept (rlhfkit.monitor.findings.fit_law), R², the fitted and
the observed KL at which gold peaks. Then best-of-n's analytic KL against the KL measured from the
samples (the exact KL of best-of-n drawn from each prompt's empirical distribution; equal rewards
are one outcome), for the RM's rewards and for gold's (which ties), after Beirami et al. 2024.
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

from rlhfkit.jobs.best_of_n import best_of_n_kl  # noqa: E402
from rlhfkit.monitor.findings import fit_law, overoptimisation  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def single_rm(args, budget: int, sft: str, held: Path) -> str:
    """Member 0 of the ensemble benchmark's ensemble at this budget when it exists, else one RM with
    the same data, seed and steps (the same computation)."""
    ens = Path(args.workdir) / "rm" / g.rm_name(budget, 0, args.members, args.flip_rate, args.rm_steps) / "final"
    if (ens / "ensemble.json").exists():
        return g.member(str(ens), 0)
    data = g.collect(Path(args.workdir) / "data" / f"train-s0-f{args.flip_rate:g}.jsonl", sft, "lab:prompts_train",
                     max(args.collect, budget), 4, 0, args.temperature, args.flip_rate)
    return g.train_rm(Path(args.workdir) / "rm" / g.rm_name(budget, 0, 1, args.flip_rate, args.rm_steps), data, held, sft,
                      seed=0, limit=budget, steps=args.rm_steps)


def rm_agreement(rm: str) -> dict:
    ev = g.rm_eval(rm if not Path(rm).name.startswith("member-") else str(Path(rm).parent))
    return ev.get("member-0", ev)


def law_for_budget(args, budget: int, sft: str, held: Path, rows: list[dict]) -> dict:
    rm = single_rm(args, budget, sft, held)
    gold = torch.tensor([r["gold"] for r in rows])
    scores = g.member_scores(Path(args.workdir) / "bon" / f"scores-{g.rm_name(budget, 0, 1, args.flip_rate, args.rm_steps)}"
                             f"-p{args.bon_prompts}-n{args.bon_n}.json", rows, rm)[0]
    ns = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n <= args.bon_n]
    bon = g.bon_curve(scores, gold, ns)
    bon_fit = fit_law([p["d"] for p in bon], [p["gold_gain"] for p in bon], "bon")
    out = Path(args.workdir) / "rl" / g.rl_name(g.rm_name(budget, 0, 1, args.flip_rate, args.rm_steps), "single", 0.0,
                                                 args.lr, args.steps, args.batch, args.group)
    rl_rows = g.online(out, sft, rm, beta=0.0, steps=args.steps, seed=0, lr=args.lr, batch=args.batch, group=args.group)
    o = overoptimisation(rl_rows, window=args.window)
    best = max(bon, key=lambda p: p["gold"])
    ev = rm_agreement(rm)
    return {
        "budget": budget, "rm": rm, "rm_gold_agreement": ev["gold/agreement"], "annotators": ev["gold/annotator_agreement"],
        "bon": bon, "bon_fit": _fit(bon_fit), "bon_best_n": best["n"], "bon_best_kl": best["kl"],
        "rl_fit": _fit(o.fit), "rl_points": o.points, "rl_peak_kl": o.peak_kl,
        "rl_peak_gain": o.gold_peak - o.gold_start, "rl_end_kl": o.kl_end, "rl_fell": o.fell,
        "kl_check": kl_check(scores, gold, ns),
    }


def _fit(fit) -> dict | None:
    return None if fit is None else vars(fit) | {"peak_kl": fit.peak_kl}


def kl_check(rm_scores: torch.Tensor, gold: torch.Tensor, ns: list[int]) -> list[dict]:
    return [{"n": n, "analytic": best_of_n_kl(n), "measured_rm": g.bon_kl_plugin(rm_scores, n),
             "measured_gold": g.bon_kl_plugin(gold, n)} for n in ns]


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from rlhfkit.monitor.findings import LawFit

    colors = ["#dc2626", "#2563eb", "#16a34a", "#9333ea", "#ca8a04"]
    fig = Figure(figsize=(10.4, 4.0), layout="constrained")
    ax_b, ax_r = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for c, r in zip(colors, results, strict=False):
        ds = [p["d"] for p in r["bon"]]
        ax_b.plot(ds, [p["gold_gain"] for p in r["bon"]], "o", color=c, markersize=3.5)
        fb = LawFit(**{k: v for k, v in r["bon_fit"].items() if k != "peak_kl"})
        grid = [max(ds) * i / 60 for i in range(61)]
        ax_b.plot(grid, [fb.gain(x) for x in grid], color=c, linewidth=1.2,
                  label=f"{r['budget']} prompts: α={fb.alpha:.2f} β={fb.beta:.2f} R²={fb.r2:.2f}")
        xs = [p[0] for p in r["rl_points"]]
        ax_r.plot(xs, [p[1] for p in r["rl_points"]], ".", color=c, markersize=2.5, alpha=0.6)
        if r["rl_fit"] is not None:
            fr = LawFit(**{k: v for k, v in r["rl_fit"].items() if k != "peak_kl"})
            grid = [max(xs) * i / 80 for i in range(1, 81)]
            ax_r.plot(grid, [fr.gain(x) for x in grid], color=c, linewidth=1.2,
                      label=f"{r['budget']} prompts: α={fr.alpha:.2f} β={fr.beta:.2f} R²={fr.r2:.2f}")
    for ax, title in ((ax_b, "Best-of-n: gold gain = d(α − βd)"), (ax_r, "GRPO, β = 0: gold gain = d(α − β log d)")):
        ax.axhline(0.0, color="#9ca3af", linewidth=0.8)
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xlabel("d = √KL to the SFT policy (√nats)", fontsize=8)
        ax.set_ylabel("gold − gold of the SFT policy", fontsize=8)
        ax.grid(True, color="#e5e7eb", linewidth=0.6)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5, frameon=False)
    fig.savefig(path, dpi=110)


def _kl(v: float | None) -> str:
    return "none (β ≤ 0)" if v is None else (f"{v:.3g}" if v < 1e4 else f"{v:.1e}")


def section(args, results: list[dict], argv: list[str], seconds: float) -> str:
    lines = [
        "## 2. The over-optimisation law (Gao et al. 2022)", "",
        f"    python benchmarks/overopt_law.py {' '.join(argv)}".rstrip(), "",
        f"Single RMs (seed 0, {args.rm_steps} steps each, lr 2e-3) on the first B ranked prompts of one collection "
        f"(K = 4 SFT samples, annotator T = {args.temperature:g}, flip rate {args.flip_rate:g}). Best-of-n: "
        f"{args.bon_n} SFT samples on each of {args.bon_prompts} held-out prompts, gold gain over n = 1, d = √(log n − "
        f"(n−1)/n). RL: GRPO at β = 0, lr {args.lr:g}, {args.steps} steps of {args.batch} episodes (G = {args.group}), "
        f"the rollouts' gold gain over the first {args.window}-step window against the smoothed √KL. One seed per budget "
        "(the ensemble section repeats the 400-prompt, β = 0 run over seeds). Fits by least squares without intercept "
        "(`rlhfkit.monitor.findings.fit_law`); R² around the mean gain.", "",
        "![gold gain against √KL, best-of-n and RL, with fits](findings_law.png)", "",
        "| prompts (pairs) | RM vs gold | BoN α | BoN β | BoN R² | BoN peak KL (fit) | best n (KL) | RL α | RL β | RL R² | "
        "RL peak KL (fit) | RL peak KL (observed) | RL gold gain at peak | RL fell after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b, rl = r["bon_fit"], r["rl_fit"] or {"alpha": math.nan, "beta": math.nan, "r2": math.nan, "peak_kl": None}
        lines.append(f"| {r['budget']} ({6 * r['budget']}) | {r['rm_gold_agreement']:.3f} | {b['alpha']:.3f} | {b['beta']:.3f} | "
                     f"{b['r2']:.2f} | {_kl(b['peak_kl'])} | {r['bon_best_n']} ({r['bon_best_kl']:.2f}) | {rl['alpha']:.3f} | "
                     f"{rl['beta']:.3f} | {rl['r2']:.2f} | {_kl(rl['peak_kl'])} | {r['rl_peak_kl']:.2f} | "
                     f"{r['rl_peak_gain']:+.3f} | {'yes' if r['rl_fell'] else 'no'} |")
    first = results[0]
    lines += ["", f"(annotators vs gold on the held-out pairs: {first['annotators']:.3f})", "",
              "**Best-of-n KL: analytic vs measured from the samples** (nats; mean over prompts; RM = the "
              f"{first['budget']}-prompt RM; gold = best-of-n under the gold judge itself)", "",
              "| n | log n − (n−1)/n | measured, RM rewards | measured, gold rewards |", "|---|---|---|---|"]
    for k in first["kl_check"]:
        lines.append(f"| {k['n']} | {k['analytic']:.3f} | {k['measured_rm']:.3f} | {k['measured_gold']:.3f} |")
    lines += ["", f"Wall time of this run: {seconds / 60:.0f} min (finished runs in the workdir are reused)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/findings")
    p.add_argument("--budgets", type=int, nargs="+", default=[100, 200, 400])
    p.add_argument("--collect", type=int, default=400)
    p.add_argument("--members", type=int, default=4, help="the ensemble benchmark's size (to reuse its member 0)")
    p.add_argument("--rm-steps", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--flip-rate", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=70)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--bon-prompts", type=int, default=64)
    p.add_argument("--bon-n", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--doc", default=str(ROOT / "docs" / "FINDINGS.md"), help="'' = do not write the section")
    p.add_argument("--quick", action="store_true")
    raw = argv if argv is not None else sys.argv[1:]
    args = p.parse_args(argv)
    if args.quick:
        args.budgets, args.collect, args.rm_steps, args.steps, args.window = [20, 40, 60], 60, 10, 9, 2
        args.bon_prompts, args.bon_n, args.doc, args.workdir = 4, 16, "", args.workdir + "-quick"
    torch.set_num_threads(args.threads)
    from rlhfkit.lab import ensure_lab

    ensure_lab()
    t0 = time.time()
    work = Path(args.workdir)
    sft = g.sft(work)
    held = g.held(work, sft)
    rows = g.samples(work / "bon" / f"samples-p{args.bon_prompts}-n{args.bon_n}.jsonl", sft, args.bon_prompts, args.bon_n)
    results = []
    for budget in args.budgets:
        results.append(law_for_budget(args, budget, sft, held, rows))
        print(json.dumps({k: v for k, v in results[-1].items() if k not in ("bon", "rl_points", "kl_check")}), flush=True)
        (work / "overopt_law.json").write_text(json.dumps(results, indent=1))
    dup = sum(len(r["responses"]) - len(set(r["responses"])) for r in rows) / sum(len(r["responses"]) for r in rows)
    print(f"duplicate responses among the best-of-n samples: {100 * dup:.2f}%")
    if args.doc:
        doc = Path(args.doc)
        plot(results, doc.parent / "findings_law.png")
        text = section(args, results, raw, time.time() - t0)
        g.write_section(doc, "overopt-law", text + f"\n\nDuplicate responses among the samples: {100 * dup:.2f}%.")
    print(section(args, results, raw, time.time() - t0))
    return results


if __name__ == "__main__":
    main()
