"""`rlhfkit eval`: held-out perplexity, response length, EOS rate and (lab) gold of any causal LM.

What it is measured on is decided by `evaluate.held_out` (the lab's prompts, text and gold judge
only for the lab's models, or when named) and written beside the numbers. Runs on the main
process; under `accelerate launch` the others wait and receive its metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import ConfigError, ModelConfig, doc, section
from rlhfkit.data import read_records
from rlhfkit.evaluate import Judge, evaluate_policy, held_out, text_features
from rlhfkit.jobs.sample import SamplingConfig
from rlhfkit.models.loading import load_policy, load_tokenizer
from rlhfkit.train.processes import on_main_process


@dataclass(frozen=True)
class EvalConfig:
    model: ModelConfig = section(ModelConfig, "model to evaluate")
    prompts: str | None = doc("auto", "prompt records to sample; auto = lab:prompts_eval for the lab's models, else name them; null or '' = none")
    text: str | None = doc("auto", "held-out text records for perplexity; auto = lab:pretrain_eval for the lab's models, else name them; null or '' = none")
    limit: int = doc(256, "prompts and text records used; 0 = all")
    gold: Judge = doc("auto", "score samples with the lab's gold judge: auto = for the lab's models and prompts; lab; none")
    sampling: SamplingConfig = section(SamplingConfig, "sampling")


def run(cfg: EvalConfig, out: str | Path | None = None, resume: bool = False) -> dict:
    """The metrics (printed; with `out`, written there as JSON with the samples and what each number
    was measured on)."""
    return on_main_process(_evaluate, cfg, out)


def _evaluate(cfg: EvalConfig, out: str | Path | None) -> dict:
    name = cfg.model.name_or_path
    heldout = held_out("eval", name, [cfg.prompts, cfg.text], judge=cfg.gold, prompts=cfg.prompts or None,
                       text=cfg.text or None, keys={"judge": "--gold", "prompts": "--prompts", "text": "--text"})
    if not (heldout.prompts or heldout.text):
        raise ConfigError("nothing to evaluate: name --prompts and/or --text (auto = the lab's, for the lab's models only)")
    model, tokenizer = load_policy(cfg.model), load_tokenizer(cfg.model)
    prompts = read_records(heldout.prompts.spec, "prompt")[: cfg.limit or None] if heldout.prompts else []
    text_feats = text_features(tokenizer, heldout.text.spec, limit=cfg.limit or None) if heldout.text else None
    metrics, rows = evaluate_policy(model, tokenizer, prompts, cfg.sampling.params(), text_feats,
                                    judge=heldout.judge, seed=cfg.sampling.seed)
    print(json.dumps(metrics, indent=2))
    if out:
        Path(out).write_text(json.dumps({"model": name, "metrics": metrics, "measured_on": heldout.provenance(),
                                         "samples": rows}, indent=2))
    return metrics
