"""`rlhfkit pipeline CONFIG.yaml`: one YAML runs the whole InstructGPT pipeline and its alternatives.

    base ─sft─> SFT ─compare─> comparisons ─reward─> RM ─ppo─> policy      (and dpo from comparisons)
                                                    └── eval: every model on the same held-out
                                                        prompts (gold, KL from SFT, perplexity),
                                                        frontier, samples ─> report.html

Each stage runs its recipe in `RUN/<stage name>/`. Inputs are wired from earlier stages (the SFT
model feeds compare, reward, ppo and dpo; compare's file feeds reward and dpo; the RM feeds
ppo), and the stage's own `config:` overrides anything wired. A stage whose folder holds
`stage_complete.json` is skipped on re-run; an interrupted stage resumes from its newest
checkpoint, so a pipeline killed anywhere finishes without redoing completed work.

Each stage records its resolved config (`stage_config.json` when it starts, and in
`stage_complete.json`). On re-run, a stage whose resolved config differs from the recorded one
starts again from scratch, and so does every later stage whose config names a folder of a stage
that ran again (its inputs changed); the pipeline prints which keys changed, or which input.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.config import ConfigError, doc, load_config, section, to_dict
from rlhfkit.data import read_jsonl
from rlhfkit.evaluate import Judge
from rlhfkit.train.run_dir import atomic_write_text

# Stage kinds: the verbs (verbs.VERBS: module, config class) a pipeline can run, the record sources
# each reads (lab ones make the run a lab run for the evaluation), and which produce a policy to
# evaluate. `eval` is built in (see evaluate_models).
DATA_KEYS = {"sft": ("data.train", "data.eval"), "compare": ("prompts",), "thumbs": ("prompts",),
             "reward": ("data.train", "data.eval"), "ppo": ("data.prompts",), "grpo": ("data.prompts",),
             "rloo": ("data.prompts",), "dpo": ("data.train", "data.eval"), "kto": ("data.train", "data.eval"),
             "orpo": ("data.train", "data.eval"), "iterate": ("prompts",)}
RECIPES = tuple(DATA_KEYS)
POLICY_RECIPES = {"sft", "ppo", "grpo", "rloo", "dpo", "kto", "orpo", "iterate"}  # stages whose final/ is a policy to evaluate
DATA_FILES = {"compare", "thumbs"}  # stages whose output is a records file, not a final/ folder
ONLINE = {"ppo", "grpo", "rloo"}


@dataclass(frozen=True)
class StageConfig:
    name: str = doc("sft", "stage name: its sub-folder of the run folder and its label in the report")
    recipe: str | None = doc(None, "what the stage runs: sft, compare, thumbs, reward, ppo, grpo, rloo, dpo, kto, orpo, "
                                   "iterate, eval; null = the name")
    config: dict[str, Any] = doc({}, "overrides of the recipe's config (fields as its --print-config shows)")

    @property
    def kind(self) -> str:
        return self.recipe or self.name


@dataclass(frozen=True)
class EvalConfig:
    prompts: str | None = doc("auto", "held-out prompts every model answers; auto = lab:prompts_eval when the base model or a "
                                      "stage's data is the lab's, else the prompts of the sft stage's data.eval; null = none")
    num_prompts: int = doc(128, "how many of them")
    max_new_tokens: int = doc(48, "response length limit")
    text: str | None = doc("auto", "held-out text for perplexity; auto = lab:pretrain_eval for lab runs, else the responses "
                                   "of the sft stage's data.eval; null = none")
    text_examples: int = doc(128, "held-out text examples")
    gold: Judge = doc("auto", "score responses with the lab's gold judge: auto = for lab runs; lab; none")
    best_of_n: list[int] = doc([1, 4, 16], "best-of-n baselines (gold reward, from SFT) for the frontier; [] = none")
    show_samples: int = doc(8, "prompts whose responses the report shows side by side")
    seed: int = doc(0, "sampling seed")


@dataclass(frozen=True)
class PipelineConfig:
    model: str = doc("lab", "base model: HF hub name or local folder; 'lab' = the built-in lab")
    stages: list[StageConfig] = doc(
        [StageConfig("sft"), StageConfig("compare"), StageConfig("reward"), StageConfig("ppo"), StageConfig("dpo"),
         StageConfig("eval")],
        "stages in order",
    )
    eval: EvalConfig = section(EvalConfig, "the final evaluation of every policy")
    report: bool = doc(True, "write report.html at the end")
    threads: int | None = doc(None, "torch CPU threads for the whole pipeline; null = torch's choice. --threads or "
                              "$RLHFKIT_THREADS win over it. Tiny models (the lab) run several times faster with 1 "
                              "on a shared CPU")


def wiring(kind: str, base: str, done: dict[str, Path]) -> dict[str, Any]:
    """Default inputs of a stage from the outputs of earlier ones (the newest of each kind)."""
    sft = str(done["sft"]) if "sft" in done else base
    comparisons = str(done["compare"]) if "compare" in done else None
    feedback = str(done["thumbs"]) if "thumbs" in done else comparisons  # KTO reads comparisons as best/worst
    if kind == "sft":
        return {"model": {"name_or_path": base}}
    if kind in ("compare", "thumbs"):
        return {"policy": {"name_or_path": sft}}
    if kind == "reward":
        return {"model": {"name_or_path": sft}, **({"data": {"train": comparisons}} if comparisons else {})}
    if kind in ONLINE:
        return {"model": {"name_or_path": sft}, **({"reward": {"source": str(done["reward"])}} if "reward" in done else {})}
    if kind == "dpo":
        return {"model": {"name_or_path": sft}, **({"data": {"train": comparisons}} if comparisons else {})}
    if kind == "kto":
        return {"model": {"name_or_path": sft}, **({"data": {"train": feedback}} if feedback else {})}
    if kind == "orpo":  # ORPO needs no SFT stage: it starts from the base model
        return {"model": {"name_or_path": base}, **({"data": {"train": comparisons}} if comparisons else {})}
    if kind == "iterate":
        return {}
    raise ConfigError(f"unknown recipe '{kind}' in pipeline stages; expected one of {sorted(RECIPES) + ['eval']}")


def stage_config(stage: StageConfig, base: str, done: dict[str, Path]):
    from rlhfkit.verbs import VERBS, config_class

    verb = VERBS[stage.kind]
    tree = _merge(wiring(stage.kind, base, done), stage.config)
    try:
        return importlib.import_module(verb.module), load_config(config_class(verb), None, (), base=tree)
    except ConfigError as e:
        raise ConfigError(f"stage '{stage.name}': {e}") from None


def output_of(kind: str, folder: Path, returned: Path) -> Path:
    """What later stages consume: the records file for compare and thumbs, final/ for the rest."""
    return Path(returned) if kind in DATA_FILES else folder / "final"


def run(cfg: PipelineConfig, out: str | Path, resume: bool = True) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check(cfg)
    if cfg.threads and not os.environ.get("RLHFKIT_THREADS"):
        import torch

        torch.set_num_threads(cfg.threads)
    atomic_write_text(out / "pipeline.json", json.dumps(to_dict(cfg), indent=2))
    base = cfg.model
    if base == "lab":
        from rlhfkit.lab import ensure_lab

        ensure_lab()
    done: dict[str, Path] = {}  # recipe kind -> newest output
    policies: dict[str, Path] = {}  # stage name -> policy folder, for evaluation
    ran: list[Path] = []  # folders of the stages run in this invocation: their outputs are new
    data: list[str] = []  # record sources the stages read
    own_eval = None  # the sft stage's held-out demonstrations: the evaluation's own data off the lab
    for stage in cfg.stages:
        folder = out / stage.name
        marker = folder / "stage_complete.json"
        if stage.kind == "eval":
            evaluate_models(cfg.eval, base, policies, out, data, own_eval)
            continue
        module, stage_cfg = stage_config(stage, base, done)
        resolved = json.loads(json.dumps(to_dict(stage_cfg)))
        data += [v for k in DATA_KEYS[stage.kind] if isinstance(v := _flat(resolved).get(k), str)]
        own_eval = resolved["data"]["eval"] if stage.kind == "sft" else own_eval
        why = rerun_reason(folder, resolved, ran)
        if marker.exists() and why is None:
            print(f"[pipeline] {stage.name}: complete, skipped")
            produced = Path(json.loads(marker.read_text())["output"])
        else:
            if why or (folder.exists() and not resume):
                print(f"[pipeline] {stage.name}: {why or 'not resuming (--fresh)'}; starting it from scratch")
                shutil.rmtree(folder)
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / "stage_config.json", json.dumps({"config": resolved}, indent=1))
            print(f"[pipeline] {stage.name}: running {stage.kind} -> {folder}")
            t = time.time()
            returned = module.run(stage_cfg, folder, resume=resume)
            produced = output_of(stage.kind, folder, returned)
            atomic_write_text(marker, json.dumps({"stage": stage.name, "recipe": stage.kind, "output": str(produced),
                                                  "seconds": round(time.time() - t, 1), "config": resolved}))
            ran.append(folder)
        done[stage.kind] = produced
        if stage.kind in POLICY_RECIPES:
            policies[stage.name] = produced
    if cfg.report:
        from rlhfkit.monitor.report import write_report

        print(f"[pipeline] report: {write_report(out)}")
    print_summary(out)
    return out


def rerun_reason(folder: Path, resolved: dict, ran: list[Path]) -> str | None:
    """Why a stage that ran before in `folder` must start again: its resolved config differs from
    the one it recorded (the changed keys), or its config names a folder of a stage that ran again
    in this invocation (`ran`). None: it may be skipped (complete) or resumed (interrupted).
    A marker from a version that recorded no config counts as unchanged."""
    recorded = next((json.loads(f.read_text()).get("config") for f in (folder / "stage_complete.json",
                                                                      folder / "stage_config.json") if f.exists()), None)
    if recorded is not None:
        before, now = _flat(recorded), _flat(resolved)
        changed = [k for k in now if k in before and before[k] != now[k]]
        if changed:
            return "config changed since it ran (" + ", ".join(f"{k}: {before[k]!r} -> {now[k]!r}" for k in changed) + ")"
    inputs = [f.name for f in ran if any(v == str(f) or v.startswith(str(f) + os.sep)
                                         for v in _flat(resolved).values() if isinstance(v, str))]
    if inputs and folder.exists():
        return f"its input stage {', '.join(inputs)} ran again"
    return None


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check(cfg: PipelineConfig) -> None:
    names = [s.name for s in cfg.stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"pipeline stage names must be unique, got {names}")
    for name in names:  # each is a sub-folder the pipeline may delete and recreate
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise ConfigError(f"pipeline stage name {name!r}: expected a plain folder name")
    for s in cfg.stages:
        if s.kind != "eval" and s.kind not in RECIPES:
            raise ConfigError(f"stage '{s.name}': unknown recipe '{s.kind}'; expected one of {sorted(RECIPES) + ['eval']}")


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ----------------------------------------------------------------------------- evaluation


def evaluate_models(cfg: EvalConfig, base: str, policies: dict[str, Path], out: Path, data: list[str] = (),
                    own: str | None = None) -> dict:
    """Every policy on the same prompts: gold, KL from the SFT model, perplexity, samples.

    Writes summary.json (metrics per model, with what they were measured on), frontier.json (gold
    vs KL per method, best-of-n included) and samples.json (the same prompts answered by each
    model), which the report reads. `data`: the record sources the stages read; `own`: the sft
    stage's held-out demonstrations, measured on when neither the base model nor the data are the lab's.
    """
    from rlhfkit.config import ModelConfig
    from rlhfkit.data import encode_demonstration, read_records
    from rlhfkit.evaluate import evaluate_policy, held_out, text_features
    from rlhfkit.models.loading import load_policy, load_tokenizer
    from rlhfkit.rollout import SamplingParams

    heldout = held_out("eval", base, data, judge=cfg.gold, prompts=cfg.prompts, text=cfg.text,
                       own_prompts=own and f"prompts of held-out demonstrations {own}",
                       own_text=own and f"responses of held-out demonstrations {own}",
                       keys={"judge": "eval.gold", "prompts": "eval.prompts", "text": "eval.text"})
    if not (heldout.prompts or heldout.text):
        print("[eval] no held-out prompts or text to evaluate on: skipped")
        return {}
    models = {"base": base, **{name: str(p) for name, p in policies.items()}}
    ref_name = "sft" if "sft" in models else "base"
    ref_cfg = ModelConfig(name_or_path=models[ref_name])
    ref, tokenizer = load_policy(ref_cfg), load_tokenizer(ref_cfg)
    demos = read_records(own, "demonstration") if own else []
    prompts = [] if not heldout.prompts else (
        read_records(heldout.prompts.spec, "prompt") if heldout.prompts.spec else demos)[: cfg.num_prompts]
    text = None if not heldout.text else (
        text_features(tokenizer, heldout.text.spec, limit=cfg.text_examples) if heldout.text.spec
        else [encode_demonstration(tokenizer, d, 256) for d in demos[: cfg.text_examples]])  # response tokens scored
    gold = heldout.judge is not None
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=1.0)
    summary, answers = {}, {}
    for name, path in models.items():
        mcfg = ModelConfig(name_or_path=path)
        model = ref if name == ref_name else load_policy(mcfg)
        metrics, rows = evaluate_policy(model, load_tokenizer(mcfg), prompts, params, text, judge=heldout.judge,
                                        seed=cfg.seed, ref=ref)
        summary[name], answers[name] = {**metrics, **heldout.provenance()}, rows
        print(f"[eval] {name}: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
    frontier = [{"method": _method(n), "label": n, "kl": m["kl/mean"], "gold": m.get("gold/mean")}
                for n, m in summary.items() if n != "base" and "kl/mean" in m]
    if gold and prompts and cfg.best_of_n:
        frontier += _best_of_n_points(cfg, ref, tokenizer, prompts, params)
    samples = [{"prompt": p.prompt, "responses": {n: answers[n][i]["response"] for n in answers},
                **({"gold": {n: answers[n][i]["gold"] for n in answers}} if gold else {})}
               for i, p in enumerate(prompts[: cfg.show_samples])]
    for name, obj in [("summary.json", summary), ("frontier.json", frontier), ("samples.json", samples)]:
        atomic_write_text(out / name, json.dumps(obj, indent=2))
    return summary


def _method(stage_name: str) -> str:
    return stage_name.split("_")[0].split("-")[0]


def _best_of_n_points(cfg: EvalConfig, policy, tokenizer, records: list, params) -> list[dict]:
    from rlhfkit.jobs.best_of_n import best_of_n, best_of_n_kl
    from rlhfkit.rewards import build_reward

    gold = build_reward("lab:gold")
    points = []
    for n in cfg.best_of_n:
        rows = best_of_n(policy, tokenizer, records, n, gold, params, seed=cfg.seed + n, judge=gold)
        points.append({"method": "best-of-n", "label": f"n={n}", "kl": best_of_n_kl(n),
                       "gold": sum(r["gold"] for r in rows) / max(len(rows), 1)})
    return points


def print_summary(out: Path) -> None:
    """One screen: each model's gold, KL and perplexity, the alarms, where the report is."""
    summary_file = out / "summary.json"
    if not summary_file.exists():
        return
    summary = json.loads(summary_file.read_text())
    keys = ["gold/mean", "kl/mean", "eval/perplexity", "response/length", "response/eos_rate"]
    print("\n" + "model".ljust(14) + "".join(k.rjust(18) for k in keys))
    for name, m in summary.items():
        print(name.ljust(14) + "".join(f"{m.get(k, float('nan')):18.3f}" for k in keys))
    on = {k: v for m in summary.values() for k, v in m.items() if isinstance(v, str)}
    if on:
        print("measured on: " + ", ".join(f"{k}={v}" for k, v in on.items()))
    for alarms in sorted(out.glob("*/alarms.jsonl")):
        for a in read_jsonl(alarms, torn_tail="skip"):
            print(f"[alarm] {alarms.parent.name} step {a['step']}: {a['name']}: {a['message']}")
    if (out / "report.html").exists():
        print(f"\nreport: {out / 'report.html'}")
