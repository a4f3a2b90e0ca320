"""ORPO: preference tuning without a reference model or an SFT stage (Hong et al. 2024, "ORPO:
Monolithic Preference Optimization without Reference Model").

    pairs  <- every comparison's (winner, loser) pairs, as DPO reads them
    for each step: global batch of pairs -> shard per process -> micro-batches
        one packed forward over [chosen_1..m, rejected_1..m]   (no reference pass: none exists)
        log p(y|x) = mean token log-prob;  log odds = log p - log(1 - p)
        loss = NLL(chosen tokens) / (chosen tokens in the global batch)
               + lambda * sum over pairs of -log sigma(log odds(chosen) - log odds(rejected)) / (pairs in it)
        backward (accumulate), clip, AdamW step, schedule step

The loop is DPO's (`recipes.dpo.run` with `loss_type: orpo`): packing, LoRA, accelerate, resume,
live alarms and the report are the same; these are ORPO's defaults. Only one model is ever in
memory, so the sampling evaluation reports gold/mean, length and perplexity but no kl/mean;
measure KL afterwards against the model you compare with (the pipeline's eval stage does).
ORPO starts from the base model: the NLL term does SFT's work on the chosen responses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import doc, section
from rlhfkit.losses.dpo import DPO_LOSSES
from rlhfkit.monitor.alarms import MonitorConfig
from rlhfkit.recipes import dpo
from rlhfkit.recipes.dpo import DPOConfig, LossType


@dataclass(frozen=True)
class ORPOConfig(DPOConfig):
    """DPO's config with ORPO's defaults: loss_type orpo, orpo_lambda 0.1 (the paper's and TRL's).
    beta, ref_model, label_smoothing and simpo_gamma do not apply to ORPO: setting one is a config
    error (`recipes.dpo.check_options`) unless loss_type names a DPO loss that reads it."""

    loss_type: LossType = doc("orpo", f"orpo; a DPO loss_type ({', '.join(DPO_LOSSES)}) runs that loss instead, "
                                      "with beta and ref_model")
    monitor: MonitorConfig = section(MonitorConfig, "reward-hacking alarms during training and what they do",
                                     proxy_key="rewards/margin",
                                     helps={"proxy_key": "the optimised (proxy) reward metric: ORPO's log odds ratio, "
                                                         "log odds(chosen) - log odds(rejected)"})


def run(cfg: ORPOConfig, out: str | Path, resume: bool = False) -> Path:
    return dpo.run(cfg, out, resume, stage="orpo")
