"""`rlhfkit judge`: label comparisons with an AI judge (any HF causal LM), CAI's feedback stage.

    for each chunk of sample records {prompt, responses} not yet in the output:
        every response pair -> judge prompt in both orders -> P("A") from the answer-token logits
        p(a ≻ b) = ½[P(A | a, b) + 1 − P(A | b, a)], clamped; K = 2: soft_label, K > 2: win rates
        append {prompt, responses, ranking, soft_label, scores, annotator, judge: {...}} (fsynced)
    summary line (and summary.json): written, skipped, responses shortened to fit the judge's context;
    no comparison written at all is an error (exit 2), never a quiet success

The maths and the prompt live in `feedback/judge.py`; this file is the loop and the file handling
(resume counts the prompts already written, like `rlhfkit compare`). Under `accelerate launch`
the main process alone judges and writes. The same judge plugs into
`rlhfkit compare` as `--set annotator.name=judge --set annotator.options={model: ...}`.
RL-CAI is then: `rlhfkit compare` (or `sample` + `judge`) -> `rlhfkit reward` (soft-label
Bradley–Terry) -> `rlhfkit ppo`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import ConfigError, ModelConfig, doc, section, to_yaml
from rlhfkit.data import Comparison, append_jsonl
from rlhfkit.feedback.constitution import load_constitution, load_judge_principles
from rlhfkit.feedback.judge import AIJudge, JudgeContextError
from rlhfkit.feedback.label_store import load_items
from rlhfkit.jobs.compare import output_file, prompts_done
from rlhfkit.models.loading import load_policy, load_tokenizer
from rlhfkit.train.processes import on_main_process

SUMMARY_FILE = "summary.json"  # beside comparisons.jsonl when --out is a folder


@dataclass(frozen=True)
class JudgeConfig:
    model: ModelConfig = section(ModelConfig, "the feedback model: any HF causal LM ('lab' = the lab base model)")
    samples: str = doc("runs/samples.jsonl", "JSONL of {prompt, responses} (rlhfkit sample --k K), or comparisons to relabel")
    constitution: str = doc("default", "judge template and default principles: default, lab, or a YAML path")
    principles: str | None = doc(None, "override the judge principles: a .txt file (one a line) or a constitution YAML")
    clamp: list[float] | None = doc(None, "clamp the soft label to [lo, hi], e.g. [0.4, 0.6]; null = off")
    both_orders: bool = doc(True, "ask with the responses in both orders and average (cancels position bias)")
    seed: int = doc(0, "seed for sampling one principle per comparison")
    batch_size: int = doc(16, "judge prompts per forward pass")
    chunk: int = doc(64, "records judged between writes")
    limit: int = doc(0, "label only the first N records; 0 = all")
    skip_too_long: bool = doc(True, "skip (and count) records whose judge prompt exceeds the model's context even with "
                                    "empty responses (longer responses are shortened to fit, and counted)")


def run(cfg: JudgeConfig, out: str | Path, resume: bool = False) -> Path:
    """Under several processes the main process judges and writes alone (the judge draws its
    principles from one RNG, so sharding would change the labels); the others wait for the file."""
    if cfg.clamp is not None and len(cfg.clamp) != 2:
        raise ConfigError(f"config key 'clamp': expected [lo, hi], got {cfg.clamp}")
    return on_main_process(_judge, cfg, out, resume)


def _judge(cfg: JudgeConfig, out: str | Path, resume: bool) -> Path:
    path = output_file(out)
    if path.exists() and path.stat().st_size > 0 and not resume:
        raise ConfigError(f"{path} already holds comparisons; pass --resume to continue it, or choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    if Path(out).suffix != ".jsonl":
        (path.parent / "config.yaml").write_text(to_yaml(cfg))

    items = load_items(cfg.samples)[: cfg.limit or None]
    remaining = prompts_done(path) if resume else Counter()
    todo = []
    for it in items:  # skip as many copies of each prompt as are already written
        if remaining[it.prompt] > 0:
            remaining[it.prompt] -= 1
        else:
            todo.append(it)
    if not todo:
        print(f"[judge] all {len(items)} records already in {path}")
        return path

    constitution = load_constitution(cfg.constitution)
    principles = load_judge_principles(cfg.principles) if cfg.principles else constitution.judge.principles
    judge = AIJudge(load_policy(cfg.model), load_tokenizer(cfg.model), constitution, principles,
                    tuple(cfg.clamp) if cfg.clamp else None, cfg.both_orders, cfg.seed, cfg.batch_size,
                    name=f"judge:{cfg.model.name_or_path}")
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="judge", dynamic_ncols=True)
    written = skipped = pairs_truncated = responses_truncated = 0
    for start in range(0, len(todo), cfg.chunk):
        chunk = todo[start : start + cfg.chunk]
        results = judge.rank_many([(it.prompt, it.responses) for it in chunk], skip_too_long=cfg.skip_too_long)
        for it, result in zip(chunk, results, strict=True):
            bar.update(1)
            if result is None:
                skipped += 1
                continue
            judgement, verdicts = result
            record = Comparison(prompt=it.prompt, responses=it.responses, ranking=tuple(judgement.ranking),
                                soft_label=judgement.soft_label, scores=tuple(judgement.scores),
                                annotator=judge.name, messages=it.messages).to_json()
            # What the judge saw, for inspecting position bias: per pair (i < j), P("A") per order,
            # and how many of the two responses were shortened to fit the judge's context.
            record["judge"] = [{"pair": [i, j], "principle": v.principle, "p": v.p, "p_a_first": v.p_a_first,
                                "p_a_swapped": v.p_a_swapped, "truncated": v.truncated}
                               for (i, j), v in zip(_pairs(len(it.responses)), verdicts, strict=True)]
            append_jsonl(path, record)
            written += 1
            pairs_truncated += sum(v.truncated > 0 for v in verdicts)
            responses_truncated += sum(v.truncated for v in verdicts)
    bar.close()
    if written == 0:  # nothing to show for the run: not a success (the output file does not even exist)
        raise JudgeContextError(f"no comparisons written: all {skipped} records to judge were skipped; "
                          + judge.too_long_message(todo[0].prompt))
    summary = {"records": len(items), "already_written": len(items) - len(todo), "written": written,
               "skipped": skipped, "pairs_truncated": pairs_truncated, "responses_truncated": responses_truncated}
    if Path(out).suffix != ".jsonl":
        (path.parent / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"[judge] wrote {written} comparisons to {path}; {responses_truncated} responses in {pairs_truncated} "
          "pairs shortened to fit the judge's context"
          + (f"; skipped {skipped} whose judge prompt is longer than the model's context even with empty responses"
             if skipped else ""))
    return path


def _pairs(k: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(k) for j in range(i + 1, k)]
