"""`rlhfkit score`: score (prompt, response) records with a trained reward model or ensemble.

Input: demonstration-shaped records `{"prompt", "response"}` (or `messages`), or comparison
records (every response is scored). Output JSONL, one line per input record, the record plus:

    demonstrations: "reward" (normalised, aggregated), and for ensembles "reward_members", "reward_std"
    comparisons:    "rewards" (one per response), and for ensembles "reward_members" (M lists), "reward_std"
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhfkit.data import DataError, read_records, write_jsonl
from rlhfkit.models.reward import load_reward_model


def read_scorable(source) -> tuple[str, list]:
    """("demonstration" | "comparison", records): whichever shape the file has."""
    try:
        return "demonstration", read_records(source, "demonstration")
    except DataError as first:
        try:
            return "comparison", read_records(source, "comparison")
        except DataError:
            raise first from None


def score_file(rm: str | Path, data, out: str | Path, aggregation: str = "mean", uwo_lambda: float = 1.0,
               batch_size: int = 64, raw: bool = False, device=None) -> Path:
    model = load_reward_model(rm, device=device, aggregation=aggregation, uwo_lambda=uwo_lambda, normalize=not raw)
    kind, records = read_scorable(data)
    if kind == "demonstration":
        prompts = [r.prompt if r.messages is None else _prompt_only(r) for r in records]
        responses = [r.response for r in records]
    else:
        prompts = [r for r in records for _ in r.responses]
        responses = [x for r in records for x in r.responses]
    scores = model.score(prompts, responses, batch_size=batch_size)
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
               "members": model.num_members, "aggregation": aggregation, "out": str(out)}
    print(json.dumps(summary))
    return Path(out)


def _prompt_only(record):
    """A conversational demonstration's prompt: its turns before the assistant's response."""
    from rlhfkit.data import PromptRecord

    return PromptRecord(prompt=record.prompt, messages=record.prompt_messages)
