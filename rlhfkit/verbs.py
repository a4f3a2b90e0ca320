"""The one registry of verbs, read by the CLI (`rlhfkit <verb>`) and the pipeline (stage kinds).

Every verb with a config (training recipes, data jobs, orchestration) is `module.run(cfg, out,
resume) -> Path` with a typed config class, so it takes `--config`, `--set`, `--print-config`,
`--out` and `--resume` alike; `flags` are shortcuts for config keys (`rlhfkit sample --k 4` is
`--set k=4`). Tools (`lab`, `report`, `agreement`) read or build things and take plain arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["train", "data", "pipeline", "tool"]
KIND_TITLES = {"train": "train a model", "data": "make or score data", "pipeline": "run several stages",
               "tool": "tools"}


@dataclass(frozen=True)
class Flag:
    """`--name VALUE` setting config key `key` (a bool flag sets it to true)."""

    name: str
    key: str
    help: str
    type: type = str
    required: bool = False


@dataclass(frozen=True)
class Verb:
    name: str
    kind: Kind
    summary: str  # one line, in the user's words, for `rlhfkit --help`
    module: str  # its `run(cfg, out, resume)` (tools: `main(args)`)
    config: str | None = None  # the config class in `module`
    out: str | None = None  # default --out; None = required (data jobs name their output)
    run_folder: bool = False  # --out is a run folder ending in final/: --overwrite, finished-run checks
    flags: tuple[Flag, ...] = ()
    default_config: str | None = None  # a packaged YAML used when the user names none (pipeline: the demo's)
    base_config: str | None = None  # a packaged YAML under the user's --config and --set (demo)
    positional_config: bool = False  # `rlhfkit pipeline my.yaml`: the YAML may come first, without --config
    resumes: bool = False  # continues what --out holds unless --fresh (the pipeline skips finished stages)


_SAMPLING = (
    Flag("--max-new-tokens", "sampling.max_new_tokens", "response length limit", int),
    Flag("--temperature", "sampling.temperature", "sampling temperature", float),
    Flag("--top-p", "sampling.top_p", "nucleus sampling threshold (1 = off)", float),
    Flag("--seed", "sampling.seed", "sampling seed", int),
    Flag("--trust-remote-code", "model.trust_remote_code", "allow model code from the hub", bool),
)

VERBS: dict[str, Verb] = {v.name: v for v in (
    Verb("sft", "train", "supervised fine-tuning on demonstrations (prompt masked from the loss)",
         "rlhfkit.recipes.sft", "SFTConfig", "runs/sft", run_folder=True),
    Verb("reward", "train", "a reward model (or an ensemble) from ranked comparisons, Bradley-Terry on all pairs",
         "rlhfkit.recipes.reward", "RewardConfig", "runs/reward", run_folder=True,
         flags=(Flag("--ensemble", "ensemble.members", "train N reward models (seeds differ)", int),)),
    Verb("dpo", "train", "preference tuning straight from comparisons: DPO, IPO, cDPO, hinge, SimPO, ORPO",
         "rlhfkit.recipes.dpo", "DPOConfig", "runs/dpo", run_folder=True),
    Verb("kto", "train", "preference tuning from thumbs up/down on single responses (KTO), or from comparisons",
         "rlhfkit.recipes.kto", "KTOConfig", "runs/kto", run_folder=True),
    Verb("orpo", "train", "preference tuning without a reference model or SFT stage: NLL + odds ratio (ORPO)",
         "rlhfkit.recipes.orpo", "ORPOConfig", "runs/orpo", run_folder=True),
    Verb("ppo", "train", "PPO with a critic against a reward, KL penalty to the SFT model",
         "rlhfkit.recipes.ppo", "PPOConfig", "runs/ppo", run_folder=True),
    Verb("grpo", "train", "GRPO (or Dr. GRPO): group-relative advantages, no critic; verifiable rewards welcome",
         "rlhfkit.recipes.grpo", "GRPOConfig", "runs/grpo", run_folder=True),
    Verb("rloo", "train", "RLOO (or REINFORCE++): leave-one-out baseline, no critic",
         "rlhfkit.recipes.rloo", "RLOOConfig", "runs/rloo", run_folder=True),
    Verb("compare", "data", "sample K responses per prompt and have them ranked (simulated, AI judge or custom)",
         "rlhfkit.jobs.compare", "CompareConfig", "runs/compare"),
    Verb("thumbs", "data", "sample K responses per prompt and have each given thumbs up/down (simulated or custom), for KTO",
         "rlhfkit.jobs.thumbs", "ThumbsConfig", "runs/thumbs"),
    Verb("judge", "data", "rank sampled responses with an AI judge (Constitutional AI feedback)",
         "rlhfkit.jobs.judge", "JudgeConfig", "runs/judge"),
    Verb("cai", "data", "Constitutional AI, supervised stage: critique and revise responses into SFT data",
         "rlhfkit.jobs.cai", "CAIConfig", "runs/cai"),
    Verb("sample", "data", "write K samples per prompt from a model (to label, judge or score)",
         "rlhfkit.jobs.sample", "SampleConfig",
         flags=(Flag("--model", "model.name_or_path", "model to sample (HF name or folder)"),
                Flag("--prompts", "prompts", "prompt records (file, dataset folder, lab:NAME)"),
                Flag("--k", "k", "samples per prompt", int),
                Flag("--limit", "limit", "use only the first N prompts (0 = all)", int), *_SAMPLING)),
    Verb("eval", "data", "measure a model on held-out prompts and text: perplexity, length, EOS rate, lab gold score",
         "rlhfkit.jobs.evaluation", "EvalConfig", out="",
         flags=(Flag("--model", "model.name_or_path", "model to evaluate (HF name or folder)"),
                Flag("--prompts", "prompts", "prompt records to sample"),
                Flag("--text", "text", "held-out text records for perplexity"),
                Flag("--limit", "limit", "prompts and texts used (0 = all)", int),
                Flag("--gold", "gold", "score samples with the lab's gold judge: auto, lab, none"), *_SAMPLING)),
    Verb("best-of-n", "data", "sample n responses per prompt and keep the one a reward scores highest (a baseline, or SFT data)",
         "rlhfkit.jobs.best_of_n", "BestOfNConfig",
         flags=(Flag("--model", "model.name_or_path", "policy to sample (HF name or folder)"),
                Flag("--prompts", "prompts", "prompt records"),
                Flag("--n", "n", "samples per prompt", int),
                Flag("--reward", "reward", "RM or ensemble folder, lab:gold, module:function or file.py:function"),
                Flag("--aggregation", "aggregation", "how ensemble members combine: mean, min, uwo"),
                Flag("--limit", "limit", "use only the first N prompts (0 = all)", int),
                Flag("--gold", "gold", "also report the lab's gold of the kept responses: auto, lab, none"),
                *_SAMPLING)),
    Verb("score", "data", "score responses with a reward model or ensemble",
         "rlhfkit.jobs.score", "ScoreConfig",
         flags=(Flag("--rm", "rm", "reward model (or ensemble) folder"),
                Flag("--data", "data", "{prompt, response}, {prompt, responses} or comparison records"),
                Flag("--aggregation", "aggregation", "ensemble aggregation: mean, min, uwo"),
                Flag("--uwo-lambda", "uwo_lambda", "uwo: mean - lambda * variance across members", float),
                Flag("--batch-size", "batch_size", "responses per forward", int),
                Flag("--raw", "raw", "raw rewards (ignore the stored normalisation)", bool))),
    Verb("label", "data", "a local web page where people rank responses, or give thumbs up/down",
         "rlhfkit.jobs.label", "LabelConfig",
         flags=(Flag("--samples", "samples", "{prompt, responses} records to label (e.g. rlhfkit sample --k 4)"),
                Flag("--mode", "mode", "rank (order K responses) or thumbs (one response, up or down)"),
                Flag("--host", "host", "interface to bind (default localhost only)"),
                Flag("--port", "port", "port", int),
                Flag("--token", "token", "access token the API requires (generated when binding beyond localhost)"),
                Flag("--overlap", "overlap", "share of items given to several annotators (for agreement)", float),
                Flag("--overlap-annotators", "overlap_annotators", "annotators per overlapping item", int),
                Flag("--seed", "seed", "seeds which items overlap and the display shuffles", int),
                Flag("--verbose", "verbose", "log every HTTP request", bool))),
    Verb("pipeline", "pipeline", "every stage from one YAML: sft, compare, reward, ppo/grpo/dpo, eval, report",
         "rlhfkit.pipeline.stages", "PipelineConfig", "runs/pipeline", default_config="demo.yaml",
         positional_config=True, resumes=True),
    Verb("demo", "pipeline", "the whole pipeline on the built-in lab, with its report (make demo)",
         "rlhfkit.pipeline.demo", "PipelineConfig", "runs/demo", base_config="demo.yaml", resumes=True),
    Verb("iterate", "pipeline", "iterative RLHF: PPO, new comparisons on the policy's samples, retrain the RM; R rounds",
         "rlhfkit.pipeline.iterate", "IterateConfig", "runs/iterate", run_folder=True),
    Verb("lab", "tool", "build the built-in lab: a tiny base model, its corpus and the gold judge that scores it", "rlhfkit.lab"),
    Verb("report", "tool", "the HTML report of a run or pipeline folder: curves, alarms, frontier, samples",
         "rlhfkit.monitor.report"),
    Verb("agreement", "tool", "inter-annotator agreement of a labels file (rankings or thumbs)",
         "rlhfkit.feedback.agreement"),
)}


def config_class(verb: Verb) -> type:
    import importlib

    return getattr(importlib.import_module(verb.module), verb.config)
