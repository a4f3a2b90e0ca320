"""Reward-model ensembles: members on disk with a manifest, and how their rewards are combined.

    final/
      ensemble.json        {"format": "rlhfkit-reward-ensemble", "members": ["member-0", ...],
                            "seeds": [...], "bootstrap": false, ...}
      member-0/ ...        each a complete single-RM folder (HF classifier + normalisation)
      tokenizer files      shared by all members

Members differ in seed (head init and data order) and optionally in a bootstrap resample of
the comparisons. Aggregations over the M members' normalised rewards R (M, N) (Coste et al.
2023, "Reward Model Ensembles Help Mitigate Overoptimization", §3):

    mean:  mean_m R_m
    min:   min_m R_m                        (worst-case optimisation, WCO)
    uwo:   mean_m R_m − λ · var_m R_m       (uncertainty-weighted optimisation; population var)

With one member all three equal that member's reward exactly (var = 0).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

MANIFEST = "ensemble.json"
FORMAT = "rlhfkit-reward-ensemble"


def _mean(r: torch.Tensor, lam: float) -> torch.Tensor:
    return r.mean(0)


def _min(r: torch.Tensor, lam: float) -> torch.Tensor:
    return r.min(0).values


def _uwo(r: torch.Tensor, lam: float) -> torch.Tensor:
    return r.mean(0) - lam * r.var(0, correction=0)


AGGREGATIONS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {"mean": _mean, "min": _min, "uwo": _uwo}


def aggregate_members(rewards: torch.Tensor, how: str = "mean", uwo_lambda: float = 1.0) -> torch.Tensor:
    """Combine per-member rewards (M, N) into one reward per row (N,)."""
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; expected one of {', '.join(AGGREGATIONS)}")
    return AGGREGATIONS[how](rewards, uwo_lambda)


def write_ensemble(folder: Path, member_folders: Sequence[Path], tokenizer, info: dict | None = None) -> Path:
    """Copy complete member folders under `folder` as member-i/ and write the manifest last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, src in enumerate(member_folders):
        name = f"member-{i}"
        shutil.copytree(src, folder / name, dirs_exist_ok=True)
        names.append(name)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    manifest = {"format": FORMAT, "members": names, **(info or {})}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return folder


def read_manifest(folder: Path) -> dict:
    data = json.loads((Path(folder) / MANIFEST).read_text())
    if data.get("format") != FORMAT or not data.get("members"):
        raise ValueError(f"{folder / MANIFEST}: not an rlhfkit reward ensemble manifest")
    for name in data["members"]:
        if not (Path(folder) / name / "config.json").exists():
            raise FileNotFoundError(f"{folder}: ensemble member {name!r} is missing")
    return data
