"""Collect comparisons: sample K responses per prompt from a policy, rank them with an annotator.

    for each chunk of prompts (fixed by position, so a resumed run samples the same responses):
        K samples per prompt from the policy (one batched generate, seed from the chunk index)
        per prompt not yet in the output: drop empty responses, annotator.rank(prompt, responses)
        append {prompt, responses, ranking, annotator, scores?, soft_label?} and fsync it

Writing is one flushed line per prompt, so an interrupted collection keeps everything it wrote;
`--resume` counts the prompts already in the file and skips exactly those (no duplicates, and a
torn last line from a crash is dropped first). The annotator is built by name through
`feedback.registry`, so new annotators (AI judge, human labelling) need no change here.
A stateful annotator (e.g. a seeded simulated one) is not rewound on resume: the responses of a
resumed run are identical, the labels are fresh draws from the same annotator.

Under `accelerate launch` / torchrun the chunks are dealt out in waves, chunk c of a wave to
process c: each process samples its own chunk with the same positional seed a 1-process run
uses, the main process gathers them and alone builds the annotator, ranks and writes, in prompt
order. So N processes write byte-identical files to 1 process (for any annotator, stateful or
human), and `batch_size` is the unit of work: give each process at least one chunk.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.config import ConfigError, ModelConfig, doc, section, to_yaml
from rlhfkit.data import Comparison, append_jsonl, encode_prompt, read_records
from rlhfkit.feedback.registry import build_annotator
from rlhfkit.models.loading import load_policy, load_tokenizer
from rlhfkit.rollout import SamplingParams, generate
from rlhfkit.train.processes import processes, sharded_chunks


@dataclass(frozen=True)
class CompareSamplingConfig:
    max_new_tokens: int = doc(64, "response length limit")
    temperature: float = doc(1.0, "sampling temperature (diverse responses make informative comparisons)")
    top_p: float = doc(1.0, "nucleus sampling threshold; 1.0 = off")
    top_k: int = doc(0, "top-k sampling; 0 = off")


@dataclass(frozen=True)
class AnnotatorConfig:
    name: str = doc("simulated", "annotator from feedback.registry: simulated (lab), judge, human, module:factory or path/to/file.py:factory (a factory spec runs that Python code: name only code you trust)")
    options: dict[str, Any] = doc({}, "keyword arguments for the annotator, e.g. {temperature: 0.5, flip_rate: 0.0, seed: 0}")


@dataclass(frozen=True)
class CompareConfig:
    policy: ModelConfig = section(ModelConfig, "policy that writes the responses (usually the SFT model)")
    prompts: str = doc("lab:prompts_train", "prompt records: JSONL/JSON/Parquet file, dataset folder, or lab:NAME")
    limit: int = doc(0, "use only the first N prompts; 0 = all")
    k: int = doc(4, "responses per prompt, 2..9 (InstructGPT ranked 4 to 9)")
    sampling: CompareSamplingConfig = section(CompareSamplingConfig, "how responses are sampled")
    annotator: AnnotatorConfig = section(AnnotatorConfig, "who ranks the responses")
    batch_size: int = doc(32, "prompts per generation batch (each sampled K times)")
    seed: int = doc(0, "sampling seed")


def output_file(out: str | Path) -> Path:
    """`--out` names the JSONL file itself, or a folder that gets comparisons.jsonl."""
    out = Path(out)
    return out if out.suffix == ".jsonl" else out / "comparisons.jsonl"


def prompts_done(path: Path) -> Counter:
    """Prompts already written (as a multiset); drops a torn final line left by a crash."""
    done: Counter = Counter()
    if not path.exists():
        return done
    data = path.read_bytes()
    good = 0
    for line in data.splitlines(keepends=True):
        try:
            done[json.loads(line)["prompt"]] += 1
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
            if line.strip():
                break  # a torn or foreign line: keep what precedes it
        good += len(line)
    if good < len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
            f.flush()
            os.fsync(f.fileno())
    return done


def todo_indices(records: list, path: Path, resume: bool, state) -> list[int]:
    """Positions of the records not yet in `path`, decided by the main process (which alone may
    drop a torn last line) and broadcast, so every process works on the same list."""
    todo = None
    if state.is_main_process:
        remaining = prompts_done(path) if resume else Counter()
        todo = []
        for i, r in enumerate(records):  # skip as many copies of each prompt as are already written
            if remaining[r.prompt] > 0:
                remaining[r.prompt] -= 1
            else:
                todo.append(i)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        todo = broadcast_object_list([todo])[0]
    return todo


def run(cfg: CompareConfig, out: str | Path, resume: bool = False) -> Path:
    if not 2 <= cfg.k <= 9:
        raise ConfigError(f"config key 'k': expected 2..9 responses per prompt, got {cfg.k}")
    path = output_file(out)
    if path.exists() and path.stat().st_size > 0 and not resume:
        raise ConfigError(f"{path} already holds comparisons; pass --resume to continue it, or choose another --out")
    state = processes()
    main = state.is_main_process
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
        if Path(out).suffix != ".jsonl":  # a run folder: keep the resolved config beside the data
            (path.parent / "config.yaml").write_text(to_yaml(cfg))

    records = read_records(cfg.prompts, "prompt")[: cfg.limit or None]
    # Only the main process ranks: one annotator (its RNG, its labelling server) for the whole run.
    annotator = build_annotator(cfg.annotator.name, cfg.annotator.options) if main else None
    todo = todo_indices(records, path, resume, state)
    if not todo:
        if main:
            print(f"[compare] all {len(records)} prompts already in {path}")
        state.wait_for_everyone()
        return path

    policy, tokenizer = load_policy(cfg.policy), load_tokenizer(cfg.policy)
    params = SamplingParams(max_new_tokens=cfg.sampling.max_new_tokens, temperature=cfg.sampling.temperature,
                            top_p=cfg.sampling.top_p, top_k=cfg.sampling.top_k)

    def sample(chunk: list[int]) -> list[list[str]]:
        # The whole chunk is sampled with a seed fixed by its position: resumed or not, any process.
        ids = [encode_prompt(tokenizer, records[i]) for i in chunk for _ in range(cfg.k)]
        samples = generate(policy, tokenizer, ids, params, batch_size=len(ids),
                           generator_seed=cfg.seed * 1_000_003 + chunk[0])
        return [[s.text for s in samples[n * cfg.k : (n + 1) * cfg.k]] for n in range(len(chunk))]

    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="compare", dynamic_ncols=True, disable=not main)
    written = skipped = 0
    todo_set = set(todo)
    for chunk, texts in sharded_chunks(len(records), cfg.batch_size, todo, state, sample):
        if not main:
            continue
        for i, mine in zip(chunk, texts, strict=True):
            if i not in todo_set:
                continue
            responses = [t for t in mine if t.strip()]  # an empty response cannot be judged
            bar.update(1)
            if len(responses) < 2:
                skipped += 1
                continue
            record = records[i]
            judgement = annotator.rank(record.prompt, responses)
            append_jsonl(path, Comparison(
                prompt=record.prompt,
                responses=tuple(responses),
                ranking=tuple(int(x) for x in judgement.ranking),
                soft_label=judgement.soft_label if len(responses) == 2 else None,
                scores=tuple(float(x) for x in judgement.scores) if judgement.scores is not None else None,
                annotator=annotator.name,
                messages=record.messages,
            ))
            written += 1
    bar.close()
    state.wait_for_everyone()  # every process returns once the file is complete
    if not main:
        return path
    print(f"[compare] wrote {written} comparisons (K={cfg.k}, annotator {annotator.name}) to {path}"
          + (f"; skipped {skipped} prompts with fewer than 2 non-empty responses" if skipped else ""))
    return path
