"""Iterative RLHF (InstructGPT; Bai et al. 2022 "online" RLHF): alternate labelling and PPO.

    policy <- SFT;  comparisons <- []
    for round r = 1..R:
        sample K responses from the *current* policy on the round's fresh prompts; the annotator ranks them
        comparisons += those (label_budget / R of them)                     (jobs.compare)
        RM_r <- train on all comparisons so far (from the SFT backbone, or the previous RM)  (recipes.reward)
        policy <- PPO from the current policy against RM_r, KL to the SFT model  (recipes.ppo)
        evaluate: gold, KL to SFT, length on held-out prompts (lab)

R = 1 is the standard one-shot pipeline, so "3 rounds vs 1 round at the same label budget" is one
config change. Each round lives in `round-<r>/` (comparisons.jsonl, rm/, ppo/) with its own
metrics; `metrics.jsonl` of the run gets one `iterate` row per round; `final/` is the last
policy. Resume (--resume) skips finished stages and continues an interrupted one.

Under `accelerate launch` / torchrun every stage runs distributed (compare shards its chunks,
reward and PPO shard their batches); the main process writes the round's shared files, the
`iterate` metrics and `final/`, and runs the held-out evaluation alone (so its numbers are those
of a 1-process run), with a barrier wherever a process next reads what main wrote.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhfkit.config import ConfigError, ModelConfig, doc, section
from rlhfkit.data import read_jsonl, read_records, write_jsonl
from rlhfkit.evaluate import HeldOut, Judge, held_out, heldout_metrics
from rlhfkit.jobs import compare as compare_recipe
from rlhfkit.jobs.compare import CompareConfig
from rlhfkit.recipes import ppo as ppo_recipe
from rlhfkit.recipes import reward as reward_recipe
from rlhfkit.recipes.ppo import PPOConfig
from rlhfkit.recipes.reward import RewardConfig
from rlhfkit.train.processes import processes
from rlhfkit.train.run_dir import MetricsLog, RunDir, read_metrics


@dataclass(frozen=True)
class IterateEvalConfig:
    prompts: str | None = doc("auto", "held-out prompts sampled after every round; auto = lab:prompts_eval for lab models or "
                                      "prompts, else none; null = skip")
    examples: int = doc(128, "held-out prompts per evaluation")
    gold: Judge = doc("auto", "score held-out samples with the lab's gold judge: auto = for lab models or prompts; lab; none")
    seed: int = doc(4321, "sampling seed of the evaluation")


@dataclass(frozen=True)
class IterateConfig:
    policy: ModelConfig = section(ModelConfig, "the SFT policy: first sampler, first PPO start, and the KL reference in every round")
    rounds: int = doc(3, "R: label / RM / PPO rounds")
    label_budget: int = doc(384, "comparisons (ranked prompts) over all rounds; each round collects label_budget // rounds")
    prompts: str = doc("lab:prompts_train", "prompts to label; round r takes the r-th slice, so no prompt is labelled twice")
    rm_mode: Literal["retrain", "continue"] = doc("retrain", "RM each round: retrain from the SFT backbone, or start from the previous round's RM (a fresh head is drawn by the reward recipe)")
    compare: CompareConfig = section(CompareConfig, "comparison collection (policy, prompts, limit are set per round)")
    reward: RewardConfig = section(RewardConfig, "reward-model training (model and data.train are set per round)")
    ppo: PPOConfig = section(PPOConfig, "PPO in each round (model, ref_model and reward.source are set per round)")
    eval: IterateEvalConfig = section(IterateEvalConfig, "held-out evaluation after each round")


def round_configs(cfg: IterateConfig, r: int, out: Path, policy_path: str) -> tuple[CompareConfig, RewardConfig, PPOConfig]:
    """The three stage configs of round r (1-based): everything from `cfg`, plus the round's wiring."""
    rd = out / f"round-{r}"
    sampler = dataclasses.replace(cfg.policy, name_or_path=policy_path)
    cmp = dataclasses.replace(cfg.compare, policy=sampler, prompts=str(rd / "prompts.jsonl"), limit=0)
    rm_start = cfg.policy.name_or_path if cfg.rm_mode == "retrain" or r == 1 else str(out / f"round-{r - 1}" / "rm" / "final")
    rm = dataclasses.replace(
        cfg.reward,
        model=dataclasses.replace(cfg.reward.model, name_or_path=rm_start),
        data=dataclasses.replace(cfg.reward.data, train=str(rd / "all_comparisons.jsonl")),
        # reward 0 = a typical SFT answer in every round (and a previous RM cannot sample)
        normalize=dataclasses.replace(cfg.reward.normalize, policy=cfg.reward.normalize.policy or cfg.policy.name_or_path),
    )
    ppo = dataclasses.replace(
        cfg.ppo,
        model=dataclasses.replace(cfg.policy, name_or_path=policy_path),
        ref_model=cfg.policy.name_or_path,
        reward=dataclasses.replace(cfg.ppo.reward, source=str(rd / "rm" / "final")),
    )
    return cmp, rm, ppo


def _done(folder: Path) -> bool:
    return (folder / "final" / "run_complete.json").exists()


def run(cfg: IterateConfig, out: str | Path, resume: bool = False) -> Path:
    out = Path(out)
    if cfg.rounds < 1 or cfg.label_budget < cfg.rounds:
        raise ConfigError(f"config keys 'rounds', 'label_budget': need rounds >= 1 and label_budget >= rounds, "
                          f"got {cfg.rounds} rounds, {cfg.label_budget} labels")
    # Under several processes the stages run distributed; the main process alone writes the shared
    # files (and evaluates), and every process waits where it is about to read what main wrote.
    state = processes()
    main = state.is_main_process
    per_round = cfg.label_budget // cfg.rounds
    prompts = read_records(cfg.prompts, "prompt")
    if len(prompts) < per_round * cfg.rounds:
        raise ConfigError(f"config key 'prompts': {cfg.prompts} has {len(prompts)} prompts; {cfg.rounds} rounds x "
                          f"{per_round} labels need {per_round * cfg.rounds}; lower label_budget or add prompts")
    if resume:  # as every recipe's TrainSession: a changed config is refused before anything is written
        RunDir(out).check_resume(cfg)
    # Validated: a fresh run clears an older one here (its round-*/ folders included); a resumed one keeps it.
    RunDir(out, is_main=main).prepare(cfg, fresh=not resume)
    log = MetricsLog(out / "metrics.jsonl", "iterate", is_main=main)
    state.wait_for_everyone()
    logged = {row["step"] for row in read_metrics(out / "metrics.jsonl", "iterate")} if resume else set()
    heldout = held_out("iterate", cfg.policy.name_or_path, [cfg.prompts], judge=cfg.eval.gold, prompts=cfg.eval.prompts,
                       quiet=not main, keys={"judge": "eval.gold", "prompts": "eval.prompts"})

    policy_path = cfg.policy.name_or_path
    for r in range(1, cfg.rounds + 1):
        rd = out / f"round-{r}"
        cmp_cfg, rm_cfg, ppo_cfg = round_configs(cfg, r, out, policy_path)
        # 1. fresh prompts, the current policy's own responses, ranked by the annotator
        if main:
            rd.mkdir(exist_ok=True)
            write_jsonl(rd / "prompts.jsonl", prompts[(r - 1) * per_round : r * per_round])
        state.wait_for_everyone()
        compare_recipe.run(cmp_cfg, rd / "comparisons.jsonl", resume=resume)  # on resume: only what is missing
        # 2. all comparisons so far -> the round's RM
        merged = [row for k in range(1, r + 1) for row in read_jsonl(out / f"round-{k}" / "comparisons.jsonl")]
        if main:
            write_jsonl(rd / "all_comparisons.jsonl", merged)
        state.wait_for_everyone()
        if not (resume and _done(rd / "rm")):
            reward_recipe.run(rm_cfg, rd / "rm", resume=resume)
        # 3. PPO from the current policy against this round's RM
        if not (resume and _done(rd / "ppo")):
            ppo_recipe.run(ppo_cfg, rd / "ppo", resume=resume)
        policy_path = str(rd / "ppo" / "final")
        if r not in logged and main:  # one evaluation, by the main process, as in a 1-process run
            log.log(r, {"round/comparisons": len(merged), **_round_metrics(cfg, rd, policy_path, heldout)})
        state.wait_for_everyone()

    final = out / "final"
    if main:
        if final.exists():
            shutil.rmtree(final)
        shutil.copytree(policy_path, final)
    state.wait_for_everyone()
    return final


def _round_metrics(cfg: IterateConfig, rd: Path, policy_path: str, heldout: HeldOut) -> dict[str, float]:
    """The round's RM held-out accuracy, PPO's last logged step, and a held-out gold/KL evaluation."""
    metrics: dict[str, float] = {}
    summary = rd / "rm" / "final" / "run_complete.json"
    if summary.exists():
        done = json.loads(summary.read_text())
        for key in ("eval_accuracy", "gold_agreement"):  # held-out pairs: vs the annotator, vs gold (lab)
            if key in done:
                metrics[f"rm/{key}"] = done[key]
    rows = read_metrics(rd / "ppo" / "metrics.jsonl", "ppo")
    if rows:
        last = rows[-1]
        for k in ("reward/mean", "kl/mean", "gold/mean", "response/length"):
            if k in last:
                metrics[f"ppo/{k}"] = last[k]
    if heldout.prompts:
        metrics.update(evaluate_round(cfg, policy_path, heldout))
    return metrics


def evaluate_round(cfg: IterateConfig, policy_path: str, heldout: HeldOut) -> dict[str, float]:
    return heldout_metrics(policy_path, cfg.policy, heldout.prompts.spec, cfg.eval.examples, cfg.ppo.rollout, cfg.eval.seed,
                           gold=heldout.judge)
