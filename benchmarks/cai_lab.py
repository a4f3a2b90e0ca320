"""Constitutional AI on the lab, end to end with real (tiny) language models and no human labels.

The lab assistant (the lab base model after a short continued pretraining on critique/revision
and multiple-choice documents, `lab/cai_corpus.py`) plays CAI's helpful model and feedback
model; the policy being improved is the lab SFT model (`rlhfkit sft` on the lab's defaults,
trained here). Measured, each against the lab's gold judge, which no step below reads:

1. critiques: how often the assistant's critique names a flaw ("one sentence is unkind ." ...
   rather than "none .") in drafts that break the sampled principle vs drafts that do not.
   Breaking is judged by gold's own sentiment (VADER, `gold.compound`) per sentence: "unkind" =
   some sentence below -0.05; "lukewarm" = some sentence within +-0.05 that is not neutral by
   nature (a template with no other form, "i watched this film with my wife .");
2. revisions: gold of the policy's responses to held-out prompts after each critique -> revision
   round (`rlhfkit cai`, lab constitution, a principle sampled per round), and each round's gain
   over the round before, paired over prompts;
3. AI judge: two policy samples per held-out prompt labelled by the assistant ((A)/(B)
   answer-token probabilities, both orders averaged) vs by gold;
4. RL-CAI reward model: policy pairs on training prompts labelled by the judge (`rlhfkit judge`,
   soft labels) -> `rlhfkit reward`, an ensemble of --rm-members RMs (PPO uses their mean); agreement
   with gold on judge-labelled pairs of held-out prompts, of the ensemble and of each member;
5. RL-CAI: `rlhfkit ppo` from the SFT model against that reward model; held-out gold of the PPO
   policy vs the SFT model (same prompts, paired), and the KL it moved;
6. (--sl-cai) SL-CAI: SFT of the policy on its final revisions vs on its unrevised originals.

Run: `.venv/bin/python benchmarks/cai_lab.py` (about half an hour on 2 busy cores; `make bench`
runs it). Numbers come with 95% intervals (normal approximation over prompts or drafts); with
`--findings FILE` the results replace the CAI section of that file (between its markers).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

FINDINGS_BEGIN, FINDINGS_END = "<!-- cai_lab: begin -->", "<!-- cai_lab: end -->"
# The lab SFT model of `rlhfkit demo` (pipeline/demo.yaml): one epoch of the lab demonstrations.
POLICY_SFT = ("train.epochs=1", "train.lr=5e-4", "train.batch_size=32", "train.micro_batch_size=32", "data.eval=null")


def mean_ci(values: list[float]) -> dict[str, float]:
    m = statistics.fmean(values) if values else float("nan")
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": round(m, 4), "ci95": round(half, 4), "n": len(values)}


def gold(prompts: list[str], responses: list[str]) -> list[float]:
    from rlhfkit.lab.gold import gold_score

    return gold_score([p + r for p, r in zip(prompts, responses, strict=True)])


def read_prompts(source: str, n: int) -> list[str]:
    from rlhfkit.data import read_records

    return [r.prompt for r in read_records(source, "prompt")][:n]


def sample(model_dir: str, prompts: list[str], k: int, seed: int, max_new_tokens: int = 64) -> list[list[str]]:
    """k plain samples (temperature 1) per prompt from a model folder."""
    from rlhfkit.config import ModelConfig
    from rlhfkit.data import encode_prompt
    from rlhfkit.models.loading import load_policy, load_tokenizer
    from rlhfkit.rollout import SamplingParams, generate

    cfg = ModelConfig(name_or_path=model_dir)
    model, tok = load_policy(cfg), load_tokenizer(cfg)
    ids = [encode_prompt(tok, p) for p in prompts for _ in range(k)]
    out = generate(model, tok, ids, SamplingParams(max_new_tokens=max_new_tokens), batch_size=128, generator_seed=seed)
    return [[s.text for s in out[i * k : (i + 1) * k]] for i in range(len(prompts))]


def train_sft(model_dir: str, out: Path, seed: int, overrides: tuple[str, ...] = ()) -> str:
    """`rlhfkit sft` (lab data and defaults unless overridden); reused when already complete."""
    from rlhfkit.config import load_config
    from rlhfkit.recipes import sft as sft_recipe

    if not (out / "final" / "run_complete.json").exists():
        sft_recipe.run(load_config(sft_recipe.SFTConfig, None, [
            f"model.name_or_path={model_dir}", f"train.seed={seed}", "log.save_every=0", "log.eval_every=0",
            "log.progress=false", *overrides]), out)
    return str(out / "final")


# ---------------------------------------------------------------------- 1-2: critiques and revisions


def run_cai(assistant: str, policy: str, prompts_file: Path, out: Path, rounds: int, seed: int) -> list[dict]:
    from rlhfkit.config import load_config
    from rlhfkit.data import read_jsonl
    from rlhfkit.jobs import cai

    if not (out / cai.SUMMARY_FILE).exists():
        cfg = load_config(cai.CAIConfig, None, [
            f"model.name_or_path={assistant}", f"initial_model={policy}", f"prompts={prompts_file}", "constitution=lab",
            "history=latest", f"rounds={rounds}", "batch_size=128", f"seed={seed}", "sampling.revise_temperature=0.7"])
        cai.run(cfg, out, resume=out.exists())
    return read_jsonl(out / cai.STEPS_FILE)


def drafts_per_round(rows: list[dict], rounds: int) -> list[list[str]]:
    """The response under review before each round and after the last: round r's revision when it
    was accepted, else the response before it (what the CAI loop carries on with)."""
    out = [[r["response"] for r in rows]]
    for k in range(rounds):
        out.append([r["rounds"][k]["revision"] if r["rounds"][k].get("accepted") else p
                    for r, p in zip(rows, out[-1], strict=True)])
    return out


@functools.cache
def _neutral_by_nature() -> re.Pattern:
    """Sentences of templates that have only a neutral form: no warmer way to say them."""
    from rlhfkit.lab import grammar

    return re.compile("|".join(grammar._template_regex(t) for t in grammar.TEMPLATES if t.sentiments == ("neu",)))


def breaks(principle: str, text: str) -> bool:
    """Whether a review breaks a lab principle, by gold's sentiment (VADER) of each sentence."""
    from rlhfkit.lab import grammar
    from rlhfkit.lab.gold import compound

    sentences = grammar.split_sentences(text)
    if principle == "unkind":
        return any(compound(s) < -0.05 for s in sentences)
    return any(abs(compound(s)) <= 0.05 and not _neutral_by_nature().fullmatch(s) for s in sentences)


def critiques(rows: list[dict], drafts: list[list[str]]) -> dict:
    """Share of critiques that name a flaw, for drafts that break the round's principle and drafts
    that do not, per principle, over every round (the draft of round r is the response before it)."""
    from rlhfkit.lab.cai_corpus import NONE

    flags: dict[str, dict[bool, list[float]]] = {}
    for k in range(len(drafts) - 1):
        for row, draft in zip(rows, drafts[k], strict=True):
            rnd = row["rounds"][k]
            if "critique" not in rnd:
                continue
            broken = breaks(rnd["principle"], row["prompt"] + draft)
            flags.setdefault(rnd["principle"], {True: [], False: []})[broken].append(float(rnd["critique"] != NONE))
    out = {}
    for name, by in sorted(flags.items()):
        bad, good = mean_ci(by[True]), mean_ci(by[False])
        out[name] = {"flags_when_broken": bad, "flags_when_not": good,
                     "ratio": round(bad["mean"] / good["mean"], 2) if good["mean"] > 0 else None}
    return out


def revisions(rows: list[dict], drafts: list[list[str]]) -> dict:
    ps = [r["prompt"] for r in rows]
    golds = [gold(ps, d) for d in drafts]
    out = {"gold": [mean_ci(g) for g in golds],
           "gain_over_previous_round": [mean_ci([b - a for a, b in zip(golds[k], golds[k + 1], strict=True)])
                                        for k in range(len(golds) - 1)],
           "changed_share": [round(sum(a != b for a, b in zip(drafts[k], drafts[k + 1], strict=True)) / len(rows), 4)
                             for k in range(len(drafts) - 1)],
           "accepted_share": [round(sum(bool(r["rounds"][k].get("accepted")) for r in rows) / len(rows), 4)
                              for k in range(len(drafts) - 1)]}
    out["example"] = rows[0]
    return out


# ---------------------------------------------------------------------- 3-4: AI feedback


def judge_agreement(assistant: str, policy: str, prompts: list[str], seed: int) -> dict:
    from rlhfkit.config import ModelConfig
    from rlhfkit.feedback.constitution import load_constitution
    from rlhfkit.feedback.judge import AIJudge
    from rlhfkit.models.loading import load_policy, load_tokenizer

    items = [(p, a, b) for p, (a, b) in zip(prompts, sample(policy, prompts, 2, seed), strict=True) if a != b]
    ps = [p for p, _, _ in items]
    g = list(zip(gold(ps, [a for _, a, _ in items]), gold(ps, [b for _, _, b in items]), strict=True))
    cfg = ModelConfig(name_or_path=assistant)
    model, tok = load_policy(cfg), load_tokenizer(cfg)
    out: dict = {"pairs": len(items)}
    for name, both in (("both_orders", True), ("one_order", False)):
        verdicts = AIJudge(model, tok, load_constitution("lab"), both_orders=both, seed=seed).judge_pairs(items, skip_too_long=True)
        kept = [(v, ga, gb) for v, (ga, gb) in zip(verdicts, g, strict=True) if v is not None and ga != gb]
        out[name] = {"agreement": mean_ci([float((v.p > 0.5) == (ga > gb)) for v, ga, gb in kept]),
                     "agreement_gold_gap_ge_0.5": mean_ci([float((v.p > 0.5) == (ga > gb)) for v, ga, gb in kept
                                                           if abs(ga - gb) >= 0.5]),
                     "mean_confidence": round(statistics.fmean(max(v.p, 1 - v.p) for v, _, _ in kept), 4)}
    return out


def judge_labels(assistant: str, policy: str, prompts: list[str], pairs: int, out: Path, seed: int) -> Path:
    """`pairs` disjoint pairs of policy samples per prompt, labelled by the AI judge (`rlhfkit judge`)."""
    from rlhfkit.config import load_config
    from rlhfkit.data import write_jsonl
    from rlhfkit.jobs import judge as judge_job

    if out.exists():
        return out
    texts = sample(policy, prompts, 2 * pairs, seed)
    samples = write_jsonl(out.with_suffix(".samples.jsonl"), [
        {"prompt": p, "responses": s[i : i + 2]} for p, s in zip(prompts, texts, strict=True) for i in range(0, 2 * pairs, 2)])
    return judge_job.run(load_config(judge_job.JudgeConfig, None, [
        f"model.name_or_path={assistant}", f"samples={samples}", "constitution=lab", f"seed={seed}"]), out)


def rl_cai_reward_model(assistant: str, policy: str, train_prompts: list[str], eval_prompts: list[str], work: Path,
                        seed: int, members: int, overrides: tuple[str, ...]) -> tuple[str, dict]:
    """RL-CAI's reward model: judge soft labels on policy pairs (train prompts) -> `rlhfkit reward`,
    an ensemble of `members` (train seeds seed..seed+M−1; PPO uses their mean) when members > 1: on
    the lab a single small RM's agreement with gold swings by ±0.08 with its training seed alone.
    Agreement with gold is measured on judge-labelled pairs of held-out prompts, for the reward PPO
    uses and for each member."""
    from rlhfkit.config import load_config
    from rlhfkit.recipes import reward

    train = judge_labels(assistant, policy, train_prompts, 2, work / "judge_train.jsonl", seed + 11)
    held_out = judge_labels(assistant, policy, eval_prompts, 1, work / "judge_eval.jsonl", seed + 13)
    out = work / "rm"
    if not (out / "final" / "run_complete.json").exists() and not (out / "final" / "ensemble.json").exists():
        reward.run(load_config(reward.RewardConfig, None, [
            f"model.name_or_path={policy}", f"data.train={train}", f"data.eval={held_out}", "data.gold=lab",
            f"train.seed={seed}", f"ensemble.members={members}", "log.save_every=0", "log.eval_every=0",
            "log.progress=false", *overrides]), out)
    ev = json.loads((out / "reward_eval.json").read_text())
    main = ev["mean"] if members > 1 else ev  # what PPO's reward is: the members' mean, or the one RM
    res = {"members": members, "eval_accuracy": round(main["eval/accuracy"], 4), "gold_agreement": round(main["gold/agreement"], 4),
           "gold_annotator_agreement": round(main["gold/annotator_agreement"], 4), "gold_pairs": main["gold/pairs"]}
    if members > 1:
        res["member_gold_agreement"] = [round(ev[f"member-{i}"]["gold/agreement"], 4) for i in range(members)]
    return str(out / "final"), res


# ---------------------------------------------------------------------- 5-6: training on AI feedback


def ppo(policy: str, rm: str, work: Path, seed: int, overrides: tuple[str, ...]) -> str:
    from rlhfkit.config import load_config
    from rlhfkit.recipes import ppo as ppo_recipe

    out = work / "ppo"
    if not (out / "final" / "run_complete.json").exists():
        ppo_recipe.run(load_config(ppo_recipe.PPOConfig, None, [
            f"model.name_or_path={policy}", f"reward.source={rm}", f"train.seed={seed}", "log.save_every=0",
            "log.progress=false", *overrides]), out)
    return str(out / "final")


def compare_policies(models: dict[str, str], reference: str, prompts: list[str], k: int, seed: int,
                     max_new_tokens: int) -> dict:
    """Held-out gold of each model (k samples per prompt, same seed), its paired gain over
    `reference` (per-prompt means), and the sequence KL from the reference."""
    from rlhfkit.config import ModelConfig
    from rlhfkit.evaluate import heldout_metrics
    from rlhfkit.recipes.ppo import PPORolloutConfig

    per_prompt = {}
    for name, path in models.items():
        texts = sample(path, prompts, k, seed, max_new_tokens)
        per_prompt[name] = [statistics.fmean(gold([p] * k, s)) for p, s in zip(prompts, texts, strict=True)]
    ref = ModelConfig(name_or_path=models[reference])
    out = {}
    for name, path in models.items():
        out[name] = {"gold": mean_ci(per_prompt[name]),
                     "gain_over_" + reference: mean_ci([a - b for a, b in zip(per_prompt[name], per_prompt[reference],
                                                                                strict=True)])}
        if name != reference:
            m = heldout_metrics(path, ref, "lab:prompts_eval", len(prompts), PPORolloutConfig(max_new_tokens=max_new_tokens))
            out[name]["kl_from_" + reference] = round(m["eval/kl"], 4)
    return out


def sl_cai(assistant: str, policy: str, train_prompts: list[str], eval_prompts: list[str], work: Path, seed: int,
           rounds: int) -> dict:
    """SFT of the policy on its final revisions (SL-CAI) vs on its unrevised originals (control)."""
    from rlhfkit.data import write_jsonl

    rows = run_cai(assistant, policy, write_jsonl(work / "train_prompts.jsonl", [{"prompt": p} for p in train_prompts]),
                   work / "cai_train", rounds, seed)
    originals = write_jsonl(work / "originals.jsonl", [{"prompt": r["prompt"], "response": r["response"]} for r in rows
                                                       if r["response"].strip()])
    sft_set = ("train.batch_size=32", "train.micro_batch_size=32", "train.lr=1e-3", "train.epochs=2", "data.eval=null")
    models = {"policy": policy,
              "sft_on_sl_cai": train_sft(policy, work / "sft_cai", seed, (f"data.train={work / 'cai_train' / 'sl_cai.jsonl'}",
                                                                         *sft_set)),
              "sft_on_originals": train_sft(policy, work / "sft_orig", seed, (f"data.train={originals}", *sft_set))}
    return compare_policies(models, "policy", eval_prompts, 2, seed + 7, 64)


# ---------------------------------------------------------------------- report


def _f(x: dict) -> str:
    return f"{x['mean']:+.3f} ± {x['ci95']:.3f}"


def table(res: dict) -> str:
    lines = ["| measurement | value |", "|---|---|"]
    for name, c in res["critiques"].items():
        lines.append(f"| critique flags a flaw, principle '{name}': drafts that break it "
                     f"(n={c['flags_when_broken']['n']}) / drafts that do not (n={c['flags_when_not']['n']}) "
                     f"| {c['flags_when_broken']['mean']:.3f} ± {c['flags_when_broken']['ci95']:.3f} / "
                     f"{c['flags_when_not']['mean']:.3f} ± {c['flags_when_not']['ci95']:.3f} (ratio {c['ratio']}) |")
    r = res["revisions"]
    for k, g in enumerate(r["gold"]):
        gain = "" if k == 0 else f"; gain over round {k - 1}: {_f(r['gain_over_previous_round'][k - 1])}"
        lines.append(f"| gold after revision round {k} (0 = the policy's responses, n={g['n']}) | {_f(g)}{gain} |")
    j = res["judge"]
    lines.append(f"| AI judge agreement with gold on policy pairs, both orders / one order ({j['pairs']} pairs) "
                 f"| {_f(j['both_orders']['agreement'])} / {_f(j['one_order']['agreement'])} |")
    rm = res["rl_cai_reward_model"]
    kind = f"an ensemble of {rm['members']}, their mean" if rm.get("members", 1) > 1 else "one RM"
    spread = (f"; its members: {', '.join(f'{x:.3f}' for x in rm['member_gold_agreement'])}"
              if "member_gold_agreement" in rm else "")
    lines.append(f"| RL-CAI reward model (judge labels only; {kind}) agreement with gold, held-out pairs (n={rm['gold_pairs']}) "
                 f"| {rm['gold_agreement']:.3f} (its judge labels: {rm['gold_annotator_agreement']:.3f}{spread}) |")
    p = res["rl_cai_ppo"]
    lines.append(f"| held-out gold: SFT model / PPO on the RL-CAI reward model (n={p['sft']['gold']['n']} prompts) "
                 f"| {_f(p['sft']['gold'])} / {_f(p['ppo']['gold'])}; gain {_f(p['ppo']['gain_over_sft'])}, "
                 f"KL from SFT {p['ppo']['kl_from_sft']:.3f} |")
    if "sl_cai" in res:
        s = res["sl_cai"]
        lines.append(f"| SL-CAI: gold of the policy / after SFT on its revisions / on its originals (control) "
                     f"| {_f(s['policy']['gold'])} / {_f(s['sft_on_sl_cai']['gold'])} / {_f(s['sft_on_originals']['gold'])} |")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    """Three panels, each with its 95% intervals: how often a critique flags a flaw in drafts that
    break its principle vs drafts that do not; gold after each revision round; held-out gold of the
    SFT model vs PPO on the RL-CAI reward model."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12.0, 3.6), layout="constrained")
    ax, bx, cx = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
    names = list(res["critiques"])
    for j, (key, label, color) in enumerate((("flags_when_broken", "drafts that break it", "#dc2626"),
                                              ("flags_when_not", "drafts that do not", "#9ca3af"))):
        cells = [res["critiques"][n][key] for n in names]
        ax.bar([i + (j - 0.5) * 0.38 for i in range(len(names))], [c["mean"] for c in cells], 0.38,
               yerr=[c["ci95"] for c in cells], color=color, label=label, capsize=3)
    ax.set_xticks(range(len(names)), [f"'{n}'" for n in names], fontsize=8)
    ax.set_ylabel("share of critiques that flag a flaw", fontsize=8)
    ax.set_title("critiques, per principle", fontsize=10, loc="left")
    ax.legend(fontsize=7, frameon=False)
    golds = res["revisions"]["gold"]
    bx.errorbar(range(len(golds)), [x["mean"] for x in golds], yerr=[x["ci95"] for x in golds], marker="o",
                color="#2563eb", capsize=3, linewidth=1.0)
    bx.set_xticks(range(len(golds)), ["policy"] + [f"round {k}" for k in range(1, len(golds))], fontsize=8)
    bx.set_ylabel("gold (lab judge)", fontsize=8)
    bx.set_title("critique -> revision rounds", fontsize=10, loc="left")
    p = res["rl_cai_ppo"]
    arms = [("SFT", p["sft"]["gold"]), ("PPO on the RL-CAI RM", p["ppo"]["gold"])]
    cx.bar(range(2), [g["mean"] for _, g in arms], 0.5, yerr=[g["ci95"] for _, g in arms], capsize=3,
           color=["#9ca3af", "#16a34a"])
    cx.set_xticks(range(2), [n for n, _ in arms], fontsize=8)
    cx.set_ylabel("held-out gold (lab judge)", fontsize=8)
    cx.set_title(f"RL-CAI, no human labels (KL {p['ppo']['kl_from_sft']:.2f})", fontsize=10, loc="left")
    for a in (ax, bx, cx):
        a.grid(True, axis="y", color="#e5e7eb", linewidth=0.6)
        a.tick_params(labelsize=7)
    fig.savefig(path, dpi=110)


def write_findings(path: Path, res: dict, command: str) -> None:
    """Replace this benchmark's section of `path` (between its markers), or append one, and draw
    its plot beside it (findings_cai.png)."""
    plot(res, path.parent / "findings_cai.png")
    body = "\n".join([
        FINDINGS_BEGIN, "## Constitutional AI on the lab (benchmarks/cai_lab.py)", "",
        f"Command: `{command}` (seed {res['seed']}, {res['seconds']:.0f} s, {res['date']}). Assistant certificate: "
        f"{json.dumps(res['assistant_certificate'])}.", "",
        "![critique flag rates, gold over revision rounds, SFT vs RL-CAI PPO](findings_cai.png)", "",
        table(res), "", FINDINGS_END])
    text = path.read_text() if path.exists() else ""
    if FINDINGS_BEGIN in text and FINDINGS_END in text:
        head, rest = text.split(FINDINGS_BEGIN, 1)
        text = head + body + rest.split(FINDINGS_END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + body + "\n"
    path.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--assistant", default="lab:assistant", help="CAI helper and judge (default: the lab assistant)")
    p.add_argument("--n-train", type=int, default=1024, help="training prompts (judge-labelled pairs: 2 per prompt)")
    p.add_argument("--n-eval", type=int, default=256, help="held-out prompts")
    p.add_argument("--rounds", type=int, default=3, help="critique -> revision rounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rm-members", type=int, default=4,
                   help="RL-CAI reward model: an ensemble of this many (PPO uses their mean); 1 = one RM")
    p.add_argument("--rm-set", nargs="*", default=[], help="overrides for the reward model")
    p.add_argument("--ppo-set", nargs="*", default=["train.max_steps=40", "train.batch_size=64", "train.micro_batch_size=32",
                                                    "train.lr=1e-4", "ppo.kl_coef=0.05", "rollout.max_new_tokens=48",
                                                    "log.eval_every=0"],
                   help="overrides for PPO")
    p.add_argument("--sl-cai", action="store_true", help="also measure SL-CAI (SFT on revisions vs originals)")
    p.add_argument("--workdir", help="keep runs here (finished stages are reused); default: a temporary folder")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--findings", help="write the CAI section of this Markdown file (e.g. docs/FINDINGS.md)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from rlhfkit.data import write_jsonl
    from rlhfkit.models.loading import resolve_model_path

    base = resolve_model_path("lab")  # builds the lab on first use
    assistant = resolve_model_path(args.assistant)  # "lab:assistant" trains it on first use
    t0 = time.time()
    eval_prompts = read_prompts("lab:prompts_eval", args.n_eval)
    train_prompts = read_prompts("lab:prompts_train", args.n_train)
    cert = Path(assistant) / "assistant.json"
    res: dict = {"assistant": assistant, "seed": args.seed, "date": time.strftime("%Y-%m-%d %H:%M"),
                 "assistant_certificate": {k: v for k, v in json.loads(cert.read_text()).items()
                                           if k in ("key", "judge_accuracy_on_held_out_documents", "seconds")}
                 if cert.exists() else None}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        policy = train_sft(base, work / "sft", args.seed, POLICY_SFT)
        res["policy"] = policy
        rows = run_cai(assistant, policy, write_jsonl(work / "eval_prompts.jsonl", [{"prompt": q} for q in eval_prompts]),
                       work / "cai_eval", args.rounds, args.seed)
        drafts = drafts_per_round(rows, args.rounds)
        res["critiques"] = critiques(rows, drafts)
        res["revisions"] = revisions(rows, drafts)
        print(json.dumps({k: res[k] for k in ("critiques",)} | {"revisions": {k: v for k, v in res["revisions"].items()
                                                                            if k != "example"}}, indent=1), flush=True)
        res["judge"] = judge_agreement(assistant, policy, eval_prompts, args.seed)
        print(json.dumps(res["judge"], indent=1), flush=True)
        rm, res["rl_cai_reward_model"] = rl_cai_reward_model(assistant, policy, train_prompts, eval_prompts, work,
                                                             args.seed, args.rm_members, tuple(args.rm_set))
        print(json.dumps(res["rl_cai_reward_model"], indent=1), flush=True)
        new_tokens = next((int(o.split("=")[1]) for o in args.ppo_set if o.startswith("rollout.max_new_tokens=")), 64)
        res["rl_cai_ppo"] = compare_policies({"sft": policy, "ppo": ppo(policy, rm, work, args.seed, tuple(args.ppo_set))},
                                             "sft", eval_prompts, 2, args.seed + 5, new_tokens)
        print(json.dumps(res["rl_cai_ppo"], indent=1), flush=True)
        if args.sl_cai:
            res["sl_cai"] = sl_cai(assistant, policy, train_prompts, eval_prompts, work, args.seed, args.rounds)
            print(json.dumps(res["sl_cai"], indent=1), flush=True)
    res["seconds"] = round(time.time() - t0, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    print("\n" + table(res))
    if args.findings:
        write_findings(Path(args.findings), res, shlex.join(["python", "benchmarks/cai_lab.py", *sys.argv[1:]]))
    print(f"({res['seconds']} s)")


if __name__ == "__main__":
    main()
