"""The over-optimisation law on the lab (Gao et al. 2022): gold against d = √KL for best-of-n and RL.

    .venv/bin/python benchmarks/overopt_law.py                        # the FINDINGS.md run
    .venv/bin/python benchmarks/overopt_law.py --budgets 100 400      # some budgets
    .venv/bin/python benchmarks/overopt_law.py --seeds 0              # one seed
    .venv/bin/python benchmarks/overopt_law.py --quick                # smoke run

For each seed s and label budget B (ranked prompts, K = 4 SFT samples each, simulated annotator
seeded by s): a single RM (member 0 of benchmarks/ensemble_overopt.py's ensemble when that exists:
the same data, seed and steps), then
  best-of-n   n = 1..256 from one set of SFT samples (every sample used once per n); gold gain over
              n = 1 against d = √(log n − (n−1)/n), fitted as d(α − βd);
  RL          GRPO at β = 0 (the ensemble benchmark's settings); the rollouts' gold gain over the
              first window against the smoothed √KL, fitted as d(α − β log d).
α, β by least squares without intercept (rlhfkit.monitor.findings.fit_law), R², the fitted and
the observed KL at which gold peaks: one fit per budget over every seed's points (pooled), and the
spread of the per-seed fits. Then best-of-n's analytic KL against the KL measured from the
samples (the exact KL of best-of-n drawn from each prompt's empirical distribution; equal rewards
are one outcome), for the RM's rewards and for gold's (which ties), after Beirami et al. 2024.
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

from rlhfkit.jobs.best_of_n import best_of_n_kl  # noqa: E402
from rlhfkit.monitor.findings import fit_law, overoptimisation  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def single_rm(args, budget: int, seed: int, sft: str, held: Path) -> str:
    """Member 0 of the ensemble benchmark's ensemble at this budget and seed when it exists, else one
    RM with the same data, seed and steps (the same computation)."""
    ens = Path(args.workdir) / "rm" / g.rm_name(budget, seed, args.members, args.flip_rate, args.rm_steps) / "final"
    if (ens / "ensemble.json").exists():
        return g.member(str(ens), 0)
    data = g.collect(Path(args.workdir) / "data" / f"train-s{seed}-f{args.flip_rate:g}.jsonl", sft, "lab:prompts_train",
                     max(args.collect, budget), 4, seed, args.temperature, args.flip_rate)
    return g.train_rm(Path(args.workdir) / "rm" / g.rm_name(budget, seed, 1, args.flip_rate, args.rm_steps), data, held,
                      sft, seed=seed, limit=budget, steps=args.rm_steps)


def rm_agreement(rm: str) -> dict:
    ev = g.rm_eval(rm if not Path(rm).name.startswith("member-") else str(Path(rm).parent))
    return ev.get("member-0", ev)


def law_for_budget(args, budget: int, seed: int, sft: str, held: Path, rows: list[dict]) -> dict:
    rm = single_rm(args, budget, seed, sft, held)
    name = g.rm_name(budget, seed, 1, args.flip_rate, args.rm_steps)
    gold = torch.tensor([r["gold"] for r in rows])
    scores = g.member_scores(Path(args.workdir) / "bon" / f"scores-{name}-p{args.bon_prompts}-n{args.bon_n}.json", rows, rm)[0]
    ns = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n <= args.bon_n]
    bon = g.bon_curve(scores, gold, ns)
    bon_fit = fit_law([p["d"] for p in bon], [p["gold_gain"] for p in bon], "bon")
    out = Path(args.workdir) / "rl" / g.rl_name(name, "single", 0.0, args.lr, args.steps, args.batch, args.group)
    rl_rows = g.online(out, sft, rm, beta=0.0, steps=args.steps, seed=seed, lr=args.lr, batch=args.batch, group=args.group)
    o = overoptimisation(rl_rows, window=args.window)
    best = max(bon, key=lambda p: p["gold"])
    ev = rm_agreement(rm)
    return {
        "budget": budget, "seed": seed, "rm": rm, "rm_gold_agreement": ev["gold/agreement"], "annotators": ev["gold/annotator_agreement"],
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


def pooled(results: list[dict], budget: int) -> dict:
    """One fit per budget over every seed's points: best-of-n (gain against d) and RL (the smoothed
    curves), with their R² around the pooled mean."""
    runs = [r for r in results if r["budget"] == budget]
    bon = fit_law([p["d"] for r in runs for p in r["bon"]], [p["gold_gain"] for r in runs for p in r["bon"]], "bon")
    rl = fit_law([p[0] for r in runs for p in r["rl_points"]], [p[1] for r in runs for p in r["rl_points"]], "rl")
    return {"bon": _fit(bon), "rl": _fit(rl)}


def plot(results: list[dict], path: Path) -> None:
    """Every seed's points (faint for seeds after the first) and the pooled fit of each budget."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from rlhfkit.monitor.findings import LawFit

    colors = ["#dc2626", "#2563eb", "#16a34a", "#9333ea", "#ca8a04"]
    fig = Figure(figsize=(10.4, 4.0), layout="constrained")
    ax_b, ax_r = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    budgets = list(dict.fromkeys(r["budget"] for r in results))
    first_seed = results[0]["seed"]
    for c, budget in zip(colors, budgets, strict=False):
        runs = [r for r in results if r["budget"] == budget]
        for r in runs:
            alpha = 0.9 if r["seed"] == first_seed else 0.3
            ax_b.plot([p["d"] for p in r["bon"]], [p["gold_gain"] for p in r["bon"]], "o", color=c, markersize=3, alpha=alpha)
            ax_r.plot([p[0] for p in r["rl_points"]], [p[1] for p in r["rl_points"]], ".", color=c, markersize=2.5,
                      alpha=0.6 * alpha)
        fits = pooled(results, budget)
        fb = LawFit(**{k: v for k, v in fits["bon"].items() if k != "peak_kl"})
        dmax = max(p["d"] for r in runs for p in r["bon"])
        grid = [dmax * i / 60 for i in range(61)]
        ax_b.plot(grid, [fb.gain(x) for x in grid], color=c, linewidth=1.2,
                  label=f"{budget} prompts: α={fb.alpha:.2f} β={fb.beta:.2f} R²={fb.r2:.2f}")
        fr = LawFit(**{k: v for k, v in fits["rl"].items() if k != "peak_kl"})
        xmax = max(p[0] for r in runs for p in r["rl_points"])
        grid = [xmax * i / 80 for i in range(1, 81)]
        ax_r.plot(grid, [fr.gain(x) for x in grid], color=c, linewidth=1.2,
                  label=f"{budget} prompts: α={fr.alpha:.2f} β={fr.beta:.2f} R²={fr.r2:.2f}")
    seeds = sorted({r["seed"] for r in results})
    for ax, title in ((ax_b, "Best-of-n: gold gain = d(α − βd)"), (ax_r, "GRPO, β = 0: gold gain = d(α − β log d)")):
        title += f" (pooled fit, {len(seeds)} seed{'s' if len(seeds) > 1 else ''})"
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
    seeds = sorted({r["seed"] for r in results})
    budgets = list(dict.fromkeys(r["budget"] for r in results))
    lines = [
        "## 2. The over-optimisation law (Gao et al. 2022)", "",
        f"    python benchmarks/overopt_law.py {' '.join(argv)}".rstrip(), "",
        f"Single RMs (seeds {', '.join(map(str, seeds))}: annotator, data order and head init; {args.rm_steps} steps "
        f"each, lr 2e-3) on the first B ranked prompts of the seed's collection (K = 4 SFT samples, annotator "
        f"T = {args.temperature:g}, flip rate {args.flip_rate:g}); the 400-prompt RM is member 0 of the ensemble "
        f"section's. Best-of-n: {args.bon_n} SFT samples on each of {args.bon_prompts} held-out prompts, gold gain over "
        f"n = 1, d = √(log n − (n−1)/n). RL: GRPO at β = 0, lr {args.lr:g}, {args.steps} steps of {args.batch} episodes "
        f"(G = {args.group}), the rollouts' gold gain over the first {args.window}-step window against the smoothed √KL. "
        "Fits by least squares without intercept (`rlhfkit.monitor.findings.fit_law`), R² around the mean gain: the "
        "first table fits each budget once over every seed's points (pooled), the second gives the per-seed fits' "
        f"mean ± 95% t-interval over the {len(seeds)} seed{'s' if len(seeds) > 1 else ''}.", "",
        "![gold gain against √KL, best-of-n and RL, with pooled fits](findings_law.png)", "",
        "| prompts (pairs) | RM vs gold | BoN α | BoN β | BoN R² | BoN peak KL (fit) | best n (KL) | RL α | RL β | RL R² | "
        "RL peak KL (fit) | RL peak KL (observed) | RL gold gain at peak | runs that fell after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    per_seed = ["", "Per-seed fits (mean ± 95% t-interval over seeds):", "",
                "| prompts | BoN α | BoN β | BoN R² | RL α | RL β | RL R² |", "|---|---|---|---|---|---|---|"]
    for budget in budgets:
        runs = [r for r in results if r["budget"] == budget]
        fits = pooled(results, budget)
        b, rl = fits["bon"], fits["rl"]
        curve = [sum(r["bon"][k]["gold"] for r in runs) / len(runs) for k in range(len(runs[0]["bon"]))]
        best = runs[0]["bon"][max(range(len(curve)), key=curve.__getitem__)]
        lines.append(f"| {budget} ({6 * budget}) | {g.fmt_ci([r['rm_gold_agreement'] for r in runs])} | {b['alpha']:.3f} | "
                     f"{b['beta']:.3f} | {b['r2']:.2f} | {_kl(b['peak_kl'])} | {best['n']} ({best['kl']:.2f}) | "
                     f"{rl['alpha']:.3f} | {rl['beta']:.3f} | {rl['r2']:.2f} | {_kl(rl['peak_kl'])} | "
                     f"{g.fmt_ci([r['rl_peak_kl'] for r in runs], 2)} | {g.fmt_ci([r['rl_peak_gain'] for r in runs])} | "
                     f"{sum(r['rl_fell'] for r in runs)}/{len(runs)} |")
        rl_fits = [r["rl_fit"] for r in runs if r["rl_fit"] is not None]
        per_seed.append(f"| {budget} | " + " | ".join(g.fmt_ci([r["bon_fit"][k] for r in runs], 3 if k != "r2" else 2)
                                                    for k in ("alpha", "beta", "r2")) + " | "
                        + " | ".join(g.fmt_ci([f[k] for f in rl_fits], 3 if k != "r2" else 2) if rl_fits else "–"
                                     for k in ("alpha", "beta", "r2")) + " |")
    first = results[0]
    lines += per_seed
    lines += ["", f"(annotators vs gold on the held-out pairs: {first['annotators']:.3f})", "",
              "**Best-of-n KL: analytic vs measured from the samples** (nats; mean over prompts; RM = the "
              f"{first['budget']}-prompt RM of seed {first['seed']}; gold = best-of-n under the gold judge itself)", "",
              "| n | log n − (n−1)/n | measured, RM rewards | measured, gold rewards |", "|---|---|---|---|"]
    for k in first["kl_check"]:
        lines.append(f"| {k['n']} | {k['analytic']:.3f} | {k['measured_rm']:.3f} | {k['measured_gold']:.3f} |")
    lines += ["", f"Wall time of this run: {seconds / 60:.0f} min (finished runs in the workdir are reused)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/findings")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
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
        args.seeds, args.budgets, args.collect, args.rm_steps, args.steps, args.window = [0], [20, 40, 60], 60, 10, 9, 2
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
    for seed in args.seeds:
        for budget in args.budgets:
            results.append(law_for_budget(args, budget, seed, sft, held, rows))
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
