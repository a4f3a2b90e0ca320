"""`rlhfkit demo`: the whole pipeline on the lab default.

The demo is `demo.yaml` beside this file: SFT, comparisons from the simulated annotators, a reward
model, PPO with a tuned KL penalty, PPO with beta = 0 (to show over-optimisation and the alarm that
catches it), DPO, then an evaluation of every model and the report.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from rlhfkit.pipeline import stages
from rlhfkit.pipeline.stages import PipelineConfig

CONFIG_FILE = "demo.yaml"


def demo_config_path() -> Path:
    return Path(str(resources.files("rlhfkit.pipeline") / CONFIG_FILE))


def run(cfg: PipelineConfig, out: str | Path, resume: bool = True) -> Path:
    """The pipeline runner on the demo's config (the CLI reads `demo.yaml` under any --config/--set)."""
    return stages.run(cfg, out, resume)
