"""Collect thumbs up / down: sample K responses per prompt from a policy, have a thumbs annotator
judge each one on its own, write feedback records (what `rlhfkit kto` trains on).

    for each chunk of prompts (fixed by position, so a resumed run samples the same responses):
        K samples per prompt from the policy (one batched generate, seed from the chunk index)
        per prompt not yet in the output: drop empty responses, annotator labels each response
        append {prompt, completion, label, annotator} per response, fsynced

The annotator comes from `feedback.registry` with kind "thumbs": `simulated` on the lab (thumbs up
with probability sigma((gold - threshold) / T), then flips: `feedback.simulated.SimulatedThumbs`),
or your own `module:factory` returning an object with `.name` and `.label(prompt, completion)`.
People give thumbs on the labelling page instead (`rlhfkit label --mode thumbs`).

Sampling, chunking over processes and the main-process-only annotator are `compare`'s (see
jobs/compare.py): N processes write the same bytes as one. Resume: a prompt's records are written
one after another, so each run of lines with one prompt is one prompt done (a crash between a
prompt's lines keeps the labels written and does not redo that prompt); those prompts are skipped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import ConfigError, ModelConfig, doc, section, to_yaml
from rlhfkit.data import Feedback, Message, append_jsonl, encode_prompt, read_jsonl, read_records
from rlhfkit.feedback.registry import build_annotator
from rlhfkit.jobs.compare import AnnotatorConfig, CompareSamplingConfig, prompts_done
from rlhfkit.models.loading import load_policy, load_tokenizer
from rlhfkit.rollout import SamplingParams, generate
from rlhfkit.train.processes import processes, sharded_chunks


@dataclass(frozen=True)
class ThumbsConfig:
    policy: ModelConfig = section(ModelConfig, "policy that writes the responses (the model KTO will start from)")
    prompts: str = doc("lab:prompts_train", "prompt records: JSONL/JSON/Parquet file, dataset folder, or lab:NAME")
    limit: int = doc(0, "use only the first N prompts; 0 = all")
    k: int = doc(1, "responses per prompt, 1..9, each labelled on its own")
    sampling: CompareSamplingConfig = section(CompareSamplingConfig, "how responses are sampled")
    annotator: AnnotatorConfig = section(
        AnnotatorConfig, "who gives the thumbs",
        helps={"name": "thumbs annotator from feedback.registry: simulated (lab), module:factory or "
                       "path/to/file.py:factory (a factory spec runs that Python code: name only code you trust)",
               "options": "keyword arguments for the annotator, e.g. {threshold: 0.0, temperature: 0.1, "
                          "flip_rate: 0.0, seed: 0}"})
    batch_size: int = doc(32, "prompts per generation batch (each sampled K times)")
    seed: int = doc(0, "sampling seed")


def output_file(out: str | Path) -> Path:
    """`--out` names the JSONL file itself, or a folder that gets feedback.jsonl."""
    out = Path(out)
    return out if out.suffix == ".jsonl" else out / "feedback.jsonl"


def labelled(path: Path) -> Counter:
    """Prompts already labelled, as a multiset: a run of consecutive lines with one prompt is one
    prompt (its records are written together). A torn final line left by a crash is dropped first."""
    done: Counter = Counter()
    if not path.exists():
        return done
    prompts_done(path)  # truncates a torn last line
    last = None
    for obj in read_jsonl(path):
        if obj["prompt"] != last:
            done[obj["prompt"]] += 1
        last = obj["prompt"]
    return done


def todo_indices(records: list, path: Path, resume: bool, state) -> list[int]:
    """Positions of the prompts not yet labelled, decided by the main process and broadcast."""
    todo = None
    if state.is_main_process:
        remaining = labelled(path) if resume else Counter()
        todo = []
        for i, r in enumerate(records):
            if remaining[r.prompt] > 0:
                remaining[r.prompt] -= 1
            else:
                todo.append(i)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        todo = broadcast_object_list([todo])[0]
    return todo


def label_all(annotator, prompts: list[str], completions: list[str]) -> list:
    """Thumbs for each (prompt, completion): one batched call where the annotator has `label_many`."""
    if hasattr(annotator, "label_many"):
        return annotator.label_many(prompts, completions)
    return [annotator.label(p, c) for p, c in zip(prompts, completions, strict=True)]


def run(cfg: ThumbsConfig, out: str | Path, resume: bool = False) -> Path:
    if not 1 <= cfg.k <= 9:
        raise ConfigError(f"config key 'k': expected 1..9 responses per prompt, got {cfg.k}")
    path = output_file(out)
    if path.exists() and path.stat().st_size > 0 and not resume:
        raise ConfigError(f"{path} already holds feedback; pass --resume to continue it, or choose another --out")
    state = processes()
    main = state.is_main_process
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
        if Path(out).suffix != ".jsonl":  # a run folder: keep the resolved config beside the data
            (path.parent / "config.yaml").write_text(to_yaml(cfg))

    records = read_records(cfg.prompts, "prompt")[: cfg.limit or None]
    annotator = build_annotator(cfg.annotator.name, cfg.annotator.options, kind="thumbs") if main else None
    todo = todo_indices(records, path, resume, state)
    if not todo:
        if main:
            print(f"[thumbs] all {len(records)} prompts already in {path}")
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

    bar = tqdm(total=len(todo), desc="thumbs", dynamic_ncols=True, disable=not main)
    counts = Counter()
    todo_set = set(todo)
    for chunk, texts in sharded_chunks(len(records), cfg.batch_size, todo, state, sample):
        if not main:
            continue
        mine = [(records[i], t) for i, responses in zip(chunk, texts, strict=True) if i in todo_set
                for t in responses if t.strip()]  # an empty response cannot be a feedback record
        bar.update(sum(i in todo_set for i in chunk))
        thumbs = label_all(annotator, [r.prompt for r, _ in mine], [t for _, t in mine])
        for (record, text), verdict in zip(mine, thumbs, strict=True):
            messages = (*record.messages, Message("assistant", text)) if record.messages else None
            append_jsonl(path, Feedback(record.prompt, text, bool(verdict.label), annotator.name, messages))
            counts[bool(verdict.label)] += 1
    bar.close()
    state.wait_for_everyone()  # every process returns once the file is complete
    if main:
        print(f"[thumbs] wrote {counts[True] + counts[False]} feedback records ({counts[True]} up, {counts[False]} down; "
              f"K={cfg.k}, annotator {annotator.name}) to {path}")
        if len(counts) == 1:  # kto refuses such a file: say so now
            print("[thumbs] warning: every label is the same; KTO needs both (simulated: move annotator.options.threshold)")
    return path
