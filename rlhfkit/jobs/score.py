"""`rlhfkit score`: score responses with a trained reward model or ensemble.

Input, whichever shape the records have: demonstrations `{"prompt", "response"}` (or `messages`),
samples `{"prompt", "responses"}` (what `rlhfkit sample` writes), or comparisons (every response is
scored). Output JSONL, one line per input record, the record plus:

    one response:  "reward" (normalised, aggregated); ensembles add "reward_members", "reward_std"
    several:       "rewards" (one per response); ensembles add "reward_members" (M lists), "reward_std"
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhfkit.config import ConfigError, doc
from rlhfkit.data import DataError, PromptRecord, read_records, write_jsonl
from rlhfkit.models.reward import load_reward_model


@dataclass(frozen=True)
class ScoreConfig:
    rm: str = doc("", "reward model (or ensemble) folder")
    data: str = doc("", "records to score: {prompt, response}, {prompt, responses} or comparisons (file, dataset folder, lab:NAME)")
    aggregation: Literal["mean", "min", "uwo"] = doc("mean", "how an ensemble's members combine")
    uwo_lambda: float = doc(1.0, "uwo: mean - lambda * variance across members")
    batch_size: int = doc(64, "responses per forward")
    raw: bool = doc(False, "report raw rewards (ignore the stored normalisation)")


def read_scorable(source) -> tuple[str, list]:
    """("demonstration" | "comparison" | "samples", records): whichever shape the records have."""
    errors = []
    for kind in ("demonstration", "comparison", "samples"):
        try:
            return kind, read_records(source, kind)
        except DataError as e:
            errors.append(e)
    raise errors[0] from None


def run(cfg: ScoreConfig, out: str | Path, resume: bool = False, device=None) -> Path:
    for key in ("rm", "data"):
        if not getattr(cfg, key):
            raise ConfigError(f"score needs --{key} (config key '{key}')")
    model = load_reward_model(cfg.rm, device=device, aggregation=cfg.aggregation, uwo_lambda=cfg.uwo_lambda,
                              normalize=not cfg.raw)
    kind, records = read_scorable(cfg.data)
    if kind == "demonstration":
        prompts = [r.prompt if r.messages is None else PromptRecord(r.prompt, r.prompt_messages) for r in records]
        responses = [r.response for r in records]
    else:
        # comparisons and samples: the prompt as a PromptRecord (with its messages), one per response
        prompts = [PromptRecord(r.prompt, r.prompt_messages) for r in records for _ in r.responses]
        responses = [x for r in records for x in r.responses]
    scores = model.score(prompts, responses, batch_size=cfg.batch_size)
    ensemble = model.num_members > 1
    rows, at = [], 0
    for r in records:
        row = r.to_json()
        n = 1 if kind == "demonstration" else len(r.responses)
        sl = slice(at, at + n)
        if kind == "demonstration":
            row["reward"] = scores.rewards[at].item()
            if ensemble:
                row["reward_members"] = scores.members[:, at].tolist()
                row["reward_std"] = scores.std[at].item()
        else:
            row["rewards"] = scores.rewards[sl].tolist()
            if ensemble:
                row["reward_members"] = scores.members[:, sl].tolist()
                row["reward_std"] = scores.std[sl].tolist()
        rows.append(row)
        at += n
    write_jsonl(out, rows)
    summary = {"records": len(rows), "scored": len(responses), "reward_mean": scores.rewards.mean().item(),
               "members": model.num_members, "aggregation": cfg.aggregation, "out": str(out)}
    print(json.dumps(summary))
    return Path(out)
